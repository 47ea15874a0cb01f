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
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/, for helpers
from helpers import load_config  # noqa: E402

from nin_jax import models, optimizer, steps  # noqa: E402


def fixed_batch_training() -> dict:
    """Losses of 3 steps and the final parameters' absolute sum, on this process's devices."""
    config = load_config("cifar10_augmented", batch_size=16, preprocess="standardize")
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
        "image": rng.integers(0, 256, (16, 16, 16, 3), dtype=np.uint8),
        "label": rng.integers(0, 10, 16).astype(np.int32),
    }
    stats = steps.replicate(
        {"mean": np.full(3, 120.0, np.float32), "std": np.full(3, 60.0, np.float32)}, mesh
    )
    inputs = steps.Inputs(config.preprocess, config.augment, config.seed)
    jit_train, _ = steps.compile_steps(mesh, inputs)
    losses = []
    for _ in range(3):
        global_batch = steps.to_global(batch, mesh)
        state, metrics = jit_train(state, global_batch, jax.random.key(1), stats, None)
        losses.append(float(metrics["loss"]))
    checksum = float(sum(jnp.sum(jnp.abs(p)) for p in jax.tree.leaves(state.params)))
    return {"devices": jax.device_count(), "losses": losses, "checksum": checksum}


if __name__ == "__main__":
    print(json.dumps(fixed_batch_training()))
