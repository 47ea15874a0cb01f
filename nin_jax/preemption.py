"""Stopping on SIGTERM at a step every process agrees on, so the run can save and exit.

Cloud TPU VMs (and most schedulers) announce preemption with SIGTERM and kill
the process some seconds later. The training loop asks ``reached(step)`` after
every step; once it is True the loop saves a checkpoint at that step, waits for
it and raises ``Preempted``, which ``main`` turns into exit code
``EXIT_CODE_PREEMPTED`` (143 = 128 + SIGTERM, the code schedulers read as
"terminated by SIGTERM"). Rerunning the same command resumes from that step.

With the JAX distributed runtime, its preemption sync manager catches SIGTERM
(on any process) and picks the first step that no process has passed yet, so
all processes save the same step. Without it (one process) a Python signal
handler sets a flag and the next step is the stop step.
"""

import signal
import threading

import jax
from absl import logging
from jax.experimental import multihost_utils

EXIT_CODE_PREEMPTED = 128 + signal.SIGTERM


class Preempted(Exception):
    """Training stopped early on SIGTERM after saving the checkpoint of ``step``."""

    def __init__(self, step: int):
        super().__init__(f"stopped on SIGTERM at step {step}; rerun the same command to resume")
        self.step = step


class PreemptionWatcher:
    """Answers, once per training step, whether to save and stop at that step."""

    def __init__(self) -> None:
        self._sigterm = threading.Event()
        self._previous_handler = None
        # The distributed runtime installs its own SIGTERM notifier; replacing it
        # would stop the other processes from learning about the preemption.
        if (
            not jax.distributed.is_initialized()
            and threading.current_thread() is threading.main_thread()
        ):
            self._previous_handler = signal.signal(signal.SIGTERM, self._on_sigterm)

    def _on_sigterm(self, signum, frame) -> None:
        logging.warning("SIGTERM received: saving a checkpoint after the current step.")
        self._sigterm.set()

    def reached(self, step: int) -> bool:
        """True at the step to save and stop at; call it after every step, on every process."""
        if jax.distributed.is_initialized():
            return multihost_utils.reached_preemption_sync_point(step)
        return self._sigterm.is_set()

    def close(self) -> None:
        """Puts back the SIGTERM handler that was there before."""
        if self._previous_handler is not None:
            signal.signal(signal.SIGTERM, self._previous_handler)
            self._previous_handler = None
