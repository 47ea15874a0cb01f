"""Top-k classes, with probabilities, of image files under a workdir's trained model.

  python -m nin_jax.predict --workdir=/tmp/nin_digits img1.png img2.jpg [--top_k=3] [--json]
      [--model=K]   # one model of a multi-model run (default: their ensemble)

Images of any size and colour mode are converted to the training images' channels
and resized (bilinear) to their size, then preprocessed as in training (the
run's config.preprocess with the statistics in WORKDIR/preprocess.npz). No
dataset access is needed.
"""

import json

import numpy as np
from absl import flags

from nin_jax import cli, images, restore

FLAGS = flags.FLAGS


def top_k(probabilities: np.ndarray, class_names, k: int) -> list[dict]:
    """The k most probable classes of one image, most probable first."""
    order = np.argsort(-probabilities, kind="stable")[:k]
    return [
        {"class": int(i), "name": class_names[i], "probability": float(probabilities[i])}
        for i in order
    ]


def predict(
    trained: restore.Trained, paths: list[str], k: int, model: int | None = None
) -> list[dict]:
    """The ``k`` most probable classes of each image file, under model ``model`` or (None)
    the ensemble of a multi-model run."""
    pixels = np.stack([images.read_image(path, trained.info.image_shape) for path in paths])
    probabilities = trained.probabilities(pixels, model)
    return [
        {"file": path, "top_k": top_k(p, trained.info.class_names, k)}
        for path, p in zip(paths, probabilities, strict=True)
    ]


def format_lines(results: list[dict]) -> list[str]:
    """One line per image: ``file: name probability, ...``, most probable first."""
    return [
        f"{r['file']}: " + ", ".join(f"{p['name']} {p['probability']:.3f}" for p in r["top_k"])
        for r in results
    ]


def define_flags() -> None:
    flags.DEFINE_string("workdir", None, "The training run's workdir.", required=True)
    flags.DEFINE_integer("step", None, "Checkpoint step (default: the latest).")
    flags.DEFINE_integer("top_k", 5, "Classes shown per image.", lower_bound=1)
    flags.DEFINE_bool("json", False, "Print the results as JSON.")
    flags.DEFINE_integer("model", None, "Model k of a multi-model run (default: the ensemble).")


def main(argv: list[str]) -> None:
    paths = argv[1:]
    if not paths:
        cli.fail("give at least one image file: python -m nin_jax.predict --workdir=DIR a.png")
    trained = restore.load(FLAGS.workdir, FLAGS.step)
    results = predict(trained, paths, min(FLAGS.top_k, trained.info.num_classes), FLAGS.model)
    if FLAGS.json:
        print(json.dumps({"step": trained.step, "predictions": results}, indent=2))
        return
    print("\n".join(format_lines(results)))


if __name__ == "__main__":
    define_flags()
    cli.run(main, positional=True, quiet=True)
