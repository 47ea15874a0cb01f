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
import pytest
import workers

from nin_jax import preemption

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
    # What a save cut short leaves: a temporary directory holding part of a checkpoint,
    # here for the very step the restarted run saves next.
    checkpoints = tmp_path / "checkpoints"
    partial = checkpoints / f"{newest + EVERY}{TMP_SUFFIX}"
    shutil.copytree(checkpoints / str(newest), partial, dirs_exist_ok=True)
    for path in sorted(p for p in partial.rglob("*") if p.is_file())[::2]:
        path.write_bytes(path.read_bytes()[:7])

    log = restart(tmp_path, digits_data_dir)
    assert f"starting at step {newest}." in log
    assert workers.checkpoint_steps(tmp_path)[-1] == STEPS
    assert not [p for p in checkpoints.iterdir() if TMP_SUFFIX in p.name]
    assert_params_equal(workers.load_params(tmp_path / "params_0.npz"), uninterrupted)
