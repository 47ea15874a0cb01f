"""Statistics of the training split that preprocessing needs, fitted once on the host.

* ``'standardize'``: the per-channel mean and standard deviation (or, with
  ``config.standardize_mean`` and ``standardize_std``, the config's: ``fixed_standardize``);
* ``'gcn_zca'``: the mean and ZCA whitening matrix of the globally
  contrast-normalised images (a 3072 x 3072 matrix for CIFAR), cached under
  ``<data_dir>/nin_jax_stats/`` and reused by later runs and every process;
* ``'lcn'``: none.

Every process holds the whole training split, so every process fits (or reads)
the same statistics. They travel to the devices as arguments of the jitted
steps (``nin_jax.preprocessing`` applies them there) and into the workdir's
``preprocess.npz`` for the tools.
"""

import io
import os
import re

import jax
import numpy as np
from absl import logging

from nin_jax import storage
from nin_jax import workdir as workdir_lib
from nin_jax.errors import ConfigError, FileDamagedError
from nin_jax.input_pipeline import Split
from nin_jax.preprocessing import GCN_SCALE, ZCA_FILTER_BIAS

_FIT_CHUNK = 4096  # Images per chunk when accumulating ZCA moments.


def channel_stats(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and std of uint8 images."""
    pixels = images.reshape(-1, images.shape[-1]).astype(np.float64)
    mean = pixels.mean(0)
    std = np.sqrt(np.maximum((pixels**2).mean(0) - mean**2, 1e-12))
    return mean.astype(np.float32), std.astype(np.float32)


def global_contrast_normalize(images: np.ndarray, scale: float = GCN_SCALE) -> np.ndarray:
    """float64 (N, D): each image minus its mean, rescaled to L2 norm ``scale`` (flat: 0)."""
    x = images.reshape(len(images), -1).astype(np.float64)
    x = x - x.mean(1, keepdims=True)
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return scale * x / np.where(norm < 1e-8, 1.0, norm)


def zca_moments(images: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """Count, sum and sum of outer products of the GCN'd images."""
    dim = int(np.prod(images.shape[1:]))
    total, total_outer = np.zeros(dim), np.zeros((dim, dim))
    for start in range(0, len(images), _FIT_CHUNK):
        flat = global_contrast_normalize(images[start : start + _FIT_CHUNK])
        total += flat.sum(0)
        total_outer += flat.T @ flat
    return float(len(images)), total, total_outer


def zca_from_moments(
    count: float,
    total: np.ndarray,
    total_outer: np.ndarray,
    bias: float = ZCA_FILTER_BIAS,
    unit_rms: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """(mean, W) with ``W = s V diag(1/sqrt(lambda + bias)) V^T`` of the covariance.

    ``s`` (ours; 1 without ``unit_rms``, the maxout paper's scale) rescales the whitened
    training images to RMS 1: without it their RMS is ``sqrt(mean(lambda / (lambda +
    bias)))``, which depends on how many directions the data spans (about 0.45 for
    natural 32x32 images, 0.12 for the digit stand-ins), and a step's effect on the
    network with it (docs/RECIPES.md).
    """
    mean = total / count
    covariance = total_outer / count - np.outer(mean, mean)
    eigenvalues, eigenvectors = np.linalg.eigh(covariance + bias * np.eye(len(mean)))
    mean_square = np.mean(np.maximum(eigenvalues - bias, 0.0) / eigenvalues)
    scale = 1.0 / np.sqrt(mean_square) if unit_rms and mean_square > 1e-12 else 1.0
    whitening = (eigenvectors * (scale / np.sqrt(eigenvalues))) @ eigenvectors.T
    return mean.astype(np.float32), whitening.astype(np.float32)


def stats_path(data_dir_root: str, dataset: str, split: str, unit_rms: bool = True) -> str:
    """Where the ZCA statistics of ``dataset``'s training ``split`` are kept."""
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{dataset}-{split}")
    name = f"{safe}-zca-unit.npz" if unit_rms else f"{safe}-zca.npz"
    return os.path.join(data_dir_root, "nin_jax_stats", name)


def _cached_on_process_0(path: str) -> bool:
    """Whether ``path`` exists, as process 0 sees it (all processes must agree)."""
    exists = storage.exists(path)
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        exists = bool(multihost_utils.broadcast_one_to_all(np.array(exists)))
    return exists


def _read_zca(path: str, image_shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    shapes = workdir_lib.preprocess_shapes("gcn_zca", image_shape)
    data = storage.read_bytes(path)
    stats = workdir_lib.read_npz(path, data, shapes, "fitting the ZCA statistics again")
    return stats["mean"], stats["whitening"]


def _write_zca(path: str, mean: np.ndarray, whitening: np.ndarray) -> None:
    """Saves the statistics atomically (``storage.write_bytes``)."""
    storage.makedirs(os.path.dirname(path))
    buffer = io.BytesIO()
    np.savez(buffer, mean=mean, whitening=whitening)
    storage.write_bytes(path, buffer.getvalue())


def load_or_fit_zca(
    path: str, train: Split, unit_rms: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """ZCA (mean, W) from ``path``, or fitted on the training split and saved there.

    The file is a cache: a damaged one (cut short, or another file) is fitted again,
    with a one-line warning, and replaced.
    """
    if _cached_on_process_0(path):
        try:
            return _read_zca(path, train.images.shape[1:])
        except FileDamagedError as e:
            logging.warning("%s", e)
    mean, whitening = zca_from_moments(*zca_moments(train.images), unit_rms=unit_rms)
    if jax.process_index() == 0:
        _write_zca(path, mean, whitening)
    return mean, whitening


def fixed_standardize(
    mean: tuple[float, ...], std: tuple[float, ...], channels: int
) -> dict[str, np.ndarray]:
    """``'standardize'``'s statistics given by the config (``config.standardize_mean``,
    ``standardize_std``, pixel units), for a model trained with them (``nin_jax.convert``)."""
    if len(mean) != channels:
        raise ConfigError(
            f"config.standardize_mean is {tuple(mean)}; the images have {channels} channels, "
            "so it needs one mean (and one std) per channel"
        )
    return {"mean": np.asarray(mean, np.float32), "std": np.asarray(std, np.float32)}


def fit(
    name: str, train: Split, stats_file: str | None = None, unit_rms: bool = True
) -> dict[str, np.ndarray]:
    """The statistics preprocessing ``name`` needs, fitted on the training split ``train``.

    ``stats_file`` is where ZCA statistics are cached (``stats_path``); ``None``
    fits them without caching; ``unit_rms`` as ``zca_from_moments``.
    """
    if name == "standardize":
        mean, std = channel_stats(train.images)
        return {"mean": mean, "std": std}
    if name == "gcn_zca":
        if stats_file is None:
            mean, whitening = zca_from_moments(*zca_moments(train.images), unit_rms=unit_rms)
        else:
            mean, whitening = load_or_fit_zca(stats_file, train, unit_rms)
        return {"mean": mean, "whitening": whitening}
    return {}  # 'lcn' needs no statistics.
