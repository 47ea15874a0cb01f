"""The command line: a real run from another directory, overrides, and one-line errors."""

import json
import logging
import os
import subprocess
import sys

import pytest
from helpers import REPO_ROOT, assert_one_line_error, run_cli

from nin_jax import cli
from nin_jax.configs import digits

MAIN = ("nin_jax.main", "--config=configs/digits.py")
TINY = ("--config.model.widths=((8, 8, 8), (8, 8, 8), (8, 8))", "--config.batch_size=16")

USER_CONFIG = """
from nin_jax import cli
from nin_jax.configs import digits


def get_config():
    config = digits.get_config()
    config.num_train_steps = 3
    config.model.init_std = 0.1
    return config
"""


@pytest.mark.slow
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
        (("--config.no_such_field=1",), "unknown config field config.no_such_field (see "),
        (
            ("--config.learning_rat=0.1",),
            "unknown config field config.learning_rat; did you mean config.learning_rate?",
        ),
        (
            ("--config.model.dropout=0.3",),
            "unknown config field config.model.dropout; did you mean config.model.dropout_rate?",
        ),
        (("--config.modle.dropout_rate=0.3",), "config.modle; did you mean config.model?"),
        (("--config.model.dropoutt=None",), "did you mean config.model.dropout_rate?"),
        (("--config.batch_size.x=1",), "config.batch_size is a single value"),
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


def test_unknown_field_lines_are_clean():
    """No escaped quotes, no literal newline: what ml_collections' KeyError repr gave."""
    result = run_cli(*MAIN, "--workdir=/nonexistent/run", "--config.learning_rat=0.1")
    line = assert_one_line_error(result, "config.learning_rat")
    assert "\\" not in line and "'" not in line and '"' not in line


def test_helpshort_exits_0():
    result = run_cli("nin_jax.main", "--helpshort")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "--workdir" in result.stdout and "--allow_schedule_change" in result.stdout


@pytest.mark.slow
@pytest.mark.parametrize("tool", ["plot", "evaluate", "predict", "class_maps", "benchmark"])
def test_every_tool_helpshort_exits_0(tool):
    result = run_cli(f"nin_jax.{tool}", "--helpshort")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "--" in result.stdout


HOLD_LOCK = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)
fcntl.flock(fd, fcntl.LOCK_EX)
os.write(fd, b"run 12345 on elsewhere since 2026-01-01T00:00:00")
print("locked", flush=True)
time.sleep(120)
"""


IMPORT_TIMES = {"PYTHONPROFILEIMPORTTIME": "1"}  # python -X importtime: each import on stderr


def heavy_imports(stderr: str) -> list[str]:
    """The JAX, TensorFlow, Orbax and CLU modules of an ``IMPORT_TIMES`` run's stderr."""
    names = [line.rsplit("|", 1)[-1].strip() for line in stderr.splitlines() if "|" in line]
    return [n for n in names if n.split(".")[0] in ("jax", "tensorflow", "orbax", "clu")]


def test_workdir_errors_come_before_the_slow_imports(tmp_path):
    """A busy workdir, a file in its place, or a resume with another schedule: one line
    from ``main`` before it imports JAX or TensorFlow (1-2 s instead of 20 or more)."""
    busy, blocker = tmp_path / "busy", tmp_path / "a_file"
    busy.mkdir()
    blocker.write_text("x")
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(busy / ".lock")], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        cases = {
            busy: "is in use by run 12345 on elsewhere",
            blocker: "is not writable",
            blocker / "run": "is not writable",
        }
        for workdir, message in cases.items():
            result = run_cli(*MAIN, f"--workdir={workdir}", env=IMPORT_TIMES)
            assert_one_line_error(result, message)
            assert heavy_imports(result.stderr) == [], workdir
    finally:
        holder.kill()
        holder.wait()


def test_a_resume_with_another_schedule_is_refused_before_the_slow_imports(tmp_path):
    (tmp_path / "checkpoints" / "31").mkdir(parents=True)
    config = digits.get_config()
    config.num_train_steps = 100
    (tmp_path / "config.json").write_text(config.to_json())
    result = run_cli(*MAIN, f"--workdir={tmp_path}", env=IMPORT_TIMES)
    line = assert_one_line_error(
        result, "was trained with config.num_train_steps=100, this config has -1", "--allow_"
    )
    assert heavy_imports(result.stderr) == [], line


ENDING = """
import atexit, sys
from nin_jax import cli, errors


class Teardown:
    def __del__(self):
        print("modules torn down", flush=True)


KEEP = Teardown()  # Deleted when Python tears down this module's globals.


def main(argv):
    atexit.register(lambda: print("atexit handler ran", flush=True))
    print("main ran", end=" ")  # Left in stdout's buffer: flushed by the exit.
    if sys.argv[1] == "error":
        raise errors.ConfigError("a bad value")
    if sys.argv[1] == "stopped":
        raise errors.Stopped("interrupted (Ctrl-C) at step 3: ...", exit_code=130, step=3)


cli.run(main, positional=True)
"""


@pytest.mark.parametrize("how, code", [("done", 0), ("error", 2), ("stopped", 130)])
def test_a_command_ends_without_module_teardown(how, code):
    """What makes Ctrl-C's exit take seconds after its line (Python freeing TensorFlow's
    and JAX's modules) is skipped; atexit handlers and buffered output are not."""
    result = subprocess.run(
        [sys.executable, "-c", ENDING, how], cwd=REPO_ROOT, capture_output=True, text=True,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)}, timeout=60,
    )  # fmt: skip
    assert result.returncode == code, result.stderr
    assert result.stdout == "main ran atexit handler ran\n"  # No "modules torn down".


def test_orbax_info_lines_are_filtered_out_of_every_command():
    def record(path: str, level: int) -> logging.LogRecord:
        return logging.LogRecord("absl", level, path, 1, "saved", None, None)

    orbax = "/site-packages/orbax/checkpoint/checkpoint_manager.py"
    assert not cli._not_library_info(record(orbax, logging.INFO))
    assert cli._not_library_info(record(orbax, logging.WARNING))
    assert cli._not_library_info(record("/repo/nin_jax/train.py", logging.INFO))


def test_unwritable_workdir_is_one_line_and_exit_code_2(tmp_path, digits_data_dir):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    result = run_cli(
        *MAIN, f"--workdir={blocker / 'run'}", f"--config.data_dir={digits_data_dir}", *TINY
    )
    assert_one_line_error(result, "workdir", "is not writable")
    assert blocker.read_text() == "not a directory"
