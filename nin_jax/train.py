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
import orbax.checkpoint as ocp
from absl import logging
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from nin_jax import (
    input_pipeline,
    models,
    optimizer,
    preemption,
    preprocessing,
    reporting,
    restore,
    splits,
    steps,
)  # fmt: skip
from nin_jax.steps import TrainState

Metrics = dict[str, float]


class TrainingError(RuntimeError):
    """Training cannot go on (bad workdir, non-finite loss, ...); the message says why."""


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


def evaluate(jit_eval: Callable, state: TrainState, batches, mesh) -> Metrics:
    totals = None
    for batch in batches:
        sums = jit_eval(state, steps.to_global(batch, mesh))
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

    mesh = steps.create_mesh()
    model = models.from_config(config, input_pipeline.num_classes(builder))
    learning_rate_fn = optimizer.create_learning_rate_fn(config, steps_per_epoch, total_steps)
    tx = optimizer.create_optimizer(config, learning_rate_fn)
    params_rng, dropout_rng = jax.random.split(jax.random.key(config.seed))
    init = jax.jit(
        functools.partial(
            steps.create_train_state,
            model=model,
            image_shape=train_split.images.shape[1:],
            optimizer=tx,
        ),
        out_shardings=NamedSharding(mesh, P()),
    )
    manager = create_checkpoint_manager(workdir, config)
    state = restore_or_keep(manager, init(params_rng))
    start_step = int(state.step)
    jit_train, jit_eval = steps.compile_steps(mesh)

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
        state, metrics = jit_train(state, steps.to_global(next(batches), mesh), dropout_rng)
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
