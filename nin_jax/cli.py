"""What every nin_jax command shares: absl flags, one-line errors, exit codes.

``run(main)`` runs an absl ``main``; a ``NinError`` (a problem the user can
fix) becomes one ``error: ...`` line on stderr and exit code 2, a stopped run
(SIGTERM, Ctrl-C) exits 143 or 130 after saying where its checkpoint is, and
anything else is a bug and keeps its traceback. ``--config`` overrides are
checked in the same way (an unknown field is named with the closest known one),
and ``--config.FIELD=None`` unsets an optional field (one declared with
``ml_collections.config_dict.placeholder``). ``--help``/``--helpshort`` exit 0.
On a machine with libtpu but no TPU, JAX runs on the CPU without starting libtpu
(``tpu_slices.skip_absent_tpu``).

Once the command is done, the process ends without tearing down its modules:
Python's clean-up of TensorFlow's and JAX's module trees takes seconds (up to
tens of seconds on a loaded machine) and has nothing left to save by then.
"""

import atexit
import difflib
import functools
import logging as std_logging
import os
import sys
from collections.abc import Callable

from absl import app, flags
from ml_collections import config_dict

from nin_jax import errors, retries, tpu_slices

_UNSET = "None"
_HELP_FLAGS = ("help", "?", "helpshort", "helpfull", "helpxml")


def fail(message: str) -> None:
    """Prints ``error: message`` and exits with code 2."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(errors.EXIT_CODE_USER_ERROR)


def _config_load_reason(error: Exception) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[-1] if lines else type(error).__name__


def _config_field_error(error: Exception) -> str:
    """The message for ml_collections' AttributeError or KeyError, which also come from a
    config file cut short or of another kind (no get_config, or one that returns None)."""
    if getattr(error, "name", None) == "get_config":
        return "cannot load the config file: it defines no get_config() (see configs/*.py)"
    if "NoneType" in str(error):
        return "cannot load the config file: its get_config() returned None (cut short?)"
    while error.args and isinstance(error.args[0], BaseException):  # AttributeError(KeyError)
        error = error.args[0]
    text = error.args[0] if error.args and isinstance(error.args[0], str) else str(error)
    field = text.splitlines()[0].strip("'\"") if text.strip() else type(error).__name__
    return f"unknown config field {field}; see nin_jax/configs/default.py for the fields"


def unknown_field(config: config_dict.ConfigDict, dotted: str) -> str | None:
    """What is wrong with the config field path ``dotted`` ('model.dropout'), or None if
    ``config`` has that field: the first unknown part, with the closest known field."""
    node, path = config, "config"
    for key in dotted.split("."):
        if not isinstance(node, config_dict.ConfigDict):
            return f"{path} is a single value, not a group of fields: no field {path}.{key}"
        if key not in node:
            close = difflib.get_close_matches(key, list(node.keys()), n=1)
            hint = f"; did you mean {path}.{close[0]}?" if close else ""
            return f"unknown config field {path}.{key}{hint} (see nin_jax/configs/default.py)"
        node, path = node[key], f"{path}.{key}"
    return None


def _override_fields(argv: list[str]) -> list[str]:
    """The FIELD of every ``--config.FIELD[=VALUE]`` in ``argv``."""
    names = [arg.partition("=")[0] for arg in argv]
    return [name.removeprefix("--config.") for name in names if name.startswith("--config.")]


def _config_path(argv: list[str]) -> str | None:
    """The value of ``--config`` in ``argv``."""
    for arg, following in zip(argv, [*argv[1:], None], strict=True):
        if arg.startswith("--config="):
            return arg.removeprefix("--config=")
        if arg == "--config":
            return following
    return None


def _first_unknown_field(argv: list[str]) -> str | None:
    """The message for the first override of ``argv`` that names no field of its config
    file's config (None if that does not load, or every override names a field).

    ml_collections applies the overrides while it loads the file, so after a failed
    override the flag holds no config: the file is loaded again, without them.
    """
    path = _config_path(argv)
    if path is None or "config" not in flags.FLAGS:
        return None
    try:
        config = flags.FLAGS["config"].parser.parse(path)
    except Exception:  # The file itself fails to load: reported as such.
        return None
    if not isinstance(config, config_dict.ConfigDict):
        return None
    for dotted in _override_fields(argv):
        problem = unknown_field(config, dotted)
        if problem:
            return problem
    return None


def _split_unset_overrides(argv: list[str]) -> tuple[list[str], list[str]]:
    """(argv without ``--config.FIELD=None``, those FIELDs): ml_collections would parse
    'None' as a number or a string."""
    kept, unset = [], []
    for arg in argv:
        name, _, value = arg.partition("=")
        if name.startswith("--config.") and value == _UNSET:
            unset.append(name.removeprefix("--config."))
        else:
            kept.append(arg)
    return kept, unset


def _unset(config: config_dict.ConfigDict, dotted: str) -> None:
    problem = unknown_field(config, dotted)
    if problem:
        raise errors.ConfigError(problem)
    *parents, leaf = dotted.split(".")
    for parent in parents:
        config = config[parent]
    field = config._fields.get(leaf)  # noqa: SLF001  (ml_collections has no public test)
    if not isinstance(field, config_dict.FieldReference):
        raise errors.ConfigError(
            f"--config.{dotted}=None: config.{dotted} is not an optional field "
            "(only fields declared with placeholder() in nin_jax/configs/default.py can be None)"
        )
    with config.unlocked():
        setattr(config, leaf, None)


def parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parser, with flag and config-override mistakes as one line."""
    given = argv
    argv, unset = _split_unset_overrides(argv)
    try:
        try:
            remaining = flags.FLAGS(argv)
        except SystemExit as e:  # absl exits 1 after printing the help it was asked for.
            if e.code == 1 and _asks_for_help(argv):
                sys.exit(0)
            raise
        config = flags.FLAGS["config"].value if "config" in flags.FLAGS else None
        if config is not None:
            config.to_dict()  # ml_collections defers config-file load errors to first use.
            for dotted in unset:
                _unset(config, dotted)
        elif unset:
            fail(f"--config.{unset[0]}=None needs --config")
    except flags.Error as e:  # Also what absl makes of some unknown config fields.
        fail(_first_unknown_field(given) or f"{e} (--helpshort lists the flags)")
    except (AttributeError, KeyError) as e:  # ml_collections: no such config field.
        fail(_first_unknown_field(given) or _config_field_error(e))
    except (OSError, SyntaxError, ImportError, NameError) as e:  # The config file cannot be loaded.
        fail(f"cannot load the config file: {_config_load_reason(e)}")
    except errors.NinError as e:
        fail(str(e))
    return remaining


