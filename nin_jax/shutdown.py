"""Stopping a run cleanly on SIGTERM (preemption) or Ctrl-C, at a step every process agrees on.

Cloud TPU VMs and most schedulers announce preemption with SIGTERM and kill
the process some seconds later; a user stops a run with Ctrl-C (SIGINT). Either
way the training loop saves a checkpoint at the current step and raises
``errors.Stopped``, which ``nin_jax.cli`` turns into exit code 143 (SIGTERM) or
130 (SIGINT). Rerunning the same command resumes from that step. A second
Ctrl-C ends the process at once (``os._exit``, exit code 130), without saving: not
even the save in progress is waited for, and the checkpoints saved before it stay.

With the JAX distributed runtime, its preemption sync manager catches SIGTERM
(on any process) and picks the first step no process has passed yet, so all
processes save the same step (``requested`` must be its only caller:
``checkpointing.TrainingManager``); a Ctrl-C is passed to it as a SIGTERM. Without it
(one process) a signal handler sets a flag and the next step is the stop step.
"""

import os
import signal
import sys
import threading

import jax
from absl import logging
from jax.experimental import multihost_utils

from nin_jax.errors import EXIT_CODE_INTERRUPTED, EXIT_CODE_PREEMPTED, Stopped


class StopSignals:
    """While entered: SIGTERM and SIGINT ask the training loop to save and stop.

    The loop asks ``requested(step)`` after every step, on every process; on
    exit the previous handlers are put back.
    """

    def __init__(self) -> None:
        self._received: int | None = None
        self._previous: dict[int, object] = {}

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is not threading.main_thread():
            return self  # Python delivers signals to the main thread only.
        self._install(signal.SIGINT, self._on_sigint)
        # The distributed runtime installs its own SIGTERM notifier; replacing it
        # would stop the other processes from learning about the preemption.
        if not jax.distributed.is_initialized():
            self._install(signal.SIGTERM, self._on_sigterm)
        return self

    def _install(self, signum: int, handler) -> None:
        self._previous[signum] = signal.signal(signum, handler)

    def _on_sigterm(self, signum, frame) -> None:
        logging.warning("SIGTERM received: saving a checkpoint after the current step.")
        self._received = self._received or signal.SIGTERM

    def _on_sigint(self, signum, frame) -> None:
        logging.warning(
            "Ctrl-C: saving a checkpoint after the current step (press Ctrl-C again to stop "
            "at once without saving)."
        )
        self._received = signal.SIGINT
        signal.signal(signal.SIGINT, _stop_at_once)
        if jax.distributed.is_initialized():  # Let the runtime agree on the step with the others.
            os.kill(os.getpid(), signal.SIGTERM)

    def requested(self, step: int) -> bool:
        """Whether to save and stop at ``step``; the same answer on every process."""
        if jax.distributed.is_initialized():
            return multihost_utils.reached_preemption_sync_point(step)
        return self._received is not None

    @property
    def ended(self) -> str:
        """How a stopped run ended, for its record: 'interrupted' (Ctrl-C) or 'preempted'."""
        return "interrupted" if self._received == signal.SIGINT else "preempted"

    def stopped(self, step: int, checkpoint_dir: str) -> Stopped:
        """The exception to raise once the checkpoint of ``step`` is saved."""
        if self._received == signal.SIGINT:
            what, code = "interrupted (Ctrl-C)", EXIT_CODE_INTERRUPTED
        else:
            what, code = "stopped on SIGTERM", EXIT_CODE_PREEMPTED
        logging.warning("Stopping: saved the checkpoint of step %d.", step)
        return Stopped(
            f"{what} at step {step}: checkpoint saved in {checkpoint_dir}; "
            "rerun the same command to resume",
            exit_code=code,
            step=step,
        )

    def __exit__(self, *exc_info) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()


def _stop_at_once(signum, frame) -> None:
    """The second Ctrl-C: one line, then exit 130 without waiting for anything."""
    logging.flush()
    print("interrupted again: stopped without saving", file=sys.stderr, flush=True)
    os._exit(EXIT_CODE_INTERRUPTED)
