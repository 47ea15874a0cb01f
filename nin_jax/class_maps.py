"""The paper's Figure 4: images beside the class confidence maps of the last mlpconv layer.

  python -m nin_jax.class_maps --workdir=/tmp/nin_digits [--num_images=8] [img1.png ...]

NIN's last mlpconv block outputs one non-negative map per class, and the logits
are their spatial averages, so each map shows where the network sees that class.
Without image arguments the first --num_images examples of the config's eval
split are shown with their true class (framed in green); image files are shown
under their file names. The predicted class's title is red. Writes
WORKDIR/class_maps.png (or --output).
"""

import os

import numpy as np
from absl import flags

from nin_jax import cli, images, input_pipeline, restore, storage

FLAGS = flags.FLAGS

CELL_INCHES = 1.2
HEADER_INCHES = 0.6
DPI = 100
MAX_NAME = 16  # Characters of a file name over its image (a cell is 1.2 inches wide).


def figure_size(rows: int, maps: int) -> tuple[float, float]:
    """Inches of a grid of ``rows`` images, each with ``maps`` class maps beside it."""
    return CELL_INCHES * (1 + maps), CELL_INCHES * rows + HEADER_INCHES


def shown_classes(scores: np.ndarray, max_maps: int) -> np.ndarray:
    """All classes in order when they fit, else the ``max_maps`` best scored, best first."""
    if len(scores) <= max_maps:
        return np.arange(len(scores))
    return np.argsort(-scores, kind="stable")[:max_maps]


def row_title(label: int | None, source: str | None, predicted: str, class_names) -> str:
    """The title over a row's image: its true class (an eval example) or its file's name
    (``source``; long names keep their end), then the predicted class."""
    if label is not None:
        first = f"true {class_names[label]}"
    else:
        name = os.path.basename(source) if source else "?"
        first = name if len(name) <= MAX_NAME else "..." + name[-(MAX_NAME - 3) :]
    return f"{first}\npred {predicted}"


def render(
    images: np.ndarray,
    maps: np.ndarray,
    labels: list[int | None],
    class_names,
    max_maps: int,
    title: str,
    output: str,
    sources: list[str] | None = None,
) -> None:
    """One row per image: the input, then its class maps on a per-row colour scale.
    ``sources``: the file of each row without a label."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    scores = maps.mean(axis=(1, 2))
    num_maps = min(max_maps, maps.shape[-1])
    fig, axes = plt.subplots(
        len(images), 1 + num_maps, figsize=figure_size(len(images), num_maps), dpi=DPI,
        squeeze=False,
    )  # fmt: skip
    sources = sources or [None] * len(images)
    rows = zip(images, maps, labels, sources, strict=True)
    for row, (image, image_maps, label, source) in enumerate(rows):
        predicted = int(scores[row].argmax())
        axes[row, 0].imshow(image.squeeze(-1) if image.shape[-1] == 1 else image, cmap="gray")
        heading = row_title(label, source, class_names[predicted], class_names)
        axes[row, 0].set_title(heading, fontsize=7)
        vmax = max(float(image_maps.max()), 1e-6)
        for col, cls in enumerate(shown_classes(scores[row], num_maps), 1):
            ax = axes[row, col]
            ax.imshow(image_maps[..., cls], cmap="jet", vmin=0.0, vmax=vmax)
            is_predicted = cls == predicted
            ax.set_title(
                class_names[cls], fontsize=7, color="red" if is_predicted else "black",
                fontweight="bold" if is_predicted else "normal",
            )  # fmt: skip
            if cls == label:
                for spine in ax.spines.values():
                    spine.set(color="limegreen", linewidth=3)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(title, fontsize=9)
    fig.subplots_adjust(
        left=0.01, right=0.99, bottom=0.01, top=1 - HEADER_INCHES / fig.get_figheight(), hspace=0.5
    )
    storage.write_figure(fig, output, DPI)
    plt.close(fig)


def eval_examples(trained: restore.Trained, count: int, data_dir: str | None):
    """The first ``count`` images and labels of the config's eval split."""
    config = trained.config
    builder = input_pipeline.get_builder(
        config.dataset, data_dir or config.data_dir, config.try_gcs
    )
    split = input_pipeline.load_split(builder, config.eval_split, drop_remainder=False)
    return split.images[:count], [int(label) for label in split.labels[:count]]


def define_flags() -> None:
    flags.DEFINE_string("workdir", None, "The training run's workdir.", required=True)
    flags.DEFINE_integer("step", None, "Checkpoint step (default: the latest).")
    flags.DEFINE_integer("num_images", 8, "Eval images shown when none are given.", lower_bound=1)
    flags.DEFINE_integer("max_maps", 10, "Class maps shown per image.", lower_bound=1)
    flags.DEFINE_string("data_dir", None, "TFDS data dir (default: the config's data_dir).")
    flags.DEFINE_string("output", None, "PNG path (default: WORKDIR/class_maps.png).")
    flags.DEFINE_integer("model", 0, "Model k of a multi-model run.", lower_bound=0)


def run(
    workdir: str,
    paths: list[str],
    step: int | None = None,
    num_images: int = 8,
    max_maps: int = 10,
    data_dir: str | None = None,
    output: str | None = None,
    model: int = 0,
) -> str:
    """Draws the class maps of ``paths`` (default: eval images); returns the PNG's path."""
    trained = restore.load(workdir, step)
    output = storage.output_file(output or os.path.join(workdir, "class_maps.png"))
    if paths:
        pixels = np.stack([images.read_image(path, trained.info.image_shape) for path in paths])
        labels: list[int | None] = [None] * len(pixels)
    else:
        pixels, labels = eval_examples(trained, num_images, data_dir)
    maps = trained.apply(pixels, method="class_maps", model=model).astype(np.float32)
    title = f"NIN class maps, {trained.config.dataset}, step {trained.step}"
    sources = paths or None
    render(pixels, maps, labels, trained.info.class_names, max_maps, title, output, sources)
    return output


def main(argv: list[str]) -> None:
    output = run(
        FLAGS.workdir, argv[1:], FLAGS.step, FLAGS.num_images, FLAGS.max_maps, FLAGS.data_dir,
        FLAGS.output, FLAGS.model,
    )  # fmt: skip
    print(f"wrote {output}")


if __name__ == "__main__":
    define_flags()
    cli.run(main, positional=True, quiet=True)
