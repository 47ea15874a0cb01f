"""Which examples a run trains and evaluates on: the test split, or the paper's validation split.

With ``config.validation = False`` (default) a run trains on ``config.train_split``
and evaluates on ``config.eval_split``. With ``config.validation = True`` the
validation examples leave the training set and become the evaluation set:

* CIFAR-10/100: the last 10,000 of the 50,000 training images (the paper tunes
  on a 10,000-image validation split; which 10,000 it does not say);
* SVHN: the first 400 images of each class in ``train`` and the first 200 of
  each class in ``extra`` (6,000, the paper's split, following the maxout paper);
* MNIST: the last 10,000 training images (the paper does not say; this is the
  maxout paper's choice); Fashion-MNIST (not in the paper) likewise;
* any other dataset: the last 10% of its ``train`` split.

Every process reads only its own part of the evaluation split. The training
split is read whole by every process: each takes its rows of every global batch
(``input_pipeline.train_batches``), so training does not depend on the number
of processes and every example is still used once per epoch.
"""

import jax
import ml_collections
import numpy as np
import tensorflow_datasets as tfds

from nin_jax.input_pipeline import DatasetError, Split, load_split

# Datasets whose validation split is a slice of the training split.
SLICED_VALIDATION = {
    "cifar10": ("train[:40000]", "train[40000:]"),
    "cifar100": ("train[:40000]", "train[40000:]"),
    "mnist": ("train[:50000]", "train[50000:]"),
    "fashion_mnist": ("train[:50000]", "train[50000:]"),
}
DEFAULT_SLICED_VALIDATION = ("train[:90%]", "train[90%:]")
# SVHN: per split, the examples of each class taken for validation.
SVHN_VALIDATION_PER_CLASS = {"train": 400, "extra": 200}
_LABEL_CHUNK = 4096


def first_per_class(labels: np.ndarray, per_class: int, num_classes: int) -> np.ndarray | None:
    """Sorted indices of the first ``per_class`` examples of every class, or None if too few."""
    chosen = []
    for label in range(num_classes):
        (where,) = np.nonzero(labels == label)
        if len(where) < per_class:
            return None
        chosen.append(where[:per_class])
    return np.sort(np.concatenate(chosen))


def validation_indices(builder, split: str, per_class: int) -> np.ndarray:
    """Indices (in ``split``'s order) of the first ``per_class`` examples of each class.

    Reads labels only (images are not decoded), stopping once every class has enough.
    """
    num_classes = builder.info.features["label"].num_classes
    ds = builder.as_dataset(split=split, decoders={"image": tfds.decode.SkipDecoding()})
    labels = np.zeros(0, np.int64)
    for chunk in tfds.as_numpy(ds.map(lambda x: x["label"]).batch(_LABEL_CHUNK)):
        labels = np.concatenate([labels, chunk])
        indices = first_per_class(labels, per_class, num_classes)
        if indices is not None:
            return indices
    raise DatasetError(
        f"{builder.name} {split!r} has fewer than {per_class} examples of some class"
    )


def _process_share(split: Split, *, drop_remainder: bool) -> Split:
    """This process's contiguous share of a split every process holds entirely."""
    count, index = jax.process_count(), jax.process_index()
    if drop_remainder:
        size = len(split) // count
        bounds = (index * size, (index + 1) * size)
    else:
        edges = np.cumsum([0] + [len(part) for part in np.array_split(split.labels, count)])
        bounds = (edges[index], edges[index + 1])
    return Split(split.images[slice(*bounds)], split.labels[slice(*bounds)])


def _concat(parts: list[Split]) -> Split:
    return Split(
        np.concatenate([p.images for p in parts]), np.concatenate([p.labels for p in parts])
    )


def per_class_validation(builder, per_class: dict[str, int]) -> tuple[Split, Split]:
    """(train, this process's part of validation); validation = first ``n`` per class of each split.

    The validation examples lie in a short prefix of each split, read by label
    first; every process keeps its share of them and all the training examples.
    """
    heads, validation, tails = [], [], []
    for split, count in per_class.items():
        chosen = validation_indices(builder, split, count)
        prefix = int(chosen[-1]) + 1
        head = load_split(builder, f"{split}[:{prefix}]", drop_remainder=False, process_count=1)
        rest = np.setdiff1d(np.arange(prefix), chosen)
        validation.append(Split(head.images[chosen], head.labels[chosen]))
        heads.append(Split(head.images[rest], head.labels[rest]))
        tails.append(f"{split}[{prefix}:]")
    train_tail = load_split(builder, "+".join(tails), drop_remainder=False, process_count=1)
    train = _concat([train_tail, _concat(heads)])
    return train, _process_share(_concat(validation), drop_remainder=False)


def load_train_and_eval(config: ml_collections.ConfigDict, builder) -> tuple[Split, Split]:
    """This process's (training, evaluation) examples for ``config``."""
    if not config.validation:
        return (
            load_split(builder, config.train_split, drop_remainder=False, process_count=1),
            load_split(builder, config.eval_split, drop_remainder=False),
        )
    if config.dataset == "svhn_cropped":
        return per_class_validation(builder, SVHN_VALIDATION_PER_CLASS)
    train_split, eval_split = SLICED_VALIDATION.get(config.dataset, DEFAULT_SLICED_VALIDATION)
    return (
        load_split(builder, train_split, drop_remainder=False, process_count=1),
        load_split(builder, eval_split, drop_remainder=False),
    )
