"""The jitted train step: it learns a fixed batch, and 4 devices train exactly as 1."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import optax
import pytest
from helpers import REPO_ROOT, SCRIPTS, init_state, load_config, xla_flags

from nin_jax import models, optimizer, steps
from nin_jax.datasets import standins

sys.path.insert(0, str(SCRIPTS))
import train_fixed_batch  # noqa: E402


def test_loss_decreases_on_a_fixed_batch():
    """16 real digits, learned by a narrow network in 40 steps (2.30 -> 1.19 when written)."""
    config = load_config(
        "digits", learning_rate=0.01, model__dropout_rate=0.0, model__kernel_init="he_normal"
    )
    config.model.widths = ((32, 32, 32), (32, 32, 32), (32, 32))
    model = models.from_config(config, num_classes=10)
    tx = optimizer.create_optimizer(config, optax.constant_schedule(config.learning_rate))
    state = init_state(model, (8, 8, 1), tx)
    images, labels = standins.load("8x8x1", "train")
    images = images[:16].astype(np.float32)
    batch = {
        "image": (images - images.mean()) / images.std(),
        "label": labels[:16].astype(np.int32),
    }
    step = jax.jit(steps.train_step)
    losses = []
    for _ in range(40):
        state, metrics = step(state, batch, jax.random.key(1))
        losses.append(float(metrics["loss"]))
    assert int(state.step) == 40
    assert losses[-1] < 0.7 * losses[0], losses
    assert np.mean(losses[-10:]) < np.mean(losses[:10])


def fixed_batch_training_on_four_devices() -> dict:
    env = {
        **os.environ,
        "XLA_FLAGS": xla_flags(4),
        "PYTHONPATH": str(REPO_ROOT),
    }
    out = subprocess.run(
        [sys.executable, str(SCRIPTS / "train_fixed_batch.py")],
        env=env, capture_output=True, text=True, timeout=300, check=True,
    )  # fmt: skip
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_four_devices_give_the_same_training_as_one():
    """One model (batch on 'data') and two models (a 2 x 2 'data' x 'model' mesh)."""
    four = fixed_batch_training_on_four_devices()
    for num_models in (1, 2):
        one = train_fixed_batch.fixed_batch_training(num_models)  # This process: one device.
        other = four[str(num_models)]
        assert (one["devices"], other["devices"]) == (1, 4)
        np.testing.assert_allclose(other["losses"], one["losses"], rtol=1e-5)
        assert other["checksum"] == pytest.approx(one["checksum"], rel=1e-5)
