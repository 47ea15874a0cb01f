"""What every nin_jax command shares: absl flags, one-line errors, exit codes.

``run(main)`` runs an absl ``main``; a ``NinError`` (a problem the user can
fix) becomes one ``error: ...`` line on stderr and exit code 2, a stopped run
(SIGTERM, Ctrl-C) exits 143 or 130 after saying where its checkpoint is, and
anything else is a bug and keeps its traceback. ``--config`` overrides are
checked in the same way, and ``--config.FIELD=None`` unsets an optional field
(one declared with ``ml_collections.config_dict.placeholder``). On a machine
with libtpu but no TPU, JAX runs on the CPU without starting libtpu
(``tpu_slices.skip_absent_tpu``).
"""

import functools
import sys
from collections.abc import Callable

from absl import app, flags
from ml_collections import config_dict

from nin_jax import errors, tpu_slices

_UNSET = "None"


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
    field = str(error).strip("'\"")
    return f"unknown config field {field!r}; see nin_jax/configs/default.py for the fields"


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
    argv, unset = _split_unset_overrides(argv)
    try:
        remaining = flags.FLAGS(argv)
        config = flags.FLAGS["config"].value if "config" in flags.FLAGS else None
        if config is not None:
            config.to_dict()  # ml_collections defers config-file load errors to first use.
            for dotted in unset:
                _unset(config, dotted)
        elif unset:
            fail(f"--config.{unset[0]}=None needs --config")
    except flags.Error as e:
        fail(f"{e} (--helpshort lists the flags)")
    except (AttributeError, KeyError) as e:  # ml_collections: no such config field.
        fail(_config_field_error(e))
    except (OSError, SyntaxError, ImportError, NameError) as e:  # The config file cannot be loaded.
        fail(f"cannot load the config file: {_config_load_reason(e)}")
    except errors.NinError as e:
        fail(str(e))
    return remaining


def _guarded(
    main: Callable[[list[str]], None], positional: bool, quiet: bool, argv: list[str]
) -> None:
    if len(argv) > 1 and not positional:
        fail(f"unexpected arguments: {' '.join(argv[1:])}")
    if quiet:
        from absl import logging

        logging.set_verbosity(logging.ERROR)
    try:
        main(argv)
    except errors.NinError as e:
        _flush_logs()
        fail(str(e))
    except errors.Stopped as e:
        _flush_logs()
        print(str(e), file=sys.stderr)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:  # The second Ctrl-C: stop at once.
        _flush_logs()
        print("interrupted again: stopped without saving", file=sys.stderr)
        sys.exit(errors.EXIT_CODE_INTERRUPTED)


def _flush_logs() -> None:
    from absl import logging

    logging.flush()


def run(main: Callable[[list[str]], None], positional: bool = False, quiet: bool = False) -> None:
    """Runs an absl ``main`` with the project's flag parsing, errors and exit codes.

    ``positional``: whether ``main`` takes arguments besides the flags (e.g. file
    names). ``quiet``: log errors only (the tools, whose output is their result).
    """
    tpu_slices.skip_absent_tpu()
    app.run(functools.partial(_guarded, main, positional, quiet), flags_parser=parse_flags)
