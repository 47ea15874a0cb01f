"""Fault injection on every file nin_jax reads (docs/FILES.md lists them and their policies).

One family: each file is emptied, truncated, filled with random bytes or replaced by a
file of another kind (an image also by the special files below), then the command that
reads it runs. A file that defines a run or that the user gave stops the command with
one ``error:`` line, from a ``NinError`` raised where the file is read, and exit code 2;
the ZCA statistics cache is fitted again with a warning; metrics.jsonl is read around
the damage with a warning. Whatever the outcome, every other file of the workdir is
unchanged, byte for byte. The commands run in this process, ended as ``cli.run`` ends
them (``run_command``), except the config file's, whose loading is the command line's.
Two of the issue's cases also run as subprocesses, where stderr is the point.
"""

import dataclasses
import glob
import hashlib
import logging
import os
import shutil
import struct
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from helpers import load_config, run_cli
from PIL import Image

from nin_jax import (
    convert,
    errors,
    evaluate,
    images,
    input_pipeline,
    params_io,
    plot,
    predict,
    restore,
    statistics,
    train,
)
from nin_jax import workdir as workdir_lib

Result = tuple[int, list[str]]  # (exit code, the error: and warning: lines)
DAMAGES = ("empty", "truncated", "random", "other_kind")
ERRORS = dict.fromkeys(DAMAGES, "error")
IMAGE_SHAPE = (8, 8, 1)  # The tiny digits workdir's.
ZCA_SPLIT = input_pipeline.Split(
    images=np.random.default_rng(0).integers(0, 256, (32, *IMAGE_SHAPE), np.uint8),
    labels=np.zeros(32, np.int32),
)


@dataclasses.dataclass
class Env:
    """One case's copy of the trained workdir, its scratch directory and capture fixtures."""

    workdir: str
    tmp: Path
    data_dir: str  # the session's prepared digits data dir: read-only
    trained: restore.Trained  # the workdir's model, loaded once
    capsys: pytest.CaptureFixture
    caplog: pytest.LogCaptureFixture

    def file(self, relative: str) -> str:
        return os.path.join(self.workdir, relative)

    def data_dir_copy(self) -> str:
        copy = self.tmp / "tfds"
        if not copy.exists():
            shutil.copytree(self.data_dir, copy)
        return str(copy)


def run_command(call: Callable[[], object], env: Env) -> Result:
    """``call()`` ended as ``cli.run`` ends a command: a ``NinError`` becomes one ``error:``
    line and exit code 2 (anything else propagates, traceback and all); with the
    ``warning:`` lines it printed and the warnings nin_jax logged."""
    env.capsys.readouterr()
    env.caplog.clear()
    try:
        call()
        code, lines = 0, []
    except errors.NinError as e:
        code, lines = errors.EXIT_CODE_USER_ERROR, [f"error: {e}"]
    printed = [line for line in env.capsys.readouterr().err.splitlines() if "warning: " in line]
    logged = [
        f"warning: {record.getMessage()}"
        for record in env.caplog.records
        if record.levelno >= logging.WARNING and f"{os.sep}nin_jax{os.sep}" in record.pathname
    ]
    return code, printed + logged + lines


def cli_result(process) -> Result:
    assert "Traceback" not in process.stderr and "Exception ignored" not in process.stderr
    lines = [
        line for line in process.stderr.splitlines() if line.startswith(("error:", "warning:"))
    ]
    return process.returncode, lines


# --- The special images ---------------------------------------------------------------


