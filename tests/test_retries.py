"""Which errors are a bucket that did not answer (retried, never 'damaged') and which are a
file's content; the backoff's tries, waits and its one warning per incident."""

import json
import os

import pytest
import tensorflow as tf
from absl import logging

from nin_jax import errors, retries


@pytest.mark.parametrize(
    "error",
    [
        tf.errors.UnavailableError(None, None, "Error executing an HTTP request: 503"),
        tf.errors.DeadlineExceededError(None, None, "deadline"),
        tf.errors.ResourceExhaustedError(None, None, "rate"),
        ConnectionError("gs://b/x: connection reset"),
        retries.ShortReadError("gs://b/x: short read, 0 of 120 bytes"),
        OSError("gs://b/x: Error executing an HTTP request: HTTP response code 503"),
        OSError("curl error: Timeout was reached"),
        ValueError("UNAVAILABLE: Error reading gs://b/x/ocdbt.process_0/d/123"),
        ValueError("DEADLINE_EXCEEDED: ..."),
        type("ServiceUnavailable", (Exception,), {})("503 GET https://storage.googleapis.com"),
        type("TooManyRequests", (Exception,), {})("429 POST"),
    ],
)
def test_a_service_that_did_not_answer_is_transient(error):
    assert retries.is_transient(error)


@pytest.mark.parametrize(
    "error",
    [
        json.JSONDecodeError("Expecting value", "", 0),
        ValueError("could not parse line 500 of the file"),
        tf.errors.DataLossError(None, None, "corrupted record at 120"),
        FileNotFoundError("gs://b/x"),
        PermissionError("gs://b/x: HTTP response code 403"),
        KeyError("params"),
    ],
)
def test_a_files_content_or_absence_is_not_transient(error):
    assert not retries.is_transient(error)


def test_the_cause_counts():
    try:
        try:
            raise tf.errors.UnavailableError(None, None, "backend")
        except tf.errors.OpError as e:
            raise ValueError("cannot load dataset_info.json") from e
    except ValueError as chained:
        assert retries.is_transient(chained)


class Flaky:
    """Fails ``failures`` times with ``error``, then returns 'done'."""

    def __init__(self, failures: int, error: Exception):
        self.failures, self.error, self.calls = failures, error, 0

    def __call__(self) -> str:
        self.calls += 1
        if self.calls <= self.failures:
            raise self.error
        return "done"


@pytest.fixture
def warnings(monkeypatch) -> list[str]:
    logged: list[str] = []
    monkeypatch.setattr(logging, "warning", lambda msg, *args: logged.append(msg % args))
    return logged


def test_transient_failures_are_retried_with_growing_waits(warnings):
    waits: list[float] = []
    operation = Flaky(4, ConnectionError("connection reset"))
    assert retries.call(operation, "writing gs://b/x", sleep=waits.append) == "done"
    assert operation.calls == 5
    # 0.5, 1, 2, 4 s, each within +-25%.
    for wait, nominal in zip(waits, [0.5, 1.0, 2.0, 4.0], strict=True):
        assert 0.75 * nominal <= wait <= 1.25 * nominal
    # One warning when the incident starts, one when it ends: not one per try.
    assert len(warnings) == 2
    assert warnings[0].startswith("writing gs://b/x failed (ConnectionError: connection reset)")
    assert warnings[1] == "writing gs://b/x succeeded at try 5."


def test_the_backoff_is_bounded_and_the_last_error_raised(warnings):
    waits: list[float] = []
    operation = Flaky(100, ConnectionError("connection reset"))
    with pytest.raises(ConnectionError):
        retries.call(operation, "reading gs://b/x", sleep=waits.append)
    assert operation.calls == retries.TRIES == 6
    assert len(waits) == 5 and max(waits) <= 1.25 * retries.MAX_WAIT
    assert 0.75 * 15.5 <= sum(waits) <= 1.25 * 15.5  # About 15 s before giving up.
    assert len(warnings) == 1


def test_other_errors_are_raised_at_once(warnings):
    operation = Flaky(1, FileNotFoundError("gs://b/x"))
    with pytest.raises(FileNotFoundError):
        retries.call(operation, "reading gs://b/x", sleep=lambda s: None)
    assert operation.calls == 1 and warnings == []


def test_no_retry_starts_once_the_budget_has_passed(monkeypatch, warnings):
    clock = iter([0.0, 10.0, 200.0])  # The first try began at 0; the second failed at 200 s.
    monkeypatch.setattr(retries.time, "monotonic", lambda: next(clock))
    monkeypatch.setattr(retries, "budget_seconds", 120.0)
    operation = Flaky(100, ConnectionError("connection reset"))
    with pytest.raises(ConnectionError):
        retries.call(operation, "reading gs://b/x", sleep=lambda s: None)
    assert operation.calls == 2


@pytest.mark.parametrize(
    ("seconds", "count"), [(1, 1), (5, 3), (7, 3), (8, 4), (120, 8), (127, 8), (128, 9)]
)
def test_the_clients_get_as_many_retries_as_fit_in_the_budget(seconds, count):
    # Waits of 1, 2, 4, 8, 16, 32, 32 ... s until they add up to the budget.
    assert retries.client_retries(seconds) == count


def test_tensorflow_and_tensorstore_get_the_same_budget():
    assert retries.tensorflow_environment(120) == {
        "GCS_RETRY_CONFIG_MAX_RETRIES": "8",
        "GCS_RETRY_CONFIG_INIT_DELAY_TIME_US": "1000000",
        "GCS_RETRY_CONFIG_MAX_DELAY_TIME_US": "32000000",
    }
    # TensorStore counts attempts, the first one included.
    assert retries.tensorstore_retries(120) == {
        "max_retries": 9,
        "initial_delay": "1s",
        "max_delay": "32s",
    }


def test_configure_leaves_a_setting_the_user_made(monkeypatch):
    monkeypatch.setattr(retries, "_set_here", {})
    monkeypatch.setattr(retries, "budget_seconds", retries.budget_seconds)
    for name in retries.tensorflow_environment(1):  # Restored at the end of the test.
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("GCS_RETRY_CONFIG_MAX_RETRIES", "2")
    retries.configure(120)
    retries.configure(5)  # Its own settings it changes again (cli.run, then main).
    assert os.environ["GCS_RETRY_CONFIG_MAX_RETRIES"] == "2"
    assert os.environ["GCS_RETRY_CONFIG_MAX_DELAY_TIME_US"] == "32000000"
    assert os.environ["GCS_RETRY_CONFIG_INIT_DELAY_TIME_US"] == "1000000"
    assert retries.budget_seconds == 5.0


def test_a_write_the_bucket_did_not_answer_is_one_line_naming_it(monkeypatch):
    monkeypatch.setattr(retries, "budget_seconds", 120.0)
    error = retries.unwritable("gs://b/run/metrics.jsonl", ConnectionError("HTTP 503"))
    assert isinstance(error, errors.StorageError)
    assert str(error).startswith(
        "cannot write gs://b/run/metrics.jsonl: the bucket did not answer through 120 s of "
        "retries (config.storage_retry_seconds; ConnectionError: HTTP 503)"
    )
    assert "\n" not in str(error)
