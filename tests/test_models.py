"""NIN: parameter counts, shapes, and equality with independent references."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from nin_jax.models import NIN

LAYERS = ("conv", "cccp1", "cccp2")


def init(model, shape, seed=0):
    x = jax.random.normal(jax.random.key(seed + 1), shape)
    return jax.jit(model.init)(jax.random.key(seed), x), x


def count(params) -> int:
    return sum(p.size for p in jax.tree.leaves(params))


def test_default_is_the_seed_network_with_966986_parameters():
    variables, x = init(NIN(num_classes=10), (2, 32, 32, 3))
    assert count(variables) == 966_986
    assert set(variables["params"]) == {"mlpconv1", "mlpconv2", "mlpconv3"}
    kernel_shapes = {
        (block, layer): variables["params"][block][layer]["kernel"].shape
        for block in variables["params"]
        for layer in LAYERS
    }
    assert kernel_shapes[("mlpconv1", "conv")] == (5, 5, 3, 192)
    assert kernel_shapes[("mlpconv3", "conv")] == (3, 3, 192, 192)
    assert kernel_shapes[("mlpconv3", "cccp2")] == (1, 1, 192, 10)


@pytest.mark.parametrize("shape", [(3, 32, 32, 3), (2, 28, 28, 1), (4, 8, 8, 1), (1, 13, 9, 3)])
def test_logits_shape_for_any_input_size(shape):
    model = NIN(num_classes=7, widths=((8, 8, 8), (8, 8, 8), (8, 8)))
    variables, x = init(model, shape)
    logits = jax.jit(model.apply)(variables, x)
    assert logits.shape == (shape[0], 7)
    assert logits.dtype == jnp.float32
    assert np.all(np.asarray(logits) >= 0)  # ReLU class maps, then an average.


def reference_forward(params, x_nhwc: np.ndarray) -> np.ndarray:
    """The seed's network written directly in NCHW with lax primitives and numpy."""
    x = jnp.asarray(np.transpose(x_nhwc, (0, 3, 1, 2)))
    for index, block in enumerate(("mlpconv1", "mlpconv2", "mlpconv3")):
        for layer in LAYERS:
            kernel = np.transpose(np.asarray(params[block][layer]["kernel"]), (3, 2, 0, 1))
            pad = kernel.shape[-1] // 2
            x = lax.conv_general_dilated(
                x, kernel, (1, 1), ((pad, pad), (pad, pad)), precision=lax.Precision.HIGHEST
            )
            x = np.maximum(
                np.asarray(x) + np.asarray(params[block][layer]["bias"])[:, None, None], 0
            )
        if index < 2:  # MaxPool2d(3, stride=2, padding=1): padding never wins.
            x = lax.reduce_window(
                x, -np.inf, lax.max, (1, 1, 3, 3), (1, 1, 2, 2), ((0, 0), (0, 0), (1, 1), (1, 1))
            )
    return np.asarray(x).mean(axis=(2, 3))


@pytest.mark.parametrize("conv_impl", ["xla", "matmul"])
def test_matches_independent_lax_reference(conv_impl):
    model = NIN(num_classes=10, conv_impl=conv_impl)
    variables, x = init(model, (2, 32, 32, 3))
    logits = jax.jit(model.apply)(variables, x)
    expected = reference_forward(variables["params"], np.asarray(x))
    np.testing.assert_allclose(logits, expected, atol=1e-4, rtol=1e-4)


