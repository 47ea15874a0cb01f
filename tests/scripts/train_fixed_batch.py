"""Runs a few train steps on one fixed global batch and prints losses and a params checksum.

Run under different XLA_FLAGS=--xla_force_host_platform_device_count=N to compare device counts,
or call ``fixed_batch_training`` in a process that already has its devices.
"""

import json
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/, for helpers
from helpers import load_config  # noqa: E402

from nin_jax import models, optimizer, steps  # noqa: E402


def fixed_batch_training() -> dict:
    """Losses of 3 steps and the final parameters' absolute sum, on this process's devices."""
    config = load_config("cifar10", batch_size=16)
    mesh = steps.create_mesh()
    model = models.from_config(config, num_classes=10)
    tx = optimizer.create_optimizer(config, optimizer.create_learning_rate_fn(config, 10, 10))
    init = jax.jit(
        lambda rng: steps.create_train_state(rng, model, (16, 16, 3), tx),
        out_shardings=NamedSharding(mesh, P()),
    )
    state = init(jax.random.key(0))
    rng = np.random.default_rng(0)
    batch = {
        "image": rng.normal(size=(16, 16, 16, 3)).astype(np.float32),
        "label": rng.integers(0, 10, 16).astype(np.int32),
    }
    jit_train, _ = steps.compile_steps(mesh)
    losses = []
    for _ in range(3):
        state, metrics = jit_train(state, steps.to_global(batch, mesh), jax.random.key(1))
        losses.append(float(metrics["loss"]))
    checksum = float(sum(jnp.sum(jnp.abs(p)) for p in jax.tree.leaves(state.params)))
    return {"devices": jax.device_count(), "losses": losses, "checksum": checksum}


if __name__ == "__main__":
    print(json.dumps(fixed_batch_training()))
