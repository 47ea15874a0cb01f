"""The command line: a real run from another directory, overrides, and one-line errors."""

import json
import os
import subprocess
import sys

import pytest
from helpers import REPO_ROOT, assert_one_line_error, run_cli

MAIN = ("nin_jax.main", "--config=configs/digits.py")
TINY = ("--config.model.widths=((8, 8, 8), (8, 8, 8), (8, 8))", "--config.batch_size=16")

USER_CONFIG = """
from nin_jax.configs import digits


def get_config():
    config = digits.get_config()
    config.num_train_steps = 3
    config.model.init_std = 0.1
    return config
"""


def test_a_config_of_its_own_runs_from_another_directory(tmp_path, digits_data_dir):
    """A user's config file outside the repository, built on a recipe, run from its folder
    with nin_jax imported as installed (not from the repository root)."""
    (tmp_path / "my_config.py").write_text(USER_CONFIG)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run(
        [
            sys.executable, "-m", "nin_jax.main", "--config=my_config.py", "--workdir=run",
            f"--config.data_dir={digits_data_dir}", *TINY, "--config.model.init_std=None",
        ],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["step"] == 3 and results["test_examples"] == 360
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["num_train_steps"] == 3 and saved["model"]["init_std"] is None
    assert saved["data_dir"] == digits_data_dir


def test_the_repository_config_loads_from_another_directory(tmp_path):
    """--config=path/to/configs/digits.py from elsewhere: its imports resolve (a bad override
    then stops it before any data is read)."""
    config = REPO_ROOT / "configs" / "digits.py"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run(
        [
            sys.executable, "-m", "nin_jax.main", f"--config={config}", "--workdir=run",
            "--config.momentum=2.0",
        ],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert_one_line_error(result, "config.momentum is 2.0")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "args, message",
    [
        (("--config.no_such_field=1",), "unknown config field 'no_such_field'"),
        (("--config.dataset=imagenet21k",), "config.dataset is 'imagenet21k'"),
        (("--config=configs/missing.py",), "cannot load the config file"),
        (("--config.batch_size=many",), "--config.batch_size=many"),
        (("--config.batch_size=None",), "config.batch_size is not an optional field"),
        (("--config.model.head=gpa",), "config.model.head is 'gpa'; it must be one of gap,"),
        (("extra_argument",), "unexpected arguments: extra_argument"),
    ],
)
def test_bad_input_is_one_line_and_exit_code_2(args, message, tmp_path, digits_data_dir):
    result = run_cli(
        *MAIN, f"--workdir={tmp_path / 'run'}", f"--config.data_dir={digits_data_dir}", *TINY,
        *args,
    )  # fmt: skip
    assert_one_line_error(result, message)
    assert not (tmp_path / "run").exists()


def test_unwritable_workdir_is_one_line_and_exit_code_2(tmp_path, digits_data_dir):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    result = run_cli(
        *MAIN, f"--workdir={blocker / 'run'}", f"--config.data_dir={digits_data_dir}", *TINY
    )
    assert_one_line_error(result, "workdir", "is not writable")
    assert blocker.read_text() == "not a directory"
