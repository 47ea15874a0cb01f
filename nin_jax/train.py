"""The training loop: ``train_and_evaluate(config, workdir)``.

It validates the config, takes the workdir's lock, loads the data, builds the
model, optimizer and jitted steps (``nin_jax.steps``), resumes from the newest
checkpoint (refusing one of another schedule unless asked), and trains. Periodic
work (log, evaluate, checkpoint, profile) is a list of ``clu.periodic_actions``
run after every step; the step's metrics stay on the device until a log point or
a checkpoint needs them, and each window of them is fetched and checked for
NaN/Inf once. The host dispatches at most two steps ahead of the devices
(``StepsInFlight``), so a stop signal is answered within about two steps. Every
way out (done, error, preemption, Ctrl-C) leaves through one ``ExitStack`` that
closes the checkpoint manager (waiting for its saves), the metrics writers, the
signal handlers, the profiler and the lock. A session that trains (to the end,
or to a stop signal) adds its record to ``workdir/runs.json``; ``results.json``
holds the final evaluation with every session's record and their totals.
"""

import collections
import contextlib
import dataclasses
import datetime
import json
import math
import os
import time
from collections.abc import Callable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from clu import periodic_actions

from nin_jax import (
    checkpointing,
    config_validation,
    ensemble,
    health,
    input_pipeline,
    optimizer,
    profiling,
    programs,
    reporting,
    shutdown,
    splits,
    statistics,
    steps,
)  # fmt: skip
from nin_jax import workdir as workdir_lib
from nin_jax.errors import DatasetError, TrainingError
from nin_jax.steps import TrainState

Metrics = dict[str, float]


@dataclasses.dataclass(frozen=True)
class Data:
    """What a run trains and evaluates on, as this process holds it."""

    train: input_pipeline.Split  # the whole training split
    eval: input_pipeline.Split  # this process's part of the evaluation split
    eval_total: int  # examples of the evaluation split over all processes
    info: workdir_lib.DatasetInfo  # with the preprocessing statistics


