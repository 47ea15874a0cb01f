"""Orbax checkpoints of the train state in ``workdir/checkpoints``.

Training resumes from the newest checkpoint that can be read, onto the
shardings of the state it is given, so a run saved on N devices resumes on any
other number. The tools read a checkpoint back without a target.
"""

import contextlib
import os
import sys
from collections.abc import Iterator
from typing import Any

import jax
import ml_collections
import orbax.checkpoint as ocp
from absl import logging
from orbax.checkpoint._src.serialization import tensorstore_utils as ts_utils

from nin_jax import retries, storage
from nin_jax import workdir as workdir_lib
from nin_jax.errors import FileDamagedError, StorageError, TrainingError, WorkdirError


def directory(workdir: str) -> str:
    root = workdir if storage.is_remote(workdir) else os.path.abspath(workdir)
    return os.path.join(root, workdir_lib.CHECKPOINT_DIR)


class TrainingManager(ocp.CheckpointManager):
    """Orbax's manager, except that it leaves the preemption sync point to the training loop.

    JAX's preemption sync protocol picks the stop step from the step each process
    last passed to ``reached_preemption_sync_point``. Orbax also calls it, from its
    save-finalising thread with the step being saved, which can be steps behind the
    loop: a notice arriving then makes the protocol pick a step that process has
    already passed, so the others stop and it trains on alone, waiting forever in
    the next collective. Only ``shutdown.StopSignals.requested`` calls it here, once
    per step, and the loop saves the stop step with ``force=True``.
    """

    def reached_preemption(self, step: int) -> bool:
        return False

    def save(self, step: int, *args: Any, **kwargs: Any) -> bool:
        # An earlier save's error in Orbax's thread also comes out here: "saving", not "of".
        with _saving(self.directory, f"a checkpoint (saving step {step}) in"):
            return super().save(step, *args, **kwargs)

    def wait_until_finished(self) -> None:
        with _saving(self.directory):
            super().wait_until_finished()

    def close(self) -> None:
        with _saving(self.directory):
            super().close()


@contextlib.contextmanager
def _saving(path: Any, what: str = "a checkpoint in") -> Iterator[None]:
    """A save (or the wait for one, which raises the errors of the saves still running)
    that the bucket did not answer through every retry as one ``StorageError``.

    What the save had written is left: a step without Orbax's commit marker
    (``commit_success.txt`` on a bucket, the rename of its temporary directory on a
    disk) is not a checkpoint, so the next run resumes from the newest complete one.
    """
    try:
        yield
    except StorageError:  # Already said (a wait inside the close).
        raise
    except Exception as e:
        if not retries.is_transient(e):
            raise
        raise retries.unwritable(f"{what} {path}", e) from e


def bound_tensorstore_retries() -> None:
    """TensorStore's retries of one request (Orbax's arrays) bounded by ``retries``' budget.

    Orbax builds every TensorStore context from its module's defaults
    (``tensorstore_utils.get_ts_context``), with no option for the retries: the resource
    is added to those defaults (TensorStore's own: 32 attempts, about 15 minutes).
    """
    resource = retries.tensorstore_retries(retries.budget_seconds)
    for defaults in (ts_utils._BASE_TS_CONTEXT, ts_utils._DEFAULT_OCDBT_TS_CONTEXT):
        defaults["gcs_request_retries"] = resource


def create_manager(workdir: str, config: ml_collections.ConfigDict) -> ocp.CheckpointManager:
    """The training run's manager; temporary directories of a save cut short are removed."""
    bound_tensorstore_retries()
    options = ocp.CheckpointManagerOptions(
        max_to_keep=config.max_checkpoints, create=True, cleanup_tmp_directories=True
    )
    path = directory(workdir)
    try:
        return TrainingManager(path, options=options)
    except Exception as e:  # Orbax lists the steps and cleans up through the file system.
        if not retries.is_transient(e):
            raise
        raise retries.unreadable(f"the checkpoints in {path}", e) from e


