"""The Cloud TPU flow on gs://, against a GCS-protocol server on loopback (tests/gcs_server.py).

Digits are prepared locally and copied into the bucket; a run with
``--config.data_dir=gs://...`` and ``--workdir=gs://...`` is stopped by SIGTERM after
its second checkpoint and rerun. It must end with the parameters and the test
accuracy of the same run on local disks, never interrupted; then its files are read
back from the bucket and the tools run on the gs:// workdir.
"""

import io
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import helpers
import numpy as np
import pytest
from helpers import REPO_ROOT, SCRIPTS, assert_one_line_error
from PIL import Image

pytestmark = pytest.mark.slow

STEPS, EVERY, STOP_AFTER = 300, 50, 100
WORKDIR, DATA_DIR = "run", "tfds"  # object prefixes in the bucket


def args(workdir: str, data_dir: str) -> list[str]:
    """A small NIN that leaves chance within the run (the tiny tests' widths stay there)."""
    return helpers.train_args(
        workdir, data_dir, num_train_steps=STEPS, checkpoint_every_steps=EVERY,
        max_checkpoints=2, log_every_steps=EVERY, eval_every_steps=2 * EVERY, batch_size=32,
        eval_split="test", learning_rate=0.1, warmup_epochs=1, **{
            "model.widths": "((16, 16, 16), (16, 16, 16), (16, 16))",
            "model.kernel_init": "he_normal",
        },
    )  # fmt: skip


def in_bucket(gcs, *args_: str, **kwargs) -> subprocess.CompletedProcess:
    """``python -m args_`` in the sandbox (its network namespace and its GCS variables)."""
    return helpers.run_cli(*args_, env=gcs.env(), prefix=gcs.command([]), **kwargs)


def records(data: bytes) -> list[dict]:
    return [json.loads(line) for line in data.decode().splitlines()]


def checkpoint_steps(names: list[str], prefix: str) -> list[int]:
    steps = {name[len(prefix) :].split("/")[0] for name in names if name.startswith(prefix)}
    return sorted(int(step) for step in steps if step.isdigit())


@pytest.fixture(scope="module")
def runs(gcs, digits_data_dir, tmp_path_factory) -> dict:
    """The local run and the gs:// run (stopped once by SIGTERM); their logs and exit codes."""
    tmp = tmp_path_factory.mktemp("gcs_flow")
    gcs.upload_tree(Path(digits_data_dir), DATA_DIR)
    local = tmp / "local"
    assert helpers.run(args(str(local), digits_data_dir), 1, tmp / "local.txt") == 0, (
        tmp / "local.txt"
    ).read_text()[-3000:]

    remote = args(gcs.url(WORKDIR), gcs.url(DATA_DIR))
    sandbox = {"env": gcs.env(), "prefix": gcs.command([])}
    first = helpers.start(remote, 1, tmp / "first.txt", **sandbox)
    try:
        done = f"{WORKDIR}/checkpoints/{STOP_AFTER}/commit_success.txt"
        helpers.wait_for(lambda: done in gcs.names(f"{WORKDIR}/checkpoints/"), first, 600)
        os.kill(first.pid, signal.SIGTERM)
        first_code = first.wait(timeout=300)
    finally:
        helpers.kill(first)
    second_code = helpers.run(remote, 1, tmp / "second.txt", env=gcs.env(), prefix=gcs.command([]))
    return {
        "tmp": tmp,
        "local": local,
        "codes": (first_code, second_code),
        "logs": [(tmp / f"{name}.txt").read_text() for name in ("first", "second")],
    }


def test_sigterm_and_rerun_on_gs_match_the_local_run(gcs, runs):
    first_code, second_code = runs["codes"]
    assert first_code == 143, runs["logs"][0][-3000:]
    assert second_code == 0, runs["logs"][1][-3000:]
    with np.load(io.BytesIO(gcs.read(f"{WORKDIR}/params_0.npz"))) as remote:
        expected = helpers.load_params(runs["local"] / "params_0.npz")
        assert set(remote.files) == set(expected)
        for key, value in expected.items():
            np.testing.assert_array_equal(remote[key], value, err_msg=key)
    results = json.loads(gcs.read(f"{WORKDIR}/results.json"))
    local_results = json.loads((runs["local"] / "results.json").read_text())
    print(
        f"test accuracy: gs:// {results['test_accuracy']}, local {local_results['test_accuracy']}"
    )
    assert results["step"] == STEPS and results["test_examples"] == 360
    assert results["test_accuracy"] == local_results["test_accuracy"]
    assert results["test_accuracy"] > 0.3  # Trained: chance is 0.1.


