"""Each user error gives one line on stderr, exit code 2, no traceback, and intact checkpoints."""

import hashlib
import json
import os
import shutil
import subprocess
import sys

import pytest
from conftest import REPO_ROOT, TINY_WIDTHS, load_config, run_cli

from nin_jax import predict, restore, train


@pytest.fixture(scope="module")
def trained(tmp_path_factory, digits_data_dir) -> str:
    """A tiny digits workdir with a checkpoint at step 2."""
    path = str(tmp_path_factory.mktemp("errors_run"))
    train.train_and_evaluate(load_config("digits", data_dir=digits_data_dir), path)
    return path


@pytest.fixture
def workdir(trained, tmp_path) -> str:
    """A fresh copy of the trained workdir for a test to try to damage."""
    path = str(tmp_path / "workdir")
    shutil.copytree(trained, path)
    return path


def tree_hash(path: str) -> str:
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


def checkpoint_state(workdir: str) -> tuple[str, str]:
    with open(os.path.join(workdir, "config.json")) as f:
        config = f.read()
    return tree_hash(os.path.join(workdir, "checkpoints")), config


def assert_one_line_error(result, *fragments: str) -> None:
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, result.stderr[-2000:]
    for fragment in fragments:
        assert fragment in errors[0]


def main_cli(workdir: str, data_dir: str, *overrides: str, config: str = "digits"):
    tiny = [
        f"--config.model.widths={TINY_WIDTHS}", "--config.batch_size=8",
        "--config.warmup_epochs=0", "--config.log_every_steps=1",
    ]  # fmt: skip
    return run_cli(
        "nin_jax.main", f"--config=configs/{config}.py", f"--workdir={workdir}",
        f"--config.data_dir={data_dir}", *tiny, *overrides,
    )  # fmt: skip


def test_different_model_in_workdir(workdir, digits_data_dir):
    before = checkpoint_state(workdir)
    result = main_cli(workdir, digits_data_dir, "--config.model.kernel_sizes=(3,3,3)")
    assert_one_line_error(result, "different model or dataset", "model.kernel_sizes")
    assert checkpoint_state(workdir) == before


def test_different_dataset_in_workdir(workdir, digits_data_dir):
    before = checkpoint_state(workdir)
    result = main_cli(workdir, digits_data_dir, "--config.dataset=mnist")
    assert_one_line_error(result, "different model or dataset", "dataset is 'digits'")
    assert checkpoint_state(workdir) == before


def test_mismatched_checkpoint_without_config_json(workdir, digits_data_dir):
    """Orbax's shape mismatch, when there is no config.json to compare with, is one line too."""
    os.remove(os.path.join(workdir, "config.json"))
    before = tree_hash(os.path.join(workdir, "checkpoints"))
    config = load_config("digits", data_dir=digits_data_dir, num_train_steps=4)
    config.model.widths = ((8, 8, 8), (8, 8, 8), (8, 4))
    with pytest.raises(train.TrainingError, match="does not fit this config's model"):
        train.train_and_evaluate(config, workdir)
    assert tree_hash(os.path.join(workdir, "checkpoints")) == before


def test_tools_refuse_a_checkpoint_of_another_model(workdir, capsys):
    config_path = os.path.join(workdir, "config.json")
    with open(config_path) as f:
        config = json.load(f)
    config["model"]["widths"][-1] = [8, 4]
    with open(config_path, "w") as f:
        json.dump(config, f)
    before = tree_hash(os.path.join(workdir, "checkpoints"))
    with pytest.raises(SystemExit) as exit_info:
        restore.run_tool(predict.main, [f"--workdir={workdir}", "x.png"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: the checkpoint at step 2") and err.count("\n") == 1
    assert "does not belong to the model" in err and "mlpconv3" in err
    assert tree_hash(os.path.join(workdir, "checkpoints")) == before


def test_dataset_not_prepared_offline(tmp_path):
    """TFDS cannot download here; its retries are turned off so the test is quick."""
    workdir, empty = tmp_path / "workdir", tmp_path / "empty_data_dir"
    code = (
        "import sys, runpy; "
        "import tensorflow_datasets.core.download.downloader as d; d.MAX_RETRIES = 0; "
        "sys.argv = sys.argv[1:]; runpy.run_module('nin_jax.main', run_name='__main__')"
    )
    args = [
        "nin_jax.main", "--config=configs/mnist.py", f"--workdir={workdir}",
        f"--config.data_dir={empty}", f"--config.model.widths={TINY_WIDTHS}",
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    result = subprocess.run(
        [sys.executable, "-c", code, *args], cwd=REPO_ROOT, env=env, capture_output=True,
        text=True, timeout=300,
    )  # fmt: skip
    assert_one_line_error(result, "'mnist' is not prepared", "tfds build mnist", "data_dir")
    assert not (workdir / "checkpoints").exists()


def test_nan_loss_keeps_the_last_good_checkpoint(workdir, digits_data_dir):
    before = checkpoint_state(workdir)
    result = main_cli(
        workdir, digits_data_dir, "--config.num_train_steps=6", "--config.learning_rate=1e30",
        "--config.checkpoint_every_steps=1",
    )  # fmt: skip
    assert_one_line_error(result, "became inf by step 3", "last good checkpoint")
    assert checkpoint_state(workdir)[0] == before[0]
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["2"]


def test_not_an_image(workdir, tmp_path):
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    before = checkpoint_state(workdir)
    result = run_cli("nin_jax.predict", f"--workdir={workdir}", str(text))
    assert_one_line_error(result, f"{text} is not an image file")
    assert checkpoint_state(workdir) == before


def test_missing_image_file(workdir, capsys):
    with pytest.raises(SystemExit) as exit_info:
        restore.run_tool(predict.main, [f"--workdir={workdir}", "/no/such.png"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == "error: /no/such.png: no such file\n"


def test_missing_checkpoint(workdir, capsys):
    shutil.rmtree(os.path.join(workdir, "checkpoints"))
    with pytest.raises(SystemExit) as exit_info:
        restore.run_tool(predict.main, [f"--workdir={workdir}", "a.png"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: no checkpoint in ") and err.count("\n") == 1


def test_missing_checkpoint_step(workdir, capsys):
    before = checkpoint_state(workdir)
    with pytest.raises(SystemExit) as exit_info:
        restore.run_tool(predict.main, [f"--workdir={workdir}", "--step=7", "a.png"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.endswith(
        f"no checkpoint at step 7 in {os.path.abspath(workdir)}/checkpoints; available: 2\n"
    )
    assert checkpoint_state(workdir) == before


def test_not_a_workdir(tmp_path):
    result = run_cli("nin_jax.evaluate", f"--workdir={tmp_path}")
    assert_one_line_error(result, f"{tmp_path}/config.json is missing")
