"""``python -m nin_jax.main`` that also saves this process's final parameters.

The multi-process and preemption tests run this instead of ``nin_jax.main`` to
compare what every process holds: ``<workdir>/params_<process index>.npz`` (in the
bucket for a gs:// workdir).

With ``NIN_TEST_HOLD_STOP_SAVE=<path>`` in the environment, the save a stop request
starts (Ctrl-C, SIGTERM) is held: the run writes ``<path>`` and then waits ten
minutes before waiting for the save, so a test knows the run is inside the stop
save however fast the machine writes checkpoints.
"""

import faulthandler
import io
import os
import signal
import threading
import time
from pathlib import Path

import jax
import numpy as np

from nin_jax import checkpointing, cli, main, shutdown, steps, storage, train


def save_local_params(state: steps.TrainState, workdir: str) -> None:
    flat = jax.tree_util.tree_flatten_with_path(state.params)[0]
    arrays = {jax.tree_util.keystr(path): np.asarray(x.addressable_data(0)) for path, x in flat}
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    storage.write_bytes(
        os.path.join(workdir, f"params_{jax.process_index()}.npz"), buffer.getvalue()
    )


def train_and_save(config, workdir, allow_schedule_change=False):
    state, results = train_and_evaluate(config, workdir, allow_schedule_change)
    save_local_params(state, workdir)
    return state, results


def hold_the_stop_save(marker: Path) -> None:
    """Makes the stop save wait in Python (where signal handlers run), after writing ``marker``."""
    requested = shutdown.StopSignals.requested
    wait_until_finished = checkpointing.TrainingManager.wait_until_finished
    stop_requested = threading.Event()

    def noted_request(self, step):
        if requested(self, step):
            stop_requested.set()
        return stop_requested.is_set()

    def held_wait(self):
        if stop_requested.is_set():
            marker.write_text("the stop save started\n")
            time.sleep(600)
        return wait_until_finished(self)

    shutdown.StopSignals.requested = noted_request
    checkpointing.TrainingManager.wait_until_finished = held_wait


train_and_evaluate = train.train_and_evaluate
train.train_and_evaluate = train_and_save
if os.environ.get("NIN_TEST_HOLD_STOP_SAVE"):
    hold_the_stop_save(Path(os.environ["NIN_TEST_HOLD_STOP_SAVE"]))

if __name__ == "__main__":
    faulthandler.register(signal.SIGUSR1)  # `kill -USR1 PID` shows where a hung run waits.
    cli.run(main.main)
