"""The watch over a run's other processes: who is lost and when (a fake key-value store),
and, in slow tests, a process of a 2- or 4-process run frozen (SIGSTOP) or killed (SIGKILL).

The slow tests measure the time from the signal to each surviving process's exit and
hold it under ``LOST_BOUND``: ``heartbeat_timeout_seconds`` (10 s here) plus the
watch's interval and the processes' exit, on a loaded 2-core machine.
"""

import os
import re
import signal
import threading
import time

import helpers
import pytest

from nin_jax import errors, peers

HEARTBEAT = 10  # config.heartbeat_timeout_seconds of the slow tests.
LOST_BOUND = 30.0  # Seconds from the SIGKILL to the last exit (docs/SCALING.md).


class FakeStore:
    """The coordination service's key-value store, as ``Watchdog`` uses it."""

    def __init__(self):
        self.values: dict[str, str] = {}
        self.reachable = True

    def key_value_set(self, key: str, value: str, allow_overwrite: bool = False) -> None:
        if not self.reachable:
            raise RuntimeError("UNAVAILABLE: Failed to send RPC to coordination service")
        self.values[key] = value

    def key_value_dir_get(self, prefix: str) -> list[tuple[str, str]]:
        if not self.reachable:
            raise RuntimeError("UNAVAILABLE: Failed to send RPC to coordination service")
        return [(k, v) for k, v in self.values.items() if k.startswith(prefix)]


class Clock:
    """The time a test sets."""

    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def bump(store: FakeStore, *indices: int) -> None:
    for index in indices:
        key = f"nin_jax/alive/{index}"
        store.values[key] = str(int(store.values.get(key, "0")) + 1)


def test_a_process_whose_key_stops_changing_is_lost_after_the_timeout():
    store, clock = FakeStore(), Clock()
    watchdog = peers.Watchdog(store, 0, 3, timeout=10.0, clock=clock)
    for second in range(15):  # Process 1 bumps its key every second, process 2 until 4 s.
        clock.now = float(second)
        bump(store, 1, *([2] if second <= 4 else []))
        watchdog.exchange()
        assert watchdog.lost() is None, second
    clock.now = 14.5
    assert watchdog.lost() == (2, 10.5)


def test_a_process_that_left_is_never_lost():
    store, clock = FakeStore(), Clock()
    watchdog = peers.Watchdog(store, 1, 3, timeout=10.0, clock=clock)
    store.values["nin_jax/alive/0"] = "left"
    bump(store, 2)
    watchdog.exchange()
    clock.now = 11.0
    assert watchdog.lost() == (0, 11.0)  # Its own contact with the store is 11 s old ...
    watchdog.exchange()
    assert watchdog.lost() == (2, 11.0)  # ... renewed: process 0 left, process 2 went silent.


def test_an_unreachable_store_is_the_coordinator_lost():
    store, clock = FakeStore(), Clock()
    watchdog = peers.Watchdog(store, 2, 4, timeout=10.0, clock=clock)
    clock.now = 50.0
    bump(store, 0, 1, 3)
    watchdog.exchange()
    store.reachable = False  # Process 0, which holds the store, is gone.
    clock.now = 59.0
    watchdog.exchange()
    assert watchdog.lost() is None
    clock.now = 60.5
    watchdog.exchange()
    assert watchdog.lost() == (0, 10.5)


def test_the_coordinator_never_loses_its_own_store():
    store, clock = FakeStore(), Clock()
    watchdog = peers.Watchdog(store, 0, 2, timeout=10.0, clock=clock)
    clock.now = 100.0
    bump(store, 1)
    watchdog.exchange()
    clock.now = 105.0
    assert watchdog.lost() is None
    clock.now = 111.0
    assert watchdog.lost() == (1, 11.0)


def test_close_tells_the_others_and_stops_the_watch():
    store = FakeStore()
    watchdog = peers.Watchdog(store, 1, 2, timeout=2.0).start()
    assert store.values["nin_jax/alive/1"] == "1"
    watchdog.close()
    assert store.values["nin_jax/alive/1"] == "left"
    for thread in watchdog._threads:
        thread.join(timeout=5)
        assert not thread.is_alive()


def test_close_with_the_store_gone_only_warns():
    store = FakeStore()
    store.reachable = False
    peers.Watchdog(store, 1, 2, timeout=10.0).close()  # Nobody is left to tell: no error.


def test_a_survivor_leaves_on_its_verdict_and_no_bump_follows():
    store = FakeStore()
    watchdog = peers.Watchdog(store, 1, 3, timeout=2.0)
    watchdog.leave_after_verdict(lost=2)
    watchdog.exchange()
    assert store.values["nin_jax/alive/1"] == "left"


