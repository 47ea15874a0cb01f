"""Real-image stand-ins for the paper's datasets, built from scikit-learn's 1,797 digits.

The paper's datasets cannot be downloaded everywhere, but each recipe should
meet real images at its own input shape before it meets a TPU. These arrays are
scikit-learn's real 8x8 handwritten digits (with their real labels), resized:

* ``8x8x1``: the digits as they are (the embedded ``digits`` dataset);
* ``28x28x1`` (MNIST's shape): each digit scaled to 20x20 and centred in a
  28x28 frame with a 4-pixel blank border, as MNIST centres its digits;
* ``32x32x3`` (CIFAR-10's and SVHN's shape): each digit scaled to fill 32x32,
  the gray level replicated to three channels;
* ``pairs_32x32x3`` (CIFAR-100's shape and class count): two digits ``a`` and
  ``b`` side by side, each scaled to 16x16 and centred vertically, label
  ``10 * a + b``; ``PAIRS_PER_CLASS`` train and test pairs of each of the 100
  classes, drawn from the train and test digits respectively.

Split (fixed, as ``digits``): digit ``i`` of ``sklearn.datasets.load_digits()``
is a test digit when ``i % 5 == 0`` (360) and a train digit otherwise (1,437).
Resizing is bilinear (half-pixel centres) in numpy, and the pairs come from a
fixed-seed legacy ``RandomState`` (whose stream numpy keeps unchanged), so the
arrays are identical on every machine. Nothing here imports TensorFlow.
"""

import dataclasses

import numpy as np

TEST_EVERY = 5
SPLITS = ("train", "test")
PAIRS_PER_CLASS = {"train": 30, "test": 10}
_PAIRS_SEED = 0


@dataclasses.dataclass(frozen=True)
class StandIn:
    """One stand-in: its image shape and class count (its TFDS builder config)."""

    name: str
    shape: tuple[int, int, int]
    num_classes: int
    description: str


STANDINS = {
    s.name: s
    for s in (
        StandIn("8x8x1", (8, 8, 1), 10, "scikit-learn's 8x8 digits as they are"),
        StandIn("28x28x1", (28, 28, 1), 10, "MNIST's shape: each digit 20x20 in a 28x28 frame"),
        StandIn("32x32x3", (32, 32, 3), 10, "CIFAR-10/SVHN's shape: each digit 32x32, gray as RGB"),
        StandIn(
            "pairs_32x32x3",
            (32, 32, 3),
            100,
            "CIFAR-100's shape and classes: digits a and b side by side, label 10a+b",
        ),
    )
}


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")


def digits(split: str) -> tuple[np.ndarray, np.ndarray]:
    """(float64 images (N, 8, 8) in [0, 1], int64 labels (N,)) of the fixed split."""
    from sklearn.datasets import load_digits

    _check_split(split)
    data = load_digits()
    is_test = np.arange(len(data.target)) % TEST_EVERY == 0
    keep = is_test if split == "test" else ~is_test
    return data.images[keep] / 16.0, data.target[keep].astype(np.int64)


def interpolation_matrix(size_in: int, size_out: int) -> np.ndarray:
    """(size_out, size_in) bilinear weights with half-pixel centres, edges clamped."""
    centres = (np.arange(size_out) + 0.5) * size_in / size_out - 0.5
    low = np.clip(np.floor(centres).astype(int), 0, size_in - 1)
    high = np.clip(low + 1, 0, size_in - 1)
    frac = np.clip(centres - low, 0.0, 1.0)
    weights = np.zeros((size_out, size_in))
    np.add.at(weights, (np.arange(size_out), low), 1.0 - frac)
    np.add.at(weights, (np.arange(size_out), high), frac)
    return weights


def resize(images: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear resize of float images (N, h, w) to (N, height, width)."""
    rows = interpolation_matrix(images.shape[1], height)
    cols = interpolation_matrix(images.shape[2], width)
    return np.einsum("ih,nhw,jw->nij", rows, images, cols)


def to_uint8(images: np.ndarray, channels: int) -> np.ndarray:
    """Float images (N, H, W) in [0, 1] -> uint8 (N, H, W, channels), gray replicated."""
    pixels = np.round(np.clip(images, 0.0, 1.0) * 255.0).astype(np.uint8)
    return np.repeat(pixels[..., None], channels, axis=-1)


def pair_indices(labels: np.ndarray, per_class: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (left, right) of ``per_class`` digit pairs for each label 10a+b, shuffled."""
    rng = np.random.RandomState(_PAIRS_SEED)
    by_class = [np.flatnonzero(labels == digit) for digit in range(10)]
    left, right = [], []
    for label in range(100):
        a, b = divmod(label, 10)
        left.append(rng.choice(by_class[a], per_class))
        right.append(rng.choice(by_class[b], per_class))
    order = rng.permutation(100 * per_class)
    return np.concatenate(left)[order], np.concatenate(right)[order]


def load(name: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 (N, H, W, C), labels int64 (N,)) of stand-in ``name``'s ``split``."""
    if name not in STANDINS:
        raise ValueError(f"unknown stand-in {name!r}; known: {', '.join(STANDINS)}")
    images, labels = digits(split)
    if name == "8x8x1":
        return to_uint8(images, 1), labels
    if name == "28x28x1":
        framed = np.pad(resize(images, 20, 20), ((0, 0), (4, 4), (4, 4)))
        return to_uint8(framed, 1), labels
    if name == "32x32x3":
        return to_uint8(resize(images, 32, 32), 3), labels
    left, right = pair_indices(labels, PAIRS_PER_CLASS[split])
    halves = resize(images, 16, 16)
    pairs = np.pad(np.concatenate([halves[left], halves[right]], axis=2), ((0, 0), (8, 8), (0, 0)))
    return to_uint8(pairs, 3), 10 * labels[left] + labels[right]
