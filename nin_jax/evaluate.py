"""Test error, per-class accuracy and a confusion-matrix PNG for a workdir's checkpoint.

  python -m nin_jax.evaluate --workdir=/tmp/nin_digits [--step=500] [--split=test] [--json]

The config (dataset, model) comes from WORKDIR/config.json; the dataset must be
prepared (or preparable) as for training. Writes WORKDIR/eval/step_<N>.json and
WORKDIR/eval/confusion_step_<N>.png (or under --output_dir).
"""

import json
import os

import numpy as np
from absl import flags

from nin_jax import cli, input_pipeline, restore, storage

FLAGS = flags.FLAGS

CELL_INCHES = 0.5  # Per class: the confusion matrix PNG grows with the class count.
DPI = 100


def confusion_matrix(labels: np.ndarray, predictions: np.ndarray, num_classes: int) -> np.ndarray:
    """(true, predicted) counts, int64 (num_classes, num_classes)."""
    matrix = np.zeros((num_classes, num_classes), np.int64)
    np.add.at(matrix, (labels, predictions), 1)
    return matrix


def summarize(matrix: np.ndarray, class_names, split: str, step: int) -> dict:
    """Error, accuracy and per-class accuracy (recall) from a confusion matrix."""
    total = int(matrix.sum())
    correct = int(np.trace(matrix))
    per_class = np.diag(matrix) / np.maximum(matrix.sum(1), 1)
    return {
        "step": step,
        "split": split,
        "examples": total,
        "accuracy": correct / total,
        "error": 1.0 - correct / total,
        "per_class_accuracy": {
            name: float(a) for name, a in zip(class_names, per_class, strict=True)
        },
        "confusion_matrix": matrix.tolist(),
    }


def plot_confusion(matrix: np.ndarray, class_names, title: str, output: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    size = max(4.0, CELL_INCHES * len(class_names) + 2.0)
    fig, ax = plt.subplots(figsize=(size, size), dpi=DPI)
    rates = matrix / np.maximum(matrix.sum(1, keepdims=True), 1)
    ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    if len(class_names) <= 20:  # Counts and names stay legible.
        for (true, pred), count in np.ndenumerate(matrix):
            if count:
                color = "white" if rates[true, pred] > 0.5 else "black"
                ax.text(pred, true, str(count), ha="center", va="center", color=color, fontsize=8)
        ticks = np.arange(len(class_names))
        ax.set_xticks(ticks, class_names, rotation=90)
        ax.set_yticks(ticks, class_names)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(title)
    fig.tight_layout()
    storage.write_figure(fig, output, DPI)
    plt.close(fig)


def define_flags() -> None:
    flags.DEFINE_string("workdir", None, "The training run's workdir.", required=True)
    flags.DEFINE_integer("step", None, "Checkpoint step (default: the latest).")
    flags.DEFINE_string("split", None, "TFDS split (default: the config's eval_split).")
    flags.DEFINE_string("data_dir", None, "TFDS data dir (default: the config's data_dir).")
    flags.DEFINE_integer("batch_size", 256, "Images per forward pass.", lower_bound=1)
    flags.DEFINE_string("output_dir", None, "Where the JSON and PNG go (default: WORKDIR/eval).")
    flags.DEFINE_bool("json", False, "Print the results as JSON.")
    flags.DEFINE_integer("model", None, "Model k of a multi-model run (default: the ensemble).")


def run(
    workdir: str,
    step: int | None = None,
    split: str | None = None,
    data_dir: str | None = None,
    batch_size: int = 256,
    output_dir: str | None = None,
    model: int | None = None,
) -> tuple[dict, str]:
    """Evaluates ``workdir``'s checkpoint; returns the results and the title of their figure.

    Writes ``output_dir/step_<N>.json`` and ``confusion_step_<N>.png`` (default: WORKDIR/eval).
    """
    trained = restore.load(workdir, step)
    output_dir = storage.output_directory(output_dir or os.path.join(workdir, "eval"))
    config, info = trained.config, trained.info
    split_name = split or config.eval_split
    builder = input_pipeline.get_builder(
        config.dataset, data_dir or config.data_dir, config.try_gcs
    )
    examples = input_pipeline.load_split(builder, split_name, drop_remainder=False)
    probabilities = trained.probabilities(examples.images, model, batch_size=batch_size)
    predictions = probabilities.argmax(-1)
    matrix = confusion_matrix(examples.labels, predictions, info.num_classes)
    results = summarize(matrix, info.class_names, split_name, trained.step)

    storage.write_text(
        os.path.join(output_dir, f"step_{trained.step}.json"), json.dumps(results, indent=2)
    )
    title = (
        f"{config.dataset} {split_name}, step {trained.step}: error {100 * results['error']:.2f}%"
    )
    plot_confusion(
        matrix,
        info.class_names,
        title,
        os.path.join(output_dir, f"confusion_step_{trained.step}.png"),
    )
    return results, title


def main(argv: list[str]) -> None:
    results, title = run(
        FLAGS.workdir, FLAGS.step, FLAGS.split, FLAGS.data_dir, FLAGS.batch_size, FLAGS.output_dir,
        FLAGS.model,
    )  # fmt: skip
    if FLAGS.json:
        print(json.dumps(results))
        return
    print(f"{title} ({results['examples']} examples)")
    for name, accuracy in results["per_class_accuracy"].items():
        print(f"  {name:>16}: {100 * accuracy:6.2f}% correct")
    output_dir = FLAGS.output_dir or os.path.join(FLAGS.workdir, "eval")
    step = results["step"]
    print(f"wrote step_{step}.json and confusion_step_{step}.png in {output_dir}")


if __name__ == "__main__":
    define_flags()
    cli.run(main, quiet=True)
