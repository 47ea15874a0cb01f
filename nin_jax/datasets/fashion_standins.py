"""``fashion_mnist_standins``: real Fashion-MNIST at the other recipes' input shapes.

The embedded digits stand in for each paper dataset at its shape
(``nin_jax/datasets/standins.py``), but they are small and easy. With
Fashion-MNIST prepared in the same data dir (``nin_jax.prepare``), this builder
makes it a full-size real-image stand-in for the CIFAR-10 and SVHN networks:

* ``fashion_mnist_standins/32x32x3``: each 28x28 image resized to 32x32
  (bilinear, half-pixel centres: ``standins.resize``), the gray level
  copied to three channels; the same 60,000 / 10,000 split, labels and class
  names, in Fashion-MNIST's prepared order.

Preparing it reads the prepared ``fashion_mnist`` and needs no network.
"""

import numpy as np
import tensorflow_datasets as tfds

from nin_jax.datasets import standins

SHAPES = {"32x32x3": (32, 32, 3)}
_CHUNK = 4096


class FashionMnistStandins(tfds.core.GeneratorBasedBuilder):
    """Fashion-MNIST resized to another recipe's input shape."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "32x32x3 from fashion_mnist 3.0.1."}
    BUILDER_CONFIGS = [
        tfds.core.BuilderConfig(name=name, description=f"Fashion-MNIST at {name}")
        for name in SHAPES
    ]

    def _source(self):
        return tfds.builder("fashion_mnist", data_dir=self.data_dir_root)

    def _info(self) -> tfds.core.DatasetInfo:
        names = self._source().info.features["label"].names
        return tfds.core.DatasetInfo(
            builder=self,
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=SHAPES[self.builder_config.name]),
                    "label": tfds.features.ClassLabel(names=names),
                }
            ),
            supervised_keys=("image", "label"),
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # Made from the prepared fashion_mnist.
        source = self._source()
        if not source.is_prepared():
            raise FileNotFoundError(
                f"fashion_mnist is not prepared in {self.data_dir_root}: run nin_jax.prepare"
            )
        return {split: self._generate_examples(source, split) for split in ("train", "test")}

    def _generate_examples(self, source, split):
        height, width, channels = SHAPES[self.builder_config.name]
        index = 0
        for chunk in tfds.as_numpy(
            source.as_dataset(split=split, shuffle_files=False).batch(_CHUNK)
        ):
            gray = chunk["image"][..., 0].astype(np.float64) / 255.0
            images = standins.to_uint8(standins.resize(gray, height, width), channels)
            for image, label in zip(images, chunk["label"], strict=True):
                yield index, {"image": image, "label": int(label)}
                index += 1
