"""Stopping every process of a multi-process run promptly when one of them is lost.

A process killed without warning (SIGKILL, the kernel's OOM killer, a host that
fails or is taken for maintenance without a SIGTERM) leaves the others waiting in
the next collective: on a TPU pod the all-reduce just waits; on CPUs gloo's
socket fails at once with a ``JaxRuntimeError``, and then the distributed
runtime's shutdown barrier waits. JAX's coordination service notices the missing
heartbeats after its heartbeat timeout, but then ends every process with a C++
fatal error (SIGABRT, exit code 134, a stack trace). jaxlib's hook for that
(``missed_heartbeat_callback``) cannot take a Python function: it is handed an
``absl::Status``, which nanobind cannot convert (``std::bad_cast``, which aborts too).

So nin_jax keeps its own watch, over the coordination service's key-value store
(``Watchdog``): every process bumps its own key every ``interval`` and reads the
others'. A process whose key has not changed for ``timeout`` seconds is lost; so
is the coordinator (process 0, which holds the store) once the store cannot be
reached for that long. Each surviving process then prints one line naming the
lost one and ends with ``EXIT_CODE_PROCESS_LOST`` (no traceback, no shutdown
barrier, no save: the newest complete checkpoint is what the same command on
every host resumes from). The survivors mark their keys ``left`` as they go, and
process 0 goes last (within ``verdict_grace``): when the coordination service
ends with it, jaxlib aborts every process still in the runtime, which would
otherwise take the others' one line from them. JAX's own heartbeat timeout is
set longer (``jax_heartbeat_timeout``), as the backstop should the watch itself
be stuck.

A process that ends on purpose (finished, stopped by a signal, or failed with
its own error) first sets its key to ``left``, so the others never take an
ordinary end for a loss.
"""

import os
import sys
import threading
import time
from collections.abc import Callable

from absl import logging

from nin_jax.errors import EXIT_CODE_PROCESS_LOST

_PREFIX = "nin_jax/alive/"
_LEFT = "left"
# Text of the errors a collective raises when a peer's connection breaks (gloo on CPUs;
# the coordination service's status codes elsewhere): worth waiting for the watch's verdict.
_COLLECTIVE_FAILURES = (
    "gloo", "connection closed by peer", "connection reset by peer", "unavailable",
    "deadline_exceeded", "heartbeat", "coordination service",
)  # fmt: skip


def jax_heartbeat_timeout(timeout: float) -> int:
    """JAX's heartbeat timeout for a watch of ``timeout`` s: later than the watch's verdict
    (which must come first: JAX's own ends the process with a C++ abort)."""
    return int(2 * timeout + 10)


def interval(timeout: float) -> float:
    """Seconds between two signs of life: a tenth of the timeout, within [0.2, 5] s (a pod's
    hosts each read every key at this rate)."""
    return min(5.0, max(0.2, timeout / 10))


def verdict_grace(timeout: float) -> float:
    """Seconds process 0 waits, after its own verdict, for the other survivors to reach
    theirs: each judges from its own last look at the lost key, up to two intervals apart,
    plus scheduling on a loaded host."""
    return 3 * interval(timeout) + 2.0


