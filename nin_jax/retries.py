"""Telling a bucket that did not answer from a file that is damaged, and retrying the first.

Buckets answer 429 (rate limits) and 5xx (backend errors) now and then, and drop
connections, sometimes after a write was applied; Google's guidance is to retry
with exponential backoff. The clients under nin_jax (TensorFlow's GCS file system
behind ``tf.io.gfile`` and ``etils.epath``, TensorStore under Orbax,
google-cloud-storage) retry some requests and not others, and what is left
surfaces as ``tf.errors.UnavailableError``, ``DeadlineExceededError``, an
``OSError`` naming an HTTP 503, a TensorStore ``ValueError`` saying
``UNAVAILABLE``, or one of google-api-core's exceptions. ``is_transient`` tells
those from the errors of a file's content (a parse error, a truncated record), so
that a failed read is never reported as a damaged file, and ``call`` retries an
operation on a remote path with bounded exponential backoff, logging one warning
per incident (not per try).
"""

import random
import re
import time
from collections.abc import Callable
from typing import TypeVar

from absl import logging

from nin_jax.errors import StorageError

T = TypeVar("T")

TRIES = 6  # One try and five retries ...
FIRST_WAIT = 0.5  # ... waiting 0.5, 1, 2, 4, 8 s (each +-25%), about 15 s in all.
MAX_WAIT = 8.0

# tf.errors classes (by name) that mean "the service did not answer", whatever the file holds.
TRANSIENT_TF_ERRORS = {
    "UnavailableError", "DeadlineExceededError", "ResourceExhaustedError", "AbortedError",
    "CancelledError",
}  # fmt: skip
# google-api-core's (google-cloud-storage's) and requests' / urllib3's exception names.
_TRANSIENT_NAMES = {
    "ServiceUnavailable", "TooManyRequests", "InternalServerError", "BadGateway",
    "GatewayTimeout", "RetryError", "ConnectionError", "ChunkedEncodingError",
    "ProtocolError", "ReadTimeout", "ConnectTimeout", "Timeout", "RemoteDisconnected",
    "ConnectionResetError", "ConnectionAbortedError", "BrokenPipeError", "TimeoutError",
    "IncompleteRead", "ShortReadError", "ShortWriteError",
}  # fmt: skip
# What the other clients' messages say for the same: HTTP 429 / 5xx, gRPC-style status codes
# (TensorStore's), curl's and the sockets' words.
_TRANSIENT_TEXT = re.compile(
    r"(HTTP|response code|status)\D{0,20}\b(429|5\d\d)\b|"
    r"UNAVAILABLE|DEADLINE_EXCEEDED|RESOURCE_EXHAUSTED|"
    r"rate limit|too many requests|service unavailable|backend error|connection (reset|"
    r"refused|closed|aborted)|timed out|timeout was reached|couldn't connect|"
    r"empty reply from server|broken pipe|remote end closed|short read",
    re.IGNORECASE,
)


class ShortReadError(ConnectionError):
    """A read returned fewer bytes than the object's size: the answer was cut short."""


class ShortWriteError(ConnectionError):
    """An upload that its client took for done left an object of another size (seen when
    the answer to a resumable upload's last request is lost: TensorFlow asks for the
    session's status, hears "complete", and the object is empty)."""


def is_transient(error: BaseException) -> bool:
    """Whether ``error`` (or one it was raised from) says a service did not answer, rather
    than that a file's content is wrong; a missing file or a refused permission is neither."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        name = type(error).__name__
        if name in TRANSIENT_TF_ERRORS or name in _TRANSIENT_NAMES:
            return True
        if isinstance(error, (FileNotFoundError, PermissionError)):
            return False
        if _TRANSIENT_TEXT.search(str(error)):
            return True
        error = error.__cause__ or error.__context__
    return False


def call(
    operation: Callable[[], T],
    what: str,
    tries: int = TRIES,
    sleep: Callable[[float], None] | None = None,
    retry_if: Callable[[BaseException], bool] = is_transient,
) -> T:
    """``operation()``, retried while it fails with an error ``retry_if`` accepts (by
    default a transient one), at most ``tries`` times with exponential backoff; the last
    error is raised as it is.

    ``what`` names the operation in the one warning an incident logs ("writing
    gs://b/run/metrics.jsonl"), and in the line saying it succeeded after all.
    """
    sleep = sleep or time.sleep
    wait = FIRST_WAIT
    for attempt in range(1, tries + 1):
        try:
            result = operation()
        except Exception as e:
            if attempt == tries or not retry_if(e):
                raise
            if attempt == 1:
                logging.warning(
                    "%s failed (%s: %s); retrying with backoff, up to %d tries.",
                    what, type(e).__name__, _first_line(e), tries,
                )  # fmt: skip
            sleep(wait * random.uniform(0.75, 1.25))
            wait = min(MAX_WAIT, 2 * wait)
            continue
        if attempt > 1:
            logging.warning("%s succeeded at try %d.", what, attempt)
        return result
    raise AssertionError("unreachable")


def unreadable(what: str, error: BaseException) -> StorageError:
    """The one line for ``what`` ("the checkpoint at step 40 in gs://b/run/checkpoints")
    when the bucket did not answer through every retry."""
    return StorageError(
        f"cannot read {what}: the bucket did not answer after {TRIES} tries "
        f"({type(error).__name__}: {_first_line(error)}); the files are left as they are "
        "(no sign of damage): rerun the same command once the bucket answers"
    )


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0][:200] if text else ""
