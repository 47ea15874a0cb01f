"""nin_jax.storage on local paths, its metrics log on a bucket's terms (objects are
replaced whole, never appended to), and the tools' output directories.

The same code on a real GCS-protocol server: tests/test_gcs_flow.py (slow)."""

import os

import pytest
from helpers import assert_one_line_error, run_cli

from nin_jax import class_maps, errors, evaluate, plot, storage

METRICS = "gs://bucket/run/metrics.jsonl"


def test_local_files(tmp_path):
    directory = str(tmp_path / "a" / "b")
    storage.makedirs(directory)
    storage.makedirs(directory)  # Already there: fine.
    path = os.path.join(directory, "x.json")
    storage.write_text(path, "one")
    storage.write_text(path, "two")  # Replaced atomically: no temporary file is left.
    assert storage.read_text(path) == "two" and storage.listdir(directory) == ["x.json"]
    assert storage.isdir(directory) and not storage.isdir(path) and storage.exists(path)
    storage.remove(path)
    assert not storage.exists(path)
    with pytest.raises(FileNotFoundError):
        storage.read_bytes(path)
    assert storage.is_remote("gs://bucket/run") and not storage.is_remote(directory)


def test_tensorflow_file_system_errors_become_os_errors():
    import tensorflow as tf

    cases = [
        (tf.errors.NotFoundError, FileNotFoundError),
        (tf.errors.PermissionDeniedError, PermissionError),
        (tf.errors.UnavailableError, ConnectionError),  # Retried on a bucket (retries.py).
        (tf.errors.DataLossError, OSError),
    ]
    for tf_error, os_error in cases:
        with pytest.raises(os_error, match="^gs://b/x: what went wrong$"):
            with storage._os_errors("gs://b/x"):  # noqa: SLF001
                raise tf_error(None, None, "what went wrong\nmore")
    with pytest.raises(KeyError):  # Not TensorFlow's: a bug, left as it is.
        with storage._os_errors("gs://b/x"):  # noqa: SLF001
            raise KeyError("x")


class FakeObject:
    """``epath.Path`` of one object whose reads come back short ``short`` times; and
    whose first unlink is applied but its answer lost."""

    data = b'{"step": 3}'
    short = 0
    reads = 0
    writes = 0
    unlinks = 0

    def __init__(self, path: str):
        self.path = path

    def stat(self):
        return type("Stat", (), {"length": len(FakeObject.data)})()

    def read_bytes(self) -> bytes:
        FakeObject.reads += 1
        return FakeObject.data[:-4] if FakeObject.reads <= FakeObject.short else FakeObject.data

    def write_bytes(self, data: bytes) -> None:  # The first upload leaves an empty object.
        FakeObject.writes += 1
        FakeObject.data = b"" if FakeObject.writes == 1 else data

    def unlink(self, missing_ok: bool = False) -> None:
        FakeObject.unlinks += 1
        if FakeObject.unlinks == 1:
            raise ConnectionError("connection closed before the answer")
        if not missing_ok:
            raise FileNotFoundError(self.path)


@pytest.fixture
def fake_object(monkeypatch):
    monkeypatch.setattr(storage.epath, "Path", FakeObject)
    monkeypatch.setattr(storage.retries.time, "sleep", lambda seconds: None)
    monkeypatch.setattr(FakeObject, "reads", 0)
    monkeypatch.setattr(FakeObject, "unlinks", 0)
    monkeypatch.setattr(FakeObject, "writes", 0)
    monkeypatch.setattr(FakeObject, "data", b'{"step": 3}')
    return FakeObject


def test_an_upload_that_left_another_size_is_uploaded_again(fake_object):
    storage.write_bytes("gs://b/run/config.json", b'{"seed": 0}')
    assert fake_object.writes == 2 and fake_object.data == b'{"seed": 0}'


def test_a_short_read_of_an_object_is_retried_not_taken_for_its_content(fake_object):
    fake_object.short = 2
    assert storage.read_bytes("gs://b/run/results.json") == b'{"step": 3}'
    assert fake_object.reads == 3


def test_an_object_always_read_short_is_a_connection_error(fake_object):
    fake_object.short = 100
    with pytest.raises(ConnectionError, match="short read, 7 of 11 bytes"):
        storage.read_bytes("gs://b/run/results.json")
    assert fake_object.reads == storage.retries.TRIES


def test_a_removal_whose_answer_was_lost_is_done(fake_object):
    storage.remove("gs://b/run/params_0.npz")  # Try 2 finds it gone: the removal was applied.
    assert fake_object.unlinks == 2


