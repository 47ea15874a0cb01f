"""Top-k classes, with probabilities, of image files under a workdir's trained model.

  python -m nin_jax.predict --workdir=/tmp/nin_digits img1.png img2.jpg [--top_k=3] [--json]

Images of any size and colour mode are converted to the training images' channels
and resized (bilinear) to their size, then normalised with the training set's
per-channel mean and std (WORKDIR/dataset.json). No dataset access is needed.
"""

import argparse
import json

import numpy as np

from nin_jax import restore


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(-1, keepdims=True))
    return shifted / shifted.sum(-1, keepdims=True)


def top_k(probabilities: np.ndarray, class_names, k: int) -> list[dict]:
    """The k most probable classes of one image, most probable first."""
    order = np.argsort(-probabilities, kind="stable")[:k]
    return [
        {"class": int(i), "name": class_names[i], "probability": float(probabilities[i])}
        for i in order
    ]


def predict(trained: restore.Trained, paths: list[str], k: int) -> list[dict]:
    images = np.stack([trained.info.read_image(path) for path in paths])
    probabilities = softmax(trained.apply(images).astype(np.float64))
    return [
        {"file": path, "top_k": top_k(p, trained.info.class_names, k)}
        for path, p in zip(paths, probabilities, strict=True)
    ]


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m nin_jax.predict", description=__doc__)
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--step", type=int, help="checkpoint step (default: the latest)")
    parser.add_argument("--top_k", type=int, default=5)
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("images", nargs="+", help="image files (PNG, JPEG, ...)")
    args = parser.parse_args(argv)
    if args.top_k < 1:
        parser.error("--top_k must be at least 1")

    trained = restore.load(args.workdir, args.step)
    results = predict(trained, args.images, min(args.top_k, trained.info.num_classes))
    if args.json:
        print(json.dumps({"step": trained.step, "predictions": results}, indent=2))
        return
    for result in results:
        ranked = ", ".join(f"{p['name']} {p['probability']:.3f}" for p in result["top_k"])
        print(f"{result['file']}: {ranked}")


if __name__ == "__main__":
    restore.run_tool(main)
