"""The digits flow on a flaky bucket (tests/gcs_server.py's fault layer) loses nothing.

Digits are copied into the bucket; then, with 5% of requests answered 503, 2% 429, 2%
applied with their answer lost and up to 30 ms of latency on each, a run with its
workdir and data dir on gs:// trains 60 steps (a checkpoint every 20), the same command
is run again (it resumes from the last checkpoint and evaluates), and
``nin_jax.evaluate`` reads the workdir. It must end with the parameters and the test
accuracy of the same run on local disks, and ``metrics.jsonl`` with every log line once,
in order.

An outage (every request answered 503) that begins once the first checkpoint is
complete and lasts longer than the retries (``config.storage_retry_seconds``) ends the
run with one error line, exit code 2 and no traceback within a bound; the same
command resumes from that checkpoint once the bucket answers.
"""

import io
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import gcs_server
import helpers
import numpy as np
import pytest

pytestmark = pytest.mark.slow

STEPS, EVERY = 60, 20
RATES = {"unavailable": 0.05, "rate_limited": 0.02, "lost_answer": 0.02, "latency": (0.0, 0.03)}


def args(workdir: str, data_dir: str) -> list[str]:
    return helpers.train_args(
        workdir, data_dir, num_train_steps=STEPS, checkpoint_every_steps=EVERY,
        log_every_steps=EVERY, eval_every_steps=STEPS, batch_size=32, eval_split="test",
        learning_rate=0.1,
    )  # fmt: skip


@pytest.fixture(scope="module")
def local_run(digits_data_dir, tmp_path_factory) -> Path:
    workdir = tmp_path_factory.mktemp("local")
    log = workdir.parent / f"{workdir.name}.txt"
    assert helpers.run(args(str(workdir), digits_data_dir), 1, log) == 0, log.read_text()[-3000:]
    return workdir


@pytest.mark.parametrize("seed", [1, 2])
def test_a_run_on_a_flaky_bucket_ends_as_on_a_disk(gcs, digits_data_dir, local_run, tmp_path, seed):
    data_dir, workdir = f"flaky{seed}/tfds", f"flaky{seed}/run"
    gcs.set_faults()
    gcs.upload_tree(Path(digits_data_dir), data_dir)
    remote = args(gcs.url(workdir), gcs.url(data_dir))
    sandbox = {"env": gcs.env(), "prefix": gcs.command([])}
    gcs.set_faults(seed=seed, **RATES)
    try:
        codes = [helpers.run(remote, 1, tmp_path / f"run_{i}.txt", **sandbox) for i in (1, 2)]
        evaluation = helpers.run_cli(
            "nin_jax.evaluate", f"--workdir={gcs.url(workdir)}", "--json",
            env=gcs.env(), prefix=gcs.command([]),
        )  # fmt: skip
        counts = gcs.fault_counts()
    finally:
        gcs.set_faults()
    logs = [(tmp_path / f"run_{i}.txt").read_text() for i in (1, 2)]
    print(f"seed {seed}: {counts}")
    assert codes == [0, 0], logs[0][-3000:] + logs[1][-3000:]
    assert evaluation.returncode == 0, evaluation.stderr[-3000:]
    assert all(counts[kind] > 0 for kind in ("unavailable", "rate_limited", "lost_answer"))
    assert "Resuming from the checkpoint at step 60" in logs[1]

    with np.load(io.BytesIO(gcs.read(f"{workdir}/params_0.npz"))) as params:
        expected = helpers.load_params(local_run / "params_0.npz")
        assert set(params.files) == set(expected)
        for key, value in expected.items():
            np.testing.assert_array_equal(params[key], value, err_msg=key)
    results = json.loads(gcs.read(f"{workdir}/results.json"))
    local_results = json.loads((local_run / "results.json").read_text())
    assert results["test_accuracy"] == local_results["test_accuracy"]
    assert json.loads(evaluation.stdout)["accuracy"] == local_results["test_accuracy"]

    lines = [json.loads(line) for line in gcs.read(f"{workdir}/metrics.jsonl").splitlines()]
    local_lines = [
        json.loads(line) for line in (local_run / "metrics.jsonl").read_text().splitlines()
    ]
    assert [(r["split"], r["step"]) for r in lines] == [
        (r["split"], r["step"]) for r in local_lines
    ]  # Every line once, in order (the second session trains nothing, so logs nothing).
    assert [r.get("loss") for r in lines] == [r.get("loss") for r in local_lines]


