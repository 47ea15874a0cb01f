"""The optimizer: SGD with momentum and weight decay, and its learning-rate schedule, from a config.

Weight decay is added to the kernels' gradients before momentum, as PyTorch's SGD
does. ``config.lr_multipliers`` applies the authors' per-layer rates (biases 2x,
the class layer 0.1x the base rate).

When ``config.sweep`` gives per-model learning rates or weight decays, the
optimizer is wrapped in ``optax.inject_hyperparams``: the peak learning rate and
the weight decay become arrays of its state, one value per model
(``set_hyperparameters``), and one compiled step serves every value.
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp
import ml_collections
import optax

INJECTED = ("learning_rate", "weight_decay")  # The sweepable hyperparameters of the optimizer.


def create_learning_rate_fn(
    config: ml_collections.ConfigDict,
    steps_per_epoch: int,
    total_steps: int,
    peak: float | None = None,
) -> optax.Schedule:
    """Linear warmup from 0 to ``peak`` (default ``config.learning_rate``), then the
    configured decay."""
    warmup_steps = min(int(config.warmup_epochs * steps_per_epoch), total_steps)
    peak = config.learning_rate if peak is None else peak
    if config.lr_schedule == "cosine":
        decay = optax.cosine_decay_schedule(peak, max(1, total_steps - warmup_steps))
    elif config.lr_schedule == "step":
        boundaries = {
            int(epoch * steps_per_epoch) - warmup_steps: config.lr_decay_factor
            for epoch in config.lr_decay_epochs
        }
        decay = optax.piecewise_constant_schedule(peak, boundaries)
    else:  # 'constant'; config_validation.validate admits nothing else.
        decay = optax.constant_schedule(peak)
    warmup = optax.linear_schedule(0.0, peak, warmup_steps)
    return optax.join_schedules([warmup, decay], [warmup_steps])


def logged_learning_rate(
    config: ml_collections.ConfigDict, steps_per_epoch: int, total_steps: int
) -> Callable[[int], float | list[float]]:
    """The learning rate after ``count`` updates as the training log reports it: the
    config's schedule, or each model's when ``config.sweep`` gives per-model rates."""
    peaks = config.sweep.learning_rate
    if not len(peaks):
        schedule = create_learning_rate_fn(config, steps_per_epoch, total_steps)
        return lambda count: float(schedule(count))
    schedules = [
        create_learning_rate_fn(config, steps_per_epoch, total_steps, peak=peak) for peak in peaks
    ]
    return lambda count: [float(schedule(count)) for schedule in schedules]


def kernels_only(params):
    """Weight decay mask: convolution and dense kernels yes, biases no."""
    return jax.tree_util.tree_map_with_path(
        lambda path, _: getattr(path[-1], "key", None) == "kernel", params
    )


def authors_lr_multipliers(params):
    """The authors' per-layer rates: biases 2x, the class layer (last block's cccp2) 0.1x."""
    last_block = f"mlpconv{sum(name.startswith('mlpconv') for name in params)}"

    def multiplier(path, _) -> float:
        keys = [getattr(p, "key", None) for p in path]
        scale = 2.0 if keys[-1] == "bias" else 1.0
        return scale * 0.1 if keys[:2] == [last_block, "cccp2"] else scale

    return jax.tree_util.tree_map_with_path(multiplier, params)


def scale_updates(multipliers_fn: Callable) -> optax.GradientTransformation:
    """Multiplies each update by a per-parameter constant: with SGD, a per-layer learning rate."""

    def update(updates, state, params=None):
        del params
        return jax.tree.map(jnp.multiply, updates, multipliers_fn(updates)), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def _sgd(
    config: ml_collections.ConfigDict, learning_rate: optax.ScalarOrSchedule, weight_decay
) -> optax.GradientTransformation:
    return optax.chain(
        optax.add_decayed_weights(weight_decay, mask=kernels_only),
        optax.sgd(learning_rate, momentum=config.momentum, nesterov=config.nesterov),
        scale_updates(authors_lr_multipliers) if config.lr_multipliers else optax.identity(),
    )


def is_injected(config: ml_collections.ConfigDict) -> bool:
    """Whether the sweep gives per-model optimizer hyperparameters."""
    return any(len(config.sweep[name]) for name in INJECTED)


def create_optimizer(
    config: ml_collections.ConfigDict, learning_rate_fn: optax.Schedule
) -> optax.GradientTransformation:
    """SGD with momentum; weight decay added to the kernels' gradients (PyTorch-style).

    ``learning_rate_fn`` is the schedule of ``create_learning_rate_fn``; with a
    sweep it must be that of peak 1, scaled by each model's peak learning rate.
    """
    if not is_injected(config):
        return _sgd(config, learning_rate_fn, config.weight_decay)

    def scaled_sgd(learning_rate, weight_decay):
        return _sgd(config, lambda count: learning_rate * learning_rate_fn(count), weight_decay)

    return optax.inject_hyperparams(scaled_sgd)(
        learning_rate=config.learning_rate, weight_decay=config.weight_decay
    )


def set_hyperparameters(opt_state, values: dict[str, jax.Array]):
    """``opt_state`` of an injected optimizer with its hyperparameters set to ``values``
    (e.g. one model's ``learning_rate`` and ``weight_decay``)."""
    hyperparams = dict(opt_state.hyperparams)
    for name, value in values.items():
        hyperparams[name] = jnp.asarray(value, hyperparams[name].dtype)
    return opt_state._replace(hyperparams=hyperparams)


def create(
    config: ml_collections.ConfigDict, steps_per_epoch: int, total_steps: int
) -> tuple[optax.Schedule, optax.GradientTransformation]:
    """(the learning-rate schedule of ``config``, the optimizer that follows it).

    With per-model learning rates (``config.sweep``) the optimizer scales a schedule
    of peak 1 by each model's rate; the schedule returned is the config's own.
    """
    learning_rate_fn = create_learning_rate_fn(config, steps_per_epoch, total_steps)
    if not is_injected(config):
        return learning_rate_fn, create_optimizer(config, learning_rate_fn)
    unit = create_learning_rate_fn(config, steps_per_epoch, total_steps, peak=1.0)
    return learning_rate_fn, create_optimizer(config, unit)
