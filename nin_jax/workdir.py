"""The workdir: what a run writes besides checkpoints, how it is read back, and its lock.

::

    workdir/
      .lock            held by process 0 of the run that uses the workdir
      config.json      the run's config
      dataset.json     class names, image shape and preprocessing of the training data
      preprocess.npz   the preprocessing statistics fitted on the training split
      checkpoints/     Orbax checkpoints of the train state (nin_jax.checkpointing)
      metrics.jsonl, tensorboard/   training metrics (nin_jax.reporting)
      runs.json        one record per training session (steps, times, schedule changes)
      results.json     the final evaluation, with the sessions' totals and records

This module knows the format only; the trainer and the tools both build on it. It
imports JAX only where it needs the process index, so that ``nin_jax.main`` can
check a workdir before the slow imports.
"""

import dataclasses
import datetime
import fcntl
import io
import json
import os
import socket
import zipfile
import zlib
from typing import Any

import ml_collections
import numpy as np
from absl import logging

from nin_jax import config_validation, retries, storage
from nin_jax.errors import ConfigError, FileDamagedError, WorkdirBusyError, WorkdirError

CONFIG_FILE = "config.json"
DATASET_FILE = "dataset.json"
PREPROCESS_FILE = "preprocess.npz"
RESULTS_FILE = "results.json"
RUNS_FILE = "runs.json"
LOCK_FILE = ".lock"
CHECKPOINT_DIR = "checkpoints"
# Config fields that fix the checkpoint's parameter shapes: a workdir trained with
# other values cannot be resumed or read with this config.
# The preprocessing fields are among them: a checkpoint resumed on other inputs would
# be trained on what it was not (a converted PyTorch model's fixed normalisation).
CHECKPOINT_DEFINING_FIELDS = (
    "dataset", "model.widths", "model.kernel_sizes", "model.head", "num_models",
    "preprocess", "standardize_mean", "standardize_std",
)  # fmt: skip
# Config fields that fix the learning rate and the batch of every step: resuming with
# other values would change the run from the checkpoint's step on. Refused unless asked
# for (``check_compatible``'s ``allow_schedule_change``: main's --allow_schedule_change).
SCHEDULE_FIELDS = (
    "batch_size", "num_train_steps", "num_epochs", "schedule_train_examples", "learning_rate",
    "lr_schedule", "warmup_epochs", "lr_decay_epochs", "lr_decay_factor", "sweep.learning_rate",
    "train_split", "validation", "seed", "init_seed",
)  # fmt: skip
# Fields every config.json has held since the first nin_jax (later ones get defaults).
_CONFIG_CORE_FIELDS = ("dataset", "model", "batch_size", "learning_rate", "seed")
# What to do about a damaged file, by file (docs/FILES.md lists every file's policy).
_CONFIG_REMEDY = (
    "it describes the checkpoints' model: restore it from a copy, or delete it and rerun "
    "`python -m nin_jax.main` with the run's --config, which writes it again"
)
_RUNS_REMEDY = (
    "its records of the earlier training sessions (timings only) are dropped and a new "
    "file is started"
)
# Every record of runs.json has these (train.session_record writes them).
_RUN_KEYS = ("start_step", "end_step", "train_seconds", "compile_seconds", "images_per_sec")
_DATASET_REMEDY = (
    "training writes it when it starts: rerun `python -m nin_jax.main` with this workdir's "
    "config (it resumes from the newest checkpoint), or restore it from a copy"
)
_ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")  # How a .npz file (a zip archive) begins.
# What np.load raises for a damaged zip archive: zipfile's BadZipFile (and RuntimeError or
# NotImplementedError for flags it does not handle, zlib.error for a damaged compressed
# member), EOFError for too few bytes, ValueError for a damaged .npy header.
_NPZ_ERRORS = (
    zipfile.BadZipFile, EOFError, ValueError, RuntimeError, NotImplementedError, zlib.error
)  # fmt: skip


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """What the model was trained on: enough to turn any image into a model input."""

    dataset: str
    class_names: tuple[str, ...]
    image_shape: tuple[int, int, int]
    preprocess: str  # config.preprocess
    preprocess_params: dict[str, np.ndarray]  # the statistics it was fitted with

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