def test_the_coordinator_goes_last_after_a_verdict():
    store = FakeStore()
    watchdog = peers.Watchdog(store, 0, 4, timeout=2.0)
    leaving = threading.Timer(0.5, lambda: store.values.update({"nin_jax/alive/1": "left"}))
    store.values["nin_jax/alive/3"] = "left"
    started = time.monotonic()
    leaving.start()
    assert watchdog.leave_after_verdict(lost=2) == set()  # Lost process 2: nobody waits.
    assert time.monotonic() - started >= 0.5


def test_the_coordinator_waits_for_a_silent_survivor_only_so_long():
    store = FakeStore()
    watchdog = peers.Watchdog(store, 0, 3, timeout=2.0)
    started = time.monotonic()
    assert watchdog.leave_after_verdict(lost=2) == {1}  # It never reaches its verdict.
    assert time.monotonic() - started >= peers.verdict_grace(2.0)
    assert peers.verdict_grace(10) == 5.0 and peers.verdict_grace(60) == 17.0


def test_a_survivor_of_a_lost_coordinator_writes_nothing():
    store = FakeStore()
    store.reachable = False  # A call to the gone store would only wait.
    assert peers.Watchdog(store, 1, 2, timeout=2.0).leave_after_verdict(lost=0) == set()


@pytest.mark.parametrize(
    "error, expected",
    [
        (ValueError("UNKNOWN: Gloo AllGather failed: Connection closed by peer"), True),
        (RuntimeError("Gloo all-reduce failed: Connection reset by peer"), True),
        (RuntimeError("UNAVAILABLE: Failed to send RPC to coordination service"), True),
        (ValueError("could not broadcast input array from shape (3,) into shape (4,)"), False),
        (KeyError("model"), False),
    ],
)
def test_which_errors_may_come_from_a_lost_process(error, expected):
    assert peers.is_collective_failure(error) is expected


def test_a_collective_failure_is_found_in_the_chain():
    try:
        try:
            raise ValueError("UNKNOWN: Gloo AllReduce failed")
        except ValueError as e:
            raise RuntimeError("while closing the checkpoint manager") from e
    except RuntimeError as chained:
        assert peers.is_collective_failure(chained)


def test_the_timeouts_figures():
    assert peers.interval(60) == 5.0 and peers.interval(10) == 1.0 and peers.interval(1) == 0.2
    # JAX's own heartbeat timeout comes after the watch's verdict, with room to spare.
    assert peers.jax_heartbeat_timeout(60) == 130 and peers.jax_heartbeat_timeout(10) == 30
    assert errors.EXIT_CODE_PROCESS_LOST == 75


def run_args(workdir, data_dir: str) -> list[str]:
    return helpers.train_args(
        workdir, data_dir, num_train_steps=200, checkpoint_every_steps=20,
        log_every_steps=100, eval_every_steps=10_000,
        heartbeat_timeout_seconds=HEARTBEAT, shutdown_timeout_seconds=HEARTBEAT,
    )  # fmt: skip


def lose_one_and_time_the_rest(
    processes, lost: int, workdir, how: signal.Signals = signal.SIGKILL
) -> dict[int, tuple[int, float]]:
    """Sends ``how`` to ``processes[lost]`` once checkpoint 20 is complete; returns each
    ended process's (exit code, seconds from the signal to its exit). A process frozen by
    SIGSTOP is waited for by nobody and SIGKILLed once the others have ended."""
    try:
        helpers.wait_for(lambda: (workdir / "checkpoints" / "20").is_dir(), processes[0], 600)
        lost_at = time.monotonic()
        os.killpg(processes[lost].pid, how)
        awaited = [i for i in range(len(processes)) if i != lost or how != signal.SIGSTOP]
        ended: dict[int, tuple[int, float]] = {}
        while len(ended) < len(awaited) and time.monotonic() - lost_at < 3 * LOST_BOUND:
            for i in awaited:
                if i not in ended and processes[i].poll() is not None:
                    ended[i] = (processes[i].returncode, time.monotonic() - lost_at)
            time.sleep(0.05)
        return ended
    finally:
        if how == signal.SIGSTOP:
            helpers.kill(processes[lost])
        report = helpers.hung_report(processes) if any(p.poll() is None for p in processes) else ""
        for process in processes:
            helpers.kill(process)
        assert not report, report


def assert_no_process_left(processes) -> None:
    for process in processes:  # Each process leads its own group (helpers.start).
        with pytest.raises(ProcessLookupError):
            os.killpg(process.pid, 0)


