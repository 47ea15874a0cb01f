"""bfloat16 computation: float32 parameters, optimizer state and logits; close to float32."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import init_state, load_config

from nin_jax import models, optimizer, steps


def _setup(dtype: str, conv_impl: str):
    config = load_config("cifar10", dtype=dtype, model__conv_impl=conv_impl)
    model = models.from_config(config, num_classes=10)
    tx = optimizer.create_optimizer(config, lambda step: 0.01)
    state = init_state(model, (8, 8, 3), tx)
    rng = np.random.default_rng(0)
    batch = {
        "image": jnp.asarray(rng.standard_normal((8, 8, 8, 3), dtype=np.float32)),
        "label": jnp.asarray(rng.integers(0, 10, 8, dtype=np.int32)),
    }
    return state, batch


@pytest.mark.parametrize("conv_impl", [pytest.param("matmul", marks=pytest.mark.slow), "xla"])
def test_bfloat16_logits_are_float32_and_close_to_float32(conv_impl):
    state16, batch = _setup("bfloat16", conv_impl)
    state32, _ = _setup("float32", conv_impl)
    logits16 = jax.jit(state16.apply_fn)({"params": state16.params}, batch["image"])
    logits32 = jax.jit(state32.apply_fn)({"params": state32.params}, batch["image"])
    assert logits16.dtype == jnp.float32 and logits16.shape == (8, 10)
    assert bool(jnp.all(jnp.isfinite(logits16)))
    scale = float(jnp.abs(logits32).max())
    assert scale > 0
    np.testing.assert_allclose(logits16, logits32, atol=0.05 * scale)


@pytest.mark.slow
def test_bfloat16_train_step_keeps_float32_state_and_gradients_close():
    state16, batch = _setup("bfloat16", "auto")
    state32, _ = _setup("float32", "auto")
    jit_train = jax.jit(steps.train_step)
    dropout_rng = jax.random.key(1)
    start = jax.tree.map(jnp.copy, state32.params)
    new16, metrics16 = jit_train(state16, batch, dropout_rng)
    new32, metrics32 = jit_train(state32, batch, dropout_rng)
    for leaf in jax.tree.leaves((new16.params, new16.opt_state)):
        assert leaf.dtype in (jnp.float32, jnp.int32), leaf.dtype
    assert np.isfinite(float(metrics16["loss"]))
    np.testing.assert_allclose(metrics16["loss"], metrics32["loss"], rtol=0.02)
    # The first SGD step is -lr * (grad + wd * param): compare the updates' directions.
    update16, update32 = (_flat_update(new.params, start) for new in (new16, new32))
    cosine = jnp.dot(update16, update32) / (jnp.linalg.norm(update16) * jnp.linalg.norm(update32))
    assert float(cosine) > 0.95  # bfloat16 keeps 8 mantissa bits: about 1% error per value.


def _flat_update(new_params, old_params) -> jax.Array:
    pairs = zip(jax.tree.leaves(new_params), jax.tree.leaves(old_params), strict=True)
    return jnp.concatenate([(new - old).ravel() for new, old in pairs])
