"""The real-image stand-ins (numpy, no TensorFlow) and the `digits` TFDS builder's configs."""

import subprocess
import sys

import numpy as np
import pytest
from helpers import REPO_ROOT

from nin_jax.datasets import standins


def test_default_config_is_the_embedded_8x8_digits():
    from sklearn.datasets import load_digits

    data = load_digits()
    expected = np.round(data.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
    is_test = np.arange(len(expected)) % 5 == 0
    for split, keep in (("train", ~is_test), ("test", is_test)):
        images, labels = standins.load("8x8x1", split)
        np.testing.assert_array_equal(images, expected[keep])
        np.testing.assert_array_equal(labels, data.target[keep])
    assert len(standins.load("8x8x1", "train")[1]) == 1437


@pytest.mark.parametrize("name", ["28x28x1", "32x32x3", "pairs_32x32x3"])
def test_standin_shapes_classes_and_determinism(name):
    spec = standins.STANDINS[name]
    counts = (
        {"train": 1437, "test": 360} if spec.num_classes == 10 else {"train": 3000, "test": 1000}
    )
    for split, count in counts.items():
        images, labels = standins.load(name, split)
        assert images.shape == (count, *spec.shape) and images.dtype == np.uint8
        assert set(np.unique(labels)) == set(range(spec.num_classes))
        again_images, again_labels = standins.load(name, split)
        np.testing.assert_array_equal(images, again_images)
        np.testing.assert_array_equal(labels, again_labels)


def test_resized_standins_keep_the_digits_and_labels():
    digits, labels = standins.digits("test")
    mnist_like, mnist_labels = standins.load("28x28x1", "test")
    np.testing.assert_array_equal(mnist_labels, labels)
    assert not mnist_like[:, :4].any() and not mnist_like[:, -4:].any()  # blank border
    cifar_like, cifar_labels = standins.load("32x32x3", "test")
    np.testing.assert_array_equal(cifar_labels, labels)
    np.testing.assert_array_equal(cifar_like[..., 0], cifar_like[..., 2])  # gray as RGB
    # Bilinear upsampling by 4 (half-pixel centres at offsets -3/8, -1/8, 1/8, 3/8 of a pixel):
    # each 4x4 cell's mean is the digit blurred by (1/8, 3/4, 1/8) along each axis.
    cells = cifar_like[..., 0].astype(float).reshape(-1, 8, 4, 8, 4).mean((2, 4)) / 255.0
    rows = 0.75 * digits[:, 1:-1] + 0.125 * (digits[:, :-2] + digits[:, 2:])
    blurred = 0.75 * rows[:, :, 1:-1] + 0.125 * (rows[:, :, :-2] + rows[:, :, 2:])
    np.testing.assert_allclose(cells[:, 1:-1, 1:-1], blurred, atol=0.5 / 255)


def test_interpolation_rows_sum_to_one_and_identity_at_same_size():
    np.testing.assert_allclose(standins.interpolation_matrix(8, 20).sum(1), 1.0)
    np.testing.assert_array_equal(standins.interpolation_matrix(8, 8), np.eye(8))


def test_pairs_are_two_real_digits_labelled_10a_plus_b():
    digits, digit_labels = standins.digits("train")
    images, labels = standins.load("pairs_32x32x3", "train")
    assert np.all(np.bincount(labels, minlength=100) == standins.PAIRS_PER_CLASS["train"])
    left, right = standins.pair_indices(digit_labels, standins.PAIRS_PER_CLASS["train"])
    np.testing.assert_array_equal(labels, 10 * digit_labels[left] + digit_labels[right])
    halves = standins.to_uint8(standins.resize(digits, 16, 16), 1)[..., 0]
    np.testing.assert_array_equal(images[:, 8:24, :16, 1], halves[left])
    np.testing.assert_array_equal(images[:, 8:24, 16:, 1], halves[right])
    test_labels = standins.load("pairs_32x32x3", "test")[1]
    assert np.all(np.bincount(test_labels, minlength=100) == standins.PAIRS_PER_CLASS["test"])


def test_bad_names_are_value_errors():
    with pytest.raises(ValueError, match="unknown stand-in 'nope'"):
        standins.load("nope", "train")
    with pytest.raises(ValueError, match="split must be 'train' or 'test'"):
        standins.load("28x28x1", "validation")


def test_standins_and_the_datasets_package_import_no_tensorflow():
    code = (
        "import sys, nin_jax.datasets, nin_jax.datasets.standins as s; s.load('28x28x1', 'test');"
        "assert 'tensorflow' not in sys.modules, 'tensorflow imported'"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr


def test_tfds_builder_configs(digits_data_dir, tmp_path):
    from nin_jax import input_pipeline

    default = input_pipeline.get_builder("digits", digits_data_dir)
    assert default.builder_config.name == "8x8x1"
    assert default.info.features["image"].shape == (8, 8, 1)
    pairs = input_pipeline.get_builder("digits/pairs_32x32x3", str(tmp_path))
    assert pairs.info.features["image"].shape == (32, 32, 3)
    assert input_pipeline.num_classes(pairs) == 100
    split = input_pipeline.load_split(pairs, "test", drop_remainder=False, process_count=1)
    images, labels = standins.load("pairs_32x32x3", "test")
    order = np.lexsort((split.labels, split.images.reshape(len(split), -1).sum(1)))
    expected = np.lexsort((labels, images.reshape(len(labels), -1).sum(1)))
    np.testing.assert_array_equal(split.labels[order], labels[expected])
    with pytest.raises(input_pipeline.DatasetError, match="unknown dataset 'digits/64x64x3'"):
        input_pipeline.get_builder("digits/64x64x3", str(tmp_path))
