"""Preprocessing and augmentation against direct numpy computations."""

import numpy as np
import tensorflow as tf

from nin_jax import input_pipeline, preprocessing
from nin_jax.input_pipeline import Split

RNG = np.random.default_rng(0)


def random_images(count: int, size: int = 6, channels: int = 3) -> np.ndarray:
    return RNG.integers(0, 256, (count, size, size, channels), dtype=np.uint8)


def numpy_gcn(images: np.ndarray, scale: float = 55.0) -> np.ndarray:
    x = images.reshape(len(images), -1).astype(np.float64)
    x = x - x.mean(1, keepdims=True)
    return scale * x / np.linalg.norm(x, axis=1, keepdims=True)


def numpy_zca_fit(images: np.ndarray, bias: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    x = numpy_gcn(images)
    mean = x.mean(0)
    covariance = (x - mean).T @ (x - mean) / len(x)
    values, vectors = np.linalg.eigh(covariance + bias * np.eye(x.shape[1]))
    return mean, vectors @ np.diag(values**-0.5) @ vectors.T


def numpy_lcn(images: np.ndarray, size: int = 7, sigma: float = 2.0) -> np.ndarray:
    """Direct loops: zero-padded Gaussian-weighted local mean and std, per image and channel."""
    x = images.astype(np.float64) / 255.0
    half = size // 2
    offsets = np.arange(size) - half
    window = np.exp(-(offsets[:, None] ** 2 + offsets[None, :] ** 2) / (2 * sigma**2))
    window /= window.sum()
    n, h, w, c = x.shape

    def blur(t):
        padded = np.pad(t, ((0, 0), (half, half), (half, half), (0, 0)))
        out = np.zeros_like(t)
        for i in range(h):
            for j in range(w):
                patch = padded[:, i : i + size, j : j + size, :]
                out[:, i, j, :] = np.einsum("nabc,ab->nc", patch, window)
        return out

    centered = x - blur(x)
    local_std = np.sqrt(blur(centered**2))
    divisor = np.maximum(local_std, local_std.mean(axis=(1, 2), keepdims=True))
    return centered / np.maximum(divisor, 1e-4)


def test_gcn_matches_numpy():
    images = random_images(5)
    images[0] = 7  # A flat image has norm 0 and must map to zeros, not NaN.
    got = preprocessing.global_contrast_normalize(images).numpy()
    expected = numpy_gcn(images[1:])
    np.testing.assert_allclose(got[1:].reshape(4, -1), expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(got[0], 0.0)
    np.testing.assert_allclose(np.linalg.norm(got[1:].reshape(4, -1), axis=1), 55.0, rtol=1e-5)


def test_zca_matches_numpy_and_uses_training_data_only():
    train, test = random_images(300, size=4), random_images(50, size=4)
    preprocess = preprocessing.create_preprocess("gcn_zca", Split(train, np.zeros(300, np.int32)))
    got = preprocess(tf.constant(test)).numpy().reshape(50, -1)

    mean, whitening = numpy_zca_fit(train)
    np.testing.assert_allclose(got, (numpy_gcn(test) - mean) @ whitening, rtol=1e-5, atol=1e-5)
    # Statistics fitted on train + test would give different outputs: test data was not used.
    mean_all, whitening_all = numpy_zca_fit(np.concatenate([train, test]))
    assert np.abs(got - (numpy_gcn(test) - mean_all) @ whitening_all).max() > 1e-2
    # Whitened training data has covariance V diag(l / (l + bias)) V^T: eigenvalues in (0, 1).
    white = preprocess(tf.constant(train)).numpy().reshape(300, -1)
    eigenvalues = np.linalg.eigvalsh(np.cov(white, rowvar=False, bias=True))
    assert eigenvalues.max() < 1.0 and eigenvalues.max() > 0.9


def test_zca_statistics_are_saved_and_reused(tmp_path):
    train = Split(random_images(100, size=4), np.zeros(100, np.int32))
    path = preprocessing.stats_path(str(tmp_path), "cifar10", "train[:40000]")
    assert path == str(tmp_path / "nin_jax_stats" / "cifar10-train_40000_-zca.npz")
    first = preprocessing.create_preprocess("gcn_zca", train, path)
    saved = np.load(path)
    mean, whitening = numpy_zca_fit(train.images)
    np.testing.assert_allclose(saved["mean"], mean, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(saved["whitening"], whitening, rtol=1e-5, atol=1e-5)

    # A later run reads the file instead of fitting: other training data changes nothing.
    other = Split(random_images(100, size=4), np.zeros(100, np.int32))
    again = preprocessing.create_preprocess("gcn_zca", other, path)
    batch = tf.constant(random_images(3, size=4))
    np.testing.assert_array_equal(first(batch).numpy(), again(batch).numpy())


def test_lcn_matches_numpy():
    images = random_images(3, size=10)
    images[1, :, :, 2] = 100  # A flat channel is 0 where the window is off the zero padding.
    got = preprocessing.local_contrast_normalize(tf.constant(images)).numpy()
    np.testing.assert_allclose(got, numpy_lcn(images), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got[1, 3:-3, 3:-3, 2], 0.0, atol=1e-5)


def test_standardize_uses_training_channel_statistics():
    train = random_images(20)
    preprocess = preprocessing.create_preprocess("standardize", Split(train, np.zeros(20)))
    out = preprocess(tf.constant(train)).numpy()
    np.testing.assert_allclose(out.mean(axis=(0, 1, 2)), 0.0, atol=1e-5)
    np.testing.assert_allclose(out.std(axis=(0, 1, 2)), 1.0, rtol=1e-5)


def test_crop_flip_is_a_translated_maybe_flipped_copy_and_deterministic():
    images = tf.constant(RNG.normal(size=(16, 8, 8, 2)).astype(np.float32))
    seed = tf.constant([3, 7], tf.int64)
    out = input_pipeline.crop_flip(images, seed).numpy()
    np.testing.assert_array_equal(out, input_pipeline.crop_flip(images, seed).numpy())
    other = input_pipeline.crop_flip(images, tf.constant([3, 8], tf.int64)).numpy()
    assert not np.array_equal(out, other)

    padded = np.pad(images.numpy(), ((0, 0), (4, 4), (4, 4), (0, 0)))
    seen = set()
    for image, pad in zip(out, padded, strict=True):
        matches = [
            (dy, dx, flip)
            for dy in range(9)
            for dx in range(9)
            for flip in (False, True)
            if np.array_equal(
                image, (lambda c: c[:, ::-1] if flip else c)(pad[dy : dy + 8, dx : dx + 8])
            )
        ]
        assert len(matches) == 1
        seen.add(matches[0])
    assert len({m[2] for m in seen}) == 2 and len(seen) > 8  # Both flips, varied offsets.


def test_augmented_batches_are_a_function_of_seed_and_step():
    split = Split(random_images(40, size=8), np.arange(40, dtype=np.int32) % 10)
    preprocess = preprocessing.create_preprocess("standardize", split)

    def batches(start_step, seed=0):
        return input_pipeline.train_batches(
            split, global_batch_size=8, preprocess=preprocess, seed=seed,
            start_step=start_step, augment="crop_flip",
        )  # fmt: skip

    run = [next(it) for it in [batches(0)] for _ in range(7)]
    resumed = batches(6)  # Step 6 is in the second epoch (5 steps per epoch).
    np.testing.assert_array_equal(next(resumed)["image"], run[6]["image"])
    plain = input_pipeline.train_batches(
        split, global_batch_size=8, preprocess=preprocess, seed=0, start_step=6
    )
    first = next(plain)
    np.testing.assert_array_equal(first["label"], run[6]["label"])
    assert not np.array_equal(first["image"], run[6]["image"])
    assert not np.array_equal(next(batches(6, seed=1))["image"], run[6]["image"])
