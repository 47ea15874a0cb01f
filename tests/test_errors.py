"""User errors of training and the tools: one line, exit code 2, and the workdir unchanged.

The tools' errors are raised by the functions that read the workdir; their
one-line form is ``nin_jax.cli``'s, checked here through a few real commands.
Damaged files are test_faults.py's.
"""

import json
import os
import shutil
import subprocess
import sys

import pytest
from helpers import (
    REPO_ROOT,
    TINY_WIDTHS,
    assert_one_line_error,
    copy_workdir,
    load_config,
    run_cli,
    tree_hash,
)  # fmt: skip

from nin_jax import errors, predict, restore, train


@pytest.fixture
def workdir(trained_workdir, tmp_path) -> str:
    """A fresh copy of the trained workdir for a test to try to damage."""
    return copy_workdir(trained_workdir, tmp_path / "workdir")


def checkpoint_state(workdir: str) -> tuple[str, str]:
    with open(os.path.join(workdir, "config.json")) as f:
        config = f.read()
    return tree_hash(os.path.join(workdir, "checkpoints")), config


def main_cli(workdir: str, data_dir: str, *overrides: str, config: str = "digits"):
    tiny = [
        f"--config.model.widths={TINY_WIDTHS}", "--config.batch_size=8",
        "--config.warmup_epochs=0", "--config.log_every_steps=1",
    ]  # fmt: skip
    return run_cli(
        "nin_jax.main", f"--config=configs/{config}.py", f"--workdir={workdir}",
        f"--config.data_dir={data_dir}", *tiny, *overrides,
    )  # fmt: skip


@pytest.mark.slow
def test_different_model_in_workdir(workdir, digits_data_dir):
    before = checkpoint_state(workdir)
    result = main_cli(workdir, digits_data_dir, "--config.model.kernel_sizes=(3,3,3)")
    assert_one_line_error(result, "different model or dataset", "model.kernel_sizes")
    assert checkpoint_state(workdir) == before


def test_different_dataset_in_workdir(workdir, digits_data_dir):
    before = tree_hash(workdir)
    config = load_config("digits", data_dir=digits_data_dir, dataset="mnist")
    with pytest.raises(
        errors.WorkdirError, match="different model or dataset.*dataset is 'digits'"
    ):
        train.train_and_evaluate(config, workdir)
    assert tree_hash(workdir) == before


def test_a_bad_config_value_changes_nothing_in_the_workdir(workdir):
    before = tree_hash(workdir)
    config = load_config("digits", lr_schedule="cosin")
    with pytest.raises(errors.ConfigError, match="config.lr_schedule is 'cosin'"):
        train.train_and_evaluate(config, workdir)
    assert tree_hash(workdir) == before


def test_mismatched_checkpoint_without_config_json(workdir, digits_data_dir):
    """Orbax's shape mismatch, when there is no config.json to compare with, is one line too."""
    os.remove(os.path.join(workdir, "config.json"))
    before = tree_hash(os.path.join(workdir, "checkpoints"))
    config = load_config("digits", data_dir=digits_data_dir, num_train_steps=4)
    config.model.widths = ((8, 8, 8), (8, 8, 8), (8, 4))
    with pytest.raises(errors.TrainingError, match="damaged or was saved from another model"):
        train.train_and_evaluate(config, workdir)
    assert tree_hash(os.path.join(workdir, "checkpoints")) == before


def test_tools_refuse_a_checkpoint_of_another_model(workdir):
    config_path = os.path.join(workdir, "config.json")
    with open(config_path) as f:
        config = json.load(f)
    config["model"]["widths"][-1] = [8, 4]
    with open(config_path, "w") as f:
        json.dump(config, f)
    before = tree_hash(os.path.join(workdir, "checkpoints"))
    with pytest.raises(errors.WorkdirError) as error:
        restore.load(workdir)
    message = str(error.value)
    assert message.startswith("the checkpoint at step 2") and "\n" not in message
    assert "does not belong to the model" in message and "mlpconv3" in message
    assert tree_hash(os.path.join(workdir, "checkpoints")) == before


@pytest.mark.slow
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


@pytest.mark.slow
def test_nan_loss_keeps_the_last_good_checkpoint(workdir, digits_data_dir):
    before = checkpoint_state(workdir)
    result = main_cli(
        workdir, digits_data_dir, "--config.num_train_steps=6", "--config.learning_rate=1e30",
        "--config.checkpoint_every_steps=1", "--allow_schedule_change",
    )  # fmt: skip
    assert_one_line_error(result, "became inf by step 3", "last good checkpoint")
    assert checkpoint_state(workdir)[0] == before[0]
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["2"]


def test_not_an_image_is_one_line_from_the_command(workdir, tmp_path):
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    before = tree_hash(workdir)
    result = run_cli("nin_jax.predict", f"--workdir={workdir}", str(text))
    assert_one_line_error(result, f"{text} is not an image file")
    assert tree_hash(workdir) == before


def test_missing_image_file(workdir):
    trained = restore.load(workdir)
    with pytest.raises(errors.ImageError, match="^/no/such.png: no such file$"):
        predict.predict(trained, ["/no/such.png"], k=3)


def test_missing_checkpoint(workdir):
    shutil.rmtree(os.path.join(workdir, "checkpoints"))
    with pytest.raises(errors.WorkdirError, match="^no checkpoint in .*: train first"):
        restore.load(workdir)


def test_missing_checkpoint_step(workdir):
    before = checkpoint_state(workdir)
    with pytest.raises(errors.WorkdirError) as error:
        restore.load(workdir, step=7)
    assert str(error.value) == (
        f"no checkpoint at step 7 in {os.path.abspath(workdir)}/checkpoints; available: 2"
    )
    assert checkpoint_state(workdir) == before


@pytest.mark.slow
def test_not_a_workdir_is_one_line_from_the_command(tmp_path):
    result = run_cli("nin_jax.evaluate", f"--workdir={tmp_path}")
    assert_one_line_error(result, f"{tmp_path}/config.json is missing")
