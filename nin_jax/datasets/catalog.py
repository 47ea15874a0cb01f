"""What nin_jax knows of each dataset without reading it: image shape, classes, split sizes.

For planning a run (``nin_jax.aot``) where the dataset is not prepared. The real
datasets' figures are those of their TFDS 4.9 builders (mnist and fashion_mnist 3.0.1, cifar10 and
cifar100 3.0.2, svhn_cropped 3.1.0); the stand-ins' follow from
``nin_jax/datasets/standins.py`` (tests/test_datasets.py checks them against the
prepared ``digits`` builder). Split strings are TFDS's ('train+extra',
'train[:40000]', 'test[:10%]'), and ``config.validation`` takes its examples as
``nin_jax.splits`` does.
"""

import dataclasses

import ml_collections
from tensorflow_datasets.core import splits as tfds_splits

from nin_jax.datasets import standins
from nin_jax.errors import DatasetError

_SKLEARN_DIGITS = 1797  # Images of sklearn.datasets.load_digits().
_DIGITS_TEST = -(-_SKLEARN_DIGITS // standins.TEST_EVERY)  # Digit i is a test digit if i % 5 == 0.


@dataclasses.dataclass(frozen=True)
class DatasetFacts:
    image_shape: tuple[int, int, int]
    num_classes: int
    split_sizes: dict[str, int]


def _standin_facts(standin: standins.StandIn) -> DatasetFacts:
    if standin.name.startswith("pairs_"):
        sizes = {s: n * standin.num_classes for s, n in standins.PAIRS_PER_CLASS.items()}
    else:
        sizes = {"train": _SKLEARN_DIGITS - _DIGITS_TEST, "test": _DIGITS_TEST}
    return DatasetFacts(standin.shape, standin.num_classes, sizes)


DATASETS = {
    "mnist": DatasetFacts((28, 28, 1), 10, {"train": 60000, "test": 10000}),
    "fashion_mnist": DatasetFacts((28, 28, 1), 10, {"train": 60000, "test": 10000}),
    "cifar10": DatasetFacts((32, 32, 3), 10, {"train": 50000, "test": 10000}),
    "cifar100": DatasetFacts((32, 32, 3), 100, {"train": 50000, "test": 10000}),
    "svhn_cropped": DatasetFacts((32, 32, 3), 10, {"train": 73257, "test": 26032, "extra": 531131}),
    "digits": _standin_facts(standins.STANDINS["8x8x1"]),
    **{f"digits/{s.name}": _standin_facts(s) for s in standins.STANDINS.values()},
}


def facts(dataset: str, data_dir: str | None = None) -> DatasetFacts:
    """The dataset's facts: from the table above, or else from its TFDS builder's info.

    A builder's info has the image shape and classes always, and the split sizes
    where the dataset is prepared in ``data_dir`` (or TFDS holds its metadata).
    """
    if dataset in DATASETS:
        return DATASETS[dataset]
    from nin_jax import input_pipeline  # Imports TensorFlow: only for the other datasets.

    builder = input_pipeline.find_builder(dataset, data_dir)
    sizes = {name: split.num_examples for name, split in builder.info.splits.items()}
    if not sizes:
        raise DatasetError(
            f"the split sizes of {dataset!r} are known once it is prepared: prepare it "
            f"(`tfds build {dataset}` or `python -m nin_jax.prepare`) and set config.data_dir"
        )
    features = builder.info.features
    return DatasetFacts(tuple(features["image"].shape), features["label"].num_classes, sizes)


@dataclasses.dataclass(frozen=True)
class _SplitInfo:  # What TFDS's ReadInstruction reads of a split: its size.
    num_examples: int


def split_size(dataset: str, split: str, data_dir: str | None = None) -> int:
    """Examples of TFDS split string ``split`` of ``dataset`` ('train+extra', 'test[:16]')."""
    sizes = facts(dataset, data_dir).split_sizes
    try:
        instructions = tfds_splits.ReadInstruction.from_spec(split).to_absolute(
            {name: _SplitInfo(n) for name, n in sizes.items()}
        )
    except (ValueError, KeyError, AssertionError) as e:
        raise DatasetError(
            f"cannot read split {split!r} of {dataset} (available: {', '.join(sizes)}): {e}"
        ) from e
    return sum(
        (sizes[i.splitname] if i.to is None else i.to) - (i.from_ or 0) for i in instructions
    )


def train_and_eval_sizes(config: ml_collections.ConfigDict) -> tuple[int, int]:
    """(training examples, evaluation examples) of ``config``, as ``nin_jax.splits`` takes them."""
    from nin_jax import splits

    data_dir = config.data_dir
    if not config.validation:
        return split_size(config.dataset, config.train_split, data_dir), split_size(
            config.dataset, config.eval_split, data_dir
        )
    if config.dataset == "svhn_cropped":
        sizes = facts(config.dataset).split_sizes
        classes = facts(config.dataset).num_classes
        held = sum(n * classes for n in splits.SVHN_VALIDATION_PER_CLASS.values())
        return sum(sizes[s] for s in splits.SVHN_VALIDATION_PER_CLASS) - held, held
    train, evaluation = splits.SLICED_VALIDATION.get(
        config.dataset, splits.DEFAULT_SLICED_VALIDATION
    )
    return split_size(config.dataset, train, data_dir), split_size(
        config.dataset, evaluation, data_dir
    )
