"""SIGTERM and Ctrl-C save and exit (143, 130); SIGKILL or partial checkpoints never break
the restart.

Each interrupted run is restarted and must end with exactly the parameters of a
run that was never interrupted (same seed, same device count).
"""

import json
import os
import re
import shutil
import signal
import time
from pathlib import Path

import helpers
import numpy as np
import pytest
from helpers import assert_one_line_error, run_cli

from nin_jax import errors

STEPS, EVERY = 400, 20
TMP_SUFFIX = ".orbax-checkpoint-tmp"  # What Orbax names a checkpoint it is still writing.


def args(workdir, data_dir, num_models: int = 1):
    return helpers.train_args(
        workdir, data_dir, num_train_steps=STEPS, checkpoint_every_steps=EVERY,
        log_every_steps=100, eval_every_steps=10_000, augment="crop_flip",
        num_models=num_models,
    )  # fmt: skip


def assert_params_equal(actual: dict, expected: dict) -> None:
    assert actual.keys() == expected.keys()
    for key in expected:
        np.testing.assert_array_equal(actual[key], expected[key], err_msg=key)


def run_uninterrupted(workdir: Path, data_dir: str, num_models: int) -> dict:
    run_args = args(workdir, data_dir, num_models)
    code = helpers.run(run_args, devices=1, log_path=workdir / "log.txt")
    assert code == 0, (workdir / "log.txt").read_text()[-3000:]
    return helpers.load_params(workdir / "params_0.npz")


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, digits_data_dir) -> dict:
    return run_uninterrupted(tmp_path_factory.mktemp("uninterrupted"), digits_data_dir, 1)


@pytest.fixture(scope="module")
def uninterrupted_pair(tmp_path_factory, digits_data_dir) -> dict:
    """Two models in one run (config.num_models=2)."""
    return run_uninterrupted(tmp_path_factory.mktemp("uninterrupted_pair"), digits_data_dir, 2)


def start_and_wait_for_checkpoint(workdir: Path, data_dir: str, step: int, num_models: int = 1):
    run_args = args(workdir, data_dir, num_models)
    process = helpers.start(run_args, devices=1, log_path=workdir / "log.txt")
    try:
        helpers.wait_for(lambda: (workdir / "checkpoints" / str(step)).is_dir(), process, 600)
    except BaseException:
        helpers.kill(process)
        raise
    return process


def restart(workdir: Path, data_dir: str, num_models: int = 1) -> str:
    run_args = args(workdir, data_dir, num_models)
    code = helpers.run(run_args, devices=1, log_path=workdir / "log2.txt")
    log = (workdir / "log2.txt").read_text()
    assert code == 0, log[-3000:]
    return log


@pytest.mark.slow
def test_sigterm_saves_exits_and_resumes_two_models(tmp_path, digits_data_dir, uninterrupted_pair):
    process = start_and_wait_for_checkpoint(tmp_path, digits_data_dir, EVERY, num_models=2)
    process.send_signal(signal.SIGTERM)
    code = helpers.wait_all([process], timeout=120)[0]
    log = (tmp_path / "log.txt").read_text()
    assert code == errors.EXIT_CODE_PREEMPTED == 143, log[-3000:]
    stop = int(re.search(r"saved the checkpoint of step (\d+)", log).group(1))
    assert EVERY <= stop < STEPS
    assert helpers.checkpoint_steps(tmp_path)[-1] == stop
    assert not (tmp_path / "results.json").exists()

    log = restart(tmp_path, digits_data_dir, num_models=2)
    assert f"starting at step {stop}." in log
    assert helpers.checkpoint_steps(tmp_path)[-1] == STEPS
    assert_params_equal(helpers.load_params(tmp_path / "params_0.npz"), uninterrupted_pair)


@pytest.mark.slow
def test_sigkill_and_partial_checkpoints_resume_from_newest_complete(
    tmp_path, digits_data_dir, uninterrupted
):
    process = start_and_wait_for_checkpoint(tmp_path, digits_data_dir, 2 * EVERY)
    assert process.poll() is None, "the run ended before it could be killed"
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    complete = [s for s in helpers.checkpoint_steps(tmp_path) if s < STEPS]
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
    assert helpers.checkpoint_steps(tmp_path)[-1] == STEPS
    assert not [p for p in checkpoints.iterdir() if TMP_SUFFIX in p.name]
    assert_params_equal(helpers.load_params(tmp_path / "params_0.npz"), uninterrupted)