def write_png_bomb(path: str, width: int = 20_000, height: int = 10_000) -> None:
    """A 1-bit PNG of ``width`` x ``height`` black pixels: a few KB that decode to 200 MB."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    rows = zlib.compress(b"\0" * ((width + 7) // 8 + 1) * height, 9)
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    Path(path).write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", rows) + chunk(b"IEND", b"")
    )


def write_animated_gif(path: str) -> None:
    frames = [Image.new("L", (8, 8), value).convert("P") for value in (128, 0, 255)]
    frames[0].save(path, "GIF", save_all=True, append_images=frames[1:])


def make_directory(path: str) -> None:
    os.remove(path)
    os.mkdir(path)


# Mid-grey images, which must read as mid-grey (not clipped to white, first frame).
SPECIAL_IMAGES: dict[str, Callable[[str], None]] = {
    "bomb": write_png_bomb,
    "one_pixel": lambda path: Image.new("L", (1, 1), 128).save(path, "PNG"),
    "16_bit": lambda path: Image.fromarray(np.full((8, 8), 128 * 257, np.uint16)).save(path, "PNG"),
    "cmyk_jpeg": lambda path: Image.new("CMYK", (8, 8), (0, 0, 0, 127)).save(path, "JPEG"),
    "animated_gif": write_animated_gif,
    "missing": os.remove,
    "directory": make_directory,
}


def damage(path: str, how: str, other_kind: bytes, keep: int) -> None:
    if how in SPECIAL_IMAGES:
        SPECIAL_IMAGES[how](path)
        return
    data = Path(path).read_bytes()
    damaged = {
        "empty": b"",
        "truncated": data[:keep],
        "random": np.random.default_rng(0).bytes(max(len(data), 256)),
        "other_kind": other_kind,
    }[how]
    Path(path).write_bytes(damaged)


# --- The files and the commands that read them ----------------------------------------


def predict_command(env: Env, path: str) -> Result:
    image = image_file(env)
    return run_command(lambda: predict.predict(restore.load(env.workdir), [image], 3), env)


def train_command(env: Env, path: str) -> Result:
    config = load_config("digits", data_dir=env.data_dir)
    return run_command(lambda: train.train_and_evaluate(config, env.workdir), env)


def plot_command(env: Env, path: str) -> Result:
    output = str(env.tmp / "curves.png")
    return run_command(lambda: plot.render(plot.read_metrics(path), "curves", output), env)


def image_command(env: Env, path: str) -> Result:
    def read_and_predict() -> None:
        [result] = predict.predict(env.trained, [path], 3)
        assert len(result["top_k"]) == 3
        assert 100 < images.read_image(path, IMAGE_SHAPE).mean() < 156  # mid-grey

    return run_command(read_and_predict, env)


def zca_command(env: Env, path: str) -> Result:
    def refit() -> None:
        mean, whitening = statistics.load_or_fit_zca(path, ZCA_SPLIT)
        shapes = workdir_lib.preprocess_shapes("gcn_zca", IMAGE_SHAPE)
        saved = workdir_lib.read_npz(path, Path(path).read_bytes(), shapes, "")
        np.testing.assert_array_equal(saved["whitening"], whitening)  # Rewritten, whole.

    return run_command(refit, env)


def evaluate_command(env: Env, path: str) -> Result:
    data_dir, output = env.data_dir_copy(), str(env.tmp / "eval")
    return run_command(lambda: evaluate.run(env.workdir, data_dir=data_dir, output_dir=output), env)


def config_file_command(env: Env, path: str) -> Result:
    return cli_result(run_cli("nin_jax.main", f"--config={path}", f"--workdir={env.workdir}"))


def checkpoints_dir(env: Env, path: str) -> str:
    return f"checkpoint at step 2 in {env.file('checkpoints')}"


def checkpoint_file(pattern: str) -> Callable[[Env], str]:
    """The largest file of the step-2 checkpoint that matches ``pattern`` (Orbax's layout)."""

    def locate(env: Env) -> str:
        paths = glob.glob(env.file(f"checkpoints/2/default/{pattern}"))
        assert paths, f"Orbax's layout changed: no {pattern}"
        return max(paths, key=os.path.getsize)

    return locate


def image_file(env: Env) -> str:
    """A 64x64 PNG of noise: 4 KB, so that half of it stops inside the pixel data."""
    path = str(env.tmp / "noise.png")
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64), np.uint8)).save(path)
    return path


def zca_cache(env: Env) -> str:
    path = statistics.stats_path(str(env.tmp / "data"), "digits", "train")
    statistics.load_or_fit_zca(path, ZCA_SPLIT)
    return path


def tfds_file(pattern: str) -> Callable[[Env], str]:
    def locate(env: Env) -> str:
        # The embedded digits (8x8x1); other tests may have prepared its stand-ins too.
        [path] = glob.glob(os.path.join(env.data_dir_copy(), "digits", "8x8x1", "*", pattern))
        return path

    return locate


def config_file(env: Env) -> str:
    path = env.tmp / "my_config.py"
    shutil.copy(Path(__file__).parent.parent / "nin_jax" / "configs" / "digits.py", path)
    return str(path)


def params_file(env: Env) -> str:
    path = str(env.tmp / "params.npz")
    params_io.save(path, env.trained.params)
    return path


def torch_file(env: Env) -> str:
    torch = pytest.importorskip("torch")
    path = str(env.tmp / "nin.pth")
    torch.save({"features1.0.weight": torch.zeros(4, 1, 5, 5)}, path)
    return path


def workdir_bytes(name: str) -> Callable[[Env], bytes]:
    return lambda env: Path(env.file(name)).read_bytes()


def npz_bytes(**arrays: np.ndarray) -> Callable[[Env], bytes]:
    def make(env: Env) -> bytes:
        path = env.tmp / "other.npz"
        np.savez(path, **arrays)
        return path.read_bytes()

    return make


