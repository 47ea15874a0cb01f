"""``digits``: scikit-learn's 1,797 real 8x8 handwritten digits as a TFDS dataset.

The images ship inside scikit-learn, so preparing this dataset needs no network.
Pixels (0..16 in scikit-learn) are scaled to uint8 0..255.

Split (fixed): example ``i`` of ``sklearn.datasets.load_digits()`` goes to
``test`` when ``i % 5 == 0`` (360 images) and to ``train`` otherwise (1,437).
The data set is ordered by writer, so both splits cover all writers' styles.
"""

import numpy as np
import tensorflow_datasets as tfds

TEST_EVERY = 5


def load_arrays(split: str) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 (N, 8, 8, 1), labels int64 (N,)) of the fixed train/test split."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
    is_test = np.arange(len(images)) % TEST_EVERY == 0
    keep = is_test if split == "test" else ~is_test
    return images[keep], digits.target[keep].astype(np.int64)


class Digits(tfds.core.GeneratorBasedBuilder):
    """scikit-learn's handwritten digits (UCI optdigits test set), 8x8 grayscale."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release: i % 5 == 0 -> test."}

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(8, 8, 1)),
                    "label": tfds.features.ClassLabel(num_classes=10),
                }
            ),
            supervised_keys=("image", "label"),
            homepage="https://scikit-learn.org/stable/datasets/toy_dataset.html#digits-dataset",
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # Nothing to download: the data ships with scikit-learn.
        return {split: self._generate_examples(split) for split in ("train", "test")}

    def _generate_examples(self, split):
        images, labels = load_arrays(split)
        for index, (image, label) in enumerate(zip(images, labels, strict=True)):
            yield index, {"image": image, "label": int(label)}
