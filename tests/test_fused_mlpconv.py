"""The fused mlpconv kernel (conv_impl='fused') against XLA's ops, in Pallas's interpreter.

The XLA path in float32 is the reference: values and gradients equal to float32
rounding, for the kernel alone, for a NIN and for the train step on a 2-device mesh
(each device runs the kernel on its shard). On a TPU the same kernels compile
(tests/test_aot.py).
"""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import load_config, xla_flags

from nin_jax import config_validation, fused_mlpconv, models
from nin_jax.errors import ConfigError

WIDTHS = ((8, 8, 8), (8, 8, 8), (8, 8))


def random_tail_args(shape=(6, 5, 7, 24), hidden=20, out=16):
    keys = jax.random.split(jax.random.key(1), 6)
    c = shape[-1]
    return (
        jax.random.normal(keys[0], shape),
        0.1 * jax.random.normal(keys[1], (c,)),
        0.3 * jax.random.normal(keys[2], (c, hidden)),
        0.1 * jax.random.normal(keys[3], (hidden,)),
        0.3 * jax.random.normal(keys[4], (hidden, out)),
        0.1 * jax.random.normal(keys[5], (out,)),
    )


def test_pixels_per_step_divides_the_map():
    assert [fused_mlpconv.pixels_per_step(s) for s in (1024, 256, 64, 49, 35, 13)] == [
        8, 8, 8, 7, 7, 1,
    ]  # fmt: skip


def test_tail_values_and_gradients_equal_xla():
    args = random_tail_args()  # 35 pixels: 5 grid steps of 7.
    g = jax.random.normal(jax.random.key(2), (6, 5, 7, 16))

    def loss(fn):
        return lambda *a: jnp.sum(fn(*a) * g)

    argnums = tuple(range(6))
    fused = jax.value_and_grad(loss(lambda *a: fused_mlpconv.tail(*a, interpret=True)), argnums)
    value, grads = fused(*args)
    want_value, want_grads = jax.value_and_grad(loss(fused_mlpconv.reference), argnums)(*args)
    np.testing.assert_allclose(value, want_value, rtol=1e-6)
    for got, want in zip(grads, want_grads, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_nin_has_the_xla_parameters_and_gradients():
    x = jax.random.normal(jax.random.key(0), (4, 8, 8, 1))
    labels = jnp.arange(4)
    reference = models.NIN(widths=WIDTHS, conv_impl="xla", dropout_rate=0.0, class_bias=0.5)
    fused = reference.clone(conv_impl="fused", pallas_interpret=True)
    params = reference.init(jax.random.key(1), x)
    assert jax.tree.map(jnp.shape, fused.init(jax.random.key(1), x)) == jax.tree.map(
        jnp.shape, params
    )

    def loss(model):
        def of(p):
            logits = model.apply(p, x)
            return -jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(4), labels])

        return jax.value_and_grad(of)

    value, grads = loss(fused)(params)
    want_value, want_grads = loss(reference)(params)
    np.testing.assert_allclose(value, want_value, rtol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), grads, want_grads)


def test_bfloat16_tail_is_as_close_as_xla_in_bfloat16():
    args = random_tail_args()
    exact = fused_mlpconv.reference(*args)
    low = [a.astype(jnp.bfloat16) for a in args]
    fused = fused_mlpconv.tail(*low, interpret=True).astype(jnp.float32)
    xla = fused_mlpconv.reference(*low).astype(jnp.float32)
    scale = float(jnp.linalg.norm(exact))
    assert (
        float(jnp.linalg.norm(fused - exact)) / scale
        < 2 * float(jnp.linalg.norm(xla - exact) / scale) + 1e-3
    )


# Two CPU devices: the train step on a (2, 1) mesh, fused against XLA, same batch.
TWO_DEVICES = """
import jax, numpy as np
from helpers import load_config
from nin_jax import programs, steps
batch = {"image": np.random.default_rng(0).integers(0, 256, (8, 8, 8, 1), np.uint8),
         "label": np.arange(8, dtype=np.int32) % 10}
results = []
for impl in ("xla", "fused"):
    config = load_config("digits", model__conv_impl=impl, model__dropout_rate=0.0)
    mesh = steps.create_mesh()
    run = programs.build(config, mesh, 10, (8, 8, 1), 10, 100)
    state, rng = run.init()
    stats = {"mean": np.zeros(1, np.float32), "std": np.ones(1, np.float32)}
    state, metrics = run.train(state, steps.to_global(batch, mesh), rng, stats, None)
    results.append((float(metrics["loss"]), jax.tree.leaves(jax.device_get(state.params))))
(loss_a, params_a), (loss_b, params_b) = results
assert abs(loss_a - loss_b) < 1e-6, (loss_a, loss_b)
for a, b in zip(params_a, params_b):
    np.testing.assert_allclose(a, b, atol=1e-6)
print("equal", loss_a)
"""


@pytest.mark.slow
def test_train_step_on_two_devices_equals_xla():
    env = {**os.environ, "XLA_FLAGS": xla_flags(2)}
    tests = os.path.dirname(__file__)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [tests, env.get("PYTHONPATH")]))
    result = subprocess.run(
        [sys.executable, "-c", TWO_DEVICES], env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0 and "equal" in result.stdout, result.stderr[-3000:]


def test_fused_needs_one_model():
    config = load_config("digits", num_models=2, model__conv_impl="fused")
    with pytest.raises(ConfigError, match="model.conv_impl"):
        config_validation.validate(config)