def assert_the_watch_spoke(log: str, lost: int, count: int) -> None:
    lines = [line for line in log.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, log[-3000:]
    assert lines[0].startswith(f"error: process {lost} of {count} was lost"), lines[0]
    assert "Traceback" not in log and "Check failure" not in log, log[-3000:]


@pytest.mark.slow
@pytest.mark.parametrize("count, frozen", [(2, 1), (4, 2)])
def test_a_frozen_process_stops_the_others_after_the_timeout(
    tmp_path, digits_data_dir, count, frozen
):
    """SIGSTOP: a host that stops answering without closing its connections (as a lost
    TPU host leaves the others' all-reduce waiting). Nothing but the watch ends the others:
    the first survivor to end prints its one line and exits 75 after the timeout, and
    process 0 ends after the other survivors that did. A survivor still in a collective
    when another exits may be aborted by gloo (CPUs only) at that moment: SIGABRT, no
    Python traceback. All within the bound."""
    processes = helpers.start_processes(run_args(tmp_path, digits_data_dir), count, tmp_path)
    ended = lose_one_and_time_the_rest(processes, frozen, tmp_path, how=signal.SIGSTOP)
    print(f"{count} processes, process {frozen} frozen: exits {ended}")
    survivors = sorted((i for i in range(count) if i != frozen), key=lambda i: ended[i][1])
    reported = [i for i in survivors if ended[i][0] == errors.EXIT_CODE_PROCESS_LOST]
    assert reported and reported[0] == survivors[0], ended
    for i in survivors:
        log = (tmp_path / f"log_{i}.txt").read_text(errors="replace")
        # Its last sign of life came up to an interval before the signal.
        assert HEARTBEAT - peers.interval(HEARTBEAT) <= ended[i][1] <= LOST_BOUND, ended
        if i in reported:
            assert_the_watch_spoke(log, frozen, count)
        else:
            assert ended[i][0] == -signal.SIGABRT, (ended, log[-3000:])
            assert "Traceback" not in log, log[-3000:]
    if 0 in reported:
        assert reported[-1] == 0, ended
    assert_no_process_left(processes)


@pytest.mark.slow
@pytest.mark.parametrize("count, killed", [(2, 1), (4, 2)])
def test_a_killed_process_stops_the_others_promptly(tmp_path, digits_data_dir, count, killed):
    """SIGKILL: on CPUs the killed process's sockets close, and gloo (CPU collectives only)
    may abort a survivor inside its own code at once (SIGABRT) before the watch speaks, in
    either run size and at random; so each survivor either prints the watch's one line and
    exits 75 or is aborted with no Python traceback, all within the bound. The watch's own
    timing is held by the frozen-process test, where nothing closes."""
    processes = helpers.start_processes(run_args(tmp_path, digits_data_dir), count, tmp_path)
    ended = lose_one_and_time_the_rest(processes, killed, tmp_path)
    logs = [(tmp_path / f"log_{i}.txt").read_text(errors="replace") for i in range(count)]
    survivors = [i for i in range(count) if i != killed]
    print(f"{count} processes, process {killed} killed: exits {ended}")
    assert ended[killed][0] == -signal.SIGKILL
    for i in survivors:
        code, seconds = ended[i]
        assert seconds <= LOST_BOUND, ended
        if code == errors.EXIT_CODE_PROCESS_LOST:
            assert_the_watch_spoke(logs[i], killed, count)
        else:
            assert code == -signal.SIGABRT, (ended, logs[i][-3000:])
            assert "Traceback" not in logs[i], logs[i][-3000:]
    assert_no_process_left(processes)

    if count == 2:  # The same command on every host resumes from the newest checkpoint.
        newest = helpers.checkpoint_steps(tmp_path)[-1]
        processes = helpers.start_processes(run_args(tmp_path, digits_data_dir), count, tmp_path)
        codes = helpers.wait_all(processes, timeout=600)
        log = (tmp_path / "log_0.txt").read_text()
        assert codes == [0, 0], log[-3000:]
        assert re.search(rf"starting at step {newest}\.", log), log[-3000:]
        assert helpers.checkpoint_steps(tmp_path)[-1] == 200


@pytest.mark.slow
def test_a_killed_coordinator_ends_the_others_at_once(tmp_path, digits_data_dir):
    """Process 0 holds JAX's coordination service: when it dies, jaxlib ends the others
    itself, at once, with its C++ fatal error (SIGABRT: exit code -6 here, 134 from a
    shell), before the watch can speak; no process is left and none hangs."""
    processes = helpers.start_processes(run_args(tmp_path, digits_data_dir), 2, tmp_path)
    ended = lose_one_and_time_the_rest(processes, 0, tmp_path)
    print(f"2 processes, process 0 killed: process 1 exited {ended[1][1]:.1f} s after it")
    assert ended[1][0] in (-signal.SIGABRT, errors.EXIT_CODE_PROCESS_LOST)
    assert ended[1][1] <= LOST_BOUND
    assert_no_process_left(processes)
