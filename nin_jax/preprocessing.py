"""Image preprocessing on the devices, inside the jitted steps: uint8 in, float32 out.

``config.preprocess`` chooses one:

* ``'standardize'`` (default): per-channel mean/std of the training split.
* ``'gcn_zca'``: the paper's CIFAR preprocessing (as in the maxout paper and
  pylearn2's ``make_cifar10_gcn_whitened``): global contrast normalisation of
  each image (mean 0, L2 norm 55), then ZCA whitening with filter bias 0.1.
* ``'lcn'``: the paper's SVHN preprocessing: local contrast normalisation of
  each channel with a 7x7 Gaussian window (sigma 2), as pylearn2's LeCunLCN.

The statistics (``nin_jax.statistics``, fitted on the host once) are arguments:
the host only ever hands the devices uint8 pixels, a quarter of the bytes of
float32, and none of its time goes into per-image arithmetic. The training
step, the evaluation step, the tools and the benchmark all call ``apply``.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np

Stats = dict[str, jax.Array]
GCN_SCALE = 55.0
ZCA_FILTER_BIAS = 0.1
LCN_KERNEL_SIZE = 7
LCN_SIGMA = 2.0
LCN_THRESHOLD = 1e-4


def standardize(images: jax.Array, mean: jax.Array, std: jax.Array) -> jax.Array:
    """Per-channel standardisation with the training split's channel statistics."""
    return (images.astype(jnp.float32) - mean) / std


def global_contrast_normalize(images: jax.Array, scale: float = GCN_SCALE) -> jax.Array:
    """Each image minus its mean, rescaled to L2 norm ``scale`` (flat images stay 0)."""
    x = images.astype(jnp.float32)
    x = x - jnp.mean(x, axis=(1, 2, 3), keepdims=True)
    norm = jnp.sqrt(jnp.sum(jnp.square(x), axis=(1, 2, 3), keepdims=True))
    return scale * x / jnp.where(norm < 1e-8, 1.0, norm)


def zca_whiten(
    images: jax.Array, mean: jax.Array, whitening: jax.Array, dtype: str = "float32"
) -> jax.Array:
    """``(gcn(x) - mean) @ W``, shape preserved, float32.

    ``dtype`` is the model's computation dtype. 'float32': full float32 precision on
    every backend. 'bfloat16': the matmul in bfloat16 with float32 accumulation (the
    model rounds its input to bfloat16 anyway); a HIGHEST-precision matmul is six
    bfloat16 passes over W, which made it a tenth of the TPU train step's HBM traffic
    (docs/PERFORMANCE.md). It contracts W's second axis (W is symmetric), which
    spares XLA a transposed copy of W.
    """
    x = global_contrast_normalize(images)
    flat = x.reshape(x.shape[0], -1) - mean
    if dtype == "bfloat16":
        bf16 = jnp.bfloat16
        white = jnp.einsum(
            "be,de->bd", flat.astype(bf16), whitening.astype(bf16),
            preferred_element_type=jnp.float32,
        )  # fmt: skip
    else:
        white = jnp.matmul(flat, whitening, precision=jax.lax.Precision.HIGHEST)
    return white.reshape(x.shape)


def gaussian_kernel(size: int = LCN_KERNEL_SIZE, sigma: float = LCN_SIGMA) -> np.ndarray:
    """A ``size x size`` Gaussian window summing to 1."""
    offsets = np.arange(size) - size // 2
    window = np.exp(-(offsets[:, None] ** 2 + offsets[None, :] ** 2) / (2 * sigma**2))
    return (window / window.sum()).astype(np.float32)


def _blur(x: jax.Array) -> jax.Array:
    """Each channel convolved with the Gaussian window, zero padding ('SAME')."""
    channels = x.shape[-1]
    kernel = gaussian_kernel()
    window = np.broadcast_to(kernel[:, :, None, None], (*kernel.shape, 1, channels))
    return jax.lax.conv_general_dilated(
        x,
        jnp.asarray(window),
        window_strides=(1, 1),
        padding="SAME",
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
        feature_group_count=channels,
        precision=jax.lax.Precision.HIGHEST,
    )


def local_contrast_normalize(images: jax.Array) -> jax.Array:
    """Per channel: subtract the Gaussian-weighted local mean, divide by the local std.

    Pixels are scaled to [0, 1]; the divisor is at least the image's mean local
    std (and ``LCN_THRESHOLD``) so flat regions are not amplified into noise.
    """
    x = images.astype(jnp.float32) / 255.0
    centered = x - _blur(x)
    local_std = jnp.sqrt(_blur(jnp.square(centered)))
    image_mean_std = jnp.mean(local_std, axis=(1, 2), keepdims=True)
    return centered / jnp.maximum(jnp.maximum(local_std, image_mean_std), LCN_THRESHOLD)


def stats_shapes(name: str, image_shape: tuple[int, ...]) -> dict[str, tuple[int, ...]]:
    """The shapes of the float32 statistics ``apply`` takes for preprocessing ``name``."""
    if name == "standardize":
        return {"mean": image_shape[-1:], "std": image_shape[-1:]}
    if name == "gcn_zca":
        dim = math.prod(image_shape)
        return {"mean": (dim,), "whitening": (dim, dim)}
    return {}  # 'lcn'


def apply(name: str, stats: Stats, images: jax.Array, dtype: str = "float32") -> jax.Array:
    """uint8 (N, H, W, C) -> float32 model input, by ``config.preprocess`` ``name``, for a
    model computing in ``dtype`` (``config.dtype``)."""
    if name == "standardize":
        return standardize(images, stats["mean"], stats["std"])
    if name == "gcn_zca":
        return zca_whiten(images, stats["mean"], stats["whitening"], dtype)
    if name == "lcn":
        return local_contrast_normalize(images)
    raise ValueError(f"unknown preprocessing {name!r}")  # config_validation admits no other.