@pytest.mark.slow
def test_ctrl_c_saves_exits_130_and_a_busy_workdir_is_refused(tmp_path, digits_data_dir):
    """A real SIGINT to the run's process group, as a terminal sends it; meanwhile a second
    run on the same workdir stops at once and writes nothing there."""
    long_run = helpers.train_args(
        tmp_path, digits_data_dir, num_train_steps=100_000, checkpoint_every_steps=EVERY,
        log_every_steps=100, eval_every_steps=100_000,
    )  # fmt: skip
    process = helpers.start(long_run, devices=1, log_path=tmp_path / "log.txt")
    try:
        helpers.wait_for(lambda: (tmp_path / "checkpoints" / str(EVERY)).is_dir(), process, 600)
        config_before = (tmp_path / "config.json").read_bytes()
        second = run_cli("nin_jax.main", *long_run, "--config.seed=7")
        assert_one_line_error(second, f"workdir {tmp_path} is in use by run {process.pid} on ")
        assert (tmp_path / "config.json").read_bytes() == config_before
        assert process.poll() is None  # The first run goes on.
        os.killpg(process.pid, signal.SIGINT)
        sent = time.monotonic()
        code = helpers.wait_all([process], timeout=120)[0]
        seconds = time.monotonic() - sent
    finally:
        helpers.kill(process)
    log = (tmp_path / "log.txt").read_text()
    assert code == errors.EXIT_CODE_INTERRUPTED == 130, log[-3000:]
    assert "Traceback" not in log
    stop = int(re.search(r"interrupted \(Ctrl-C\) at step (\d+): checkpoint saved", log).group(1))
    assert helpers.checkpoint_steps(tmp_path)[-1] == stop
    # A bound against a hang, not a timing: the save and the exit take seconds on an idle
    # machine and several times that with the cores busy.
    assert seconds < 60, f"{seconds:.1f} s from Ctrl-C to exit"

    steps_flag = "--config.num_train_steps="
    resume = [f"{steps_flag}{stop + 2}" if a.startswith(steps_flag) else a for a in long_run]
    refused = run_cli("nin_jax.main", *resume)
    assert_one_line_error(refused, f"config.num_train_steps=100000, this config has {stop + 2}")
    resume.append("--allow_schedule_change")
    assert helpers.run(resume, devices=1, log_path=tmp_path / "log2.txt") == 0
    log = (tmp_path / "log2.txt").read_text()
    assert f"starting at step {stop}." in log, log[-3000:]
    assert f"new schedule (--allow_schedule_change): num_train_steps 100000 -> {stop + 2}" in log
    sessions = json.loads((tmp_path / "results.json").read_text())["sessions"]
    assert [(r["start_step"], r["end_step"], r["ended"]) for r in sessions] == [
        (0, stop, "interrupted"), (stop, stop + 2, "finished"),
    ]  # fmt: skip


@pytest.mark.slow
def test_a_second_ctrl_c_stops_at_once(tmp_path, digits_data_dir):
    """The second Ctrl-C comes while the first one's save is in progress (train_worker holds
    that save until it does), so the test does not depend on how fast checkpoints are written."""
    run = helpers.train_args(
        tmp_path, digits_data_dir, num_train_steps=100_000, checkpoint_every_steps=EVERY,
        log_every_steps=100, eval_every_steps=100_000,
    )  # fmt: skip
    held = tmp_path / "stop_save_held"
    env = {"NIN_TEST_HOLD_STOP_SAVE": str(held)}
    process = helpers.start(run, devices=1, log_path=tmp_path / "log.txt", env=env)
    try:
        helpers.wait_for(lambda: (tmp_path / "checkpoints" / str(EVERY)).is_dir(), process, 600)
        os.killpg(process.pid, signal.SIGINT)
        helpers.wait_for(held.exists, process, 120)
        os.killpg(process.pid, signal.SIGINT)
        sent = time.monotonic()
        code = helpers.wait_all([process], timeout=120)[0]
        seconds = time.monotonic() - sent
    finally:
        helpers.kill(process)
    log = (tmp_path / "log.txt").read_text()
    assert code == errors.EXIT_CODE_INTERRUPTED, log[-3000:]
    assert "interrupted again: stopped without saving" in log and "Traceback" not in log
    assert seconds < 5, f"{seconds:.1f} s from the second Ctrl-C to exit"
    assert EVERY in helpers.checkpoint_steps(tmp_path)  # The checkpoints saved before stay.
