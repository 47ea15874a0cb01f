"""Convolution and max pooling for XLA:CPU with hand-written gradients.

XLA:CPU runs matmuls and forward k x k convolutions near the machine's peak, but
the kernel gradient of its convolutions and the select-and-scatter gradient of
max pooling several times slower, and autodiff of slice-based replacements
makes it materialise one padded copy of the input per window offset (25 for a
5x5 convolution, 9 for a 3x3 pool) before summing them. These ops compute the
same functions with the same gradients (max pooling sends each gradient to the
first maximum of its window, like select-and-scatter) from native forward
convolutions, matmuls, slices and elementwise code.
"""

import math

import jax
import jax.numpy as jnp


def im2col(x: jax.Array, kernel_size: int) -> jax.Array:
    """(N, H, W, C) -> (N, H, W, k*k*C) patches, 'same' zero padding, (dy, dx, c) order."""
    pad = kernel_size // 2
    height, width = x.shape[1], x.shape[2]
    padded = jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    patches = [
        padded[:, dy : dy + height, dx : dx + width, :]
        for dy in range(kernel_size)
        for dx in range(kernel_size)
    ]
    return jnp.concatenate(patches, axis=-1)


# The kernel gradient of a 1x1 convolution contracts over every pixel of the
# batch. XLA:CPU runs that contraction over (N, H, W) at 43-73 GFLOP/s for NIN's
# CIFAR layers, but as a batch of 8 matmuls over row blocks, summed, at 132-145
# (batch 128: 139 -> 55 ms for the 192 -> 160 layer at 32x32, measured). Blocks
# of fewer rows are slower than one matmul (digits, batch 32: step 0.033 -> 0.077 s).
_GRAM_ROW_BLOCKS = 8
_GRAM_MIN_BLOCK_ROWS = 4096


def channel_gram(x: jax.Array, grad: jax.Array) -> jax.Array:
    """``x.T @ grad`` over all leading axes, (..., C) x (..., O) -> (C, O), in row blocks."""
    x, grad = x.reshape(-1, x.shape[-1]), grad.reshape(-1, grad.shape[-1])
    rows = x.shape[0]
    blocks = (
        math.gcd(rows, _GRAM_ROW_BLOCKS) if rows >= _GRAM_ROW_BLOCKS * _GRAM_MIN_BLOCK_ROWS else 1
    )
    x = x.reshape(blocks, -1, x.shape[-1])
    grad = grad.reshape(blocks, -1, grad.shape[-1])
    return jnp.einsum("bmc,bmo->bco", x, grad).sum(axis=0)