def test_metrics_jsonl_in_the_bucket_holds_both_runs_in_order(gcs, runs):
    lines = records(gcs.read(f"{WORKDIR}/metrics.jsonl"))
    local = records((runs["local"] / "metrics.jsonl").read_bytes())
    train_steps = [r["step"] for r in lines if r["split"] == "train"]
    stop_step = sorted(set(train_steps) - set(range(EVERY, STEPS + 1, EVERY)))
    assert len(stop_step) == 1 and STOP_AFTER < stop_step[0] < STEPS  # The step SIGTERM saved.
    assert (
        train_steps == sorted(train_steps) == sorted([*range(EVERY, STEPS + 1, EVERY), *stop_step])
    )
    assert [r["time"] for r in lines] == sorted(r["time"] for r in lines)  # Second run after.
    evals = [{k: r[k] for k in ("step", "loss", "accuracy")} for r in lines if r["split"] == "eval"]
    local_evals = [
        {k: r[k] for k in ("step", "loss", "accuracy")} for r in local if r["split"] == "eval"
    ]
    assert evals == local_evals and [e["step"] for e in evals] == [100, 200, 300]


def test_tensorboard_reads_the_events_in_the_bucket(gcs, runs):
    result = subprocess.run(
        gcs.command([sys.executable, str(SCRIPTS / "tensorboard_scalars.py"),
                     gcs.url(f"{WORKDIR}/tensorboard")]),
        env={**os.environ, **gcs.env()}, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    scalars = json.loads(result.stdout)
    lines = records(gcs.read(f"{WORKDIR}/metrics.jsonl"))
    expected = [[r["step"], r["accuracy"]] for r in lines if r["split"] == "eval"]
    np.testing.assert_allclose(scalars["eval/accuracy"], expected, rtol=1e-6)
    train_steps = [step for step, _ in scalars["train/loss"]]
    assert train_steps == [r["step"] for r in lines if r["split"] == "train"]


def test_max_checkpoints_deletes_old_checkpoints_in_the_bucket(gcs, runs):
    names = gcs.names(f"{WORKDIR}/checkpoints/")
    assert checkpoint_steps(names, f"{WORKDIR}/checkpoints/") == [STEPS - EVERY, STEPS]
    assert helpers.checkpoint_steps(runs["local"]) == [STEPS - EVERY, STEPS]


def png_size(data: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        assert image.format == "PNG"
        return image.size


def test_tools_read_the_gs_workdir_and_write_into_it(gcs, runs, tmp_path):
    workdir = gcs.url(WORKDIR)
    result = in_bucket(gcs, "nin_jax.plot", f"--workdir={workdir}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert png_size(gcs.read(f"{WORKDIR}/curves.png")) == (1000, 700)

    result = in_bucket(gcs, "nin_jax.evaluate", f"--workdir={workdir}", "--json")
    assert result.returncode == 0, result.stderr[-3000:]
    evaluation = json.loads(result.stdout)
    assert json.loads(gcs.read(f"{WORKDIR}/eval/step_{STEPS}.json")) == evaluation
    assert (
        evaluation["accuracy"] == json.loads(gcs.read(f"{WORKDIR}/results.json"))["test_accuracy"]
    )
    png_size(gcs.read(f"{WORKDIR}/eval/confusion_step_{STEPS}.png"))

    image = io.BytesIO()
    Image.fromarray(np.full((8, 8), 255, np.uint8)).save(image, "PNG")
    gcs.write("images/white.png", image.getvalue())
    result = in_bucket(gcs, "nin_jax.predict", f"--workdir={workdir}", "--json",
                       gcs.url("images/white.png"))  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    [prediction] = json.loads(result.stdout)["predictions"]
    assert prediction["file"] == gcs.url("images/white.png") and len(prediction["top_k"]) == 5

    remote_output = gcs.url(f"{WORKDIR}/figures/new/maps.png")  # No such "directory" yet.
    local_output = tmp_path / "new" / "dir" / "maps.png"
    for output in (remote_output, str(local_output)):
        result = in_bucket(gcs, "nin_jax.class_maps", f"--workdir={workdir}",
                           "--num_images=2", f"--output={output}")  # fmt: skip
        assert result.returncode == 0, result.stderr[-3000:]
    assert png_size(gcs.read(f"{WORKDIR}/figures/new/maps.png")) == png_size(
        local_output.read_bytes()
    )


def test_a_damaged_remote_config_gets_the_local_line(gcs, runs, tmp_path):
    damaged = b'{"dataset": "digits", "model": '
    gcs.write("damaged/config.json", damaged)
    (tmp_path / "config.json").write_bytes(damaged)
    remote = assert_one_line_error(
        in_bucket(gcs, "nin_jax.evaluate", f"--workdir={gcs.url('damaged')}"), "is damaged"
    )
    local = assert_one_line_error(helpers.run_cli("nin_jax.evaluate", f"--workdir={tmp_path}"))
    assert remote.replace(gcs.url("damaged"), "W") == local.replace(str(tmp_path), "W")


def test_no_local_gs_directory_appears(runs):
    """A path used with the builtin file API instead of the bucket's makes a local gs: dir."""
    for root in (REPO_ROOT, Path.cwd(), runs["tmp"]):
        assert not list(root.rglob("gs:")), root
