"""Runs a few train steps on one fixed uint8 global batch (standardised and cropped/flipped on
the devices) and prints the losses and a checksum of the parameters.

Run under different XLA_FLAGS=--xla_force_host_platform_device_count=N to compare device counts,
or call ``fixed_batch_training`` in a process that already has its devices.
"""

import json
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/, for helpers
from helpers import load_config  # noqa: E402

from nin_jax import ensemble, models, optimizer, steps  # noqa: E402


def fixed_batch_training(num_models: int) -> dict:
    """Losses of 3 steps and the final parameters' absolute sum, on this process's devices
    (``num_models`` models, with a learning-rate sweep when there are several)."""
    config = load_config(
        "cifar10_augmented", batch_size=16, preprocess="standardize", num_models=num_models
    )
    if num_models > 1:
        config.sweep.learning_rate = tuple(0.01 * (k + 1) for k in range(num_models))
    mesh = steps.create_mesh(num_models)
    model = models.from_config(config, num_classes=10)
    _, tx = optimizer.create(config, steps_per_epoch=10, total_steps=10)
    state, dropout_rng = ensemble.create_state(config, model, (16, 16, 3), tx, mesh)
    rng = np.random.default_rng(0)
    batch = {
        "image": rng.integers(0, 256, (16, 16, 16, 3), dtype=np.uint8),
        "label": rng.integers(0, 10, 16).astype(np.int32),
    }
    stats = steps.replicate(
        {"mean": np.full(3, 120.0, np.float32), "std": np.full(3, 60.0, np.float32)}, mesh
    )
    inputs = steps.Inputs(config.preprocess, config.augment, config.seed, config.dtype)
    jit_train, _ = steps.compile_steps(mesh, inputs, num_models)
    losses = []
    for _ in range(3):
        global_batch = steps.to_global(batch, mesh)
        state, metrics = jit_train(state, global_batch, dropout_rng, stats, None)
        losses.append(np.asarray(metrics["loss"]).tolist())
    checksum = float(sum(jnp.sum(jnp.abs(p)) for p in jax.tree.leaves(state.params)))
    return {"devices": jax.device_count(), "losses": losses, "checksum": checksum}


if __name__ == "__main__":
    print(json.dumps({k: fixed_batch_training(k) for k in (1, 2)}))
