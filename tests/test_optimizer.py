"""The learning-rate schedule and SGD's weight decay."""

import jax
import numpy as np
import optax
import pytest
from helpers import load_config

from nin_jax import optimizer


def test_learning_rate_warms_up_then_decays():
    config = load_config("digits", learning_rate=0.1, warmup_epochs=1.0)
    cosine = optimizer.create_learning_rate_fn(config, steps_per_epoch=10, total_steps=30)
    assert float(cosine(0)) == 0.0
    assert float(cosine(5)) == pytest.approx(0.05)
    assert float(cosine(10)) == pytest.approx(0.1)
    assert float(cosine(30)) == pytest.approx(0.0, abs=1e-7)
    config.update({"lr_schedule": "step", "lr_decay_epochs": (2,), "lr_decay_factor": 0.1})
    stepwise = optimizer.create_learning_rate_fn(config, steps_per_epoch=10, total_steps=30)
    assert [float(stepwise(s)) for s in (15, 25)] == pytest.approx([0.1, 0.01])


def test_logged_learning_rate_is_each_swept_models():
    config = load_config("digits", learning_rate=0.1, warmup_epochs=1.0)
    assert optimizer.logged_learning_rate(config, 10, 30)(5) == pytest.approx(0.05)
    config.num_models = 2
    config.sweep.learning_rate = (0.2, 0.4)
    assert optimizer.logged_learning_rate(config, 10, 30)(5) == pytest.approx([0.1, 0.2])


def test_weight_decay_applies_to_kernels_only():
    params = {"conv": {"kernel": np.ones((1, 1, 2, 2)), "bias": np.ones(2)}}
    tx = optimizer.create_optimizer(
        load_config("digits", weight_decay=0.5, momentum=0.0), optax.constant_schedule(1.0)
    )
    zeros = jax.tree.map(np.zeros_like, params)
    updates, _ = tx.update(zeros, tx.init(params), params)
    np.testing.assert_allclose(updates["conv"]["kernel"], -0.5)
    np.testing.assert_allclose(updates["conv"]["bias"], 0.0)
