"""Training and evaluation: one jitted step over a 1-D 'data' device mesh, Orbax checkpoints.

The batch is sharded along the mesh axis 'data' and the train state is
replicated; XLA inserts the gradient all-reduce. The same code runs on one CPU,
on several devices of one host and on many hosts (after
``jax.distributed.initialize``).
"""

import functools
import json
import math
import os
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp
from absl import logging
from flax.training import train_state
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from nin_jax import input_pipeline, preemption, preprocessing, reporting, restore, splits
from nin_jax.models import NIN

Metrics = dict[str, float]


class TrainingError(RuntimeError):
    """Training cannot go on (bad workdir, non-finite loss, ...); the message says why."""


class TrainState(train_state.TrainState):
    """Flax's TrainState (step, params, opt_state; apply_fn and tx are static)."""


def create_mesh() -> jax.sharding.Mesh:
    """A 1-D mesh named 'data' over every device of every process."""
    return jax.make_mesh((jax.device_count(),), ("data",), axis_types=(jax.sharding.AxisType.Auto,))


def create_model(config: ml_collections.ConfigDict, num_classes: int) -> NIN:
    dtypes = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
    if config.dtype not in dtypes:
        raise ValueError(f"config.dtype must be one of {sorted(dtypes)}, got {config.dtype!r}")
    model_config = config.model.to_dict()
    return NIN(num_classes=num_classes, dtype=dtypes[config.dtype], **model_config)


def create_preprocess(
    config: ml_collections.ConfigDict, builder, train_split: input_pipeline.Split
) -> tuple[preprocessing.Preprocess, dict[str, np.ndarray]]:
    """``config.preprocess`` fitted on the training examples (ZCA cached next to the data),
    and its fitted statistics."""
    split_name = config.train_split + ("-validation" if config.validation else "")
    root = config.data_dir or builder.data_dir_root
    stats_file = preprocessing.stats_path(root, config.dataset, split_name)
    params = preprocessing.fit(config.preprocess, train_split, stats_file)
    return preprocessing.from_params(config.preprocess, params), params


def create_learning_rate_fn(
    config: ml_collections.ConfigDict, steps_per_epoch: int, total_steps: int
) -> optax.Schedule:
    """Linear warmup to ``config.learning_rate``, then the configured decay."""
    warmup_steps = min(int(config.warmup_epochs * steps_per_epoch), total_steps)
    peak = config.learning_rate
    if config.lr_schedule == "cosine":
        decay = optax.cosine_decay_schedule(peak, max(1, total_steps - warmup_steps))
    elif config.lr_schedule == "step":
        decay = optax.piecewise_constant_schedule(
            peak,
            {
                int(epoch * steps_per_epoch) - warmup_steps: config.lr_decay_factor
                for epoch in config.lr_decay_epochs
            },
        )
    elif config.lr_schedule == "constant":
        decay = optax.constant_schedule(peak)
    else:
        raise ValueError(
            f"config.lr_schedule must be 'cosine', 'step' or 'constant', got {config.lr_schedule!r}"
        )
    warmup = optax.linear_schedule(0.0, peak, warmup_steps)
    return optax.join_schedules([warmup, decay], [warmup_steps])


def _kernels_only(params):
    """Weight decay mask: convolution kernels yes, biases no."""
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


def create_optimizer(
    config: ml_collections.ConfigDict, learning_rate_fn: optax.Schedule
) -> optax.GradientTransformation:
    """SGD with momentum; weight decay added to the kernels' gradients (PyTorch-style)."""
    return optax.chain(
        optax.add_decayed_weights(config.weight_decay, mask=_kernels_only),
        optax.sgd(learning_rate_fn, momentum=config.momentum, nesterov=config.nesterov),
        scale_updates(authors_lr_multipliers) if config.lr_multipliers else optax.identity(),
    )


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
    """One SGD step on a global batch; dropout randomness is a function of (rng, step)."""
    step_rng = jax.random.fold_in(dropout_rng, state.step)

    def loss_fn(params):
        logits = state.apply_fn(
            {"params": params}, batch["image"], train=True, rngs={"dropout": step_rng}
        )
        return cross_entropy(logits, batch["label"]).mean(), logits

    (loss, logits), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    new_state = state.apply_gradients(grads=grads)
    accuracy = jnp.mean(jnp.argmax(logits, -1) == batch["label"])
    return new_state, {
        "loss": loss,
        "accuracy": accuracy,
        "grad_norm": optax.tree.norm(grads),
        "param_norm": optax.tree.norm(new_state.params),
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


def to_global(batch: input_pipeline.Batch, mesh: jax.sharding.Mesh) -> dict[str, jax.Array]:
    """Assembles each process's local batch into one global array sharded on 'data'."""
    sharding = NamedSharding(mesh, P("data"))
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), batch)