def restore_or_keep(manager: ocp.CheckpointManager, state: Any) -> Any:
    """The newest readable checkpoint restored onto ``state``'s shardings, or ``state`` if none.

    Newer steps that cannot be read (a save cut short on a file system without
    atomic renames, e.g. gcsfuse) are deleted once an older one restores, to be
    trained and saved again; if none restores (e.g. the config changed),
    nothing is deleted. A read that fails because the bucket did not answer (through
    ``retries``' backoff) says so (``StorageError``) and deletes nothing.
    """
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
    _drop_abandoned_read_reports()
    unreadable = []
    for step in sorted(manager.all_steps(), reverse=True):
        what = f"the checkpoint at step {step} in {manager.directory}"
        try:
            restored = retries.call(
                lambda: manager.restore(step, args=ocp.args.StandardRestore(abstract)),  # noqa: B023
                f"restoring {what}",
            )
        except Exception as e:  # Orbax, TensorStore and the file system raise many types.
            if retries.is_transient(e):  # Not the checkpoint's fault: nothing is deleted.
                raise retries.unreadable(what, e) from e
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
            f"is damaged or was saved from another model ({_reason(error)}); use another "
            "workdir, or restore the checkpoints from a copy"
        ) from error
    return state


def _is_read_error(error: Exception) -> bool:
    """Whether a restore failed on the checkpoint's files: their JSON, UTF-8 and TensorStore
    errors (ValueError), entries that are not there (KeyError), the file system (OSError),
    and the bare ``Exception`` Orbax raises for an array TensorStore cannot read. Anything
    else is a bug and keeps its traceback."""
    return isinstance(error, (OSError, ValueError, KeyError)) or type(error) is Exception


def _is_abandoned_read(unraisable: Any) -> bool:
    """Whether ``sys.unraisablehook`` got a report of a read abandoned by a failed restore.

    When one array cannot be read, Orbax's restore fails and closes its event loop while
    TensorStore finishes the other reads on its own threads: each then reports "Event loop
    is closed" (or an un-awaited Orbax coroutine), a traceback apiece on stderr, during and
    up to milliseconds after the failed restore.
    """
    error, source = unraisable.exc_value, unraisable.object
    code = getattr(source, "cr_code", None)
    return (isinstance(error, RuntimeError) and str(error) == "Event loop is closed") or (
        code is not None and "orbax" in code.co_filename
    )


def _drop_abandoned_read_reports() -> None:
    """Keeps the reports of ``_is_abandoned_read`` off stderr for the rest of the process
    (the tools end soon after a failed read); every other report goes through."""
    previous = sys.unraisablehook
    if getattr(previous, "drops_abandoned_reads", False):
        return

    def hook(unraisable: Any) -> None:
        if not _is_abandoned_read(unraisable):
            previous(unraisable)

    hook.drops_abandoned_reads = True
    sys.unraisablehook = hook


def _reason(error: BaseException, limit: int = 160) -> str:
    """The innermost cause of ``error`` (TensorStore's, under Orbax's), on one short line."""
    while error.__cause__ is not None:
        error = error.__cause__
    reason = " ".join(f"{type(error).__name__}: {error}".split())
    return reason if len(reason) <= limit else reason[: limit - 3] + "..."


def _restore(manager: ocp.CheckpointManager, step: int) -> dict[str, Any]:
    """The tree saved at ``step``; ``FileDamagedError`` if its files cannot be read."""
    _drop_abandoned_read_reports()
    what = f"the checkpoint at step {step} in {manager.directory}"
    try:
        return retries.call(
            lambda: manager.restore(step, args=ocp.args.StandardRestore()), f"reading {what}"
        )
    except Exception as e:
        if retries.is_transient(e):
            raise retries.unreadable(what, e) from e
        if not _is_read_error(e):
            raise
        others = ", ".join(str(s) for s in manager.all_steps() if s != step)
        elsewhere = f"read another step with --step ({others}), " if others else ""
        raise FileDamagedError(
            f"the checkpoint at step {step} in {manager.directory} is damaged ({_reason(e)}); "
            f"{elsewhere}restore it from a copy, or train again in a new workdir"
        ) from e


def read(workdir: str, step: int | None = None) -> tuple[dict[str, Any], int]:
    """(the saved train state as a tree of arrays, its step), read-only; default: the newest."""
    path = directory(workdir)
    if not storage.isdir(path):
        raise WorkdirError(f"no checkpoint in {path}: train first (python -m nin_jax.main)")
    bound_tensorstore_retries()
    options = ocp.CheckpointManagerOptions(read_only=True, create=False, save_interval_steps=0)
    with ocp.CheckpointManager(path, options=options) as manager:
        steps = sorted(manager.all_steps())
        if not steps:
            raise WorkdirError(f"no checkpoint in {path}: train first (python -m nin_jax.main)")
        step = steps[-1] if step is None else step
        if step not in steps:
            available = ", ".join(map(str, steps))
            raise WorkdirError(f"no checkpoint at step {step} in {path}; available: {available}")
        return _restore(manager, step), step
