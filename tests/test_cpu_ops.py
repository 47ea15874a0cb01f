"""The CPU ops' hand-written gradients equal autodiff of XLA's native ops."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from nin_jax import cpu_ops

SHAPES = [(2, 8, 8, 3), (2, 7, 9, 4), (1, 5, 5, 2), (3, 4, 6, 1)]


def _native_pool(x):
    return nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))


def _native_conv(x, kernel):
    pad = kernel.shape[0] // 2
    return jax.lax.conv_general_dilated(
        x, kernel, (1, 1), ((pad, pad), (pad, pad)), dimension_numbers=("NHWC", "HWIO", "NHWC")
    )


@functools.partial(jax.jit, static_argnums=0)
def _value_and_vjp(fn, args, cotangent_seed=1):
    """``fn(*args)`` and its VJP of a random cotangent, jitted: run op by op, the custom-VJP
    ops' hundreds of small primitives take several times as long."""
    out, vjp = jax.vjp(fn, *args)
    cotangent = jax.random.normal(jax.random.key(cotangent_seed), out.shape, out.dtype)
    return out, vjp(cotangent)


@pytest.mark.parametrize("shape", SHAPES[:3])
def test_max_pool_value_and_gradient_equal_select_and_scatter(shape):
    x = jax.random.normal(jax.random.key(0), shape)
    # ReLU-like input: many windows tie at 0, where the gradient must go to the
    # first maximum of the window, as XLA's select-and-scatter sends it.
    for inputs in (x, jnp.maximum(x, 0.0)):
        want, (want_grad,) = _value_and_vjp(_native_pool, (inputs,))
        got, (got_grad,) = _value_and_vjp(cpu_ops.max_pool_3x3_s2, (inputs,))
        assert got.shape == ((shape[0], (shape[1] + 1) // 2, (shape[2] + 1) // 2, shape[3]))
        np.testing.assert_array_equal(got, want)
        np.testing.assert_allclose(got_grad, want_grad, atol=1e-6)


def test_max_pool_gradient_sums_over_overlapping_windows():
    # Odd rows and columns lie in two windows each: the peak at (3, 3) wins four
    # windows and receives the sum of their gradients.
    x = jnp.zeros((1, 6, 6, 1)).at[0, 3, 3, 0].set(5.0)
    weights = jnp.arange(9.0).reshape(1, 3, 3, 1)
    grad = jax.grad(lambda x: jnp.sum(cpu_ops.max_pool_3x3_s2(x) * weights))(x)
    assert float(grad[0, 3, 3, 0]) == 4.0 + 5.0 + 7.0 + 8.0
    assert float(grad.sum()) == float(weights.sum())  # Every window sends its gradient once.


def test_winograd_matrices_compute_a_1d_correlation_exactly():
    # F(4, 5) in float64: one tile of A^T [(G g) * (B^T d)] equals sum_k g[k] d[i + k].
    a_t, g_matrix, b_t = cpu_ops.winograd_matrices(4, 5)
    rng = np.random.default_rng(0)
    g, d = rng.normal(size=5), rng.normal(size=8)
    want = [np.dot(g, d[i : i + 5]) for i in range(4)]
    np.testing.assert_allclose(a_t @ ((g_matrix @ g) * (b_t @ d)), want, rtol=1e-12)


# F(4x4, 3x3), F(4x4, 5x5) and F(2x2, 7x7); sizes that are and are not multiples of the tile.
@pytest.mark.parametrize("kernel_size", [3, 5, 7])
@pytest.mark.parametrize("shape", [(2, 8, 8, 16), (2, 9, 6, 4)])
def test_winograd_conv_value_and_gradients_equal_native_convolution(shape, kernel_size):
    x = jax.random.normal(jax.random.key(0), shape)
    kernel = jax.random.normal(jax.random.key(1), (kernel_size, kernel_size, shape[-1], 6))
    kernel = kernel / np.sqrt(kernel_size**2 * shape[-1])  # Unit-scale outputs, as in a network.
    want, want_grads = _value_and_vjp(_native_conv, (x, kernel))
    got, got_grads = _value_and_vjp(cpu_ops.winograd_conv, (x, kernel))
    np.testing.assert_allclose(got, want, atol=5e-5)
    for got_grad, want_grad in zip(got_grads, want_grads, strict=True):
        np.testing.assert_allclose(got_grad, want_grad, atol=5e-4, rtol=1e-5)


@pytest.mark.parametrize("shape", [(2, 3, 5, 6), (8, 64, 64, 3)])  # One matmul; 8 row blocks.
def test_pointwise_conv_value_and_gradients_equal_a_1x1_convolution(shape):
    x = jax.random.normal(jax.random.key(0), shape)
    kernel = jax.random.normal(jax.random.key(1), (shape[-1], 4))
    want, want_grads = _value_and_vjp(_native_conv, (x, kernel.reshape(1, 1, *kernel.shape)))
    got, (got_dx, got_dkernel) = _value_and_vjp(cpu_ops.pointwise_conv, (x, kernel))
    np.testing.assert_allclose(got, want, atol=1e-5)
    np.testing.assert_allclose(got_dx, want_grads[0], atol=1e-4, rtol=1e-5)
    np.testing.assert_allclose(got_dkernel, want_grads[1][0, 0], atol=1e-4, rtol=1e-5)


# Winograd and im2col branches: wide and large, narrow (RGB), wide and small.
@pytest.mark.parametrize("shape", [(2, 8, 9, 16), (2, 8, 8, 3), (2, 3, 5, 16)])
def test_conv_same_value_and_gradients_equal_native_convolution(shape):
    x = jax.random.normal(jax.random.key(0), shape)
    kernel = jax.random.normal(jax.random.key(1), (5, 5, shape[-1], 6)) / np.sqrt(25 * shape[-1])
    want, want_grads = _value_and_vjp(_native_conv, (x, kernel))
    got, got_grads = _value_and_vjp(cpu_ops.conv_same, (x, kernel))
    np.testing.assert_allclose(got, want, atol=1e-4)
    for got_grad, want_grad in zip(got_grads, want_grads, strict=True):
        np.testing.assert_allclose(got_grad, want_grad, atol=1e-3, rtol=1e-5)


def test_the_ops_and_their_gradients_under_vmap():
    """Stacked models (nin_jax.ensemble) vmap the custom-VJP ops over a model axis: values
    and gradients per model equal those of each model alone."""
    keys = jax.random.split(jax.random.key(3), 4)
    x = jax.random.normal(keys[0], (2, 3, 8, 8, 16))  # (models, N, H, W, C)
    kernels = jax.random.normal(keys[1], (2, 3, 3, 16, 16)) * 0.1
    pointwise = jax.random.normal(keys[2], (2, 16, 8)) * 0.1

    def loss(x, kernel, pointwise_kernel):
        y = cpu_ops.conv_same(x, kernel)
        y = cpu_ops.max_pool_3x3_s2(jax.nn.relu(y))
        return jnp.sum(cpu_ops.pointwise_conv(y, pointwise_kernel) ** 2)

    grad = jax.grad(loss, argnums=(0, 1, 2))
    batched = jax.jit(jax.vmap(grad))(x, kernels, pointwise)
    for k in range(2):
        alone = jax.jit(grad)(x[k], kernels[k], pointwise[k])
        for got, want in zip(batched, alone, strict=True):
            np.testing.assert_allclose(got[k], want, rtol=1e-5, atol=1e-5)
