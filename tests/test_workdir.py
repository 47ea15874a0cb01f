"""The workdir's lock: one run at a time, released on every exit, stale locks taken over."""

import os
import signal
import subprocess
import sys

import pytest

from nin_jax import errors
from nin_jax import workdir as workdir_lib

HOLD_LOCK = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)
fcntl.flock(fd, fcntl.LOCK_EX)
os.write(fd, b"run 12345 on elsewhere since 2026-01-01T00:00:00\\n")
print("locked", flush=True)
time.sleep(120)
"""


def test_a_held_lock_refuses_then_a_killed_holders_lock_is_taken_over(tmp_path):
    lock_path = tmp_path / workdir_lib.LOCK_FILE
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(lock_path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(errors.WorkdirBusyError, match="in use by run 12345 on elsewhere"):
            workdir_lib.WorkdirLock(str(tmp_path)).__enter__()
        assert lock_path.read_text().startswith("run 12345")  # Untouched by the refusal.
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait()
    with workdir_lib.WorkdirLock(str(tmp_path)):  # The killed run's lock is stale now.
        assert lock_path.read_text().startswith(f"run {os.getpid()} on ")
    assert lock_path.read_text() == ""  # Released.
    with workdir_lib.WorkdirLock(str(tmp_path)):
        pass


def test_the_lock_is_released_when_the_run_fails(tmp_path):
    with pytest.raises(RuntimeError), workdir_lib.WorkdirLock(str(tmp_path)):
        raise RuntimeError("a bug in the middle of a run")
    with workdir_lib.WorkdirLock(str(tmp_path)):
        pass


def test_check_available_refuses_a_held_or_unwritable_workdir_without_jax(tmp_path):
    lock_path = tmp_path / workdir_lib.LOCK_FILE
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(lock_path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(errors.WorkdirBusyError, match="in use by run 12345 on elsewhere"):
            workdir_lib.check_available(str(tmp_path))
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait()
    workdir_lib.check_available(str(tmp_path))  # Free again; the lock is not kept.
    assert lock_path.read_text() == ""
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    for path in (blocker, blocker / "run"):
        with pytest.raises(errors.WorkdirError, match="is not writable"):
            workdir_lib.check_available(str(path))


def trained_looking_workdir(path, **fields):
    """A workdir with a checkpoint directory and the digits recipe's config.json (``fields``
    changed)."""
    from nin_jax.configs import digits

    config = digits.get_config()
    for name, value in fields.items():
        config[name] = value
    (path / "checkpoints" / "10").mkdir(parents=True)
    workdir_lib.write_config(str(path), config)
    return digits.get_config()


def test_resuming_with_another_schedule_is_refused_naming_the_field(tmp_path):
    config = trained_looking_workdir(tmp_path, num_train_steps=100, batch_size=64)
    with pytest.raises(errors.WorkdirError) as refused:
        workdir_lib.check_compatible(str(tmp_path), config)
    message = str(refused.value)
    assert "trained with config.batch_size=64, this config has 32 (also num_train_steps)" in message
    assert "--allow_schedule_change" in message and "\n" not in message
    changes = workdir_lib.check_compatible(str(tmp_path), config, allow_schedule_change=True)
    assert changes == {"batch_size": (64, 32), "num_train_steps": (100, -1)}
    assert workdir_lib.describe_changes(changes) == "batch_size 64 -> 32, num_train_steps 100 -> -1"
    config.log_every_steps, config.eval_every_steps = 1, 7  # Bookkeeping may change.
    trained_looking_workdir(tmp_path / "same")
    assert workdir_lib.check_compatible(str(tmp_path / "same"), config) == {}
    config.model.widths = ((8, 8, 8), (8, 8, 8), (8, 8))  # Another model: never.
    with pytest.raises(errors.WorkdirError, match="different model"):
        workdir_lib.check_compatible(str(tmp_path / "same"), config, allow_schedule_change=True)


def test_resuming_on_other_inputs_is_refused_even_with_a_schedule_change(tmp_path):
    """A converted PyTorch model's fixed normalisation (nin_jax.convert) stays its own."""
    fixed = {"standardize_mean": (76.5,), "standardize_std": (102.0,)}
    config = trained_looking_workdir(tmp_path, **fixed)
    with pytest.raises(errors.WorkdirError) as refused:
        workdir_lib.check_compatible(str(tmp_path), config, allow_schedule_change=True)
    assert "(standardize_mean is (76.5,) there, () in this config)" in str(refused.value)
    config.standardize_mean, config.standardize_std = fixed.values()
    assert workdir_lib.check_compatible(str(tmp_path), config) == {}
    config.preprocess = "lcn"
    with pytest.raises(errors.WorkdirError, match="preprocess is 'standardize' there, 'lcn'"):
        workdir_lib.check_compatible(str(tmp_path), config)


def test_runs_json_appends_and_a_damaged_one_costs_only_its_records(tmp_path, caplog):
    record = {
        "start_step": 0, "end_step": 5, "train_seconds": 1.5, "compile_seconds": 3.0,
        "images_per_sec": 100.0, "ended": "finished",
    }  # fmt: skip
    assert workdir_lib.read_runs(str(tmp_path)) == []
    workdir_lib.append_run(str(tmp_path), record)
    second = {**record, "start_step": 5, "end_step": 9, "images_per_sec": None}
    assert workdir_lib.append_run(str(tmp_path), second) == [record, second]
    assert workdir_lib.read_runs(str(tmp_path)) == [record, second]
    runs = tmp_path / workdir_lib.RUNS_FILE
    for damage in ('{"runs": [{"start_step": "0"}]}', "{not json", ""):
        runs.write_text(damage)
        caplog.clear()
        assert workdir_lib.read_runs(str(tmp_path)) == []
        (warning,) = [r.getMessage() for r in caplog.records]
        assert warning.startswith(f"{runs} is damaged (") and "a new file is started" in warning


def test_a_config_json_the_bucket_does_not_give_is_not_damaged(monkeypatch):
    """A read that failed through storage's retries names the bucket, not a damaged file."""

    def read_bytes(path: str) -> bytes:
        raise ConnectionError(f"{path}: Error executing an HTTP request: HTTP response code 503")

    monkeypatch.setattr(workdir_lib.storage, "read_bytes", read_bytes)
    with pytest.raises(errors.StorageError) as raised:
        workdir_lib.load_config("gs://b/run")
    message = str(raised.value)
    assert message.startswith("cannot read gs://b/run/config.json: the bucket did not answer")
    assert "is damaged" not in message
