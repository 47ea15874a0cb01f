"""``python -m nin_jax.prepare`` for the tests' small original files.

The tests write each dataset's original files with a few dozen images; this sets
the split sizes that TFDS's builders and nin_jax's checks expect to those of
``SMALL`` before running the command as usual.
"""

import dataclasses

from tensorflow_datasets.image_classification import mnist as tfds_mnist

from nin_jax import cli, prepare
from nin_jax.datasets import catalog, originals

SMALL = {"train": 40, "test": 20, "extra": 30}


def use_small_splits() -> None:
    """Every dataset's splits at SMALL's sizes (MNIST's builder reads a fixed count)."""
    for name, facts in list(catalog.DATASETS.items()):
        sizes = {split: SMALL[split] for split in facts.split_sizes}
        catalog.DATASETS[name] = dataclasses.replace(facts, split_sizes=sizes)
    tfds_mnist._TRAIN_EXAMPLES, tfds_mnist._TEST_EXAMPLES = SMALL["train"], SMALL["test"]
    # The tests' images are not Fashion-MNIST's: no known content to compare with.
    originals.ORIGINALS["fashion_mnist"] = originals.ORIGINALS["mnist"]


if __name__ == "__main__":
    use_small_splits()
    prepare.define_flags()
    cli.run(prepare.main, quiet=True)