def is_collective_failure(error: BaseException) -> bool:
    """Whether ``error`` (or one it was raised from) may come from a lost process."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        text = f"{type(error).__name__} {error}".lower()
        if "jaxruntimeerror" in text or any(part in text for part in _COLLECTIVE_FAILURES):
            return True
        error = error.__cause__ or error.__context__
    return False


class Watchdog:
    """The watch over the other processes of a run; ``start`` it right after
    ``jax.distributed.initialize`` and ``close`` it on every deliberate way out.

    ``client`` is the distributed runtime's client (``key_value_set``,
    ``key_value_dir_get``); ``timeout``: seconds without a sign of life after which a
    process is lost; ``clock``: the time in seconds (the tests' own).
    """

    def __init__(
        self,
        client,
        process_index: int,
        process_count: int,
        timeout: float,
        clock: Callable[[], float] = time.monotonic,
    ):
        self._client = client
        self._clock = clock
        self._index = process_index
        self._count = process_count
        self._timeout = float(timeout)
        self._interval = interval(timeout)
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()  # No bump lands after a verdict's 'left'.
        self._values: dict[int, str] = {}
        self._left: set[int] = set()
        self._contact = clock()
        others = [i for i in range(process_count) if i != process_index]
        self._changed: dict[int, float] = dict.fromkeys(others, self._contact)
        self._threads: list[threading.Thread] = []
        self._beat = 0
        self._left_on_verdict = False  # Not _stop: wait_for_verdict would return.

    def start(self) -> "Watchdog":
        """Starts the exchange and judge threads (daemons: they never hold the process up)."""
        self.exchange()
        for target, name in ((self._exchange_loop, "exchange"), (self._judge_loop, "judge")):
            thread = threading.Thread(target=target, name=f"nin_jax-peers-{name}", daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def _exchange_loop(self) -> None:
        while not self._stop.wait(self._interval):
            self.exchange()

    def exchange(self) -> None:
        """Bumps this process's key and notes which of the others' keys changed."""
        self._beat += 1
        try:
            with self._write_lock:
                if self._left_on_verdict:
                    return
                self._client.key_value_set(
                    f"{_PREFIX}{self._index}", str(self._beat), allow_overwrite=True
                )
            pairs = self._client.key_value_dir_get(_PREFIX)
        except Exception:  # The store is out of reach: the judge counts the time.
            return
        now = self._clock()
        with self._lock:
            self._contact = now
            for key, value in pairs:
                index = int(key.rsplit("/", 1)[-1])
                if index == self._index:
                    continue
                if value == _LEFT:
                    self._left.add(index)
                elif self._values.get(index) != value:
                    self._values[index] = value
                    self._changed[index] = now

    def _judge_loop(self) -> None:
        while not self._stop.wait(self._interval):
            lost = self.lost()
            if lost is not None and not self._stop.is_set():
                self._end(*lost)

    def lost(self) -> tuple[int, float] | None:
        """(the lost process, seconds since its last sign of life), or None if none is."""
        now = self._clock()
        with self._lock:
            if self._index != 0 and now - self._contact > self._timeout:
                return 0, now - self._contact  # Process 0 holds the store.
            for index, changed in sorted(self._changed.items()):
                if index not in self._left and now - changed > self._timeout:
                    return index, now - changed
        return None

    def _end(self, index: int, silent: float) -> None:
        who = f"process {index}" + (" (the coordinator)" if index == 0 else "")
        message = (
            f"error: {who} of {self._count} was lost (no sign of life for {silent:.0f} s, "
            f"the limit is {self._timeout:g} s): process {self._index} stops too (exit code "
            f"{EXIT_CODE_PROCESS_LOST}); rerun the same command on every host to resume from "
            "the newest checkpoint"
        )
        logging.flush()
        print(message, file=sys.stderr, flush=True)
        sys.stdout.flush()
        self.leave_after_verdict(index)
        os._exit(EXIT_CODE_PROCESS_LOST)

    def leave_after_verdict(self, lost: int) -> set[int]:
        """Marks this process ``left`` (unless the lost one held the store); process 0 then
        waits up to ``verdict_grace`` for every other survivor to have done the same.
        Returns the survivors it stopped waiting for."""
        if lost != 0:
            writer = threading.Thread(target=self._write_left, daemon=True)
            writer.start()
            writer.join(self._interval)  # A store that hangs does not hold the exit up.
        if self._index != 0:
            return set()
        survivors = set(range(self._count)) - {self._index, lost}
        deadline = time.monotonic() + verdict_grace(self._timeout)
        while survivors and time.monotonic() < deadline:
            try:
                pairs = self._client.key_value_dir_get(_PREFIX)
            except Exception:
                return survivors
            survivors -= {int(key.rsplit("/", 1)[-1]) for key, value in pairs if value == _LEFT}
            time.sleep(0.05)
        if not survivors:
            time.sleep(0.25)  # The last one marked 'left' just before its exit.
        return survivors

    def _write_left(self) -> None:
        try:
            with self._write_lock:
                self._left_on_verdict = True
                self._client.key_value_set(f"{_PREFIX}{self._index}", _LEFT, allow_overwrite=True)
        except Exception:  # The store is going too: the others' watches still judge.
            pass

    def wait_for_verdict(self) -> None:
        """After a collective failed: waits until the watch has had time to find a lost
        process (then the process ends there); returns if none was found."""
        deadline = time.monotonic() + self._timeout + 3 * self._interval
        while time.monotonic() < deadline and not self._stop.is_set():
            time.sleep(self._interval)

    def close(self) -> None:
        """Stops watching and tells the others this process leaves on purpose."""
        if self._stop.is_set():
            return
        self._stop.set()
        # Joined before the last write: a bump after it would undo the 'left', and a call
        # still in flight when the runtime shuts down aborts the process.
        for thread in self._threads:
            if thread is not threading.current_thread():
                thread.join()
        try:
            self._client.key_value_set(f"{_PREFIX}{self._index}", _LEFT, allow_overwrite=True)
        except Exception as e:  # The store is gone too: nobody is left to tell.
            logging.warning("Could not tell the other processes this one leaves: %s", e)