OUTAGE_STEPS, RETRY_SECONDS = 100, 5
_COMMITTED = re.compile(r"/checkpoints/(\d+)/commit_success\.txt$")


def committed_steps(gcs, workdir: str) -> list[int]:
    """The steps whose checkpoint Orbax finished (its commit marker is in the bucket)."""
    return sorted(int(m[1]) for n in gcs.names(workdir) if (m := _COMMITTED.search(n)))


def start_main(gcs, argv: list[str], log_path: Path) -> subprocess.Popen:
    """``python -m nin_jax.main argv`` in the sandbox (not train_worker.py, which imports
    TensorFlow before ``main`` can set its retries), output to ``log_path``."""
    env = {**os.environ, "PYTHONPATH": str(helpers.REPO_ROOT), "JAX_PLATFORMS": "cpu",
           "XLA_FLAGS": helpers.xla_flags(1), **gcs.env()}  # fmt: skip
    return subprocess.Popen(
        gcs.command([sys.executable, "-m", "nin_jax.main", *argv]), cwd=helpers.REPO_ROOT,
        env=env, stdout=log_path.open("w"), stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip


def test_an_outage_longer_than_the_retries_ends_the_run_in_one_line(gcs, digits_data_dir, tmp_path):
    """Every request fails from just after the first checkpoint on: the run stops with one
    error line (exit 2) within a bound, the newest complete checkpoint stays, and the same
    command resumes from it once the bucket answers."""
    data_dir, workdir = "outage/tfds", "outage/run"
    gcs.set_faults()
    gcs.upload_tree(Path(digits_data_dir), data_dir)
    argv = helpers.train_args(
        gcs.url(workdir), gcs.url(data_dir), num_train_steps=OUTAGE_STEPS,
        checkpoint_every_steps=EVERY, log_every_steps=EVERY, eval_every_steps=OUTAGE_STEPS,
        batch_size=32, eval_split="test", storage_retry_seconds=RETRY_SECONDS,
    )  # fmt: skip
    first = start_main(gcs, argv, tmp_path / "run_1.txt")
    try:
        helpers.wait_for(lambda: committed_steps(gcs, workdir), first, timeout=300)
        gcs.outage(900)  # Longer than the run can take to stop: ended by set_faults below.
        started = time.monotonic()
        code = first.wait(timeout=600)
        seconds = time.monotonic() - started
        outage_requests = gcs.fault_counts()["outage"]
    finally:
        helpers.kill(first)
        gcs.set_faults()
    log = (tmp_path / "run_1.txt").read_text()
    errors = [line for line in log.splitlines() if line.startswith("error:")]
    print(f"outage: exit {code} after {seconds:.1f} s, {outage_requests} requests failed; {errors}")
    assert code == 2, log[-3000:]
    assert len(errors) == 1 and "the bucket did not answer" in errors[0], log[-3000:]
    assert f"gs://{gcs_server.BUCKET}/{workdir}" in errors[0]
    assert "Traceback" not in log, log[-3000:]
    # The failing operation, the wait for a save in flight and the close: each within about
    # twice the budget (docs/SCALING.md, A flaky bucket).
    assert seconds < 20 * RETRY_SECONDS

    kept = committed_steps(gcs, workdir)
    assert kept and kept[-1] < OUTAGE_STEPS
    second = start_main(gcs, argv, tmp_path / "run_2.txt")
    try:
        code = second.wait(timeout=600)
    finally:
        helpers.kill(second)
    log = (tmp_path / "run_2.txt").read_text()
    assert code == 0, log[-3000:]
    assert f"Resuming from the checkpoint at step {kept[-1]}." in log, log[-3000:]
    assert json.loads(gcs.read(f"{workdir}/results.json"))["step"] == OUTAGE_STEPS
