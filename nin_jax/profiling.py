"""A ``jax.profiler`` trace of a range of training steps, for TensorBoard's profile plugin,
and the time JAX spends compiling (``CompileTimer``).

``config.profile_steps = (first, last)`` traces steps ``first`` to ``last``
(inclusive) into ``workdir/tensorboard/plugins/profile/<time>/``, where
``tensorboard --logdir=WORKDIR`` finds it (Profile tab; the plugin is the
``tensorboard-plugin-profile`` package). Start at step 2 or later: step 1
includes the compilation.
"""

import jax
from absl import logging
from clu import periodic_actions

# What jax.monitoring reports for each program JAX compiles: tracing to a jaxpr, lowering
# to MLIR and XLA's compilation (or a persistent-cache lookup).
COMPILE_EVENTS = (
    "/jax/core/compile/jaxpr_trace_duration",
    "/jax/core/compile/jaxpr_to_mlir_module_duration",
    "/jax/core/compile/backend_compile_duration",
)


class CompileTimer:
    """While entered, ``seconds`` adds up the time JAX spends compiling, in any thread."""

    def __init__(self) -> None:
        self.seconds = 0.0

    def _record(self, event: str, duration: float, **metadata) -> None:
        if event in COMPILE_EVENTS:
            self.seconds += duration

    def __enter__(self) -> "CompileTimer":
        jax.monitoring.register_event_duration_secs_listener(self._record)
        return self

    def __exit__(self, *exc_info) -> None:
        jax.monitoring.unregister_event_duration_listener(self._record)


class ProfileSteps(periodic_actions.PeriodicAction):
    """Starts a trace after step ``first - 1`` and stops it after step ``last``."""

    def __init__(self, logdir: str, first: int, last: int):
        super().__init__(on_steps=(first - 1, last))
        self._logdir, self._first, self._last = logdir, first, last
        self._running = False

    def begin(self, start_step: int) -> None:
        """Starts at once when a run resumes at ``first - 1`` (no step of it will trigger)."""
        if start_step == self._first - 1:
            self._start()

    def __call__(self, step: int, t: float | None = None, **context) -> bool:
        del context  # The loop passes every action the state; a trace needs none of it.
        return super().__call__(step, t)

    def _start(self) -> None:
        jax.profiler.start_trace(self._logdir)
        self._running = True
        logging.info("Profiling steps %d to %d into %s.", self._first, self._last, self._logdir)

    def _apply(self, step: int, t: float) -> None:
        if step == self._first - 1:
            self._start()
        elif self._running:
            self.close()
            logging.info("Wrote the profile of steps %d to %d.", self._first, self._last)

    def close(self) -> None:
        """Stops the trace if one is running (also when training ends or stops early)."""
        if self._running:
            self._running = False
            jax.profiler.stop_trace()
