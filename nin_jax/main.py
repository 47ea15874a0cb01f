"""Command line entry point: parses flags and calls ``train.train_and_evaluate``.

  python -m nin_jax.main --config=configs/svhn.py --workdir=/tmp/nin_svhn \\
      [--config.batch_size=64 ...] [--config.model.init_std=None ...]

Several hosts: the same command on every host, plus ``--distributed`` (Cloud TPU
pod slices, SLURM, Open MPI, Kubernetes: JAX finds the other processes) or
``--coordinator_address=HOST:PORT --num_processes=N --process_id=I``.
Exit codes: 0 done, 2 bad input, 130 stopped by Ctrl-C and 143 by SIGTERM (both
after saving a checkpoint; rerun the same command to resume), 75 another process of
the run was lost (``config.heartbeat_timeout_seconds``; rerun the same command on
every host to resume from the newest checkpoint). Resuming a workdir
with another schedule (``workdir.SCHEDULE_FIELDS``: steps, batch size, rates,
seed ...) is refused unless --allow_schedule_change.
"""

from absl import flags, logging
from ml_collections import config_dict, config_flags

from nin_jax import cli, config_validation, errors, peers, retries
from nin_jax import workdir as workdir_lib

# JAX, TensorFlow and Orbax take seconds to import: ``main`` imports them once the
# command line, the config and the workdir have been checked, so that a mistake is
# reported at once.

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
    "config", None, "Training configuration file (configs/*.py).", lock_config=True
)
flags.DEFINE_string("workdir", None, "Directory for checkpoints and results.")
flags.DEFINE_bool(
    "distributed",
    False,
    "Start the JAX distributed runtime, finding the other processes from the environment "
    "(Cloud TPU pod slices, SLURM, Open MPI, Kubernetes). Implied by --coordinator_address.",
)
flags.DEFINE_string(
    "coordinator_address", None, "HOST:PORT of process 0's coordinator, for multi-process runs."
)
flags.DEFINE_integer("num_processes", None, "Number of processes of a multi-process run.", 1)
flags.DEFINE_integer("process_id", None, "This process's index in [0, num_processes).", 0)
flags.DEFINE_list(
    "local_device_ids",
    None,
    "Devices this process uses (e.g. one GPU per process: --local_device_ids=0).",
)
flags.DEFINE_bool(
    "allow_schedule_change",
    False,
    "Resume a workdir whose config.json has another schedule (steps, epochs, batch size, "
    "learning-rate fields, splits, seeds) with this config's; logged and kept in runs.json.",
)
flags.mark_flags_as_required(["config", "workdir"])


def distributed_arguments() -> dict | None:
    """``jax.distributed.initialize``'s arguments from the flags; ``None``: a single process."""
    explicit = {
        "coordinator_address": FLAGS.coordinator_address,
        "num_processes": FLAGS.num_processes,
        "process_id": FLAGS.process_id,
        "local_device_ids": [int(i) for i in FLAGS.local_device_ids or []] or None,
    }
    given = {k: v for k, v in explicit.items() if v is not None}
    if not FLAGS.distributed and not given:
        return None
    if given and FLAGS.coordinator_address is None and not FLAGS.distributed:
        cli.fail(f"--{next(iter(given))} needs --coordinator_address (or use --distributed alone)")
    if FLAGS.process_id is not None and FLAGS.num_processes is not None:
        if FLAGS.process_id >= FLAGS.num_processes:
            cli.fail(f"--process_id={FLAGS.process_id} must be below --num_processes")
    return given


def initialize_distributed(arguments: dict, config: config_dict.ConfigDict) -> peers.Watchdog:
    """Joins the JAX distributed runtime (must come before any other JAX call) and starts
    the watch over the other processes (``nin_jax.peers``)."""
    import jax
    from jax._src import distributed  # Its client, as Orbax's multihost helpers use it.

    try:
        jax.distributed.initialize(
            **arguments,
            heartbeat_timeout_seconds=peers.jax_heartbeat_timeout(config.heartbeat_timeout_seconds),
            shutdown_timeout_seconds=config.shutdown_timeout_seconds,
        )
    except (ValueError, RuntimeError) as e:
        cli.fail(f"cannot start the JAX distributed runtime: {e}")
    if jax.process_index() != 0:  # One log for the whole run: process 0's.
        logging.set_verbosity(logging.WARNING)
    watchdog = peers.Watchdog(
        distributed.global_state.client, jax.process_index(), jax.process_count(),
        timeout=config.heartbeat_timeout_seconds,
    )  # fmt: skip
    return watchdog.start()


def train_and_report(config: config_dict.ConfigDict, watchdog: peers.Watchdog | None) -> None:
    """Trains and prints the results; a collective that fails because another process was
    lost ends the process with the watch's one line (``nin_jax.peers``), not a traceback."""
    import jax

    from nin_jax import errors, train

    try:
        _, results = train.train_and_evaluate(config, FLAGS.workdir, FLAGS.allow_schedule_change)
    except Exception as e:
        expected = isinstance(e, (errors.NinError, errors.Stopped))
        if watchdog is not None and not expected and peers.is_collective_failure(e):
            watchdog.wait_for_verdict()
        raise
    if jax.process_index() == 0:
        for index, model in enumerate(results.get("models", [])):
            setting = ", ".join(f"{k} {v}" for k, v in model.items() if not k.startswith("test_"))
            print(f"model {index} ({setting}): test error {model['test_error']:.2%}")
        which = "ensemble test accuracy" if "models" in results else "test accuracy"
        print(
            f"{config.dataset}: {which} {results['test_accuracy']:.2%} "
            f"(error {results['test_error']:.2%}) at step {results['step']}; "
            f"results in {FLAGS.workdir}/results.json"
        )


def main(argv: list[str]) -> None:
    config = FLAGS.config
    config_validation.validate(config)
    retries.configure(config.storage_retry_seconds)  # Before TensorFlow loads.
    distributed = distributed_arguments()
    if distributed is None:  # One process: what taking the lock checks needs no JAX.
        workdir_lib.check_available(FLAGS.workdir)
    workdir_lib.check_compatible(FLAGS.workdir, config, FLAGS.allow_schedule_change)
    if distributed is None:
        train_and_report(config, None)
        return
    watchdog = initialize_distributed(distributed, config)
    import jax
    from jax.experimental import multihost_utils

    try:
        train_and_report(config, watchdog)
        # No process leaves before the others are done: process 0 hosts the coordination
        # service, and its exit aborts any process still working (e.g. still writing).
        multihost_utils.sync_global_devices("nin_jax.main: done")
    except errors.Stopped:  # Every process stops at the same step: they leave together too.
        watchdog.close()
        jax.distributed.shutdown()
        raise
    finally:  # Also on an error: the others must not take this exit for a loss.
        watchdog.close()
    jax.distributed.shutdown()


if __name__ == "__main__":
    cli.run(main)