@pytest.fixture
def bucket(monkeypatch) -> dict[str, list[bytes]]:
    """storage's reads and writes of objects, kept in memory: {path: every upload of it}."""
    uploads: dict[str, list[bytes]] = {}

    def read_bytes(path: str) -> bytes:
        if path not in uploads:
            raise FileNotFoundError(path)
        return uploads[path][-1]

    monkeypatch.setattr(storage, "read_bytes", read_bytes)
    monkeypatch.setattr(storage, "write_bytes", lambda p, d: uploads.setdefault(p, []).append(d))
    return uploads


def test_a_remote_line_log_uploads_every_line_at_each_write(bucket):
    log = storage.LineLog(METRICS)
    log.write('{"split": "train", "step": 1, "loss": 2.0}\n')
    log.write('{"split": "train", "step": 2, "loss": 1.5}\n')
    # Preempted here (never closed); the resumed run's lines follow the earlier ones.
    resumed = storage.LineLog(METRICS)
    resumed.write('{"split": "eval", "step": 2, "loss": 1.0}\n')
    resumed.close()
    lines = [
        b'{"split": "train", "step": 1, "loss": 2.0}\n',
        b'{"split": "train", "step": 2, "loss": 1.5}\n',
        b'{"split": "eval", "step": 2, "loss": 1.0}\n',
    ]
    assert bucket[METRICS] == [b"".join(lines[:1]), b"".join(lines[:2]), b"".join(lines)]
    curves = plot.read_metrics(METRICS)  # The tools read the one object back.
    assert curves == {"train": {1: {"loss": 2.0}, 2: {"loss": 1.5}}, "eval": {2: {"loss": 1.0}}}


def test_a_local_line_log_appends(tmp_path):
    path = str(tmp_path / "metrics.jsonl")
    for text in ("a\n", "b\n"):
        log = storage.LineLog(path)
        log.write(text)
        assert storage.read_text(path).endswith(text)  # On disk before close.
        log.close()
    assert storage.read_text(path) == "a\nb\n"


@pytest.mark.slow
def test_the_tools_create_missing_output_directories(trained_workdir, tmp_path):
    curves = tmp_path / "a" / "b" / "curves.png"
    assert plot.run(trained_workdir, str(curves)) == str(curves) and curves.stat().st_size
    maps = tmp_path / "c" / "maps.png"
    assert class_maps.run(trained_workdir, [], num_images=2, output=str(maps)) == str(maps)
    assert maps.stat().st_size
    results, _ = evaluate.run(trained_workdir, output_dir=str(tmp_path / "d" / "eval"))
    assert sorted(os.listdir(tmp_path / "d" / "eval")) == [
        f"confusion_step_{results['step']}.png", f"step_{results['step']}.json"
    ]  # fmt: skip


def test_an_output_below_a_file_is_one_error_line(trained_workdir, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    below = f"{blocker}/sub"
    message = f"cannot create the directory {below}: "
    calls = [
        lambda: plot.run(trained_workdir, f"{below}/curves.png"),
        lambda: class_maps.run(trained_workdir, [], num_images=1, output=f"{below}/maps.png"),
        lambda: evaluate.run(trained_workdir, output_dir=below),
    ]
    for call in calls:
        with pytest.raises(errors.OutputError, match=f"^{message}") as error:
            call()
        assert "\n" not in str(error.value)
    result = run_cli("nin_jax.plot", f"--workdir={trained_workdir}", f"--output={below}/c.png")
    assert_one_line_error(result, message)
    assert sorted(os.listdir(tmp_path)) == ["file"]


def test_a_write_the_bucket_never_answers_is_one_storage_error_line(fake_object, monkeypatch):
    def unavailable(self, data: bytes) -> None:
        raise ConnectionError("HTTP response code 503")

    monkeypatch.setattr(fake_object, "write_bytes", unavailable)
    log = storage.LineLog.__new__(storage.LineLog)  # A log already open on the bucket.
    log._path, log._lines, log._file = METRICS, [], None  # noqa: SLF001
    with pytest.raises(errors.StorageError, match=f"^cannot write {METRICS}: the bucket did"):
        log.write('{"step": 20}\n')


def test_a_metrics_log_the_bucket_does_not_give_is_not_started_afresh(fake_object, monkeypatch):
    fake_object.short = 100
    with pytest.raises(errors.StorageError, match=f"^cannot read {METRICS}: the bucket did"):
        storage.LineLog(METRICS)