@dataclasses.dataclass(frozen=True)
class Target:
    """A file nin_jax reads: where it is, the command that reads it, what to expect."""

    locate: Callable[[Env], str]  # creates the file first if it is not in the workdir
    command: Callable[[Env, str], Result]
    other_kind: Callable[[Env], bytes]  # a file of another kind to put in its place
    keep: Callable[[int], int] = lambda size: size // 2  # bytes left when truncated
    named: Callable[[Env, str], str] = lambda env, path: path  # what the line must name
    # damage -> "error", "warning" or "works"
    outcomes: dict[str, str] = dataclasses.field(default_factory=lambda: ERRORS)


def in_workdir(name: str) -> Callable[[Env], str]:
    return lambda env: env.file(name)


def data_dir_named(env: Env, path: str) -> str:
    return env.data_dir_copy()


TARGETS = {
    "config.json-predict": Target(
        in_workdir("config.json"), predict_command, workdir_bytes("dataset.json")
    ),
    "config.json-train": Target(
        in_workdir("config.json"), train_command, workdir_bytes("dataset.json")
    ),
    "dataset.json": Target(
        in_workdir("dataset.json"), predict_command, workdir_bytes("config.json")
    ),
    "preprocess.npz": Target(
        in_workdir("preprocess.npz"),
        predict_command,
        npz_bytes(mean=np.zeros(64, np.float32), whitening=np.eye(64, dtype=np.float32)),
        keep=lambda size: 100,
    ),
    "checkpoint-tree-metadata": Target(
        checkpoint_file("_METADATA"),
        predict_command,
        workdir_bytes("dataset.json"),
        named=checkpoints_dir,
    ),
    "checkpoint-manifest": Target(
        checkpoint_file("manifest.ocdbt"),
        predict_command,
        workdir_bytes("results.json"),
        named=checkpoints_dir,
    ),
    "checkpoint-arrays": Target(
        checkpoint_file("ocdbt.process_0/d/*"),
        predict_command,
        workdir_bytes("preprocess.npz"),
        named=checkpoints_dir,
    ),
    "metrics.jsonl": Target(
        in_workdir("metrics.jsonl"),
        plot_command,
        workdir_bytes("config.json"),
        keep=lambda size: size - 10,  # The last line cut short.
        outcomes={**ERRORS, "truncated": "warning"},
    ),
    "zca-cache": Target(
        zca_cache,
        zca_command,
        workdir_bytes("preprocess.npz"),
        keep=lambda size: 200,
        outcomes=dict.fromkeys(DAMAGES, "warning"),
    ),
    "image": Target(
        image_file,
        image_command,
        workdir_bytes("dataset.json"),
        outcomes={
            **ERRORS,
            **dict.fromkeys(("bomb", "missing", "directory"), "error"),
            **dict.fromkeys(("one_pixel", "16_bit", "cmyk_jpeg", "animated_gif"), "works"),
        },
    ),
    "params-file": Target(
        params_file,
        lambda env, path: run_command(lambda: params_io.load(path), env),
        workdir_bytes("dataset.json"),
    ),
    "torch-state-dict": Target(
        torch_file,
        lambda env, path: run_command(lambda: convert.read_state_dict(path), env),
        workdir_bytes("preprocess.npz"),
    ),
    "config-file": Target(
        config_file,
        config_file_command,
        workdir_bytes("config.json"),
        named=lambda env, path: "cannot load the config file",
    ),
    "tfds-dataset-info": Target(
        tfds_file("dataset_info.json"),
        evaluate_command,
        workdir_bytes("dataset.json"),
        named=data_dir_named,
    ),
    "tfds-shard": Target(
        tfds_file("digits-test.tfrecord-*"),
        evaluate_command,
        workdir_bytes("preprocess.npz"),
        named=data_dir_named,
    ),
}
CASES = [
    pytest.param(name, how, id=f"{name}-{how}")
    for name, target in TARGETS.items()
    for how in target.outcomes
]


def snapshot(workdir: str) -> dict[str, str]:
    """{relative path: SHA-256} of every file under ``workdir``."""
    hashes = {}
    for root, _, files in os.walk(workdir):
        for name in files:
            path = os.path.join(root, name)
            digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()
            hashes[os.path.relpath(path, workdir)] = digest
    return hashes


@pytest.fixture(scope="module")
def trained(trained_workdir) -> restore.Trained:
    return restore.load(trained_workdir)


