"""SIGTERM saves and exits 143; SIGKILL and leftover partial checkpoints never break a restart.

Each interrupted run is restarted and must end with exactly the parameters of a
run that was never interrupted (same seed, same device count).
"""

import os
import re
import shutil
import signal
from pathlib import Path

import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest
import workers
from conftest import init_state, load_config

from nin_jax import models, preemption, train

STEPS, EVERY = 400, 20
TMP_SUFFIX = ".orbax-checkpoint-tmp"  # What Orbax names a checkpoint it is still writing.


def args(workdir, data_dir):
    return workers.train_args(
        workdir, data_dir, num_train_steps=STEPS, checkpoint_every_steps=EVERY,
        log_every_steps=100, eval_every_steps=10_000,
    )  # fmt: skip


def assert_params_equal(actual: dict, expected: dict) -> None:
    assert actual.keys() == expected.keys()
    for key in expected:
        np.testing.assert_array_equal(actual[key], expected[key], err_msg=key)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, digits_data_dir) -> dict:
    workdir = tmp_path_factory.mktemp("uninterrupted")
    code = workers.run(args(workdir, digits_data_dir), devices=1, log_path=workdir / "log.txt")
    assert code == 0, (workdir / "log.txt").read_text()[-3000:]
    return workers.load_params(workdir / "params_0.npz")


def start_and_wait_for_checkpoint(workdir: Path, data_dir: str, step: int):
    process = workers.start(args(workdir, data_dir), devices=1, log_path=workdir / "log.txt")
    try:
        workers.wait_for(lambda: (workdir / "checkpoints" / str(step)).is_dir(), process, 600)
    except BaseException:
        workers.kill(process)
        raise
    return process


def restart(workdir: Path, data_dir: str) -> str:
    code = workers.run(args(workdir, data_dir), devices=1, log_path=workdir / "log2.txt")
    log = (workdir / "log2.txt").read_text()
    assert code == 0, log[-3000:]
    return log


def test_sigterm_saves_exits_and_resumes(tmp_path, digits_data_dir, uninterrupted):
    process = start_and_wait_for_checkpoint(tmp_path, digits_data_dir, EVERY)
    process.send_signal(signal.SIGTERM)
    code = workers.wait_all([process], timeout=120)[0]
    log = (tmp_path / "log.txt").read_text()
    assert code == preemption.EXIT_CODE_PREEMPTED == 143, log[-3000:]
    stop = int(re.search(r"saved the checkpoint of step (\d+)", log).group(1))
    assert EVERY <= stop < STEPS
    assert workers.checkpoint_steps(tmp_path)[-1] == stop
    assert not (tmp_path / "results.json").exists()

    log = restart(tmp_path, digits_data_dir)
    assert f"starting at step {stop}." in log
    assert workers.checkpoint_steps(tmp_path)[-1] == STEPS
    assert_params_equal(workers.load_params(tmp_path / "params_0.npz"), uninterrupted)


def test_sigkill_and_partial_checkpoints_resume_from_newest_complete(
    tmp_path, digits_data_dir, uninterrupted
):
    process = start_and_wait_for_checkpoint(tmp_path, digits_data_dir, 2 * EVERY)
    assert process.poll() is None, "the run ended before it could be killed"
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    complete = [s for s in workers.checkpoint_steps(tmp_path) if s < STEPS]
    newest = complete[-1]
    # What saves cut short leave: a temporary directory holding part of a checkpoint
    # (Orbax on a local disk), and a step directory holding part of one (a file system
    # without atomic renames, e.g. gcsfuse). Both for steps the restarted run saves again.
    checkpoints = tmp_path / "checkpoints"
    truncated = checkpoints / str(newest + EVERY)
    partial = checkpoints / f"{newest + 2 * EVERY}{TMP_SUFFIX}"
    for path in truncated, partial:
        shutil.copytree(checkpoints / str(newest), path)
        for file in sorted(p for p in path.rglob("*") if p.is_file())[::2]:
            file.write_bytes(file.read_bytes()[:7])

    log = restart(tmp_path, digits_data_dir)
    assert f"Deleting the unreadable checkpoint at step {newest + EVERY}" in log
    assert f"starting at step {newest}." in log
    assert workers.checkpoint_steps(tmp_path)[-1] == STEPS
    assert not [p for p in checkpoints.iterdir() if TMP_SUFFIX in p.name]
    assert_params_equal(workers.load_params(tmp_path / "params_0.npz"), uninterrupted)


def test_checkpoint_of_another_config_is_an_error_and_kept(tmp_path):
    """Nothing is deleted when no checkpoint fits: the config changed, not the checkpoints."""

    def state_and_manager(widths):
        config = load_config("digits", model__widths=widths)
        model = models.from_config(config, num_classes=10)
        state = init_state(model, (8, 8, 1), optax.sgd(0.1))
        return state, train.create_checkpoint_manager(str(tmp_path), config)

    state, manager = state_and_manager(((4, 4, 4), (4, 4, 4), (4, 4)))
    manager.save(5, args=ocp.args.StandardSave(state))
    manager.wait_until_finished()
    assert train.restore_or_keep(manager, state).step == 0  # It restores into its own config.
    other, manager = state_and_manager(((8, 4, 4), (4, 4, 4), (4, 4)))
    with pytest.raises(train.TrainingError, match="no checkpoint in .* can be restored"):
        train.restore_or_keep(manager, other)
    assert manager.all_steps() == [5]
