"""Every file nin_jax reads or writes, on a local disk or in a bucket (``gs://``), by one API.

Paths are strings. Local paths go through ``etils.epath``'s ``os`` backend, remote ones
(``gs://`` and other URLs) through its TensorFlow backend (``tf.io.gfile``), which
Orbax, TFDS and TensorBoard use too; the errors of both come out as ``OSError``
(``FileNotFoundError``, ``PermissionError``, ...), so callers catch one family.

Two differences between a disk and a bucket shape this module:

* Renames are copies on GCS, but an object upload is atomic (readers see the old
  object or the new one, never part of one). ``write_bytes`` is atomic on both: a
  temporary file renamed locally, one upload remotely.
* Objects cannot be appended to. ``LineLog`` (``metrics.jsonl``) appends to a local
  file and rewrites the whole object at each write remotely, so that a preempted run
  loses at most the lines it had not written yet and a resumed run's lines follow
  the earlier ones; readers read the one file (object) either way.

On a bucket every operation is retried with backoff while it fails with a transient
error (``nin_jax.retries``: 429, 5xx, a dropped connection), and a read that returns
fewer bytes than the object's size is such an error (``retries.ShortReadError``),
never the file's content; so is an upload after which the object has another size
than what was written (``retries.ShortWriteError``). What still fails after the
retries comes out, for a read, as a ``ConnectionError`` (an ``OSError``), which callers
report as a bucket that could not be read (naming what they read), not as a damaged
file; for a write, a removal or a new directory, as a ``StorageError`` naming the path
(``retries.unwritable``), one ``error:`` line. Every operation here is idempotent (whole
objects are written, a removal that finds the object gone is done), so a retry after
an answer that was lost is safe.
"""

import contextlib
import io
import os
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from etils import epath

from nin_jax import retries
from nin_jax.errors import OutputError

T = TypeVar("T")

# tf.errors classes (by name) and the OSError each becomes.
_TF_ERRORS = {
    "NotFoundError": FileNotFoundError,
    "AlreadyExistsError": FileExistsError,
    "PermissionDeniedError": PermissionError,
    "UnauthenticatedError": PermissionError,
    **dict.fromkeys(retries.TRANSIENT_TF_ERRORS, ConnectionError),
}


def is_remote(path: str) -> bool:
    """``gs://`` and other URL-like paths, which only TensorFlow's and Orbax's file APIs open."""
    return "://" in str(path)


@contextlib.contextmanager
def _os_errors(path: str) -> Iterator[None]:
    """TensorFlow's file-system errors (``tf.errors.OpError``) as ``OSError``s."""
    try:
        yield
    except OSError:
        raise
    except Exception as e:
        if not type(e).__module__.startswith("tensorflow"):
            raise
        kind = _TF_ERRORS.get(type(e).__name__, OSError)
        message = getattr(e, "message", None) or str(e)
        raise kind(f"{path}: {message.strip().splitlines()[0]}") from None


_CHANGES = ("writing", "creating", "removing")  # The operations that change the bucket.


def _do(what: str, path: str, operation: Callable[[], T]) -> T:
    """``operation()`` with TensorFlow's errors as ``OSError``s; retried on a bucket, where a
    change the bucket did not answer through the retries is a ``StorageError``."""

    def attempt() -> T:
        with _os_errors(path):
            return operation()

    if not is_remote(path):
        return attempt()
    try:
        return retries.call(attempt, f"{what} {path}")
    except OSError as e:
        if what in _CHANGES and retries.is_transient(e):
            raise retries.unwritable(path, e) from e
        raise


def exists(path: str) -> bool:
    return _do("looking for", path, epath.Path(path).exists)


def isdir(path: str) -> bool:
    return _do("looking for", path, epath.Path(path).is_dir)


def listdir(path: str) -> list[str]:
    """The names in directory ``path``, sorted."""
    return _do("listing", path, lambda: sorted(p.name for p in epath.Path(path).iterdir()))


def makedirs(path: str) -> None:
    """Creates directory ``path`` and its parents if needed (on GCS: marker objects)."""
    _do("creating", path, lambda: epath.Path(path).mkdir(parents=True, exist_ok=True))


