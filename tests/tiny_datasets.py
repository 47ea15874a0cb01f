"""TFDS builders the tests register, for datasets other than nin_jax's five.

``tiny_shapes`` prepares itself offline from scikit-learn's real digits 0-3,
resized to 12x12 RGB (4 classes); the other two are datasets nin_jax refuses.
"""

import tensorflow_datasets as tfds

from nin_jax.datasets import standins


class TinyShapes(tfds.core.GeneratorBasedBuilder):
    """12x12 RGB images of 4 classes: image classification as nin_jax reads it."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
        return tfds.core.DatasetInfo(
            builder=self,
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(12, 12, 3)),
                    "label": tfds.features.ClassLabel(names=["disc", "ring", "bar", "cross"]),
                }
            ),
        )

    def _split_generators(self, dl_manager):
        return {split: self._generate_examples(split) for split in standins.SPLITS}

    def _generate_examples(self, split):
        images, labels = standins.digits(split)
        keep = labels < 4
        pixels = standins.to_uint8(standins.resize(images[keep], 12, 12), 3)
        for index, (image, label) in enumerate(zip(pixels, labels[keep], strict=True)):
            yield index, {"image": image, "label": label}


class TinyVariableSize(TinyShapes):
    """Images of any size: not for nin_jax."""

    def _info(self):
        return tfds.core.DatasetInfo(
            builder=self,
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(None, None, 3)),
                    "label": tfds.features.ClassLabel(num_classes=4),
                }
            ),
        )


class TinyCaptions(TinyShapes):
    """Images with captions, no class label: not for nin_jax."""

    def _info(self):
        return tfds.core.DatasetInfo(
            builder=self,
            features=tfds.features.FeaturesDict(
                {"image": tfds.features.Image(shape=(12, 12, 3)), "caption": tfds.features.Text()}
            ),
        )