class WorkdirLock:
    """Process 0's exclusive hold on a workdir for the length of a run.

    An ``flock`` on ``workdir/.lock``: the kernel releases it when the process
    ends, however it ends, so the lock of a killed run is stale at once and the
    next run takes it over. A second run on a workdir in use stops with a
    ``WorkdirBusyError`` before it writes anything there. Entering also creates
    the workdir.

    Remote workdirs (``gs://``) are not locked: no kernel releases a lock object
    when the run holding it is killed or its VM preempted, so such a lock would
    keep the rerun out (docs/SCALING.md).
    """

    def __init__(self, workdir: str):
        self._workdir = workdir
        self._fd: int | None = None

    def __enter__(self) -> "WorkdirLock":
        if not storage.is_remote(self._workdir):
            import jax

            multi_process = jax.process_count() > 1
            holds = self._acquire(multi_process) if jax.process_index() == 0 else True
            if multi_process:  # Every process stops if process 0 could not lock.
                from jax.experimental import multihost_utils

                holds = bool(multihost_utils.broadcast_one_to_all(np.array(holds)))
            if not holds:
                raise WorkdirBusyError(f"workdir {self._workdir} is in use by another run")
        return self

    def _acquire(self, multi_process: bool) -> bool:
        path = os.path.join(self._workdir, LOCK_FILE)
        try:
            os.makedirs(self._workdir, exist_ok=True)  # Local: remote workdirs are not locked.
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)  # Local: flock needs a descriptor.
        except OSError as e:
            raise WorkdirError(f"workdir {self._workdir!r} is not writable: {e.strerror}") from e
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 1024).decode(errors="replace").strip() or "another process"
            os.close(fd)
            if multi_process:
                logging.error("workdir %s is in use by %s", self._workdir, holder)
                return False
            raise WorkdirBusyError(
                f"workdir {self._workdir} is in use by {holder}; wait for that run to end "
                "(or stop it) or use another --workdir"
            ) from None
        previous = os.read(fd, 1024).decode(errors="replace").strip()
        if previous:
            logging.info("Taking over the lock of a run that ended without releasing it (%s).",
                         previous)  # fmt: skip
        started = datetime.datetime.now().isoformat(timespec="seconds")
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"run {os.getpid()} on {socket.gethostname()} since {started}\n".encode(), 0)
        self._fd = fd
        return True

    def __exit__(self, *exc_info) -> None:
        if self._fd is not None:
            os.ftruncate(self._fd, 0)  # An empty file: nobody holds it.
            os.close(self._fd)  # Closing releases the flock.
            self._fd = None


def check_available(workdir: str) -> None:
    """What taking the lock checks, for one process and without JAX: ``WorkdirError`` if
    ``workdir`` cannot be created or written, ``WorkdirBusyError`` if another run holds it.

    For ``nin_jax.main`` to report those at once, before its slow imports; training
    takes the lock itself when it starts (and creates the workdir, as this does).
    """
    if storage.is_remote(workdir):
        return
    lock = WorkdirLock(workdir)
    lock._acquire(multi_process=False)  # noqa: SLF001  (this module's own class)
    lock.__exit__(None, None, None)


def _damaged(path: str, reason: str, remedy: str) -> FileDamagedError:
    return FileDamagedError(f"{path} is damaged ({reason}); {remedy}")


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _read_bytes(path: str, written_by: str) -> bytes:
    try:
        return storage.read_bytes(path)
    except FileNotFoundError:
        raise WorkdirError(
            f"{path} is missing; is {os.path.dirname(path) or '.'} a nin_jax workdir "
            f"({written_by})?"
        ) from None
    except OSError as e:  # A directory in its place, no permission, ...
        if retries.is_transient(e):
            raise retries.unreadable(path, e) from None
        raise WorkdirError(f"cannot read {path}: {e.strerror or e}") from None


def _read_json(path: str, written_by: str, remedy: str) -> dict[str, Any]:
    """The JSON object in ``path``; one line saying ``remedy`` if the file is damaged."""
    data = _read_bytes(path, written_by)
    if not data.strip():
        raise _damaged(path, "empty", remedy)
    try:
        raw = json.loads(data)
    except UnicodeDecodeError as e:
        raise _damaged(path, f"not text: {e.reason} at byte {e.start}", remedy) from None
    except json.JSONDecodeError as e:
        raise _damaged(path, f"not valid JSON: {e}", remedy) from None
    if not isinstance(raw, dict):
        raise _damaged(path, f"a JSON {type(raw).__name__}, not an object", remedy)
    return raw


def read_npz(
    path: str, data: bytes, shapes: dict[str, tuple[int, ...]], remedy: str
) -> dict[str, np.ndarray]:
    """The float arrays named in ``shapes`` from the .npz file ``data`` (read from
    ``path``); ``FileDamagedError`` saying ``remedy`` if they cannot be read or have
    other shapes."""
    if not data:
        raise _damaged(path, "empty", remedy)
    if not data.startswith(_ZIP_MAGIC):  # np.load would try it as a pickle or a .npy file.
        raise _damaged(path, "not a .npz file", remedy)
    try:
        with np.load(io.BytesIO(data)) as npz:
            arrays = {name: npz[name] for name in npz.files}
    except _NPZ_ERRORS as e:
        raise _damaged(path, f"not a readable .npz file: {_first_line(e)}", remedy) from None
    for name, shape in shapes.items():
        if name not in arrays:
            raise _damaged(path, f"no array {name!r}; it holds {sorted(arrays)}", remedy)
        array = arrays[name]
        if array.shape != shape or not np.issubdtype(array.dtype, np.floating):
            reason = f"{name} is {array.dtype} {array.shape}, not float {shape}"
            raise _damaged(path, reason, remedy)
    return {name: arrays[name] for name in shapes}


