"""Image preprocessing, chosen per dataset by ``config.preprocess``.

* ``'standardize'`` (default): per-channel mean/std of the training split.
* ``'gcn_zca'``: the paper's CIFAR preprocessing (as in the maxout paper and
  pylearn2's ``make_cifar10_gcn_whitened``): global contrast normalisation of
  each image (mean 0, L2 norm 55), then ZCA whitening with filter bias 0.1.
* ``'lcn'``: the paper's SVHN preprocessing: local contrast normalisation of
  each channel with a 7x7 Gaussian window (sigma 2), as pylearn2's LeCunLCN.

Statistics come from the training split only. ZCA's (a 3072 x 3072 matrix for
CIFAR) are pooled over all processes, so every process whitens identically, and
saved under ``<data_dir>/nin_jax_stats/`` to be reused by later runs.

Every function here maps a uint8 batch ``(B, H, W, C)`` to float32 inside
tf.data, one batch at a time: no float copy of a whole split is ever made.
"""

import io
import os
import re
from collections.abc import Callable

import jax
import numpy as np
import tensorflow as tf

from nin_jax import input_pipeline

Preprocess = Callable[[tf.Tensor], tf.Tensor]
GCN_SCALE = 55.0
ZCA_FILTER_BIAS = 0.1
LCN_KERNEL_SIZE = 7
LCN_SIGMA = 2.0
LCN_THRESHOLD = 1e-4
_FIT_CHUNK = 4096  # Images per chunk when accumulating ZCA moments.


def standardize(images: tf.Tensor, mean: np.ndarray, std: np.ndarray) -> tf.Tensor:
    """Per-channel standardisation with the training split's channel statistics."""
    return (tf.cast(images, tf.float32) - mean) / std


def global_contrast_normalize(images: tf.Tensor, scale: float = GCN_SCALE) -> tf.Tensor:
    """Each image minus its mean, rescaled to L2 norm ``scale`` (flat images stay 0)."""
    x = tf.cast(images, tf.float32)
    x = x - tf.reduce_mean(x, axis=(1, 2, 3), keepdims=True)
    norm = tf.sqrt(tf.reduce_sum(tf.square(x), axis=(1, 2, 3), keepdims=True))
    return scale * x / tf.where(norm < 1e-8, tf.ones_like(norm), norm)


def zca_from_moments(
    count: float, total: np.ndarray, total_outer: np.ndarray, bias: float = ZCA_FILTER_BIAS
) -> tuple[np.ndarray, np.ndarray]:
    """(mean, W) with ``W = V diag(1/sqrt(lambda + bias)) V^T`` of the (biased) covariance."""
    mean = total / count
    covariance = total_outer / count - np.outer(mean, mean)
    eigenvalues, eigenvectors = np.linalg.eigh(covariance + bias * np.eye(len(mean)))
    whitening = (eigenvectors / np.sqrt(eigenvalues)) @ eigenvectors.T
    return mean.astype(np.float32), whitening.astype(np.float32)


