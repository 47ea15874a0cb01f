"""Command line entry point: parses flags and calls ``train.train_and_evaluate``.

  python -m nin_jax.main --config=configs/svhn.py --workdir=/tmp/nin_svhn \\
      [--config.batch_size=64 ...]
"""

import logging as std_logging
import sys

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from nin_jax import input_pipeline, train

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
    "config", None, "Training configuration file (configs/*.py).", lock_config=True
)
flags.DEFINE_string("workdir", None, "Directory for checkpoints and results.")
flags.mark_flags_as_required(["config", "workdir"])

# Errors a user can fix from the command line: reported as one line, exit code 2.
USER_ERRORS = (input_pipeline.DatasetError, train.TrainingError, ValueError)


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


def quiet_library_logs() -> None:
    """Keeps Orbax's per-save INFO chatter out of the training log (warnings still show)."""
    logging.get_absl_handler().addFilter(
        lambda record: record.levelno >= std_logging.WARNING or "/orbax/" not in record.pathname
    )


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    quiet_library_logs()
    try:
        config = FLAGS.config
        config.to_dict()  # ml_collections defers config-file load errors to first use.
    except OSError as e:
        fail_config_file(e)
    try:
        _, results = train.train_and_evaluate(config, FLAGS.workdir)
    except USER_ERRORS as e:
        logging.flush()
        fail(str(e))
    if jax.process_index() == 0:
        print(
            f"{config.dataset}: test accuracy {results['test_accuracy']:.2%} "
            f"(error {results['test_error']:.2%}) at step {results['step']}; "
            f"results in {FLAGS.workdir}/results.json"
        )


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
