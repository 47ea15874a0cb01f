"""config.profile_steps writes a trace TensorBoard's profile plugin opens."""

import pytest
from helpers import load_config

from nin_jax import train


@pytest.mark.slow
def test_profile_steps_write_a_trace(tmp_path, digits_data_dir):
    config = load_config(
        "digits", data_dir=digits_data_dir, num_train_steps=4, profile_steps=(2, 3),
        log_every_steps=2,
    )  # fmt: skip
    train.train_and_evaluate(config, str(tmp_path))
    traces = list((tmp_path / "tensorboard" / "plugins" / "profile").glob("*/*.xplane.pb"))
    assert len(traces) == 1 and traces[0].stat().st_size > 0


def test_compile_timer_counts_compilation_only():
    import jax
    import jax.numpy as jnp

    from nin_jax import profiling

    f = jax.jit(lambda x: jnp.sin(x) @ x.T)
    with profiling.CompileTimer() as timer:
        f(jnp.ones((64, 64))).block_until_ready()
        compiled = timer.seconds
        f(jnp.ones((64, 64))).block_until_ready()  # Cached: nothing more to compile.
    assert 0 < compiled == timer.seconds
    jax.jit(lambda x: x + 1)(1.0)  # After exit: not counted.
    assert timer.seconds == compiled
