"""``python -m nin_jax.main`` that also saves this process's final parameters.

The multi-process and preemption tests run this instead of ``nin_jax.main`` to
compare what every process holds: ``<workdir>/params_<process index>.npz`` (in the
bucket for a gs:// workdir).
"""

import faulthandler
import io
import os
import signal

import jax
import numpy as np

from nin_jax import cli, main, steps, storage, train


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


train_and_evaluate = train.train_and_evaluate
train.train_and_evaluate = train_and_save

if __name__ == "__main__":
    faulthandler.register(signal.SIGUSR1)  # `kill -USR1 PID` shows where a hung run waits.
    cli.run(main.main)