def preprocess_shapes(preprocess: str, image_shape: tuple[int, ...]) -> dict[str, tuple[int, ...]]:
    """The arrays ``statistics.fit`` returns for ``preprocess`` (and preprocess.npz holds)."""
    channels, size = image_shape[-1], int(np.prod(image_shape))
    return {
        "standardize": {"mean": (channels,), "std": (channels,)},
        "gcn_zca": {"mean": (size,), "whitening": (size, size)},
        "lcn": {},
    }[preprocess]


def _is_process_0() -> bool:
    import jax

    return jax.process_index() == 0


def _write_json(path: str, payload: dict[str, Any]) -> None:
    """Writes on process 0 only, atomically (``storage.write_bytes``)."""
    if not _is_process_0():
        return
    storage.write_text(path, json.dumps(payload, indent=2, sort_keys=True))


def _tuples(value: Any) -> Any:
    """JSON lists back to the tuples configs use (Flax module fields must be hashable)."""
    if isinstance(value, list):
        return tuple(_tuples(v) for v in value)
    if isinstance(value, dict):
        return {k: _tuples(v) for k, v in value.items()}
    return value


def write_config(workdir: str, config: ml_collections.ConfigDict) -> None:
    _write_json(os.path.join(workdir, CONFIG_FILE), json.loads(config.to_json()))


def load_config(workdir: str) -> ml_collections.ConfigDict:
    """The config a workdir was trained with (``workdir/config.json``), checked as
    training checks a config. Fields the file lacks (it was written by an older
    nin_jax) get their defaults."""
    from nin_jax.configs import default

    path = os.path.join(workdir, CONFIG_FILE)
    raw = _read_json(path, "written by nin_jax.main", _CONFIG_REMEDY)
    missing = [key for key in _CONFIG_CORE_FIELDS if key not in raw]
    if missing or not isinstance(raw["model"], dict):
        reason = f"not a nin_jax config: no {', '.join(missing) or 'model fields'}"
        raise _damaged(path, reason, _CONFIG_REMEDY)
    try:
        config = default.get_config()
        config.update(_tuples(raw))
        config_validation.validate(config)
    except ConfigError as e:
        raise _damaged(path, str(e), _CONFIG_REMEDY) from None
    except KeyError as e:
        raise _damaged(path, f"config field {e.args[0]} is missing", _CONFIG_REMEDY) from None
    except (AttributeError, TypeError, ValueError) as e:  # Fields of other types or names.
        raise _damaged(path, f"not a nin_jax config: {_first_line(e)}", _CONFIG_REMEDY) from None
    return config


def _field(config: ml_collections.ConfigDict, dotted: str) -> Any:
    value = config
    for key in dotted.split("."):
        value = value.get(key) if value is not None else None
    return _tuples(value.to_dict() if isinstance(value, ml_collections.ConfigDict) else value)


def check_compatible(
    workdir: str, config: ml_collections.ConfigDict, allow_schedule_change: bool = False
) -> dict[str, tuple[Any, Any]]:
    """Refuses to train ``config`` in a workdir whose checkpoints belong to another model,
    or (unless ``allow_schedule_change``) to a run of another schedule.

    Returns the ``SCHEDULE_FIELDS`` that differ, ``{field: (the workdir's value, this
    config's)}`` (empty for a new workdir). Called before anything is written, so the
    workdir's config.json keeps describing its checkpoints.
    """
    checkpoints = os.path.join(workdir, CHECKPOINT_DIR)
    if not (storage.isdir(checkpoints) and storage.listdir(checkpoints)):
        return {}
    if not storage.exists(os.path.join(workdir, CONFIG_FILE)):
        return {}  # Nothing to compare with; a mismatch surfaces when restoring.
    saved = load_config(workdir)
    for field in CHECKPOINT_DEFINING_FIELDS:
        old, new = _field(saved, field), _field(config, field)
        if old != new:
            raise WorkdirError(
                f"workdir {workdir} holds checkpoints of a different model or dataset "
                f"({field} is {old!r} there, {new!r} in this config); use another workdir"
            )
    changes = {
        field: (_field(saved, field), _field(config, field))
        for field in SCHEDULE_FIELDS
        if _field(saved, field) != _field(config, field)
    }
    if changes and not allow_schedule_change:
        (field, (old, new)), *others = changes.items()
        also = f" (also {', '.join(name for name, _ in others)})" if others else ""
        raise WorkdirError(
            f"workdir {workdir} was trained with config.{field}={old!r}, this config has "
            f"{new!r}{also}: resuming would change the learning rate or the batches of the "
            "steps to come; resume with the workdir's values (its config.json), use another "
            "--workdir, or pass --allow_schedule_change to resume with the new ones"
        )
    return changes


