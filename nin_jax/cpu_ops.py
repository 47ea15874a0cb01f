"""Convolution and max pooling for XLA:CPU with hand-written gradients.

XLA:CPU runs matmuls near the machine's peak, but the kernel gradient of its
convolutions and the select-and-scatter gradient of max pooling several times
slower, and autodiff of slice-based replacements makes it materialise one padded
copy of the input per window offset (25 for a 5x5 convolution, 9 for a 3x3 pool)
before summing them. These ops compute the same functions with the same
gradients (max pooling sends each gradient to the first maximum of its window,
like select-and-scatter) from matmuls, slices and elementwise code: 1x1
convolutions as matmuls, k x k convolutions as Winograd's minimal filtering
(4-6x fewer multiplies) or im2col, max pooling with an argmax-mask gradient.

Changing this
-------------
``models.Conv2D`` and ``models.max_pool_3x3_s2`` call three entry points:
``pointwise_conv`` (1 x 1 convolutions), ``conv_same`` (k x k convolutions; it
picks ``winograd_conv`` or im2col + ``pointwise_conv`` by shape) and
``max_pool_3x3_s2``. The invariant: each returns the values and gradients of
XLA's ops (``lax.conv_general_dilated``; ``reduce_window`` max pooling, whose
gradient goes to each window's first maximum) up to float32 rounding, so both
paths train the same model from the same checkpoints. After a change run
``python -m pytest -q tests/test_cpu_ops.py tests/test_models.py tests/test_precision.py``
(each op against XLA's; the whole model, logits and gradients, against the XLA
path; bfloat16). ``--config.model.conv_impl=xla`` bypasses this module on any
backend. The thresholds and layouts below were chosen by timing them on one
machine; the figures are in docs/PERFORMANCE.md, "Measurements behind cpu_ops":
re-measure before retuning.
"""

import functools
import math
from fractions import Fraction

import jax
import jax.numpy as jnp
import numpy as np


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
# batch. XLA:CPU runs that one contraction over (N, H, W) at a fraction of its
# matmul speed, but a batch of matmuls over row blocks, summed, close to it.
# Blocks of fewer rows lose to one matmul, hence the minimum block size.
# Timings: docs/PERFORMANCE.md, "Measurements behind cpu_ops".
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


# Below this many output pixels per image (4 x 4: at 2 x 2 a 4 x 4 tile is three
# quarters padding), or below this many input channels (the RGB layer: Winograd's
# matmuls would be 3 deep), im2col + one matmul is the fastest form, faster than
# XLA's native convolution too. Elsewhere ``winograd_conv`` is the fastest, from
# CIFAR's 16 x 16 maps down to the digits' 4 x 4. Timings: docs/PERFORMANCE.md,
# "Measurements behind cpu_ops".
_WINOGRAD_MIN_PIXELS = 16
_WINOGRAD_MIN_CHANNELS = 16


