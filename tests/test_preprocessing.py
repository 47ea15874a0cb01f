"""Preprocessing (on the devices), its statistics (on the host) and augmentation, against
direct numpy computations."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nin_jax import augmentation, preprocessing, statistics
from nin_jax.errors import ConfigError
from nin_jax.input_pipeline import Split

RNG = np.random.default_rng(0)


def random_images(count: int, size: int = 6, channels: int = 3) -> np.ndarray:
    return RNG.integers(0, 256, (count, size, size, channels), dtype=np.uint8)


def numpy_gcn(images: np.ndarray, scale: float = 55.0) -> np.ndarray:
    x = images.reshape(len(images), -1).astype(np.float64)
    x = x - x.mean(1, keepdims=True)
    return scale * x / np.linalg.norm(x, axis=1, keepdims=True)


def numpy_zca_fit(
    images: np.ndarray, bias: float = 0.1, unit_rms: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    x = numpy_gcn(images)
    mean = x.mean(0)
    covariance = (x - mean).T @ (x - mean) / len(x)
    values, vectors = np.linalg.eigh(covariance + bias * np.eye(x.shape[1]))
    whitening = vectors @ np.diag(values**-0.5) @ vectors.T
    rms = np.sqrt(np.mean(((x - mean) @ whitening) ** 2))  # Rescaled to RMS 1 on the data.
    return mean, whitening / rms if unit_rms else whitening


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
    got = np.asarray(jax.jit(preprocessing.global_contrast_normalize)(images))
    expected = numpy_gcn(images[1:])
    np.testing.assert_allclose(got[1:].reshape(4, -1), expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(got[0], 0.0)
    np.testing.assert_allclose(np.linalg.norm(got[1:].reshape(4, -1), axis=1), 55.0, rtol=1e-5)
    host = statistics.global_contrast_normalize(images)  # The fit's own (float64) version.
    np.testing.assert_allclose(host, got.reshape(5, -1), rtol=1e-5, atol=1e-5)


def preprocess(name: str, stats: dict, images: np.ndarray) -> np.ndarray:
    return np.asarray(jax.jit(preprocessing.apply, static_argnums=0)(name, stats, images))


def test_zca_matches_numpy_and_uses_training_data_only():
    train, test = random_images(300, size=4), random_images(50, size=4)
    stats = statistics.fit("gcn_zca", Split(train, np.zeros(300, np.int32)))
    got = preprocess("gcn_zca", stats, test).reshape(50, -1)

    mean, whitening = numpy_zca_fit(train)
    np.testing.assert_allclose(got, (numpy_gcn(test) - mean) @ whitening, rtol=1e-5, atol=1e-5)
    # Statistics fitted on train + test would give different outputs: test data was not used.
    mean_all, whitening_all = numpy_zca_fit(np.concatenate([train, test]))
    assert np.abs(got - (numpy_gcn(test) - mean_all) @ whitening_all).max() > 1e-2
    # Whitened training data has RMS 1 and covariance s^2 V diag(l / (l + 0.1)) V^T, with
    # s^2 = 1 / mean(l / (l + 0.1)) over the eigenvalues l of the GCN'd data's covariance.
    white = preprocess("gcn_zca", stats, train).reshape(300, -1)
    np.testing.assert_allclose(np.sqrt(np.mean(white**2)), 1.0, rtol=1e-4)
    data_eigenvalues = np.linalg.eigvalsh(np.cov(numpy_gcn(train), rowvar=False, bias=True))
    scale_squared = 1.0 / np.mean(data_eigenvalues / (data_eigenvalues + 0.1))
    expected = np.sort(scale_squared * data_eigenvalues / (data_eigenvalues + 0.1))
    eigenvalues = np.linalg.eigvalsh(np.cov(white, rowvar=False, bias=True))
    np.testing.assert_allclose(eigenvalues, expected, rtol=1e-3, atol=1e-4)


def test_zca_at_the_papers_scale_is_one_flag_away(tmp_path):
    train, test = random_images(300, size=4), random_images(50, size=4)
    stats = statistics.fit("gcn_zca", Split(train, np.zeros(300, np.int32)), unit_rms=False)
    got = preprocess("gcn_zca", stats, test).reshape(50, -1)
    mean, whitening = numpy_zca_fit(train, unit_rms=False)
    np.testing.assert_allclose(got, (numpy_gcn(test) - mean) @ whitening, rtol=1e-5, atol=1e-5)
    paper = statistics.stats_path(str(tmp_path), "cifar10", "train", unit_rms=False)
    assert paper.endswith("cifar10-train-zca.npz")
    assert paper != statistics.stats_path(str(tmp_path), "cifar10", "train")


def test_zca_statistics_are_saved_and_reused(tmp_path):
    train = Split(random_images(100, size=4), np.zeros(100, np.int32))
    path = statistics.stats_path(str(tmp_path), "cifar10", "train[:40000]")
    assert path == str(tmp_path / "nin_jax_stats" / "cifar10-train_40000_-zca-unit.npz")
    first = statistics.fit("gcn_zca", train, path)
    saved = np.load(path)
    mean, whitening = numpy_zca_fit(train.images)
    np.testing.assert_allclose(saved["mean"], mean, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(saved["whitening"], whitening, rtol=1e-5, atol=1e-5)

    # A later run reads the file instead of fitting: other training data changes nothing.
    other = Split(random_images(100, size=4), np.zeros(100, np.int32))
    again = statistics.fit("gcn_zca", other, path)
    for key in first:
        np.testing.assert_array_equal(first[key], again[key])


def test_lcn_matches_numpy():
    images = random_images(3, size=10)
    images[1, :, :, 2] = 100  # A flat channel is 0 where the window is off the zero padding.
    got = preprocess("lcn", {}, images)
    np.testing.assert_allclose(got, numpy_lcn(images), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got[1, 3:-3, 3:-3, 2], 0.0, atol=1e-5)


def test_standardize_uses_training_channel_statistics():
    train = random_images(20)
    stats = statistics.fit("standardize", Split(train, np.zeros(20)))
    out = preprocess("standardize", stats, train)
    np.testing.assert_allclose(out.mean(axis=(0, 1, 2)), 0.0, atol=1e-5)
    np.testing.assert_allclose(out.std(axis=(0, 1, 2)), 1.0, rtol=1e-5)
    pixels = train.reshape(-1, 3).astype(np.float64)
    np.testing.assert_allclose(out.reshape(-1, 3), (pixels - pixels.mean(0)) / pixels.std(0),
                               rtol=1e-5, atol=1e-5)  # fmt: skip


def test_fixed_standardization_is_the_configs_not_the_splits():
    stats = statistics.fixed_standardize((125.307, 122.961, 113.866), (62.985, 62.092, 66.708), 3)
    assert stats["mean"].dtype == np.float32 and stats["std"].shape == (3,)
    images = random_images(2)
    out = preprocess("standardize", stats, images)
    np.testing.assert_allclose(out[..., 1], (images[..., 1] - 122.961) / 62.092, rtol=1e-5)
    with pytest.raises(ConfigError, match="the images have 1 channels"):
        statistics.fixed_standardize((1.0, 2.0), (1.0, 1.0), 1)


def crop_flip(images: np.ndarray, seed: int, step: int) -> np.ndarray:
    return np.asarray(
        jax.jit(augmentation.crop_flip)(jnp.asarray(images), augmentation.step_key(seed, step))
    )


def test_crop_flip_is_a_translated_maybe_flipped_copy_and_a_function_of_seed_and_step():
    images = RNG.normal(size=(16, 8, 8, 2)).astype(np.float32)
    out = crop_flip(images, seed=3, step=7)
    np.testing.assert_array_equal(out, crop_flip(images, seed=3, step=7))
    assert not np.array_equal(out, crop_flip(images, seed=3, step=8))
    assert not np.array_equal(out, crop_flip(images, seed=4, step=7))

    padded = np.pad(images, ((0, 0), (4, 4), (4, 4), (0, 0)))
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