def zca_moments(images: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """Count, sum and sum of outer products of GCN'd images (every process holds the
    whole training split, so every process computes the same)."""
    dim = int(np.prod(images.shape[1:]))
    total, total_outer = np.zeros(dim), np.zeros((dim, dim))
    for start in range(0, len(images), _FIT_CHUNK):
        flat = global_contrast_normalize(images[start : start + _FIT_CHUNK]).numpy()
        flat = flat.reshape(len(flat), dim).astype(np.float64)
        total += flat.sum(0)
        total_outer += flat.T @ flat
    return float(len(images)), total, total_outer


def zca_whiten(images: tf.Tensor, mean: tf.Tensor, whitening: tf.Tensor) -> tf.Tensor:
    """``(gcn(x) - mean) @ W``, shape preserved."""
    x = global_contrast_normalize(images)
    shape = tf.shape(x)
    flat = tf.reshape(x, (shape[0], -1)) - mean
    return tf.reshape(tf.matmul(flat, whitening), shape)


def gaussian_kernel(size: int = LCN_KERNEL_SIZE, sigma: float = LCN_SIGMA) -> np.ndarray:
    """A ``size x size`` Gaussian window summing to 1."""
    offsets = np.arange(size) - size // 2
    window = np.exp(-(offsets[:, None] ** 2 + offsets[None, :] ** 2) / (2 * sigma**2))
    return (window / window.sum()).astype(np.float32)


def local_contrast_normalize(images: tf.Tensor) -> tf.Tensor:
    """Per channel: subtract the Gaussian-weighted local mean, divide by the local std.

    Pixels are scaled to [0, 1]; the divisor is at least the image's mean local
    std (and ``LCN_THRESHOLD``) so flat regions are not amplified into noise.
    """
    x = tf.cast(images, tf.float32) / 255.0
    channels = x.shape[-1]
    window = gaussian_kernel()[:, :, None, None] * np.ones((1, 1, channels, 1), np.float32)

    def blur(t):
        return tf.nn.depthwise_conv2d(t, window, strides=(1, 1, 1, 1), padding="SAME")

    centered = x - blur(x)
    local_std = tf.sqrt(blur(tf.square(centered)))
    image_mean_std = tf.reduce_mean(local_std, axis=(1, 2), keepdims=True)
    divisor = tf.maximum(tf.maximum(local_std, image_mean_std), LCN_THRESHOLD)
    return centered / divisor


def stats_path(data_dir_root: str, dataset: str, split: str) -> str:
    """Where the ZCA statistics of ``dataset``'s training ``split`` are kept."""
    safe_split = re.sub(r"[^A-Za-z0-9_.-]+", "_", split)
    return os.path.join(data_dir_root, "nin_jax_stats", f"{dataset}-{safe_split}-zca.npz")


def _cached_on_process_0(path: str) -> bool:
    """Whether ``path`` exists, as process 0 sees it (all processes must agree)."""
    exists = tf.io.gfile.exists(path)
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        exists = bool(multihost_utils.broadcast_one_to_all(np.array(exists)))
    return exists


def load_or_fit_zca(path: str, train: input_pipeline.Split) -> tuple[np.ndarray, np.ndarray]:
    """ZCA (mean, W) from ``path``, or fitted on the training split and saved there."""
    if _cached_on_process_0(path):
        with tf.io.gfile.GFile(path, "rb") as f:
            stats = np.load(io.BytesIO(f.read()))
            return stats["mean"], stats["whitening"]
    mean, whitening = zca_from_moments(*zca_moments(train.images))
    if jax.process_index() == 0:
        tf.io.gfile.makedirs(os.path.dirname(path))
        buffer = io.BytesIO()
        np.savez(buffer, mean=mean, whitening=whitening)
        tmp = f"{path}.tmp"
        with tf.io.gfile.GFile(tmp, "wb") as f:
            f.write(buffer.getvalue())
        tf.io.gfile.rename(tmp, path, overwrite=True)
    return mean, whitening


def fit(name: str, train: input_pipeline.Split, stats_file: str | None = None) -> dict:
    """The statistics ``name`` needs, fitted on the training split ``train``.

    ``stats_file`` is where ZCA statistics are cached (``stats_path``); ``None``
    fits them without caching.
    """
    if name == "standardize":
        mean, std = input_pipeline.channel_stats(train.images)
        return {"mean": mean, "std": std}
    if name == "gcn_zca":
        if stats_file is None:
            mean, whitening = zca_from_moments(*zca_moments(train.images))
        else:
            mean, whitening = load_or_fit_zca(stats_file, train)
        return {"mean": mean, "whitening": whitening}
    if name == "lcn":
        return {}
    raise ValueError(f"unknown preprocessing {name!r}")


def from_params(name: str, params: dict) -> Preprocess:
    """The batch function of preprocessing ``name`` with fitted ``params`` (see ``fit``)."""
    if name == "standardize":
        mean, std = np.asarray(params["mean"]), np.asarray(params["std"])
        return lambda images: standardize(images, mean, std)
    if name == "gcn_zca":
        # Eager tensors are captured by tf.data's functions as inputs; numpy arrays
        # would become 37 MB graph constants, slow to build and optimise for every pipeline.
        mean, whitening = tf.constant(params["mean"]), tf.constant(params["whitening"])
        return lambda images: zca_whiten(images, mean, whitening)
    if name == "lcn":
        return local_contrast_normalize
    raise ValueError(f"unknown preprocessing {name!r}")


def create_preprocess(
    name: str, train: input_pipeline.Split, stats_file: str | None = None
) -> Preprocess:
    """The batch function for ``config.preprocess`` fitted on the training split ``train``."""
    return from_params(name, fit(name, train, stats_file))