@jax.custom_vjp
def pointwise_conv(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """1x1 convolution of NHWC ``x`` with a (C, O) kernel: a matmul over the channel axis."""
    return x @ kernel


def _pointwise_conv_fwd(x, kernel):
    return x @ kernel, (x, kernel)


def _pointwise_conv_bwd(residuals, grad):
    x, kernel = residuals
    return grad @ kernel.T, channel_gram(x, grad)


pointwise_conv.defvjp(_pointwise_conv_fwd, _pointwise_conv_bwd)


# Below this many output pixels per image (8 x 8), XLA:CPU's native convolutions
# are slow on wide inputs and im2col + one matmul is faster: measured 0.017 s vs
# 0.12 s for the 96 -> 192 5x5 layer at 4x4 (digits), while from 8x8 up
# ``conv_kxk`` is faster (0.16 s vs 0.21 s for CIFAR's 3x3 layer). Below this many
# input channels (the RGB layer) the native forward convolution is slow too (35
# GFLOP/s) and so are per-offset kernel-gradient matmuls: im2col wins there as well.
_NATIVE_CONV_MIN_PIXELS = 64
_NATIVE_CONV_MIN_CHANNELS = 16


def conv_same(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """'same' stride-1 k x k convolution, the faster of the two CPU forms for ``x``'s shape."""
    k, _, in_features, out_features = kernel.shape
    wide = in_features >= _NATIVE_CONV_MIN_CHANNELS
    if wide and x.shape[1] * x.shape[2] >= _NATIVE_CONV_MIN_PIXELS:
        return conv_kxk(x, kernel)
    return pointwise_conv(im2col(x, k), kernel.reshape(k * k * in_features, out_features))


def _native_conv(x: jax.Array, kernel: jax.Array) -> jax.Array:
    pad = kernel.shape[0] // 2
    return jax.lax.conv_general_dilated(
        x, kernel, (1, 1), ((pad, pad), (pad, pad)), dimension_numbers=("NHWC", "HWIO", "NHWC")
    )


@jax.custom_vjp
def conv_kxk(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """'same' stride-1 k x k convolution, NHWC input and HWIO kernel.

    The forward pass and the input gradient (a convolution with the flipped
    kernel) are XLA's native convolutions, which XLA:CPU runs as fast as a
    matmul; only the kernel gradient, which it runs several times slower, is
    written as matmuls (``kernel_gradient``).
    """
    return _native_conv(x, kernel)


def _conv_kxk_fwd(x, kernel):
    return _native_conv(x, kernel), (x, kernel)


def _conv_kxk_bwd(residuals, grad):
    x, kernel = residuals
    k = kernel.shape[0]
    d_x = _native_conv(grad, jnp.flip(kernel, (0, 1)).transpose(0, 1, 3, 2))
    return d_x, kernel_gradient(x, grad, k)


def kernel_gradient(x: jax.Array, grad: jax.Array, kernel_size: int) -> jax.Array:
    """d(loss)/d(kernel) of a 'same' convolution, HWIO, as matmuls over the N*H*W pixels.

    One matmul per kernel offset on a shifted view of the input, which avoids
    writing and reading the k*k times larger im2col patch matrix (25% less CPU
    time for NIN's 96-channel 5x5 layer, measured).
    """
    n, height, width, channels = x.shape
    grad = grad.reshape(n * height * width, -1)
    pad = kernel_size // 2
    padded = jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    offsets = [
        [
            padded[:, dy : dy + height, dx : dx + width, :].reshape(-1, channels).T @ grad
            for dx in range(kernel_size)
        ]
        for dy in range(kernel_size)
    ]
    return jnp.stack([jnp.stack(row) for row in offsets])


conv_kxk.defvjp(_conv_kxk_fwd, _conv_kxk_bwd)


def _pool_geometry(x: jax.Array) -> tuple[int, int]:
    return (x.shape[1] - 1) // 2 + 1, (x.shape[2] - 1) // 2 + 1


def _pool_argmax(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Window maxima and the index (dy * 3 + dx) of each window's first maximum."""
    out_h, out_w = _pool_geometry(x)
    neg_inf = jnp.array(-jnp.inf, x.dtype)
    padded = jnp.pad(
        x,
        ((0, 0), (1, 2 * out_h - x.shape[1]), (1, 2 * out_w - x.shape[2]), (0, 0)),
        constant_values=neg_inf,
    )
    best, best_index = None, None
    for index in range(9):
        dy, dx = divmod(index, 3)
        window = padded[:, dy : dy + 2 * out_h : 2, dx : dx + 2 * out_w : 2, :]
        if best is None:
            best, best_index = window, jnp.zeros(window.shape, jnp.int8)
        else:
            take = window > best  # Strict: ties keep the earlier window position.
            best = jnp.where(take, window, best)
            best_index = jnp.where(take, jnp.int8(index), best_index)
    return best, best_index


@jax.custom_vjp
def max_pool_3x3_s2(x: jax.Array) -> jax.Array:
    """3x3 max pooling, stride 2, padding 1 (padded cells never win), as PyTorch's MaxPool2d."""
    return _pool_argmax(x)[0]


def _max_pool_fwd(x):
    pooled, argmax = _pool_argmax(x)
    return pooled, (argmax, x.shape)


def _next(t: jax.Array, axis: int) -> jax.Array:
    """``t`` shifted by one along ``axis``: result[i] = t[i + 1], zero past the end."""
    widths = [(0, 0)] * t.ndim
    widths[axis] = (0, 1)
    return jnp.pad(jax.lax.slice_in_dim(t, 1, None, axis=axis), widths)


def _max_pool_bwd(residuals, grad):
    """Scatters each window's gradient to its argmax without a scatter.

    With stride 2 and padding 1, output (i, j)'s window offset d in {0, 1, 2}
    covers input row 2i + d - 1: even input rows 2i come from offset 1 of
    output row i only, odd rows 2i + 1 from offset 2 of row i and offset 0 of
    row i + 1; the same holds for columns. So the four (row, column) parity
    planes of the input gradient are sums of masked, shifted output gradients,
    interleaved at the end.
    """
    argmax, (n, height, width, channels) = residuals
    zero = jnp.zeros((), grad.dtype)
    parts = [[jnp.where(argmax == dy * 3 + dx, grad, zero) for dx in range(3)] for dy in range(3)]

    def fold(offsets, axis):  # (offset 0, 1, 2) -> (even plane, odd plane) along ``axis``.
        return offsets[1], offsets[2] + _next(offsets[0], axis)

    rows = [fold([parts[dy][dx] for dy in range(3)], axis=1) for dx in range(3)]
    even_rows, odd_rows = zip(*rows, strict=True)
    planes = [jnp.stack(fold(list(by_dx), axis=2), axis=3) for by_dx in (even_rows, odd_rows)]
    out_h, out_w = grad.shape[1], grad.shape[2]
    full = jnp.stack(planes, axis=2).reshape(n, 2 * out_h, 2 * out_w, channels)
    return (full[:, :height, :width, :],)


max_pool_3x3_s2.defvjp(_max_pool_fwd, _max_pool_bwd)