def read_bytes(path: str) -> bytes:
    """The bytes of ``path``; on a bucket, all of them (the object's size is checked)."""
    if not is_remote(path):
        return _do("reading", path, epath.Path(path).read_bytes)
    return _do("reading", path, lambda: _read_whole(path))


def _read_whole(path: str) -> bytes:
    size = epath.Path(path).stat().length
    data = epath.Path(path).read_bytes()
    if size is not None and len(data) < size:  # Larger: replaced since the stat; it is whole.
        raise retries.ShortReadError(f"{path}: short read, {len(data)} of {size} bytes")
    return data


def read_text(path: str) -> str:
    return read_bytes(path).decode()


def write_bytes(path: str, data: bytes) -> None:
    """Writes ``path`` atomically: a temporary file renamed locally, one upload remotely."""
    if is_remote(path):
        _do("writing", path, lambda: _write_whole(path, data))
        return
    with _os_errors(path):
        tmp = epath.Path(f"{path}.tmp")
        tmp.write_bytes(data)
        tmp.replace(path)


def _write_whole(path: str, data: bytes) -> None:
    """Uploads ``data`` and checks the object's size: an upload whose last answer was
    lost can leave an empty object behind a client that reports success."""
    epath.Path(path).write_bytes(data)
    size = epath.Path(path).stat().length
    if size is not None and size != len(data):
        raise retries.ShortWriteError(f"{path}: the upload left {size} of {len(data)} bytes")


def write_text(path: str, text: str) -> None:
    write_bytes(path, text.encode())


def remove(path: str) -> None:
    if not is_remote(path):
        _do("removing", path, epath.Path(path).unlink)
        return
    tried = []

    def unlink() -> None:  # Gone at a retry: the lost answer was the removal's.
        tried.append(True)
        epath.Path(path).unlink(missing_ok=len(tried) > 1)

    _do("removing", path, unlink)


def output_file(path: str) -> str:
    """``path``, once the directory it goes in exists (created if needed, as for
    ``output_directory``)."""
    output_directory(os.path.dirname(path) or ".")
    return path


def output_directory(path: str) -> str:
    """``path``, created if needed (with its parents); ``OutputError`` if it cannot be,
    e.g. because a file is in the way."""
    try:
        if not isdir(path):
            makedirs(path)
    except OSError as e:
        raise OutputError(f"cannot create the directory {path}: {_reason(e)}") from None
    if not isdir(path):  # A bucket accepts "a/b" beside an object "a"; a disk does not.
        raise OutputError(f"cannot create the directory {path}: a file is in the way")
    return path


def _reason(error: OSError) -> str:
    if error.strerror:
        return error.strerror if not error.filename else f"{error.strerror}: {error.filename}"
    return str(error)


def write_figure(figure: Any, path: str, dpi: int) -> None:
    """Saves a matplotlib figure at ``path`` (format from its extension; PNG if none)."""
    buffer = io.BytesIO()
    extension = os.path.splitext(path)[1].lstrip(".").lower()
    figure.savefig(buffer, format=extension or "png", dpi=dpi)
    write_bytes(path, buffer.getvalue())


class LineLog:
    """A text file that grows by whole lines, each ``write`` on disk (or in the bucket) at once.

    Locally the lines are appended to the file and flushed. A GCS object cannot be
    appended to: the log reads the object's earlier lines (those of the runs before
    this one) when it opens, and each ``write`` uploads them with every line written
    since. One upload is atomic, so the object always holds whole writes: a run
    stopped at any moment loses only what it had not written yet.
    """

    def __init__(self, path: str):
        self._path = path
        self._lines: list[bytes] | None = None
        self._file = None
        if not is_remote(path):
            self._file = epath.Path(path).open("a")  # Local only: GCS objects take no appends.
            return
        try:
            self._lines = [read_bytes(path)]
        except FileNotFoundError:
            self._lines = []
        except ConnectionError as e:  # Not a reason to start the log afresh: stop instead.
            raise retries.unreadable(path, e) from e

    def write(self, text: str) -> None:
        """Adds ``text`` (whole lines, each ending in a newline) to the file."""
        if self._file is not None:
            self._file.write(text)
            self._file.flush()
            return
        self._lines.append(text.encode())
        write_bytes(self._path, b"".join(self._lines))

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
