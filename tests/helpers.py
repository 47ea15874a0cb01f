"""Helpers of the test modules: tiny configs, CLI and training subprocesses, workdir checks."""

import functools
import hashlib
import importlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = REPO_ROOT / "tests" / "scripts"

TINY_WIDTHS = ((8, 8, 8), (8, 8, 8), (8, 8))


def xla_flags(devices: int) -> str:
    """XLA_FLAGS for a subprocess with ``devices`` CPU devices, keeping this process's flags."""
    return f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={devices}"


def load_config(name: str, **overrides):
    """configs/<name>.py with tiny, fast overrides applied (dotted keys use '__')."""
    config = importlib.import_module(f"nin_jax.configs.{name}").get_config()
    config.model.widths = TINY_WIDTHS
    config.batch_size = 8
    config.num_train_steps = 2
    config.log_every_steps = 1
    config.warmup_epochs = 0.0
    for key, value in overrides.items():
        set_field(config, key.split("__"), value)
    return config


def set_field(config, path: list[str], value) -> None:
    """``config.a.b = value`` for ``path == ['a', 'b']``."""
    *parents, leaf = path
    for parent in parents:
        config = config[parent]
    config[leaf] = value


def init_state(model, image_shape: tuple[int, ...], optimizer, seed: int = 0):
    """``steps.create_train_state`` under ``jax.jit``, as training calls it (eager init
    dispatches the initialisers op by op, which costs seconds per test)."""
    import jax

    from nin_jax import steps

    create = functools.partial(
        steps.create_train_state, model=model, image_shape=image_shape, optimizer=optimizer
    )
    return jax.jit(create)(jax.random.key(seed))


def run_cli(
    *args: str, env: dict | None = None, timeout: int = 300, prefix: list[str] = ()
) -> subprocess.CompletedProcess:
    """Runs ``python -m <args>`` from the repository root and captures its output
    (``prefix``: a command that runs it, e.g. in a network namespace)."""
    full_env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), **(env or {})}
    return subprocess.run(
        [*prefix, sys.executable, "-m", *args],
        cwd=REPO_ROOT,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


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


def start(
    args: list[str],
    devices: int,
    log_path,
    cache: bool = True,
    env: dict | None = None,
    prefix: list[str] = (),
) -> subprocess.Popen:
    """``tests/scripts/train_worker.py args`` on ``devices`` CPU devices, output to ``log_path``
    (``env``: more environment variables; ``prefix`` as for ``run_cli``).

    Processes of one multi-process run must not use the compilation ``cache``:
    only process 0 reads it, and a gloo collective fails when the other
    processes arrive more than 30 s later, still compiling.
    """
    full_env = {
        **os.environ,
        "PYTHONPATH": str(REPO_ROOT),
        "NO_GCE_CHECK": "true",
        "XLA_FLAGS": xla_flags(devices),
        "JAX_PLATFORMS": "cpu",
        "JAX_CPU_COLLECTIVES_IMPLEMENTATION": "gloo",
        **(env or {}),
    }
    if not cache:  # conftest set up the shared compilation cache in os.environ.
        full_env.pop("JAX_COMPILATION_CACHE_DIR", None)
    log = open(log_path, "w")
    process = subprocess.Popen(
        [*prefix, sys.executable, str(SCRIPTS / "train_worker.py"), *args],
        cwd=REPO_ROOT,
        env=full_env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    process.log_path = Path(log_path)
    return process


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
    """Exit codes of ``processes``; if any is still running at ``timeout``, every one's
    Python stacks (train_worker's SIGUSR1) and log tail make the failure message."""
    deadline = time.monotonic() + timeout
    try:
        return [p.wait(timeout=max(0.0, deadline - time.monotonic())) for p in processes]
    except subprocess.TimeoutExpired:
        report = hung_report(processes)
        raise AssertionError(f"still running after {timeout} s:\n{report}") from None
    finally:
        for p in processes:
            kill(p)


def hung_report(processes: list[subprocess.Popen]) -> str:
    running = [p for p in processes if p.poll() is None]
    for p in running:
        os.kill(p.pid, signal.SIGUSR1)
    time.sleep(2)  # faulthandler writes the stacks to the log.
    return "\n".join(
        f"--- process {i} (exit code {p.poll()}), {p.log_path.name}:\n"
        + p.log_path.read_text(errors="replace")[-4000:]
        for i, p in enumerate(processes)
    )


def run(args: list[str], devices: int, log_path, timeout: float = 600, **start_args) -> int:
    """The exit code of ``start(args, devices, log_path, **start_args)``."""
    return wait_all([start(args, devices, log_path, **start_args)], timeout)[0]


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


def tree_hash(path) -> str:
    """Hash of every file's relative path and bytes under ``path``."""
    digest = hashlib.sha256()
    for root, dirs, files in os.walk(path):
        dirs.sort()
        for name in sorted(files):
            full = os.path.join(root, name)
            digest.update(os.path.relpath(full, path).encode())
            with open(full, "rb") as f:
                digest.update(f.read())
    return digest.hexdigest()


def copy_workdir(source: str, destination) -> str:
    """A copy of a trained workdir for a test to change or damage."""
    shutil.copytree(source, destination)
    return str(destination)


def assert_one_line_error(result: subprocess.CompletedProcess, *fragments: str) -> str:
    """Exit code 2, no traceback, exactly one ``error:`` line holding ``fragments``; returns it."""
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr, result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, result.stderr[-2000:]
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    return errors[0]
