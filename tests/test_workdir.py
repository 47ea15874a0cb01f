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
