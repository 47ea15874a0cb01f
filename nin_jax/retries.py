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

Each try goes through the client's own retries, which by default last minutes
(TensorFlow's: 10 retries waiting 1, 2, 4 ... 32 s, about 3 min; TensorStore's: 32
attempts, about 15 min), so an outage would take tens of minutes to end a run (6 of
nin_jax's tries of about 3 min each). ``configure`` gives every client the same
budget, ``budget_seconds`` (``config.storage_retry_seconds``): each keeps its backoff
(1 s doubling to 32 s, Google's guidance) with as many retries as fit in the budget,
and ``call`` starts no try once the budget has passed since the first one began. An
outage shorter than the budget is ridden out; a longer one fails an operation within
about twice the budget (a try begun just before the budget ends lasts one client
budget more).
"""

import os
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
# The budget ``configure`` set: seconds of retries of one operation, nin_jax's and each
# client's own (the default is ``config.storage_retry_seconds``'s).
budget_seconds = 120.0
# The clients' backoff: 1 s doubling to 32 s, what Google's guidance for GCS recommends
# and TensorFlow's and TensorStore's defaults; only the number of retries is changed.
CLIENT_FIRST_WAIT, CLIENT_MAX_WAIT = 1.0, 32.0
_set_here: dict[str, str] = {}  # The environment variables ``configure`` set, and to what.

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


def client_retries(seconds: float) -> int:
    """How many retries of the clients' backoff (1 s doubling to 32 s) it takes for their
    waits to add up to ``seconds``."""
    retries, waited = 0, 0.0
    while waited < seconds:
        waited += min(CLIENT_MAX_WAIT, CLIENT_FIRST_WAIT * 2**retries)
        retries += 1
    return retries


def tensorflow_environment(seconds: float) -> dict[str, str]:
    """The settings of TensorFlow's GCS file system (read once, when TensorFlow loads) that
    make its retries of one request last about ``seconds``."""
    return {
        "GCS_RETRY_CONFIG_MAX_RETRIES": str(client_retries(seconds)),
        "GCS_RETRY_CONFIG_INIT_DELAY_TIME_US": str(int(CLIENT_FIRST_WAIT * 1e6)),
        "GCS_RETRY_CONFIG_MAX_DELAY_TIME_US": str(int(CLIENT_MAX_WAIT * 1e6)),
    }


def tensorstore_retries(seconds: float) -> dict[str, object]:
    """TensorStore's ``gcs_request_retries`` context resource for the same budget (its
    ``max_retries`` counts attempts: the first one and the retries)."""
    return {
        "max_retries": client_retries(seconds) + 1,
        "initial_delay": f"{CLIENT_FIRST_WAIT:g}s",
        "max_delay": f"{CLIENT_MAX_WAIT:g}s",
    }


def configure(seconds: float) -> None:
    """Sets the retry budget of every operation on a bucket to ``seconds``.

    TensorFlow reads its settings when it loads: this must come before anything
    imports it (``nin_jax.cli.run`` and ``nin_jax.main`` call it first). A variable the
    user set is left as it is. TensorStore's resource is applied to Orbax's context by
    ``nin_jax.checkpointing``.
    """
    global budget_seconds
    budget_seconds = float(seconds)
    for name, value in tensorflow_environment(seconds).items():
        if os.environ.get(name, _set_here.get(name)) == _set_here.get(name):
            os.environ[name] = _set_here[name] = value


def call(
    operation: Callable[[], T],
    what: str,
    tries: int = TRIES,
    sleep: Callable[[float], None] | None = None,
    retry_if: Callable[[BaseException], bool] = is_transient,
) -> T:
    """``operation()``, retried while it fails with an error ``retry_if`` accepts (by
    default a transient one) with exponential backoff, at most ``tries`` times and not
    once ``budget_seconds`` have passed since the first try began; the last error is
    raised as it is.

    ``what`` names the operation in the one warning an incident logs ("writing
    gs://b/run/metrics.jsonl"), and in the line saying it succeeded after all.
    """
    sleep = sleep or time.sleep
    wait = FIRST_WAIT
    started = time.monotonic()
    for attempt in range(1, tries + 1):
        try:
            result = operation()
        except Exception as e:
            spent = time.monotonic() - started
            if attempt == tries or spent >= budget_seconds or not retry_if(e):
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
        f"cannot read {what}: {_not_answered(error)}; the files are left as they are "
        "(no sign of damage): rerun the same command once the bucket answers"
    )


def unwritable(what: str, error: BaseException) -> StorageError:
    """The one line for ``what`` ("gs://b/run/metrics.jsonl") when the bucket did not
    answer a write through every retry."""
    return StorageError(
        f"cannot write {what}: {_not_answered(error)}; what was written before is left as "
        "it is: rerun the same command once the bucket answers (a run resumes from its "
        "newest complete checkpoint)"
    )


def _not_answered(error: BaseException) -> str:
    return (
        f"the bucket did not answer through {budget_seconds:g} s of retries "
        f"(config.storage_retry_seconds; {type(error).__name__}: {_first_line(error)})"
    )


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0][:200] if text else ""
