"""Test error, per-class accuracy and a confusion-matrix PNG for a workdir's checkpoint.

  python -m nin_jax.evaluate --workdir=/tmp/nin_digits [--step=500] [--split=test] [--json]

The config (dataset, model) comes from WORKDIR/config.json; the dataset must be
prepared (or preparable) as for training. Writes WORKDIR/eval/step_<N>.json and
WORKDIR/eval/confusion_step_<N>.png (or under --output_dir).
"""

import argparse
import json
import os

import numpy as np

from nin_jax import input_pipeline, restore

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
    fig.savefig(output, dpi=DPI)
    plt.close(fig)


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m nin_jax.evaluate", description=__doc__)
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--step", type=int, help="checkpoint step (default: the latest)")
    parser.add_argument("--split", help="TFDS split (default: the config's eval_split)")
    parser.add_argument("--data_dir", help="TFDS data dir (default: the config's data_dir)")
    parser.add_argument("--batch_size", type=int, default=256)
    parser.add_argument("--output_dir", help="default: WORKDIR/eval")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args(argv)

    trained = restore.load(args.workdir, args.step)
    config, info = trained.config, trained.info
    split_name = args.split or config.eval_split
    builder = input_pipeline.get_builder(
        config.dataset, args.data_dir or config.data_dir, config.try_gcs
    )
    split = input_pipeline.load_split(builder, split_name, drop_remainder=False)
    predictions = trained.apply(split.images, batch_size=args.batch_size).argmax(-1)
    matrix = confusion_matrix(split.labels, predictions, info.num_classes)
    results = summarize(matrix, info.class_names, split_name, trained.step)

    output_dir = args.output_dir or os.path.join(args.workdir, "eval")
    os.makedirs(output_dir, exist_ok=True)
    json_path = os.path.join(output_dir, f"step_{trained.step}.json")
    png_path = os.path.join(output_dir, f"confusion_step_{trained.step}.png")
    with open(json_path, "w") as f:
        json.dump(results, f, indent=2)
    title = (
        f"{config.dataset} {split_name}, step {trained.step}: error {100 * results['error']:.2f}%"
    )
    plot_confusion(matrix, info.class_names, title, png_path)

    if args.json:
        print(json.dumps(results))
        return
    print(f"{title} ({results['examples']} examples)")
    for name, accuracy in results["per_class_accuracy"].items():
        print(f"  {name:>16}: {100 * accuracy:6.2f}% correct")
    print(f"wrote {json_path} and {png_path}")


if __name__ == "__main__":
    restore.run_tool(main)
