"""The jitted train and eval steps, the train state they update, and the mesh they run on.

The batch is sharded along the mesh axis 'data' and the train state is
replicated; XLA inserts the gradient all-reduce. The same code runs on one CPU,
on several devices of one host and on many hosts (after
``jax.distributed.initialize``). Nothing here imports TensorFlow.
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax.training import train_state
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from nin_jax import health
from nin_jax.models import NIN


class TrainState(train_state.TrainState):
    """Flax's TrainState (step, params, opt_state; apply_fn and tx are static)."""


def create_mesh() -> jax.sharding.Mesh:
    """A 1-D mesh named 'data' over every device of every process."""
    return jax.make_mesh((jax.device_count(),), ("data",), axis_types=(jax.sharding.AxisType.Auto,))


def create_train_state(
    rng: jax.Array,
    model: NIN,
    image_shape: tuple[int, ...],
    optimizer: optax.GradientTransformation,
) -> TrainState:
    """Initial state; call under ``jax.jit(..., out_shardings=...)`` to place it."""
    params = model.init(rng, jnp.zeros((1, *image_shape), jnp.float32), train=False)["params"]
    return TrainState.create(apply_fn=model.apply, params=params, tx=optimizer)


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels)


def train_step(
    state: TrainState, batch: dict[str, jax.Array], dropout_rng: jax.Array
) -> tuple[TrainState, dict[str, jax.Array]]:
    """One SGD step on a global batch; dropout randomness is a function of (rng, step).

    Metrics: scalars ``loss``, ``accuracy``, ``grad_norm``, ``param_norm`` and
    the health metrics of ``nin_jax.health.train_metrics`` (of this step's
    forward pass and gradients), among them the vector ``dead_classes``.
    """
    step_rng = jax.random.fold_in(dropout_rng, state.step)

    def loss_fn(params):
        logits, variables = state.apply_fn(
            {"params": params},
            batch["image"],
            train=True,
            rngs={"dropout": step_rng},
            mutable=["intermediates"],
        )
        outputs = variables["intermediates"]["block_outputs"]
        return cross_entropy(logits, batch["label"]).mean(), (logits, outputs)

    (loss, (logits, outputs)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    new_state = state.apply_gradients(grads=grads)
    accuracy = jnp.mean(jnp.argmax(logits, -1) == batch["label"])
    return new_state, {
        "loss": loss,
        "accuracy": accuracy,
        "grad_norm": optax.tree.norm(grads),
        "param_norm": optax.tree.norm(new_state.params),
        **health.train_metrics(outputs, grads),
    }


def eval_step(state: TrainState, batch: dict[str, jax.Array]) -> dict[str, jax.Array]:
    """Sums over the real (mask == 1) examples of a padded batch."""
    logits = state.apply_fn({"params": state.params}, batch["image"], train=False)
    mask = batch["mask"]
    correct = (jnp.argmax(logits, -1) == batch["label"]) * mask
    return {
        "loss_sum": jnp.sum(cross_entropy(logits, batch["label"]) * mask),
        "correct": jnp.sum(correct),
        "count": jnp.sum(mask),
    }


def compile_steps(mesh: jax.sharding.Mesh) -> tuple[Callable, Callable]:
    """``train_step`` and ``eval_step`` jitted for this mesh: batch on 'data', state replicated."""
    replicated = NamedSharding(mesh, P())
    data = NamedSharding(mesh, P("data"))
    jit_train = jax.jit(
        train_step,
        in_shardings=(replicated, data, replicated),
        out_shardings=(replicated, replicated),
        donate_argnums=(0,),
    )
    jit_eval = jax.jit(eval_step, in_shardings=(replicated, data), out_shardings=replicated)
    return jit_train, jit_eval


def to_global(batch: dict[str, np.ndarray], mesh: jax.sharding.Mesh) -> dict[str, jax.Array]:
    """Assembles each process's local batch into one global array sharded on 'data'."""
    sharding = NamedSharding(mesh, P("data"))
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), batch)
