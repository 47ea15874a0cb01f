"""Health metrics (dead class maps, per-block norms) and the monitor's warnings."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import init_state

from nin_jax import health, models, steps
from nin_jax.datasets import standins

TINY = ((8, 8, 8), (8, 8, 8), (8, 8))
SGD = optax.sgd(0.1, momentum=0.9)  # One optimizer: the tests share their compiled steps.


def test_dead_classes_on_a_hand_made_batch():
    maps = np.zeros((2, 3, 3, 4), np.float32)  # 2 images, 3x3 maps, 4 classes.
    maps[1, 2, 0, 1] = 0.5  # class 1: alive on one pixel of one image only
    maps[:, :, :, 2] = 1.0  # class 2: alive everywhere
    maps[0, 0, 0, 3] = 1e-6  # class 3: barely alive
    # class 0: 0 everywhere for every image -> dead.
    np.testing.assert_array_equal(health.dead_classes(jnp.asarray(maps)), [1.0, 0.0, 0.0, 0.0])
    metrics = health.train_metrics([jnp.ones((2, 4, 4, 5)), jnp.asarray(maps)], {"a": jnp.ones(1)})
    assert float(metrics["dead_class_fraction"]) == 0.25


def test_activation_rms_and_grad_norms_per_block():
    outputs = [jnp.full((2, 4, 4, 3), 2.0), jnp.asarray([[[[3.0, -4.0]]]])]
    rms = health.activation_rms(outputs)
    assert list(rms) == ["mlpconv1", "mlpconv2"]
    assert float(rms["mlpconv1"]) == pytest.approx(2.0)
    assert float(rms["mlpconv2"]) == pytest.approx(math.sqrt(12.5))
    grads = {
        "mlpconv1": {"conv": {"kernel": jnp.full((2, 2), 1.0), "bias": jnp.zeros(3)}},
        "fc": {"kernel": jnp.asarray([3.0, 4.0])},
    }
    norms = health.grad_norms(grads)
    assert float(norms["mlpconv1"]) == pytest.approx(2.0)
    assert float(norms["fc"]) == pytest.approx(5.0)


def real_digits(count: int = 32) -> dict[str, np.ndarray]:
    images, labels = standins.load("8x8x1", "train")
    return {"image": images[:count].astype(np.float32) / 255.0, "label": labels[:count]}


def kill_classes(params, classes: list[int]):
    """The class layer's bias at -1e3 for ``classes`` (their maps are 0 on every input) and
    at +1e3 for the others (alive on every input)."""
    params = jax.tree.map(lambda x: x, params)  # New nested dicts, same arrays.
    layer = params["mlpconv3"]["cccp2"]
    layer["bias"] = jnp.where(jnp.isin(jnp.arange(10), jnp.asarray(classes)), -1e3, 1e3)
    return params


def test_train_step_reports_health_metrics_of_its_batch():
    model = models.NIN(widths=TINY, conv_impl="xla")
    state = init_state(model, (8, 8, 1), SGD)  # The metrics are of the step's own forward pass.
    state = state.replace(params=kill_classes(state.params, [3, 7]))
    _, metrics = jax.jit(steps.train_step)(state, real_digits(), jax.random.key(0))
    np.testing.assert_array_equal(metrics["dead_classes"], np.isin(np.arange(10), [3, 7]))
    assert float(metrics["dead_class_fraction"]) == pytest.approx(0.2)
    block_norms = [float(metrics[f"grad_norm/mlpconv{i}"]) for i in (1, 2, 3)]
    assert math.sqrt(sum(n * n for n in block_norms)) == pytest.approx(
        float(metrics["grad_norm"]), rel=1e-5
    )
    for i in (1, 2, 3):
        assert float(metrics[f"activation_rms/mlpconv{i}"]) > 0
    assert {"loss", "accuracy", "grad_norm", "param_norm"} <= set(metrics)


def window(losses, dead=None, classes: int = 10) -> list[dict]:
    dead = np.zeros(classes) if dead is None else np.asarray(dead, np.float32)
    return [{"loss": np.float32(loss), "dead_classes": dead} for loss in losses]


def test_stall_warning_after_patience_steps_past_the_warmup_once_per_stall():
    monitor = health.HealthMonitor(num_classes=10, warmup_steps=20, patience=20)
    chance = math.log(10)
    assert monitor.update(10, window([chance] * 10)) == []  # still warming up
    assert monitor.update(30, window([chance * 1.005] * 10)) == []  # 10 steps in the band
    (warning,) = monitor.update(40, window([chance] * 10))
    assert warning.startswith("step 40: the loss (2.3026 over the last 10 steps) has stayed")
    assert "within 1% of ln 10 = 2.3026 for 20 steps after the 20 warmup steps" in warning
    assert "config.model.kernel_init" in warning
    assert monitor.update(50, window([chance] * 10)) == []  # the same stall: said once
    assert monitor.update(60, window([0.8 * chance] * 10)) == []  # left the plateau
    assert monitor.update(70, window([chance] * 10)) == []  # back: 10 steps so far
    assert len(monitor.update(80, window([chance] * 10))) == 1  # a new stall


def test_stall_counts_only_the_steps_after_the_warmup():
    """A short run's windows straddle the warmup: its steps neither count nor mask a stall
    (the old rule judged a window of 88 warmup steps and 12 others)."""
    chance = math.log(10)
    monitor = health.HealthMonitor(num_classes=10, warmup_steps=88, patience=20)
    # Steps 1-88 at ln C (warmup), 89-100 learning: the steps after the warmup decide.
    assert monitor.update(100, window([chance] * 88 + [0.5 * chance] * 12)) == []
    monitor = health.HealthMonitor(num_classes=10, warmup_steps=88, patience=20)
    assert monitor.update(100, window([0.5 * chance] * 88 + [chance] * 12)) == []  # 12 < 20
    assert len(monitor.update(110, window([chance] * 10))) == 1  # 22 steps in the band
    default = health.HealthMonitor(num_classes=10, warmup_steps=88)
    run = [default.update(s, window([chance] * 100)) for s in range(100, 288, 100)]
    assert run == [[], []]  # 199 steps after the warmup: too short to call it a stall


def test_dead_class_warning_after_two_consecutive_log_points():
    monitor = health.HealthMonitor(num_classes=4, warmup_steps=0, class_names=list("abcd"))
    alive = window([0.5] * 3, classes=4)
    assert monitor.update(3, alive) == []
    # Class 'c' is dead at every step of two windows; 'b' only at some steps of the second.
    dead_c = window([0.5] * 3, dead=[0, 0, 1, 0])
    assert monitor.update(6, dead_c) == []
    second = window([0.5] * 2, dead=[0, 1, 1, 0]) + window([0.5], dead=[0, 0, 1, 0])
    (warning,) = monitor.update(9, second)
    assert "class(es) c have" in warning and "1 of 4 classes dead" in warning
    assert "config.learning_rate" in warning
    assert monitor.update(12, dead_c) == []  # said once while it stays dead


@pytest.mark.slow
def test_warnings_fire_on_a_run_pinned_at_ln_c():
    """All class maps dead: every logit 0, the loss exactly ln 10, and no gradient."""
    model = models.NIN(widths=TINY, conv_impl="xla")
    state = init_state(model, (8, 8, 1), SGD)
    state = state.replace(params=kill_classes(state.params, list(range(10))))
    train_step = jax.jit(steps.train_step)
    monitor = health.HealthMonitor(num_classes=10, warmup_steps=2, patience=2)
    warnings = []
    for log_point in range(3):
        metrics = []
        for _ in range(2):
            state, m = train_step(state, real_digits(), jax.random.key(0))
            metrics.append(m)
        warnings += monitor.update(2 * (log_point + 1), jax.device_get(metrics))
    assert float(metrics[-1]["loss"]) == pytest.approx(math.log(10), abs=1e-6)
    assert len(warnings) == 2
    assert "stayed within 1% of ln 10" in warnings[0]
    assert "0, 1, 2, 3, 4, 5, 6, 7, 8, 9" in warnings[1] and "10 of 10" in warnings[1]


def test_monitor_rejects_fewer_than_two_classes():
    with pytest.raises(ValueError, match="num_classes must be at least 2"):
        health.HealthMonitor(num_classes=1, warmup_steps=0)