@dataclasses.dataclass(frozen=True)
class Schedule:
    """How long the run is and when its periodic work happens, in steps."""

    total_steps: int
    steps_per_epoch: int
    eval_every: int

    @classmethod
    def from_config(cls, config: ml_collections.ConfigDict, train_examples: int) -> "Schedule":
        if train_examples < config.batch_size:
            raise DatasetError(
                f"{config.train_split!r} has {train_examples} examples, fewer than one batch "
                f"of {config.batch_size}"
            )
        schedule_examples = config.schedule_train_examples or train_examples
        per_epoch = max(1, schedule_examples // config.batch_size)
        total = config.num_train_steps
        if total < 0:
            total = math.ceil(config.num_epochs * per_epoch)
        eval_every = config.eval_every_steps if config.eval_every_steps > 0 else per_epoch
        return cls(total_steps=total, steps_per_epoch=per_epoch, eval_every=eval_every)


def load_data(config: ml_collections.ConfigDict) -> Data:
    """The splits of ``config`` and its preprocessing fitted on the training split."""
    builder = input_pipeline.get_builder(config.dataset, config.data_dir, config.try_gcs)
    train_split, eval_split = splits.load_train_and_eval(config, builder)
    split_name = config.train_split + ("-validation" if config.validation else "")
    root, unit_rms = config.data_dir or builder.data_dir_root, config.zca_unit_rms
    stats_file = statistics.stats_path(root, config.dataset, split_name, unit_rms)
    if config.standardize_mean:  # A fixed normalisation (a converted PyTorch model's).
        channels = train_split.images.shape[-1]
        params = statistics.fixed_standardize(
            config.standardize_mean, config.standardize_std, channels
        )
    else:
        params = statistics.fit(config.preprocess, train_split, stats_file, unit_rms)
    info = workdir_lib.DatasetInfo(
        dataset=config.dataset,
        class_names=tuple(builder.info.features["label"].names),
        image_shape=tuple(int(d) for d in train_split.images.shape[1:]),
        preprocess=config.preprocess,
        preprocess_params=params,
    )
    return Data(
        train=train_split,
        eval=eval_split,
        eval_total=total_over_processes(len(eval_split)),
        info=info,
    )


def total_over_processes(count: int) -> int:
    if jax.process_count() == 1:
        return count
    from jax.experimental import multihost_utils

    return int(np.sum(multihost_utils.process_allgather(np.array(count))))


def evaluate(
    state: TrainState, eval_fn: Callable, batches: Iterator[input_pipeline.Batch], mesh
) -> Metrics:
    """Loss, accuracy and error of ``state`` over every example of ``batches`` (padding masked);
    ``eval_fn(state, global_batch)`` is the jitted eval step."""
    totals = None
    for batch in batches:
        sums = eval_fn(state, steps.to_global(batch, mesh))
        totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
    totals = jax.device_get(totals)
    count = float(totals["count"])

    def metrics(loss_sum, correct) -> Metrics:
        accuracy = float(correct) / count
        return {"loss": float(loss_sum) / count, "accuracy": accuracy, "error": 1.0 - accuracy}

    if "ensemble_correct" not in totals:  # One model.
        return {**metrics(totals["loss_sum"], totals["correct"]), "examples": int(count)}
    models = [metrics(*pair) for pair in zip(totals["loss_sum"], totals["correct"], strict=True)]
    ensemble = metrics(totals["ensemble_loss_sum"], totals["ensemble_correct"])
    return {**ensemble, "examples": int(count), "models": models}


class MetricsWindow:
    """The per-step metrics since the last log point: on the device until asked for.

    ``host(step)`` fetches what has not been fetched yet (once) and checks it
    for NaN/Inf; ``pop`` hands the window to the reporter and starts a new one.
    """

    def __init__(self, workdir: str):
        self._workdir = workdir
        self._pending: list[dict[str, jax.Array]] = []
        self._fetched: list[dict[str, np.ndarray]] = []

    def append(self, metrics: dict[str, jax.Array]) -> None:
        self._pending.append(metrics)

    def host(self, step: int) -> list[dict[str, np.ndarray]]:
        if self._pending:
            fetched = jax.device_get(self._pending)
            self._pending = []
            check_finite(fetched, step, self._workdir)
            self._fetched.extend(fetched)
        return self._fetched

    def pop(self, step: int) -> list[dict[str, np.ndarray]]:
        window = self.host(step)
        self._fetched = []
        return window


class StepsInFlight:
    """Bounds how many dispatched train steps the devices have not finished.

    JAX dispatches a step and returns at once, so without a bound the host runs
    up to a log point (``log_every_steps``) ahead of the devices. A stop signal is
    answered at the host's step, and its save waits for every step queued before
    it: at a second a step, fifty queued steps outlast a preemption notice. Waiting
    for the step ``limit`` back keeps the next one queued behind the running one,
    so the devices never idle on the host, and a stop saves within about ``limit``
    steps of the signal.
    """

    def __init__(self, limit: int = 2):
        self._limit = limit
        self._queue: collections.deque[Any] = collections.deque()

    def add(self, outputs: Any) -> None:
        """Adds a dispatched step's outputs; blocks until the step ``limit`` back is done."""
        self._queue.append(outputs)
        if len(self._queue) > self._limit:
            jax.block_until_ready(self._queue.popleft())


def current_step(state: TrainState) -> int:
    """The state's step (the same for every model of a stacked state)."""
    return int(np.max(jax.device_get(state.step)))


def check_finite(window: list[dict[str, Any]], step: int, workdir: str) -> None:
    """Stops training on a NaN/Inf loss before anything is saved from that state.

    The parameters' norm is checked too: a step's loss is computed before its
    update, so a diverging update shows there one step before it shows in the loss.
    """
    for key, name in (("param_norm", "the parameters' norm"), ("loss", "loss")):
        values = np.array([m[key] for m in window])
        if not np.all(np.isfinite(values)):
            raise TrainingError(
                f"{name} became {values[~np.isfinite(values)][0]} by step {step}; "
                f"the last good checkpoint is kept in {workdir}"
            )


def health_warnings(
    monitors: list[health.HealthMonitor], step: int, window: list[dict[str, np.ndarray]]
) -> list[str]:
    """The monitors' warnings for a log window (one monitor per model of a stacked state)."""
    if len(monitors) == 1:
        return monitors[0].update(step, window)
    return [
        f"model {k}: {warning}"
        for k, monitor in enumerate(monitors)
        for warning in monitor.update(step, [{n: v[k] for n, v in m.items()} for m in window])
    ]


def periodic(every: int, last_step: int, callback: Callable) -> periodic_actions.PeriodicCallback:
    """``callback(step=..., t=..., state=...)`` every ``every`` steps and at the last step."""
    return periodic_actions.PeriodicCallback(
        every_steps=every, on_steps=[last_step], callback_fn=callback
    )


def device_inputs(config: ml_collections.ConfigDict, data: Data, mesh) -> tuple[Any, Any]:
    """(the preprocessing statistics, the training split or None) on every device."""
    stats = steps.replicate(data.info.preprocess_params, mesh)
    if not config.data_on_device:
        return stats, None
    return stats, steps.replicate({"image": data.train.images, "label": data.train.labels}, mesh)


def session_record(
    start_step: int,
    end_step: int,
    timing: tuple[int, float],
    compile_seconds: float,
    batch_size: int,
    ended: str,
    started: str,
    schedule_changes: dict[str, tuple[Any, Any]],
) -> dict[str, Any]:
    """One training session's entry of ``runs.json``: its steps, its training time
    without compilation or evaluations (``timing``: the reporter's (steps, seconds)),
    the time JAX spent compiling, and how it ended."""
    timed_steps, seconds = timing
    record = {
        "started": started,
        "start_step": start_step,
        "end_step": end_step,
        "ended": ended,
        "train_seconds": round(seconds, 3),
        "compile_seconds": round(compile_seconds, 3),
        "images_per_sec": round(timed_steps * batch_size / seconds, 2) if seconds else None,
        "devices": jax.device_count(),
    }
    if schedule_changes:
        record["schedule_changes"] = {k: list(v) for k, v in schedule_changes.items()}
    return record


def session_totals(sessions: list[dict[str, Any]]) -> dict[str, Any]:
    """The sessions' steps, training and compile seconds, and images/s over all of them."""
    seconds = sum(r["train_seconds"] for r in sessions)
    images = sum(r["train_seconds"] * (r["images_per_sec"] or 0.0) for r in sessions)
    return {
        "train_steps": sum(r["end_step"] - r["start_step"] for r in sessions),
        "train_seconds": round(seconds, 3),
        "compile_seconds": round(sum(r["compile_seconds"] for r in sessions), 3),
        "images_per_sec": round(images / seconds, 2) if seconds else None,
    }


def final_results(
    config: ml_collections.ConfigDict,
    state: TrainState,
    eval_metrics: Metrics,
    num_params: int,
    sessions: list[dict[str, Any]],
) -> dict[str, Any]:
    """What ``results.json`` holds: the final evaluation (for several models, also each
    model's and the ensemble's), and the workdir's training sessions with their totals."""
    results = {
        "dataset": config.dataset,
        "step": current_step(state),
        "test_accuracy": eval_metrics["accuracy"],
        "test_error": eval_metrics["error"],
        "test_loss": eval_metrics["loss"],
        "test_examples": eval_metrics["examples"],
        **session_totals(sessions),
        "sessions": sessions,
        "num_params": int(num_params),
        "devices": jax.device_count(),
    }
    if config.num_models > 1:
        results.update(ensemble.results(config, eval_metrics))
    return results


def train_and_evaluate(
    config: ml_collections.ConfigDict, workdir: str, allow_schedule_change: bool = False
) -> tuple[TrainState, dict[str, Any]]:
    """Trains ``config`` (resuming from ``workdir``'s newest checkpoint), evaluates, saves.

    A workdir trained with other ``workdir.SCHEDULE_FIELDS`` is refused
    (``WorkdirError``) unless ``allow_schedule_change``, which resumes with this
    config's (logged, and kept in the session's record). Returns the final state and
    the results, also written to ``workdir/results.json``.
    """
    config_validation.validate(config)
    started = datetime.datetime.now().isoformat(timespec="seconds")
    with contextlib.ExitStack() as stack:
        compile_timer = stack.enter_context(profiling.CompileTimer())
        stack.enter_context(workdir_lib.WorkdirLock(workdir))
        changes = workdir_lib.check_compatible(workdir, config, allow_schedule_change)
        if changes:
            logging.warning(
                "Resuming with a new schedule (--allow_schedule_change): %s; config.json "
                "now holds the new values.", workdir_lib.describe_changes(changes),
            )  # fmt: skip
        workdir_lib.write_config(workdir, config)
        data = load_data(config)
        workdir_lib.write_dataset_info(workdir, data.info)
        schedule = Schedule.from_config(config, len(data.train))

        mesh = steps.create_mesh(config.num_models)
        run = programs.build(
            config, mesh, data.info.num_classes, data.info.image_shape,
            schedule.steps_per_epoch, schedule.total_steps,
        )  # fmt: skip
        learning_rate = optimizer.logged_learning_rate(
            config, schedule.steps_per_epoch, schedule.total_steps
        )
        manager = stack.enter_context(checkpointing.create_manager(workdir, config))
        initial, dropout_rng = run.init()
        state = checkpointing.restore_or_keep(manager, initial)
        start_step = current_step(state)
        num_params = sum(x.size for x in jax.tree.leaves(state.params)) // config.num_models
        logging.info(
            "%s: %d train / %d eval examples, %d classes, %d parameters, %d devices, "
            "%d steps (%d per epoch), starting at step %d.",
            config.dataset, len(data.train), data.eval_total, data.info.num_classes, num_params,
            jax.device_count(), schedule.total_steps, schedule.steps_per_epoch, start_step,
        )  # fmt: skip

        reporter = stack.enter_context(
            reporting.Reporter(
                workdir,
                total_steps=schedule.total_steps,
                steps_per_epoch=schedule.steps_per_epoch,
                batch_size=config.batch_size,
                start_step=start_step,
                num_models=config.num_models,
            )
        )
        jit_train, jit_eval = run.train, run.eval
        stats, table = device_inputs(config, data, mesh)
        num_eval_batches = input_pipeline.num_eval_batches(data.eval_total, config.batch_size)

        def evaluate_state(state: TrainState) -> Metrics:
            batches = input_pipeline.eval_batches(
                data.eval, global_batch_size=config.batch_size, num_batches=num_eval_batches
            )
            return evaluate(state, lambda st, batch: jit_eval(st, batch, stats), batches, mesh)

        window = MetricsWindow(workdir)
        warmup_steps = int(config.warmup_epochs * schedule.steps_per_epoch)
        monitors = [
            health.HealthMonitor(data.info.num_classes, warmup_steps, data.info.class_names)
            for _ in range(config.num_models)
        ]

        def log(step: int, t: float, state: TrainState) -> None:
            metrics = window.pop(step)
            reporter.train(step, metrics, learning_rate(step - 1))
            if jax.process_index() == 0:
                for warning in health_warnings(monitors, step, metrics):
                    logging.warning("%s", warning)

        def evaluate_and_report(step: int, t: float, state: TrainState) -> Metrics:
            metrics = evaluate_state(state)
            reporter.eval(step, metrics)
            return metrics

        def save(step: int, t: float, state: TrainState, force: bool = False) -> None:
            window.host(step)  # Never save a state whose loss went non-finite.
            manager.save(step, args=ocp.args.StandardSave(state), force=force)

        eval_action = periodic(schedule.eval_every, schedule.total_steps, evaluate_and_report)
        actions = [
            periodic(config.log_every_steps, schedule.total_steps, log),
            eval_action,
            periodic(config.checkpoint_every_steps, schedule.total_steps, save),
        ]
        if config.profile_steps:
            profiler = profiling.ProfileSteps(
                os.path.join(workdir, reporting.TENSORBOARD_DIR), *config.profile_steps
            )
            profiler.begin(start_step)
            stack.callback(profiler.close)
            actions.append(profiler)

        def record_session(step: int, ended: str) -> list[dict[str, Any]]:
            record = session_record(
                start_step, step, reporter.timing, compile_timer.seconds, config.batch_size,
                ended, started, changes,
            )  # fmt: skip
            return workdir_lib.append_run(workdir, record)

        signals = stack.enter_context(shutdown.StopSignals())
        batches = input_pipeline.train_batches(
            data.train, global_batch_size=config.batch_size, seed=config.seed,
            start_step=start_step, indices_only=config.data_on_device,
        )  # fmt: skip
        in_flight = StepsInFlight()
        for step in range(start_step + 1, schedule.total_steps + 1):
            batch = steps.to_global(next(batches), mesh)
            state, metrics = jit_train(state, batch, dropout_rng, stats, table)
            window.append(metrics)
            in_flight.add(metrics)
            reporter.tick(step)
            if signals.requested(step):  # Save this step and stop; no evaluation.
                log(step, time.monotonic(), state)
                save(step, time.monotonic(), state, force=True)
                manager.wait_until_finished()
                record_session(step, signals.ended)
                raise signals.stopped(step, manager.directory)
            for action in actions:
                action(step, state=state)
        if start_step < schedule.total_steps:
            eval_metrics = eval_action.get_last_callback_result()  # The last step's.
            sessions = record_session(schedule.total_steps, "finished")
        else:  # Nothing left to train: the workdir already holds the final step.
            eval_metrics = evaluate_state(state)
            sessions = workdir_lib.read_runs(workdir)

    results = final_results(config, state, eval_metrics, num_params, sessions)
    workdir_lib.write_results(workdir, results)
    logging.info("Final: %s", json.dumps(results))
    return state, results
