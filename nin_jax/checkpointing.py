"""Orbax checkpoints of the train state in ``workdir/checkpoints``.

Training resumes from the newest checkpoint that can be read, onto the
shardings of the state it is given, so a run saved on N devices resumes on any
other number. The tools read a checkpoint back without a target.
"""

import os
from typing import Any

import jax
import ml_collections
import orbax.checkpoint as ocp
from absl import logging

from nin_jax import workdir as workdir_lib
from nin_jax.errors import TrainingError, WorkdirError


def directory(workdir: str) -> str:
    root = workdir if workdir_lib.is_remote(workdir) else os.path.abspath(workdir)
    return os.path.join(root, workdir_lib.CHECKPOINT_DIR)


def create_manager(workdir: str, config: ml_collections.ConfigDict) -> ocp.CheckpointManager:
    """The training run's manager; temporary directories of a save cut short are removed."""
    options = ocp.CheckpointManagerOptions(
        max_to_keep=config.max_checkpoints, create=True, cleanup_tmp_directories=True
    )
    return ocp.CheckpointManager(directory(workdir), options=options)


def restore_or_keep(manager: ocp.CheckpointManager, state: Any) -> Any:
    """The newest readable checkpoint restored onto ``state``'s shardings, or ``state`` if none.

    Newer steps that cannot be read (a save cut short on a file system without
    atomic renames, e.g. gcsfuse) are deleted once an older one restores, to be
    trained and saved again; if none restores (e.g. the config changed),
    nothing is deleted.
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


def read(workdir: str, step: int | None = None) -> tuple[dict[str, Any], int]:
    """(the saved train state as a tree of arrays, its step), read-only; default: the newest."""
    path = directory(workdir)
    if not os.path.isdir(path):
        raise WorkdirError(f"no checkpoint in {path}: train first (python -m nin_jax.main)")
    options = ocp.CheckpointManagerOptions(read_only=True, create=False, save_interval_steps=0)
    with ocp.CheckpointManager(path, options=options) as manager:
        steps = sorted(manager.all_steps())
        if not steps:
            raise WorkdirError(f"no checkpoint in {path}: train first (python -m nin_jax.main)")
        step = steps[-1] if step is None else step
        if step not in steps:
            available = ", ".join(map(str, steps))
            raise WorkdirError(f"no checkpoint at step {step} in {path}; available: {available}")
        return manager.restore(step, args=ocp.args.StandardRestore()), step
