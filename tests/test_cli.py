"""The command line: a real digits run, and bad input ending in one line and exit code 2."""

import json

import pytest
from conftest import run_cli

MAIN = ("nin_jax.main", "--config=configs/digits.py")
TINY = ("--config.model.widths=((8, 8, 8), (8, 8, 8), (8, 8))", "--config.batch_size=16")


def test_main_trains_and_writes_results(tmp_path, digits_data_dir):
    workdir = tmp_path / "run"
    result = run_cli(
        *MAIN, f"--workdir={workdir}", f"--config.data_dir={digits_data_dir}",
        "--config.num_train_steps=3", *TINY,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    results = json.loads((workdir / "results.json").read_text())
    assert results["step"] == 3 and results["test_examples"] == 360
    assert json.loads((workdir / "config.json").read_text())["num_train_steps"] == 3


@pytest.mark.parametrize(
    "args, message",
    [
        (("--config.no_such_field=1",), "unknown config field 'no_such_field'"),
        (("--config.dataset=imagenet21k",), "unknown dataset 'imagenet21k'"),
        (("--config=configs/missing.py",), "cannot load the config file"),
        (("--config.batch_size=many",), "--config.batch_size=many"),
    ],
)
def test_bad_input_is_one_line_and_exit_code_2(args, message, tmp_path, digits_data_dir):
    result = run_cli(
        *MAIN, f"--workdir={tmp_path}", f"--config.data_dir={digits_data_dir}", *TINY, *args
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0], result.stderr[-2000:]


def test_unwritable_workdir_is_one_line_and_exit_code_2(tmp_path, digits_data_dir):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    result = run_cli(
        *MAIN, f"--workdir={blocker / 'run'}", f"--config.data_dir={digits_data_dir}", *TINY
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "error: workdir" in result.stderr and "is not writable" in result.stderr
    assert blocker.read_text() == "not a directory"
