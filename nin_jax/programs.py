"""A run's compiled programs, built by one function for the trainer and the AOT planner.

``build`` gives the model, the learning-rate schedule, the jitted initialisation
of the train state and the jitted train and eval steps for a config on a mesh.
``nin_jax.train`` runs them on the mesh of the devices it has; ``nin_jax.aot``
lowers the same functions on ``abstract_inputs`` (shapes, dtypes and shardings
of what the trainer feeds them) for a TPU slice it does not have, so what is
planned is what trains.
"""

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
import ml_collections
import optax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from nin_jax import ensemble, models, optimizer, preprocessing, steps
from nin_jax.errors import ConfigError

Abstract = jax.ShapeDtypeStruct


@dataclasses.dataclass(frozen=True)
class Programs:
    """``init() -> (state, dropout_rng)``, placed on the mesh (``jax.eval_shape(init)``: their
    abstract values); ``train(state, batch, dropout_rng, stats, table) -> (state, metrics)``
    (donates the state) and ``eval(state, batch, stats) -> sums`` (``steps.compile_steps``)."""

    model: models.NIN
    learning_rate_fn: optax.Schedule
    init: Callable[[], tuple[steps.TrainState, jax.Array]]
    train: Callable
    eval: Callable


def platform(mesh: Mesh) -> str:
    """The platform of the mesh's devices ('cpu', 'gpu', 'tpu'): where the programs run."""
    return mesh.devices.flat[0].platform


def build(
    config: ml_collections.ConfigDict,
    mesh: Mesh,
    num_classes: int,
    image_shape: tuple[int, ...],
    steps_per_epoch: int,
    total_steps: int,
) -> Programs:
    """The programs of ``config`` on ``mesh`` (``steps.create_mesh``); the model's
    ``conv_impl='auto'`` resolves for the mesh's platform, not for this process's backend."""
    if config.model.conv_impl == "fused" and platform(mesh) == "gpu":
        raise ConfigError(
            "config.model.conv_impl='fused' is a TPU kernel; on a GPU use 'xla' or 'auto'"
        )
    model = models.from_config(config, num_classes, platform(mesh))
    learning_rate_fn, tx = optimizer.create(config, steps_per_epoch, total_steps)
    init = ensemble.state_initializer(config, model, image_shape, tx, mesh)
    inputs = steps.Inputs(config.preprocess, config.augment, config.seed, config.dtype)
    jit_train, jit_eval = steps.compile_steps(mesh, inputs, config.num_models)
    return Programs(model, learning_rate_fn, init, jit_train, jit_eval)


@dataclasses.dataclass(frozen=True)
class AbstractInputs:
    """What the trainer hands the steps, as ``jax.ShapeDtypeStruct`` with shardings."""

    train_batch: dict[str, Abstract]  # uint8 images and int32 labels, or int32 row indices
    eval_batch: dict[str, Abstract]  # uint8 images, int32 labels, float32 mask
    stats: dict[str, Abstract]  # the preprocessing statistics (float32), replicated
    table: dict[str, Abstract] | None  # the training split on the devices, or None


def abstract_inputs(
    config: ml_collections.ConfigDict,
    mesh: Mesh,
    image_shape: tuple[int, ...],
    train_examples: int,
) -> AbstractInputs:
    """The abstract global batches (on 'data'), statistics and table (replicated) of a run of
    ``config`` on ``mesh`` whose training split has ``train_examples`` examples."""
    data, replicated = NamedSharding(mesh, P("data")), NamedSharding(mesh, P())
    batch = config.batch_size

    def on(sharding, shape, dtype) -> Abstract:
        return Abstract(shape, dtype, sharding=sharding)

    images = {
        "image": on(data, (batch, *image_shape), jnp.uint8),
        "label": on(data, (batch,), jnp.int32),
    }
    table = None
    if config.data_on_device:
        train_batch = {"index": on(data, (batch,), jnp.int32)}
        table = {
            "image": on(replicated, (train_examples, *image_shape), jnp.uint8),
            "label": on(replicated, (train_examples,), jnp.int32),
        }
    else:
        train_batch = images
    shapes = preprocessing.stats_shapes(config.preprocess, image_shape)
    return AbstractInputs(
        train_batch=train_batch,
        eval_batch={**images, "mask": on(data, (batch,), jnp.float32)},
        stats={name: on(replicated, shape, jnp.float32) for name, shape in shapes.items()},
        table=table,
    )