def evaluate(jit_eval: Callable, state: TrainState, batches, mesh) -> Metrics:
    totals = None
    for batch in batches:
        sums = jit_eval(state, to_global(batch, mesh))
        totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
    totals = jax.device_get(totals)
    count = float(totals["count"])
    accuracy = float(totals["correct"]) / count
    return {
        "loss": float(totals["loss_sum"]) / count,
        "accuracy": accuracy,
        "error": 1.0 - accuracy,
        "examples": int(count),
    }


def total_over_processes(count: int) -> int:
    if jax.process_count() == 1:
        return count
    from jax.experimental import multihost_utils

    return int(np.sum(multihost_utils.process_allgather(np.array(count))))


def check_workdir(workdir: str) -> None:
    """Fails early, with one clear line, when ``workdir`` cannot hold checkpoints."""
    if "://" in workdir:  # gs:// and other remote paths: let Orbax/TF check them.
        return
    try:
        os.makedirs(workdir, exist_ok=True)
        probe = os.path.join(workdir, f".write_test_{jax.process_index()}")
        with open(probe, "w") as f:
            f.write("ok")
        os.remove(probe)
    except OSError as e:
        raise TrainingError(f"workdir {workdir!r} is not writable: {e.strerror}") from e


def create_checkpoint_manager(
    workdir: str, config: ml_collections.ConfigDict
) -> ocp.CheckpointManager:
    directory = workdir if "://" in workdir else os.path.abspath(workdir)
    # Temporary directories of a save cut short (SIGKILL) are never restored; remove them.
    options = ocp.CheckpointManagerOptions(
        max_to_keep=config.max_checkpoints, create=True, cleanup_tmp_directories=True
    )
    return ocp.CheckpointManager(os.path.join(directory, "checkpoints"), options=options)


def restore_or_keep(manager: ocp.CheckpointManager, state: TrainState) -> TrainState:
    """The newest readable checkpoint restored onto ``state``'s shardings, or ``state`` if none.

    The shardings come from ``state``, not from the checkpoint, so a run saved
    on N devices resumes on any other number. Newer steps that cannot be read
    (a save cut short on a file system without atomic renames, e.g. gcsfuse) are
    deleted once an older one restores, to be trained and saved again; if none
    restores (e.g. the config changed), nothing is deleted.
    """
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
    unreadable = []
    for step in sorted(manager.all_steps(), reverse=True):
        try:
            restored = manager.restore(step, args=ocp.args.StandardRestore(abstract))
        except Exception as e:  # Orbax, TensorStore and the file system raise many types.
            unreadable.append((step, e))
            continue
        for bad_step, error in unreadable:
            logging.warning("Deleting the unreadable checkpoint at step %d: %s", bad_step, error)
            manager.delete(bad_step)
        logging.info("Resuming from the checkpoint at step %d.", step)
        return restored
    if unreadable:
        step, error = unreadable[0]
        raise TrainingError(
            f"no checkpoint in {manager.directory} can be restored: the newest (step {step}) "
            f"does not fit this config's model ({type(error).__name__}: "
            f"{str(error).splitlines()[0]}); use another workdir"
        ) from error
    return state


def check_finite(window_metrics: list[dict[str, Any]], step: int, workdir: str) -> None:
    """Stops training on a NaN/Inf loss before anything is saved from that state.

    The parameters' norm is checked too: a step's loss is computed before its
    update, so a diverging update shows there one step before it shows in the loss.
    """
    for key, name in (("param_norm", "the parameters' norm"), ("loss", "loss")):
        values = np.array([m[key] for m in window_metrics])
        if not np.all(np.isfinite(values)):
            raise TrainingError(
                f"{name} became {values[~np.isfinite(values)][0]} by step {step}; "
                f"the last good checkpoint is kept in {workdir}"
            )


def write_json(path: str, payload: dict[str, Any]) -> None:
    if jax.process_index() == 0:
        with open(path, "w") as f:
            json.dump(payload, f, indent=2, sort_keys=True)


def stop_after_preemption(
    manager: ocp.CheckpointManager, watcher: preemption.PreemptionWatcher, step: int
) -> None:
    """Waits for the checkpoint of ``step`` to be written, then raises ``Preempted``."""
    manager.wait_until_finished()
    manager.close()
    watcher.close()
    logging.warning("Preempted: saved the checkpoint of step %d; exiting.", step)
    raise preemption.Preempted(step)