@pytest.mark.slow
def test_matches_the_seeds_pytorch_network():
    torch = pytest.importorskip("torch")
    from benchmarks.torch_nin import NIN as SeedNIN

    torch.manual_seed(0)
    seed = SeedNIN().eval()
    convs = [m for m in seed.modules() if isinstance(m, torch.nn.Conv2d)]
    names = [(b, layer) for b in ("mlpconv1", "mlpconv2", "mlpconv3") for layer in LAYERS]
    params = {b: {} for b, _ in names}
    for (b, layer), conv in zip(names, convs, strict=True):
        params[b][layer] = {
            "kernel": jnp.asarray(conv.weight.detach().numpy().transpose(2, 3, 1, 0)),
            "bias": jnp.asarray(conv.bias.detach().numpy()),
        }
    x = np.random.default_rng(0).normal(size=(4, 32, 32, 3)).astype(np.float32)
    with torch.no_grad():
        expected = seed(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy()
    for conv_impl in ("xla", "matmul"):
        logits = jax.jit(NIN(num_classes=10, conv_impl=conv_impl).apply)({"params": params}, x)
        assert np.abs(np.asarray(logits) - expected).max() < 1e-4


# 32x32 runs the CPU path's Winograd form in the later blocks; 8x8 (digits) runs it in
# the second block (4x4) and im2col in the third (2x2): cpu_ops.conv_same picks by size.
@pytest.mark.slow
@pytest.mark.parametrize("shape", [(4, 32, 32, 3), (4, 8, 8, 1)])
def test_cpu_and_native_paths_agree_on_logits_and_gradients(shape):
    x = jax.random.normal(jax.random.key(3), shape)
    labels = jnp.arange(4) % 10
    variables = jax.jit(NIN(conv_impl="xla").init)(jax.random.key(0), x)

    # Without dropout: its masks are the same for both paths, and they make near-ties
    # of max pooling (where float32 rounding picks another winner) more or less likely.
    def loss(params, conv_impl):
        logits = NIN(conv_impl=conv_impl).apply({"params": params}, x, train=False)
        return -jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(4), labels])

    grad_fn = jax.jit(jax.grad(loss), static_argnums=1)
    grads = {impl: grad_fn(variables["params"], impl) for impl in ("xla", "matmul")}
    leaves = [jax.tree.leaves(grads[impl]) for impl in ("xla", "matmul")]
    for native, fast in zip(*leaves, strict=True):
        np.testing.assert_allclose(fast, native, atol=1e-4, rtol=1e-3)
    loss_fn = jax.jit(loss, static_argnums=1)
    assert loss_fn(variables["params"], "xla") == pytest.approx(
        loss_fn(variables["params"], "matmul")
    )


def test_dropout_is_active_only_in_training():
    model = NIN(widths=((8, 8, 8), (8, 8, 8), (8, 8)))
    variables, x = init(model, (4, 16, 16, 3))
    apply = jax.jit(model.apply, static_argnames="train")

    def dropped(seed):
        return apply(variables, x, train=True, rngs={"dropout": jax.random.key(seed)})

    assert not np.allclose(dropped(0), dropped(1))
    np.testing.assert_array_equal(dropped(0), dropped(0))
    np.testing.assert_array_equal(apply(variables, x), apply(variables, x))


def test_authors_gaussian_init():
    variables, _ = init(NIN(init_std=0.05), (1, 32, 32, 3))
    kernel = np.asarray(variables["params"]["mlpconv2"]["cccp1"]["kernel"])
    assert abs(kernel.std() - 0.05) < 0.002
    assert not np.any(np.asarray(variables["params"]["mlpconv2"]["cccp1"]["bias"]))


def test_zero_mean_he_init_has_mean_zero_over_each_fan_in_and_he_scale():
    variables, _ = init(NIN(kernel_init="he_normal_zero_mean"), (1, 32, 32, 3))
    params = variables["params"]
    layers = (
        ("mlpconv2", "conv", 5 * 5 * 96),
        ("mlpconv3", "cccp1", 192),
        ("mlpconv3", "cccp2", 192),
    )
    for block, layer, fan_in in layers:
        kernel = np.asarray(params[block][layer]["kernel"])
        means = kernel.reshape(-1, kernel.shape[-1]).mean(0)
        np.testing.assert_allclose(means, 0.0, atol=1e-6)
        assert abs(kernel.std() / np.sqrt(2 / fan_in) - 1) < 0.05, layer
