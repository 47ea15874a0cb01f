"""Saliency maps of a trained workdir: the gradient of a class score with respect to the input.

  python examples/saliency.py --workdir=/tmp/nin_digits [--output=saliency.png] [--model=0]

For each of the first test digits, |d score_c / d pixel| of its true class c, taken
with respect to the uint8 pixel values (through the run's preprocessing, which is
part of the differentiated function) by ``jax.vmap(jax.grad(...))``. The PNG shows
each digit above its map, titled with the share of the map's mass on the digit's
strokes (its inked pixels, about half of an 8x8 digit). Averaged over the digits
drawn, more of the mass lies on the strokes than on the background, and more per
pixel too (measured on a 500-step model: 60% of the mass, 1.5 times the background's
density over 64 test digits); tests/test_examples.py checks both on 16 digits.
Raw gradients are noisy: single digits can go the other way.
"""

import argparse
import sys

import jax
import jax.numpy as jnp
import numpy as np

from nin_jax import input_pipeline, restore, workdir
from nin_jax.errors import NinError

STROKE = 1  # Pixels at or above this value (of 255) are the digit's strokes: any ink.


def saliency_maps(parts: restore.Parts, images: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """|d logit[label] / d pixels| of each uint8 image (N, H, W, C), summed over channels."""
    model, params, preprocess, _ = parts

    def class_score(pixels, label):  # pixels: float32 (H, W, C), uint8 values
        logits = model.apply({"params": params}, preprocess(pixels[None]))
        return logits[0, label]

    grads = jax.jit(jax.vmap(jax.grad(class_score)))(images.astype(jnp.float32), labels)
    return np.abs(np.asarray(grads)).sum(-1)


def stroke_shares(images: np.ndarray, maps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per image: the share of its map's mass on stroke pixels, and the ratio of the map's
    mean on stroke pixels to its mean on the background."""
    strokes = images.max(-1) >= STROKE
    on_strokes = (maps * strokes).sum((1, 2))
    fraction = on_strokes / maps.sum((1, 2))
    background = (maps * ~strokes).sum((1, 2)) / (~strokes).sum((1, 2))
    return fraction, on_strokes / strokes.sum((1, 2)) / background


def draw(images: np.ndarray, maps: np.ndarray, titles: list[str], output: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    fig, axes = plt.subplots(2, len(images), figsize=(1.2 * len(images), 2.6), squeeze=False)
    for i, (image, saliency, title) in enumerate(zip(images, maps, titles, strict=True)):
        axes[0, i].imshow(image[..., 0] if image.shape[-1] == 1 else image, cmap="gray")
        axes[0, i].set_title(title, fontsize=8)
        axes[1, i].imshow(saliency, cmap="hot")
        for ax in axes[:, i]:
            ax.axis("off")
    fig.tight_layout()
    fig.savefig(output, dpi=100)
    plt.close(fig)


def main(
    workdir_path: str, output: str, num_images: int = 8, model: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Draws the saliency maps of the first test digits; returns ``stroke_shares``."""
    parts = restore.load_parts(workdir_path, model=model)
    config = workdir.load_config(workdir_path)
    builder = input_pipeline.get_builder(config.dataset, config.data_dir)
    test = input_pipeline.load_split(builder, f"test[:{num_images}]", drop_remainder=False)
    maps = saliency_maps(parts, test.images, test.labels)
    fractions, density = stroke_shares(test.images, maps)
    titles = [
        f"{parts.class_names[c]}: {f:.0%}" for c, f in zip(test.labels, fractions, strict=True)
    ]
    draw(test.images, maps, titles, output)
    print(f"wrote {output}: {fractions.mean():.0%} of the gradient's mass on the strokes, "
          f"{density.mean():.2f}x the background's per pixel")  # fmt: skip
    return fractions, density


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", required=True, help="a trained workdir")
    parser.add_argument("--output", default="saliency.png")
    parser.add_argument("--num_images", type=int, default=8)
    parser.add_argument("--model", type=int, default=0, help="model k of a multi-model run")
    args = parser.parse_args()
    try:
        main(args.workdir, args.output, args.num_images, args.model)
    except NinError as e:  # A workdir or dataset nin_jax cannot use: one line.
        sys.exit(f"error: {e}")
