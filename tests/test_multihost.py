"""Data parallelism across processes and devices: 2 processes x 2 CPU devices == 1 x 4 == 1 x 1.

Every run is a subprocess (the device count is fixed when JAX starts), so the runs are
slow tests, sharing one 4-device reference; that global batches do not depend on the
process count, and the distributed flags' errors, are quick ones.
"""

import re
import shutil
import signal

import helpers
import jax
import numpy as np
import pytest
from helpers import run_cli

from nin_jax import input_pipeline

STEPS = 6
# Augmented: the crop/flip draws must not depend on how the batch is split either.
SHARED_RUN = {"num_train_steps": STEPS, "checkpoint_every_steps": 3, "augment": "crop_flip"}


def assert_params_close(actual: dict, expected: dict, atol: float = 1e-5) -> None:
    assert actual.keys() == expected.keys()
    for key in expected:
        np.testing.assert_allclose(actual[key], expected[key], rtol=0, atol=atol, err_msg=key)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, digits_data_dir):
    """One process, 4 devices, checkpoints at steps 3 and 6."""
    workdir = tmp_path_factory.mktemp("reference")
    args = helpers.train_args(workdir, digits_data_dir, **SHARED_RUN)
    assert helpers.run(args, devices=4, log_path=workdir / "log.txt") == 0, (
        workdir / "log.txt"
    ).read_text()[-3000:]
    return workdir


@pytest.mark.slow
def test_two_processes_train_like_one(tmp_path, digits_data_dir, reference):
    args = helpers.train_args(tmp_path, digits_data_dir, **SHARED_RUN)
    processes = helpers.start_processes(args, 2, tmp_path)
    codes = helpers.wait_all(processes, timeout=600)
    logs = [(tmp_path / f"log_{i}.txt").read_text() for i in range(2)]
    assert codes == [0, 0], logs[0][-3000:] + logs[1][-3000:]

    params = [helpers.load_params(tmp_path / f"params_{i}.npz") for i in range(2)]
    assert_params_close(params[1], params[0], atol=0)  # Both processes hold the same state.
    expected = helpers.load_params(reference / "params_0.npz")
    assert_params_close(params[0], expected)
    assert helpers.checkpoint_steps(tmp_path) == [3, 6]
    assert '"devices": 4' in logs[0]
    # Only process 0 writes the training log.
    assert "step 6/6" in logs[0] and "step 6/6" not in logs[1]


@pytest.mark.slow
def test_sigterm_to_one_process_stops_all_at_the_same_step(tmp_path, digits_data_dir):
    """The preemption sync manager spreads the notice: every process saves one step and exits."""
    args = helpers.train_args(
        tmp_path, digits_data_dir, num_train_steps=400, checkpoint_every_steps=20,
        log_every_steps=100, eval_every_steps=10_000,
    )  # fmt: skip
    processes = helpers.start_processes(args, 2, tmp_path)
    try:
        helpers.wait_for(lambda: (tmp_path / "checkpoints" / "20").is_dir(), processes[0], 600)
    except BaseException:
        for process in processes:
            helpers.kill(process)
        raise
    processes[1].send_signal(signal.SIGTERM)
    codes = helpers.wait_all(processes, timeout=300)
    logs = [(tmp_path / f"log_{i}.txt").read_text() for i in range(2)]
    assert codes == [143, 143], logs[0][-3000:] + logs[1][-3000:]
    stops = [int(re.search(r"stopped on SIGTERM at step (\d+)", log).group(1)) for log in logs]
    assert stops[0] == stops[1] and 20 <= stops[0] < 400
    assert helpers.checkpoint_steps(tmp_path)[-1] == stops[0]


@pytest.mark.slow
def test_resume_on_one_device_from_four(tmp_path, digits_data_dir, reference):
    """A checkpoint of a 4-device run resumes on 1 device and ends where the 4-device run did."""
    shutil.copytree(reference / "checkpoints" / "3", tmp_path / "checkpoints" / "3")
    args = helpers.train_args(tmp_path, digits_data_dir, **SHARED_RUN)
    code = helpers.run(args, devices=1, log_path=tmp_path / "log.txt")
    log = (tmp_path / "log.txt").read_text()
    assert code == 0, log[-3000:]
    assert "1 devices" in log and "starting at step 3" in log
    assert helpers.checkpoint_steps(tmp_path) == [3, 6]
    expected = helpers.load_params(reference / "params_0.npz")
    assert_params_close(helpers.load_params(tmp_path / "params_0.npz"), expected)


def local_train_batches(split, monkeypatch, process: int, processes: int, start_step: int):
    monkeypatch.setattr(jax, "process_index", lambda: process)
    monkeypatch.setattr(jax, "process_count", lambda: processes)
    batches = input_pipeline.train_batches(
        split, global_batch_size=8, seed=3, start_step=start_step,
    )  # fmt: skip
    return [next(batches)["label"] for _ in range(4)]


def test_global_batches_do_not_depend_on_process_count(monkeypatch):
    """Process i yields rows [4i, 4i+4) of the batch one process would yield, at every step."""
    labels = np.arange(44, dtype=np.int32)  # 5 batches of 8 per epoch: steps 3..6 cross epochs.
    split = input_pipeline.Split(images=np.zeros((44, 2, 2, 1), np.uint8), labels=labels)
    whole = local_train_batches(split, monkeypatch, 0, 1, start_step=3)
    parts = [local_train_batches(split, monkeypatch, i, 2, start_step=3) for i in range(2)]
    for step in range(4):
        np.testing.assert_array_equal(np.concatenate([p[step] for p in parts]), whole[step])
    assert len(set(whole[0]) | set(whole[1])) == 16  # Distinct examples within an epoch.
    restarted = local_train_batches(split, monkeypatch, 0, 1, start_step=5)
    np.testing.assert_array_equal(restarted[0], whole[2])


@pytest.mark.parametrize(
    "flags, message",
    [
        (
            ["--num_processes=2"],
            "--num_processes needs --coordinator_address (or use --distributed alone)",
        ),
        (
            ["--coordinator_address=127.0.0.1:1", "--num_processes=2", "--process_id=2"],
            "--process_id=2 must be below --num_processes",
        ),
    ],
)
def test_bad_distributed_flags_exit_2(tmp_path, flags, message):
    result = run_cli(
        "nin_jax.main", "--config=configs/digits.py", f"--workdir={tmp_path}", *flags, timeout=120
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f"error: {message}"]
