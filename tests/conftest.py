"""Shared fixtures: tiny configs, a prepared digits data dir, and a CLI runner."""

import functools
import importlib
import os
import subprocess
import sys
import tempfile
from pathlib import Path

# No metadata-server probes from TF's GCS client: tests stay on loopback.
os.environ.setdefault("NO_GCE_CHECK", "true")
# Tests compile the same tiny programs many times, in this process and in subprocesses
# (which inherit the environment): share them through JAX's persistent cache.
COMPILE_CACHE = os.path.join(tempfile.gettempdir(), "nin_jax_test_compile_cache")
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", COMPILE_CACHE)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
# The tests compile hundreds of small programs and time none of them: LLVM's
# optimisation passes only make the compiles slower (30% of the suite's time).
# Subprocesses inherit this; those that set a device count append to it (``xla_flags``).
os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} --xla_backend_optimization_level=0"

import pytest  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

TINY_WIDTHS = ((8, 8, 8), (8, 8, 8), (8, 8))


def xla_flags(devices: int) -> str:
    """XLA_FLAGS for a subprocess with ``devices`` CPU devices, keeping this process's flags."""
    return f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={devices}"


def load_config(name: str, **overrides):
    """configs/<name>.py with tiny, fast overrides applied (dotted keys use '__')."""
    config = importlib.import_module(f"configs.{name}").get_config()
    config.model.widths = TINY_WIDTHS
    config.batch_size = 8
    config.num_train_steps = 2
    config.log_every_steps = 1
    config.warmup_epochs = 0.0
    for key, value in overrides.items():
        target = config
        *parents, leaf = key.split("__")
        for parent in parents:
            target = target[parent]
        target[leaf] = value
    return config


def init_state(model, image_shape: tuple[int, ...], optimizer, seed: int = 0):
    """``steps.create_train_state`` under ``jax.jit``, as training calls it (eager init
    dispatches the initialisers op by op, which costs seconds per test)."""
    import jax

    from nin_jax import steps

    create = functools.partial(
        steps.create_train_state, model=model, image_shape=image_shape, optimizer=optimizer
    )
    return jax.jit(create)(jax.random.key(seed))


@pytest.fixture(scope="session")
def digits_data_dir(tmp_path_factory) -> str:
    """A TFDS data dir with the embedded digits dataset prepared (once per session)."""
    from nin_jax import input_pipeline

    data_dir = str(tmp_path_factory.mktemp("tfds"))
    input_pipeline.get_builder("digits", data_dir)
    return data_dir


def run_cli(*args: str, env: dict | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    """Runs ``python -m <args>`` from the repository root and captures its output."""
    full_env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", *args],
        cwd=REPO_ROOT,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
