"""Starting, watching and cleaning up training subprocesses for the multi-process tests."""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from conftest import REPO_ROOT, TINY_WIDTHS, xla_flags


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def train_args(workdir, data_dir: str, **overrides) -> list[str]:
    """Flags of a tiny digits run in ``workdir``; ``overrides`` are config fields."""
    config = {
        "data_dir": data_dir,
        "model.widths": str(TINY_WIDTHS),
        "batch_size": 8,
        "warmup_epochs": 0,
        "log_every_steps": 1,
        "eval_split": "test[:16]",
        **overrides,
    }
    return [
        "--config=configs/digits.py",
        f"--workdir={workdir}",
        *(f"--config.{key}={value}" for key, value in config.items()),
    ]


def start(args: list[str], devices: int, log_path, cache: bool = True) -> subprocess.Popen:
    """``tests/train_worker.py args`` on ``devices`` CPU devices, output to ``log_path``.

    Processes of one multi-process run must not use the compilation ``cache``:
    only process 0 reads it, and a gloo collective fails when the other
    processes arrive more than 30 s later, still compiling.
    """
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO_ROOT),
        "NO_GCE_CHECK": "true",
        "XLA_FLAGS": xla_flags(devices),
        "JAX_PLATFORMS": "cpu",
        "JAX_CPU_COLLECTIVES_IMPLEMENTATION": "gloo",
    }
    if not cache:  # conftest set up the shared compilation cache in os.environ.
        env.pop("JAX_COMPILATION_CACHE_DIR", None)
    log = open(log_path, "w")
    return subprocess.Popen(
        [sys.executable, str(REPO_ROOT / "tests" / "train_worker.py"), *args],
        cwd=REPO_ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def start_processes(args: list[str], count: int, log_dir) -> list[subprocess.Popen]:
    """One multi-process run: ``count`` processes x 2 CPU devices, coordinated on 127.0.0.1.

    Logs go to ``log_dir/log_{i}.txt``; no compilation cache (see ``start``).
    """
    port = free_port()
    return [
        start(
            [
                *args,
                f"--coordinator_address=127.0.0.1:{port}",
                f"--num_processes={count}",
                f"--process_id={i}",
            ],
            devices=2,
            log_path=log_dir / f"log_{i}.txt",
            cache=False,
        )
        for i in range(count)
    ]


def kill(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def wait_all(processes: list[subprocess.Popen], timeout: float) -> list[int]:
    """Exit codes of ``processes``; any still running at ``timeout`` are killed."""
    deadline = time.monotonic() + timeout
    try:
        return [p.wait(timeout=max(0.0, deadline - time.monotonic())) for p in processes]
    finally:
        for p in processes:
            kill(p)


def run(args: list[str], devices: int, log_path, timeout: float = 600) -> int:
    return wait_all([start(args, devices, log_path)], timeout)[0]


def wait_for(condition, process: subprocess.Popen, timeout: float) -> None:
    """Polls ``condition()`` until True; fails if ``process`` ends or ``timeout`` passes first."""
    deadline = time.monotonic() + timeout
    while not condition():
        if process.poll() is not None:
            raise AssertionError(f"the run ended (exit code {process.returncode}) too early")
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.05)


def load_params(path) -> dict[str, np.ndarray]:
    with np.load(path) as npz:
        return dict(npz)


def checkpoint_steps(workdir) -> list[int]:
    return sorted(int(p.name) for p in Path(workdir, "checkpoints").iterdir() if p.name.isdigit())