def train_and_evaluate(
    config: ml_collections.ConfigDict, workdir: str
) -> tuple[TrainState, Metrics]:
    """Trains ``config`` (resuming from ``workdir``'s latest checkpoint), evaluates, saves.

    Returns the final state and the final evaluation metrics, which are also
    written to ``workdir/results.json``.
    """
    check_workdir(workdir)
    restore.check_compatible(workdir, config)
    write_json(os.path.join(workdir, "config.json"), json.loads(config.to_json()))

    builder = input_pipeline.get_builder(config.dataset, config.data_dir, config.try_gcs)
    train_split, eval_split = splits.load_train_and_eval(config, builder)
    eval_total = total_over_processes(len(eval_split))
    preprocess, preprocess_params = create_preprocess(config, builder, train_split)
    restore.write_dataset_info(
        workdir, builder.info.features["label"].names, train_split.images.shape[1:],
        config.dataset, config.preprocess, preprocess_params,
    )  # fmt: skip

    steps_per_epoch = input_pipeline.steps_per_epoch(train_split, config.batch_size)
    if steps_per_epoch == 0:
        raise input_pipeline.DatasetError(
            f"{config.train_split!r} has fewer examples than one batch of {config.batch_size}"
        )
    total_steps = config.num_train_steps
    if total_steps < 0:
        total_steps = math.ceil(config.num_epochs * steps_per_epoch)
    eval_every = config.eval_every_steps if config.eval_every_steps > 0 else steps_per_epoch
    num_eval_batches = input_pipeline.num_eval_batches(eval_total, config.batch_size)

    mesh = create_mesh()
    model = create_model(config, input_pipeline.num_classes(builder))
    learning_rate_fn = create_learning_rate_fn(config, steps_per_epoch, total_steps)
    optimizer = create_optimizer(config, learning_rate_fn)
    params_rng, dropout_rng = jax.random.split(jax.random.key(config.seed))
    init = jax.jit(
        functools.partial(
            create_train_state,
            model=model,
            image_shape=train_split.images.shape[1:],
            optimizer=optimizer,
        ),
        out_shardings=NamedSharding(mesh, P()),
    )
    manager = create_checkpoint_manager(workdir, config)
    state = restore_or_keep(manager, init(params_rng))
    start_step = int(state.step)
    jit_train, jit_eval = compile_steps(mesh)

    num_params = sum(x.size for x in jax.tree.leaves(state.params))
    logging.info(
        "%s: %d train / %d eval examples, %d classes, %d parameters, %d devices, "
        "%d steps (%d per epoch), starting at step %d.",
        config.dataset, len(train_split), eval_total, model.num_classes, num_params,
        jax.device_count(), total_steps, steps_per_epoch, start_step,
    )  # fmt: skip

    def eval_now() -> Metrics:
        batches = input_pipeline.eval_batches(
            eval_split, global_batch_size=config.batch_size, preprocess=preprocess,
            num_batches=num_eval_batches,
        )  # fmt: skip
        return evaluate(jit_eval, state, batches, mesh)

    batches = input_pipeline.train_batches(
        train_split, global_batch_size=config.batch_size, preprocess=preprocess,
        seed=config.seed, start_step=start_step, augment=config.augment,
    )  # fmt: skip
    reporter = reporting.Reporter(
        workdir, total_steps=total_steps, steps_per_epoch=steps_per_epoch,
        batch_size=config.batch_size, start_step=start_step,
    )  # fmt: skip
    train_start = time.perf_counter()
    window_metrics = []
    eval_metrics: Metrics | None = None
    watcher = preemption.PreemptionWatcher()
    for step in range(start_step + 1, total_steps + 1):
        state, metrics = jit_train(state, to_global(next(batches), mesh), dropout_rng)
        window_metrics.append(metrics)
        reporter.tick(step)
        preempted = watcher.reached(step)
        should_save = preempted or step % config.checkpoint_every_steps == 0 or step == total_steps
        if should_save:  # Never save a state whose loss went non-finite.
            check_finite(jax.device_get(window_metrics), step, workdir)
        if step % config.log_every_steps == 0 or step == total_steps:
            window_metrics = jax.device_get(window_metrics)
            check_finite(window_metrics, step, workdir)
            reporter.train(step, window_metrics, float(learning_rate_fn(step - 1)))
            window_metrics = []
        if not preempted and (step % eval_every == 0 or step == total_steps):
            eval_metrics = eval_now()
            reporter.eval(step, eval_metrics)
        if should_save:
            manager.save(step, args=ocp.args.StandardSave(state), force=preempted)
        if preempted:
            reporter.close()
            stop_after_preemption(manager, watcher, step)
    watcher.close()
    train_seconds = time.perf_counter() - train_start
    manager.wait_until_finished()
    manager.close()
    reporter.close()

    if eval_metrics is None:  # Nothing left to train: the workdir already holds the final step.
        eval_metrics = eval_now()
    steps_run = total_steps - start_step
    results = {
        "dataset": config.dataset,
        "step": int(state.step),
        "test_accuracy": eval_metrics["accuracy"],
        "test_error": eval_metrics["error"],
        "test_loss": eval_metrics["loss"],
        "test_examples": eval_metrics["examples"],
        "train_seconds": round(train_seconds, 3),
        "steps_this_run": steps_run,
        "images_per_sec": round(steps_run * config.batch_size / train_seconds, 2)
        if steps_run
        else None,
        "num_params": int(num_params),
        "devices": jax.device_count(),
    }
    write_json(os.path.join(workdir, "results.json"), results)
    logging.info("Final: %s", json.dumps(results))
    return state, results