def _asks_for_help(argv: list[str]) -> bool:
    return any(arg.lstrip("-").partition("=")[0] in _HELP_FLAGS for arg in argv[1:])


def _guarded(
    main: Callable[[list[str]], None], positional: bool, quiet: bool, argv: list[str]
) -> None:
    if len(argv) > 1 and not positional:
        fail(f"unexpected arguments: {' '.join(argv[1:])}")
    from absl import logging

    if quiet:
        logging.set_verbosity(logging.ERROR)
    logging.get_absl_handler().addFilter(_not_library_info)
    try:
        main(argv)
    except errors.NinError as e:
        _flush_logs()
        fail(str(e))
    except errors.Stopped as e:
        _flush_logs()
        print(str(e), file=sys.stderr)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:  # Ctrl-C outside training (which saves and stops instead).
        _flush_logs()
        print("interrupted (Ctrl-C): stopped without saving", file=sys.stderr)
        sys.exit(errors.EXIT_CODE_INTERRUPTED)


def _not_library_info(record: std_logging.LogRecord) -> bool:
    """Keeps Orbax's INFO chatter (several lines per checkpoint saved or read) out of the
    log; its warnings and errors still show."""
    return record.levelno >= std_logging.WARNING or "/orbax/" not in record.pathname


def _flush_logs() -> None:
    from absl import logging

    logging.flush()


def run(main: Callable[[list[str]], None], positional: bool = False, quiet: bool = False) -> None:
    """Runs an absl ``main`` with the project's flag parsing, errors and exit codes.

    ``positional``: whether ``main`` takes arguments besides the flags (e.g. file
    names). ``quiet``: log errors only (the tools, whose output is their result).
    """
    atexit.register(_skip_module_teardown)  # Registered first: runs after all the others.
    tpu_slices.skip_absent_tpu()
    retries.configure(retries.budget_seconds)  # Before TensorFlow loads (nin_jax.retries).
    try:
        app.run(functools.partial(_guarded, main, positional, quiet), flags_parser=parse_flags)
    except SystemExit as e:
        _exit_code.append(e.code if isinstance(e.code, int) else 0 if e.code is None else 1)
        raise
    except Exception:  # A bug: Python prints its traceback and exits 1.
        _exit_code.append(1)
        raise


_exit_code: list[int] = []  # The exit code of the command ``run`` ran, once it ended.


def _skip_module_teardown() -> None:
    """The last ``atexit`` handler: ends the process before Python tears down its modules.

    By then a normal exit has joined the other threads and run every other handler
    (Orbax's, the JAX distributed runtime's); the logs and streams are flushed here.
    """
    if not _exit_code:
        return
    _flush_logs()
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os._exit(_exit_code[-1])