def describe_changes(changes: dict[str, tuple[Any, Any]]) -> str:
    """``field old -> new, ...`` for a log line."""
    return ", ".join(f"{field} {old!r} -> {new!r}" for field, (old, new) in changes.items())


def write_dataset_info(workdir: str, info: DatasetInfo) -> None:
    """Saves ``dataset.json`` and ``preprocess.npz`` (process 0 only)."""
    payload = {
        "dataset": info.dataset,
        "class_names": list(info.class_names),
        "image_shape": [int(d) for d in info.image_shape],
        "preprocess": info.preprocess,
    }
    _write_json(os.path.join(workdir, DATASET_FILE), payload)
    if _is_process_0():
        buffer = io.BytesIO()
        np.savez(buffer, **info.preprocess_params)
        storage.write_bytes(os.path.join(workdir, PREPROCESS_FILE), buffer.getvalue())


def _dataset_problem(raw: dict[str, Any]) -> str | None:
    """What is wrong with the fields of ``dataset.json``, if anything."""
    names, shape, preprocess = raw.get("class_names"), raw.get("image_shape"), raw.get("preprocess")
    if not isinstance(raw.get("dataset"), str):
        return "no dataset name"
    if not (isinstance(names, list) and names and all(isinstance(n, str) for n in names)):
        return "class_names is not a list of names"
    is_size = lambda d: isinstance(d, int) and not isinstance(d, bool) and d > 0  # noqa: E731
    if not (isinstance(shape, list) and len(shape) == 3 and all(map(is_size, shape))):
        return "image_shape is not [height, width, channels]"
    known = config_validation.PREPROCESSINGS
    if preprocess not in known:
        return f"preprocess is {preprocess!r}, not one of {', '.join(known)}"
    return None


def load_dataset_info(workdir: str) -> DatasetInfo:
    """What the workdir's model was trained on: ``dataset.json`` and ``preprocess.npz``."""
    json_path = os.path.join(workdir, DATASET_FILE)
    raw = _read_json(json_path, "written when training starts", _DATASET_REMEDY)
    problem = _dataset_problem(raw)
    if problem:
        raise _damaged(json_path, problem, _DATASET_REMEDY)
    npz_path = os.path.join(workdir, PREPROCESS_FILE)
    data = _read_bytes(npz_path, "written when training starts")
    shapes = preprocess_shapes(raw["preprocess"], tuple(raw["image_shape"]))
    return DatasetInfo(
        dataset=raw["dataset"],
        class_names=tuple(raw["class_names"]),
        image_shape=tuple(raw["image_shape"]),
        preprocess=raw["preprocess"],
        preprocess_params=read_npz(npz_path, data, shapes, _DATASET_REMEDY),
    )


def _is_run_record(record: Any) -> bool:
    def is_number(value: Any) -> bool:
        return isinstance(value, (int, float)) and not isinstance(value, bool)

    if not (isinstance(record, dict) and all(key in record for key in _RUN_KEYS)):
        return False
    optional = record["images_per_sec"] is None  # A session that timed no step.
    return all(
        is_number(record[key]) for key in _RUN_KEYS if not (optional and key == "images_per_sec")
    )


def read_runs(workdir: str) -> list[dict[str, Any]]:
    """The records of the workdir's training sessions (``runs.json``), oldest first; [] if
    there is none. A damaged file costs its records only (a warning), never the run."""
    path = os.path.join(workdir, RUNS_FILE)
    if not storage.exists(path):
        return []
    try:
        runs = _read_json(path, "written by nin_jax.main", _RUNS_REMEDY).get("runs")
        if not (isinstance(runs, list) and all(map(_is_run_record, runs))):
            raise _damaged(path, "not a list of session records", _RUNS_REMEDY)
    except (FileDamagedError, WorkdirError) as e:
        logging.warning("%s", e)
        return []
    return runs


def append_run(workdir: str, record: dict[str, Any]) -> list[dict[str, Any]]:
    """Adds one training session's record to ``runs.json``; returns all of them."""
    runs = [*read_runs(workdir), record]
    _write_json(os.path.join(workdir, RUNS_FILE), {"runs": runs})
    return runs


def write_results(workdir: str, results: dict[str, Any]) -> None:
    _write_json(os.path.join(workdir, RESULTS_FILE), results)
