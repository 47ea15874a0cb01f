"""``digits``: scikit-learn's 1,797 real handwritten digits as a TFDS dataset, at several shapes.

The images ship inside scikit-learn, so preparing this dataset needs no network.
Builder configs (``config.dataset = 'digits/<config>'``; plain ``digits`` is the
first, ``8x8x1``) are the real-image stand-ins of nin_jax/datasets/standins.py:

* ``digits`` or ``digits/8x8x1``: the 8x8 digits, pixels 0..16 scaled to 0..255;
* ``digits/28x28x1``: MNIST's shape;
* ``digits/32x32x3``: CIFAR-10's and SVHN's shape;
* ``digits/pairs_32x32x3``: CIFAR-100's shape and 100 classes (two digits, 10a+b).

Split (fixed): digit ``i`` of ``sklearn.datasets.load_digits()`` goes to
``test`` when ``i % 5 == 0`` (360 images) and to ``train`` otherwise (1,437).
The data set is ordered by writer, so both splits cover all writers' styles.
"""

import tensorflow_datasets as tfds

from nin_jax.datasets import standins

# Dataset names of the non-default configs, as config.dataset spells them.
CONFIG_NAMES = tuple(f"digits/{name}" for name in standins.STANDINS)


class Digits(tfds.core.GeneratorBasedBuilder):
    """scikit-learn's handwritten digits (UCI optdigits test set) and their resized stand-ins."""

    VERSION = tfds.core.Version("1.1.0")
    RELEASE_NOTES = {
        "1.0.0": "Initial release: i % 5 == 0 -> test.",
        "1.1.0": "Builder configs: 8x8x1 (default), 28x28x1, 32x32x3, pairs_32x32x3.",
    }
    BUILDER_CONFIGS = [
        tfds.core.BuilderConfig(name=s.name, description=s.description)
        for s in standins.STANDINS.values()
    ]

    def _info(self) -> tfds.core.DatasetInfo:
        standin = standins.STANDINS[self.builder_config.name]
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=standin.shape),
                    "label": tfds.features.ClassLabel(num_classes=standin.num_classes),
                }
            ),
            supervised_keys=("image", "label"),
            homepage="https://scikit-learn.org/stable/datasets/toy_dataset.html#digits-dataset",
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # Nothing to download: the data ships with scikit-learn.
        return {split: self._generate_examples(split) for split in standins.SPLITS}

    def _generate_examples(self, split):
        images, labels = standins.load(self.builder_config.name, split)
        for index, (image, label) in enumerate(zip(images, labels, strict=True)):
            yield index, {"image": image, "label": int(label)}
