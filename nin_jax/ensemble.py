"""Many models in one compiled step: ``config.num_models = K`` NINs trained on the same batches.

Model ``k`` is initialised, and draws its dropout masks, from seed
``init_seed + k`` (``config.init_seed``, default ``config.seed``), so model
``k`` of an ensemble computes what the one-model run with ``--config.init_seed``
set to that seed computes (up to the rounding of the batched arithmetic). The
data order and augmentation follow ``config.seed`` and are shared.
``config.sweep.<field>`` gives K values of a hyperparameter, one per model
(``learning_rate``, ``weight_decay``, ``dropout_rate``): they travel as arrays
in the train state (the optimizer's ``inject_hyperparams`` state and
``TrainState.dropout_rate``), so one compiled step serves every value.

The train state is stacked on a leading model axis and the step is
``jax.vmap`` of ``steps.train_step``, on the ``('data', 'model')`` mesh of
``steps.create_mesh``: the stacked state is split along 'model', whose size is
the largest number dividing both K and each process's device count (1 when
they share no factor: every device then holds every model), and the batch along
'data'. With K = 1 nothing is stacked: checkpoints and results are those of a
single model.
"""

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.sharding import Mesh

from nin_jax import models, optimizer, steps


def init_seeds(config: ml_collections.ConfigDict) -> list[int]:
    """The seed of each model's initialisation and dropout."""
    first = config.seed if config.init_seed is None else config.init_seed
    return [first + k for k in range(config.num_models)]


def swept(config: ml_collections.ConfigDict) -> dict[str, tuple[float, ...]]:
    """The hyperparameters given per model (``config.sweep``), by name."""
    return {name: tuple(values) for name, values in config.sweep.items() if len(values)}


def model_hyperparameters(config: ml_collections.ConfigDict) -> list[dict[str, Any]]:
    """Per model: its init seed and the value of every swept hyperparameter."""
    sweep = swept(config)
    return [
        {"init_seed": seed, **{name: values[k] for name, values in sweep.items()}}
        for k, seed in enumerate(init_seeds(config))
    ]


def state_initializer(
    config: ml_collections.ConfigDict,
    model: models.NIN,
    image_shape: tuple[int, ...],
    tx: optax.GradientTransformation,
    mesh: Mesh,
) -> Callable[[], tuple[steps.TrainState, jax.Array]]:
    """A jitted function of no arguments returning the initial train state and the dropout
    key(s), placed on ``mesh`` (``jax.eval_shape`` of it: their shapes and shardings).

    One model: ``split(key(init_seed))``, unstacked. K models: model k's keys are
    ``split(key(init_seed + k))`` and the state is stacked on a leading axis, each
    model's swept hyperparameters set in it.
    """
    seeds = init_seeds(config)
    values = {name: np.asarray(v, np.float32) for name, v in swept(config).items()}

    def create_one(rng: jax.Array, hyperparameters: dict[str, jax.Array]) -> steps.TrainState:
        state = steps.create_train_state(rng, model, image_shape, tx)
        injected = {k: v for k, v in hyperparameters.items() if k in optimizer.INJECTED}
        if injected:
            state = state.replace(
                opt_state=optimizer.set_hyperparameters(state.opt_state, injected)
            )
        if "dropout_rate" in hyperparameters:
            state = state.replace(dropout_rate=hyperparameters["dropout_rate"])
        return state

    def create() -> tuple[steps.TrainState, jax.Array]:
        keys = jnp.stack([jax.random.split(jax.random.key(seed)) for seed in seeds])
        params_rngs, dropout_rngs = keys[:, 0], keys[:, 1]
        if config.num_models == 1:
            first = {name: v[0] for name, v in values.items()}
            return create_one(params_rngs[0], first), dropout_rngs[0]
        return jax.vmap(create_one)(params_rngs, values), dropout_rngs

    sharding = steps.state_sharding(mesh, config.num_models)
    return jax.jit(create, out_shardings=(sharding, sharding))


def create_state(
    config: ml_collections.ConfigDict,
    model: models.NIN,
    image_shape: tuple[int, ...],
    tx: optax.GradientTransformation,
    mesh: Mesh,
) -> tuple[steps.TrainState, jax.Array]:
    """The initial train state, placed on ``mesh``, and the dropout key(s)
    (``state_initializer``'s)."""
    return state_initializer(config, model, image_shape, tx, mesh)()


def results(config: ml_collections.ConfigDict, metrics: dict[str, Any]) -> dict[str, Any]:
    """The keys ``results.json`` adds for K models: each model's hyperparameters and test
    error, the ensemble's, and the mean and std of the models' errors."""
    models_ = [
        {**hyper, "test_accuracy": m["accuracy"], "test_error": m["error"]}
        for hyper, m in zip(model_hyperparameters(config), metrics["models"], strict=True)
    ]
    errors = np.array([m["test_error"] for m in models_])
    return {
        "models": models_,
        "ensemble_test_accuracy": metrics["accuracy"],
        "ensemble_test_error": metrics["error"],
        "mean_test_error": float(errors.mean()),
        "std_test_error": float(errors.std()),
    }
