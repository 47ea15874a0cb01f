"""The dataset catalog: shapes, classes and split sizes without the data, TFDS split strings."""

import pytest
from helpers import load_config

from nin_jax import input_pipeline
from nin_jax.datasets import catalog
from nin_jax.errors import DatasetError


@pytest.mark.parametrize("name", [n for n in catalog.DATASETS if n.startswith("digits")])
def test_digits_entries_match_the_prepared_builder(name, digits_data_dir):
    builder = input_pipeline.get_builder(name, digits_data_dir)
    facts = catalog.facts(name)
    assert facts.image_shape == builder.info.features["image"].shape
    assert facts.num_classes == builder.info.features["label"].num_classes
    assert facts.split_sizes == {s: builder.info.splits[s].num_examples for s in ("train", "test")}


@pytest.mark.parametrize(
    "split, size",
    [
        ("train", 73257),
        ("train+extra", 73257 + 531131),
        ("train[:40000]", 40000),
        ("train[40000:]", 33257),
        ("test[-100:]", 100),
        ("extra[10%:20%]", 53113),
    ],
)
def test_split_strings_as_tfds_reads_them(split, size):
    assert catalog.split_size("svhn_cropped", split) == size


def test_validation_sizes_follow_nin_jax_splits():
    svhn = load_config("svhn", validation=True)
    assert catalog.train_and_eval_sizes(svhn) == (73257 + 531131 - 6000, 6000)
    cifar = load_config("cifar10", validation=True)
    assert catalog.train_and_eval_sizes(cifar) == (40000, 10000)
    assert catalog.train_and_eval_sizes(load_config("cifar100")) == (50000, 10000)


def test_unknown_splits_and_datasets_are_one_line():
    with pytest.raises(DatasetError, match="available: train, test"):
        catalog.split_size("cifar10", "validation")
    with pytest.raises(DatasetError, match="unknown dataset"):
        catalog.facts("imagenet")