@pytest.mark.parametrize("name, how", CASES)
def test_damaged_file(
    name, how, trained_workdir, digits_data_dir, trained, tmp_path, capsys, caplog
):
    target = TARGETS[name]
    workdir = str(tmp_path / "workdir")
    shutil.copytree(trained_workdir, workdir)
    env = Env(workdir, tmp_path, digits_data_dir, trained, capsys, caplog)
    path = target.locate(env)
    before = snapshot(workdir)
    damage(path, how, target.other_kind(env), target.keep(os.path.getsize(path)))

    code, lines = target.command(env, path)

    expected = target.outcomes[how]
    assert all("\n" not in line for line in lines), lines
    if expected == "error":
        assert code == errors.EXIT_CODE_USER_ERROR and len(lines) == 1, lines
        assert lines[0].startswith("error: ") and target.named(env, path) in lines[0], lines
    else:
        assert code == 0, lines
        assert len(lines) == (expected == "warning"), lines
        assert all(line.startswith("warning: ") and path in line for line in lines), lines
    damaged = os.path.relpath(path, workdir)
    assert {k: v for k, v in snapshot(workdir).items() if k != damaged} == {
        k: v for k, v in before.items() if k != damaged
    }


def test_the_issue_cases_name_the_file(trained_workdir, trained, tmp_path, capsys, caplog):
    """The issue's examples: each line names the damaged file (or the limit) and what to do."""
    env = Env(str(tmp_path / "w"), tmp_path, "", trained, capsys, caplog)
    shutil.copytree(trained_workdir, env.workdir)
    npz, bomb = env.file("preprocess.npz"), str(tmp_path / "bomb.png")
    Path(npz).write_bytes(Path(npz).read_bytes()[:100])
    write_png_bomb(bomb)
    assert predict_command(env, npz) == (2, [
        f"error: {npz} is damaged (not a readable .npz file: File is not a zip file); training "
        "writes it when it starts: rerun `python -m nin_jax.main` with this workdir's config "
        "(it resumes from the newest checkpoint), or restore it from a copy"
    ])  # fmt: skip
    assert image_command(env, bomb) == (2, [
        f"error: {bomb} has 200,000,000 pixels, more than PIL.Image.MAX_IMAGE_PIXELS = "
        "89,478,485 (a guard against decompression bombs); resize it first"
    ])  # fmt: skip


@pytest.mark.slow
def test_training_refits_a_damaged_zca_cache(digits_data_dir, tmp_path, caplog):
    data_dir = str(tmp_path / "tfds")
    shutil.copytree(digits_data_dir, data_dir)
    cache = Path(statistics.stats_path(data_dir, "digits", "train"))
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_bytes(b"PK\x03\x04" + bytes(196))  # 200 bytes: a copy cut short
    config = load_config("digits", data_dir=data_dir, preprocess="gcn_zca")
    _, results = train.train_and_evaluate(config, str(tmp_path / "workdir"))
    assert results["step"] == 2
    damaged = "-zca-unit.npz is damaged"
    warnings = [r.getMessage() for r in caplog.records if damaged in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].endswith("fitting the ZCA statistics again")
    statistics.load_or_fit_zca(str(cache), ZCA_SPLIT)  # Rewritten: read without a warning.
    assert len([r for r in caplog.records if damaged in r.getMessage()]) == 1


def test_cli_damaged_checkpoint(trained_workdir, trained, tmp_path, capsys, caplog):
    """A damaged OCDBT manifest makes Orbax abandon TensorStore reads, which would print a
    traceback each (in most runs) without ``checkpointing``'s filter."""
    workdir = str(tmp_path / "workdir")
    shutil.copytree(trained_workdir, workdir)
    env = Env(workdir, tmp_path, "", trained, capsys, caplog)
    manifest = checkpoint_file("manifest.ocdbt")(env)
    damage(manifest, "truncated", b"", os.path.getsize(manifest) // 2)
    before = snapshot(workdir)
    image = image_file(env)
    code, lines = cli_result(run_cli("nin_jax.predict", f"--workdir={workdir}", image))
    assert code == 2 and len(lines) == 1
    assert lines[0].startswith(
        f"error: the checkpoint at step 2 in {workdir}/checkpoints is damaged"
    )
    assert snapshot(workdir) == before


def test_cli_plot_draws_around_a_partial_last_line(trained_workdir, tmp_path):
    workdir, output = str(tmp_path / "workdir"), tmp_path / "curves.png"
    shutil.copytree(trained_workdir, workdir)
    metrics = Path(workdir, "metrics.jsonl")
    metrics.write_bytes(metrics.read_bytes()[:-10])
    process = run_cli("nin_jax.plot", f"--workdir={workdir}", f"--output={output}")
    code, lines = cli_result(process)
    assert code == 0 and process.stdout == f"wrote {output}\n" and output.exists()
    assert len(lines) == 1 and lines[0].startswith(f"warning: {metrics}: skipped 1 line")