def conv_same(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """Stride-1 k x k convolution padded by k // 2, the faster CPU form for ``x``'s shape."""
    k, _, in_features, out_features = kernel.shape
    wide = in_features >= _WINOGRAD_MIN_CHANNELS
    large = x.shape[1] * x.shape[2] >= _WINOGRAD_MIN_PIXELS
    if wide and large and k % 2 == 1 and k <= WINOGRAD_MAX_KERNEL:
        return winograd_conv(x, kernel)
    return pointwise_conv(im2col(x, k), kernel.reshape(k * k * in_features, out_features))


# Winograd's minimal filtering F(m x m, r x r) computes each m x m output tile of
# an r x r convolution with (m + r - 1)^2 multiplies per channel pair instead of
# m^2 r^2: as (m + r - 1)^2 independent matmuls over channels between transformed
# input tiles and transformed kernels. F(4x4, 5x5) does 6.25x, F(4x4, 3x3) 4x fewer
# multiplies than a direct convolution. The transforms are Toom-Cook's, from
# evaluation at the points below and infinity; with these small points the
# float32 results stay within a few 1e-5 of a direct convolution at unit scale
# (tested; docs/PERFORMANCE.md).
_WINOGRAD_POINTS = (0, 1, -1, 2, -2, Fraction(1, 2), Fraction(-1, 2))
_WINOGRAD_TILE = 4
_WINOGRAD_MAX_POINTS = len(_WINOGRAD_POINTS) + 1  # m + r - 1: the finite points and infinity.
WINOGRAD_MAX_KERNEL = _WINOGRAD_MAX_POINTS - 1  # F(2x2, 7x7), the smallest useful tile.


def _poly_mul(a: list, b: list) -> list:
    out = [Fraction(0)] * (len(a) + len(b) - 1)
    for i, ai in enumerate(a):
        for j, bj in enumerate(b):
            out[i + j] += ai * bj
    return out


def _monic_with_roots(roots) -> list:
    """Coefficients, lowest degree first, of prod (x - root)."""
    coefficients = [Fraction(1)]
    for root in roots:
        coefficients = _poly_mul(coefficients, [-Fraction(root), Fraction(1)])
    return coefficients


@functools.cache
def winograd_matrices(tile: int, kernel_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A^T (m, a), G (a, r) and B^T (a, a) of F(m, r), a = m + r - 1, for correlation.

    One output tile is ``A^T [(G g G^T) * (B^T d B)] A`` for a kernel g and an
    a x a input tile d. Derived by transposing Toom-Cook linear convolution:
    A^T and G evaluate polynomials at the points (the last column / row is the
    point at infinity, the leading coefficient), B^T interpolates (row j: the
    coefficients of prod over the other points of (x - p)), with the Lagrange
    denominators moved into G.
    """
    size = tile + kernel_size - 1
    points = [Fraction(p) for p in _WINOGRAD_POINTS[: size - 1]]
    if len(points) != size - 1:
        raise ValueError(f"no Winograd points for F({tile}, {kernel_size})")
    a_t = np.zeros((tile, size))
    g = np.zeros((size, kernel_size))
    b_t = np.zeros((size, size))
    for j, p in enumerate(points):
        others = points[:j] + points[j + 1 :]
        denominator = math.prod(p - q for q in others)
        a_t[:, j] = [p**i for i in range(tile)]
        g[j] = [p**k / denominator for k in range(kernel_size)]
        b_t[j, : size - 1] = _monic_with_roots(others)
    a_t[tile - 1, size - 1] = g[size - 1, kernel_size - 1] = 1
    b_t[size - 1] = _monic_with_roots(points)
    return a_t, g, b_t


def _weighted_sum(terms: list[jax.Array], weights) -> jax.Array:
    """sum_i weights[i] * terms[i], skipping zero weights and multiplies by +-1."""
    total = None
    for weight, term in zip(weights, terms, strict=True):
        if weight == 0:
            continue
        term = term if weight == 1 else -term if weight == -1 else term * float(weight)
        total = term if total is None else total + term
    return total


# Transformed tiles are kept as one (a, N * tiles, C) array per column index nu of
# the a x a transform, stacked over the row index xi: a batch of a matmuls per
# array. Vectorising over xi makes XLA emit a fusions and a batched dots per
# transform instead of a^2 each: it compiles faster, and XLA:CPU runs these a-way
# batched dots faster than one a^2-way batched dot. Timings: docs/PERFORMANCE.md,
# "Measurements behind cpu_ops".


def _tile_transform(x: jax.Array, matrix: np.ndarray, stride: int) -> list[jax.Array]:
    """``matrix @ t @ matrix.T`` for every tile t (matrix.shape[1] square, ``stride``
    apart) of NHWC ``x``, as a list over the result's columns of (rows, N * tiles, C)."""
    n, height, width, channels = x.shape
    size = matrix.shape[1]
    tiles_h, tiles_w = (height - size) // stride + 1, (width - size) // stride + 1
    rows = [x[:, i : i + stride * (tiles_h - 1) + 1 : stride] for i in range(size)]
    mixed = jnp.stack([_weighted_sum(rows, weights) for weights in matrix])
    cols = [mixed[:, :, :, j : j + stride * (tiles_w - 1) + 1 : stride] for j in range(size)]
    return [_weighted_sum(cols, w).reshape(len(matrix), -1, channels) for w in matrix]


def _overlap_add(blocks: list[jax.Array], stride: int, axis: int) -> jax.Array:
    """The transpose of taking ``len(blocks)`` views ``stride`` apart along ``axis``:
    block i's entry t is added at position i + stride * t."""
    size, tiles = len(blocks), blocks[0].shape[axis]
    shifts = (size - 1) // stride
    widths = [(0, 0)] * blocks[0].ndim
    phases = []
    for phase in range(stride):
        parts = []
        for shift in range(shifts + 1):
            if shift * stride + phase < size:
                widths[axis] = (shift, shifts - shift)
                parts.append(jnp.pad(blocks[shift * stride + phase], widths))
        phases.append(sum(parts[1:], parts[0]))
    merged = jnp.stack(phases, axis=axis + 1)
    shape = merged.shape[:axis] + (-1,) + merged.shape[axis + 2 :]
    return jax.lax.slice_in_dim(merged.reshape(shape), 0, stride * (tiles - 1) + size, axis=axis)


def _tile_transform_transpose(
    tiles: list[jax.Array], matrix: np.ndarray, stride: int, shape: tuple[int, int, int, int]
) -> jax.Array:
    """The transpose of ``_tile_transform``: (N, H, W, C) from its tiles."""
    n, height, width, channels = shape
    size = matrix.shape[1]
    tiles_h, tiles_w = (height - size) // stride + 1, (width - size) // stride + 1
    grid = [t.reshape(len(matrix), n, tiles_h, tiles_w, channels) for t in tiles]
    cols = [_weighted_sum(grid, matrix[:, j]) for j in range(size)]
    mixed = _overlap_add(cols, stride, axis=3)
    rows = [_weighted_sum(list(mixed), matrix[:, i]) for i in range(size)]
    return _overlap_add(rows, stride, axis=1)


def _untile(products: list[jax.Array], a_t: np.ndarray, shape: tuple[int, int, int]):
    """``A^T m A`` for every tile m of ``products`` (laid out as ``_tile_transform``'s
    result), assembled into (N, tiles_h * tile, tiles_w * tile, O)."""
    n, tiles_h, tiles_w = shape
    tile = a_t.shape[0]
    by_col = [jnp.stack([_weighted_sum(list(p), weights) for weights in a_t]) for p in products]
    y = jnp.stack([_weighted_sum(by_col, weights) for weights in a_t], axis=1)
    y = y.reshape(tile, tile, n, tiles_h, tiles_w, -1).transpose(2, 3, 0, 4, 1, 5)
    return y.reshape(n, tiles_h * tile, tiles_w * tile, -1)


def _winograd_tile_size(kernel_size: int) -> int:
    return min(_WINOGRAD_TILE, _WINOGRAD_MAX_POINTS + 1 - kernel_size)


def winograd_conv(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """'same' stride-1 convolution (odd k <= ``WINOGRAD_MAX_KERNEL``) by Winograd F(4x4, k x k).

    Outputs come in 4x4 tiles (2x2 for k = 7); a size that is not a multiple of 4 is zero-padded
    at the bottom and right and the extra outputs cropped.
    """
    kernel_size = kernel.shape[0]
    if kernel_size % 2 == 0 or kernel_size > WINOGRAD_MAX_KERNEL:
        raise ValueError(f"winograd_conv needs an odd kernel size <= {WINOGRAD_MAX_KERNEL}")
    tile = _winograd_tile_size(kernel_size)
    height, width = x.shape[1], x.shape[2]
    extra_h, extra_w = -height % tile, -width % tile
    padded = jnp.pad(x, ((0, 0), (0, extra_h), (0, extra_w), (0, 0)))
    return _winograd_tiled(padded, kernel)[:, :height, :width]


def _winograd_filters(kernel: jax.Array, g: np.ndarray) -> jax.Array:
    """``G k G^T`` per channel pair as (a_cols, a_rows, C, O), the layout of transformed tiles."""
    g = g.astype(kernel.dtype)
    return jnp.einsum("xk,klio,yl->yxio", g, kernel, g)


def _winograd_forward(x: jax.Array, kernel: jax.Array):
    kernel_size = kernel.shape[0]
    tile = _winograd_tile_size(kernel_size)
    a_t, g, b_t = winograd_matrices(tile, kernel_size)
    pad = kernel_size // 2
    tiles = _tile_transform(jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0))), b_t, tile)
    filters = _winograd_filters(kernel, g)
    products = [jnp.einsum("xpc,xco->xpo", t, f) for t, f in zip(tiles, filters, strict=True)]
    n, height, width, _ = x.shape
    return _untile(products, a_t, (n, height // tile, width // tile)), tiles


@jax.custom_vjp
def _winograd_tiled(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """``winograd_conv`` for sizes that are multiples of the tile.

    Autodiff would transpose every slice of the transforms into a padded copy;
    the VJP works on transformed tiles instead. The output gradient's tiles are
    transformed once, by A (the transpose of the output transform). The kernel
    gradient contracts them with the forward pass's transformed input tiles and
    maps the result back through G; the input gradient multiplies them by the
    transformed kernel and applies the transpose of the input transform.
    """
    return _winograd_forward(x, kernel)[0]


def _winograd_fwd(x, kernel):
    y, tiles = _winograd_forward(x, kernel)
    return y, (tiles, kernel)


def _winograd_bwd(residuals, grad):
    tiles, kernel = residuals
    kernel_size = kernel.shape[0]
    tile = _winograd_tile_size(kernel_size)
    a_t, g, b_t = winograd_matrices(tile, kernel_size)
    filters = _winograd_filters(kernel, g)
    grad_tiles = _tile_transform(grad, a_t.T, tile)
    d_tiles = [jnp.einsum("xpo,xco->xpc", d, f) for d, f in zip(grad_tiles, filters, strict=True)]
    pad = kernel_size // 2
    n, height, width, _ = grad.shape
    padded_shape = (n, height + 2 * pad, width + 2 * pad, kernel.shape[2])
    d_x = _tile_transform_transpose(d_tiles, b_t, tile, padded_shape)[:, pad:-pad, pad:-pad]
    d_filters = jnp.stack(
        [jnp.einsum("xpc,xpo->xco", t, d) for t, d in zip(tiles, grad_tiles, strict=True)]
    )
    g = g.astype(kernel.dtype)
    return d_x, jnp.einsum("xk,yxio,yl->klio", g, d_filters, g)


_winograd_tiled.defvjp(_winograd_fwd, _winograd_bwd)


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
