"""Command line entry point: parses flags and calls ``train.train_and_evaluate``.

  python -m nin_jax.main --config=configs/svhn.py --workdir=/tmp/nin_svhn \\
      [--config.batch_size=64 ...]

Several hosts: the same command on every host, plus ``--distributed`` (Cloud TPU
pod slices, SLURM, Open MPI, Kubernetes: JAX finds the other processes) or
``--coordinator_address=HOST:PORT --num_processes=N --process_id=I``.
Exit codes: 0 done, 2 bad input, 143 stopped on SIGTERM after saving a checkpoint.
"""

import logging as std_logging
import sys

from absl import app, flags, logging
from ml_collections import config_flags

# JAX, TensorFlow and Orbax take seconds to import: ``main`` imports them once the
# command line has been checked, so that a mistake in it is reported at once.

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
flags.mark_flags_as_required(["config", "workdir"])


def parse_flags(argv: list[str]) -> list[str]:
    """absl's parser, with config-override mistakes reported in one line instead of a traceback."""
    try:
        return FLAGS(argv)
    except flags.Error as e:
        fail(f"{e}\nPass --helpshort to see the flags.")
    except (AttributeError, KeyError) as e:  # ml_collections: no such config field.
        field = str(e).strip("'\"")
        fail(
            f"unknown config field {field!r} in an override; see configs/default.py for the fields"
        )
    except OSError as e:  # ml_collections: the config file cannot be loaded.
        fail_config_file(e)


def fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def fail_config_file(error: OSError) -> None:
    reason = [line.strip() for line in str(error).splitlines() if line.strip()][-1]
    fail(f"cannot load the config file: {reason}")


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
        fail(f"--{next(iter(given))} needs --coordinator_address (or use --distributed alone)")
    if FLAGS.process_id is not None and FLAGS.num_processes is not None:
        if FLAGS.process_id >= FLAGS.num_processes:
            fail(f"--process_id={FLAGS.process_id} must be below --num_processes")
    return given


def initialize_distributed(arguments: dict) -> None:
    """Joins the JAX distributed runtime; must come before any other JAX call."""
    import jax

    try:
        jax.distributed.initialize(**arguments)
    except (ValueError, RuntimeError) as e:
        fail(f"cannot start the JAX distributed runtime: {e}")
    if jax.process_index() != 0:  # One log for the whole run: process 0's.
        logging.set_verbosity(logging.WARNING)


def quiet_library_logs() -> None:
    """Keeps Orbax's per-save INFO chatter out of the training log (warnings still show)."""
    logging.get_absl_handler().addFilter(
        lambda record: record.levelno >= std_logging.WARNING or "/orbax/" not in record.pathname
    )


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    distributed = distributed_arguments()
    try:
        config = FLAGS.config
        config.to_dict()  # ml_collections defers config-file load errors to first use.
    except OSError as e:
        fail_config_file(e)
    if distributed is not None:
        initialize_distributed(distributed)
    quiet_library_logs()

    import jax

    from nin_jax import input_pipeline, preemption, train

    # Errors a user can fix from the command line: reported as one line, exit code 2.
    user_errors = (input_pipeline.DatasetError, train.TrainingError, ValueError)
    try:
        _, results = train.train_and_evaluate(config, FLAGS.workdir)
    except user_errors as e:
        logging.flush()
        fail(str(e))
    except preemption.Preempted as e:
        logging.flush()
        print(f"preempted: {e}", file=sys.stderr)
        sys.exit(preemption.EXIT_CODE_PREEMPTED)
    if jax.process_index() == 0:
        print(
            f"{config.dataset}: test accuracy {results['test_accuracy']:.2%} "
            f"(error {results['test_error']:.2%}) at step {results['step']}; "
            f"results in {FLAGS.workdir}/results.json"
        )


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
