"""The project's exception types and exit codes.

``nin_jax.cli`` prints the message of any ``NinError`` as ``error: <message>``
and exits with code 2. Anything else is a bug and keeps its traceback. Each
error is raised where the problem is found, with a message that names the file
or field and says what to do.
"""

import signal

EXIT_CODE_USER_ERROR = 2
EXIT_CODE_PREEMPTED = 128 + signal.SIGTERM  # 143: what schedulers read as "terminated".
EXIT_CODE_INTERRUPTED = 128 + signal.SIGINT  # 130: the shell's code for Ctrl-C.
# Another process of a multi-process run was lost (nin_jax/peers.py); 75 is sysexits.h's
# EX_TEMPFAIL, "a temporary failure: retry", as rerunning the same command resumes the run.
EXIT_CODE_PROCESS_LOST = 75


class NinError(Exception):
    """A problem with the user's input, files or environment; the message says what to do."""


class ConfigError(NinError):
    """A config field has a value nin_jax cannot use."""


class DatasetError(NinError):
    """The dataset cannot be used as configured (unknown, unprepared, bad split)."""


class WorkdirError(NinError):
    """The workdir lacks what is asked for, holds another model, or is not writable."""


class WorkdirBusyError(WorkdirError):
    """Another run holds the workdir's lock."""


class FileDamagedError(NinError):
    """A file nin_jax reads is truncated, corrupt or of another kind."""


class StorageError(NinError):
    """A bucket did not answer (429, 5xx, dropped connections) through every retry: the
    files are left alone, as nothing says they are damaged; the same command works once
    it answers."""


class OutputError(NinError):
    """An output file or directory cannot be created where the command was asked to write it."""


class ImageError(NinError):
    """A file given as an image cannot be used as one."""


class TrainingError(NinError):
    """Training cannot go on (e.g. the loss became NaN); the message says why."""


class Stopped(Exception):
    """A run stopped by a signal after saving a checkpoint; not an error (exit 143 or 130)."""

    def __init__(self, message: str, exit_code: int, step: int):
        super().__init__(message)
        self.exit_code = exit_code
        self.step = step
