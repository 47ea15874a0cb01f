"""Training progress on the console, metrics on disk (TensorBoard events and metrics.jsonl).

Only process 0 reports; on the others every method returns at once, so the
training loop calls the reporter unconditionally. Metrics reach the host only
at log points (the loop's ``jax.device_get``): between them the progress bar
advances on step counts alone and never waits for the device.
"""

import json
import os
import sys
import time
from collections.abc import Sequence
from typing import IO, Any

import jax
import numpy as np
from absl import logging

from nin_jax import storage

METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"
EVAL_SCALARS = ("loss", "accuracy", "error")
_BAR_WIDTH = 24
_REDRAW_SECONDS = 0.2


def format_duration(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def window_scalars(
    window: Sequence[dict[str, Any]],
    learning_rate: float | Sequence[float],
    images_per_sec: float,
    num_models: int = 1,
) -> dict[str, float]:
    """The train scalars of one log window: each scalar metric averaged over its steps
    (vector metrics, such as the per-class ones, are left to their consumers).

    With several models each metric has a leading model axis: model k's values go
    under ``model_<k>/<name>`` and their mean under ``<name>``; so does the learning
    rate when it is given per model (a sweep).
    """
    scalar_ndim = 0 if num_models == 1 else 1
    scalars = {}
    for key in window[0]:
        if np.ndim(window[0][key]) != scalar_ndim:
            continue
        values = np.mean([m[key] for m in window], axis=0)
        scalars[key] = float(np.mean(values))
        if num_models > 1:
            scalars.update({f"model_{k}/{key}": float(v) for k, v in enumerate(values)})
    if num_models > 1:
        for k in range(num_models):
            scalars[f"model_{k}/error"] = 1.0 - scalars[f"model_{k}/accuracy"]
    scalars["error"] = 1.0 - scalars["accuracy"]
    if np.ndim(learning_rate):
        scalars.update({f"model_{k}/learning_rate": float(r) for k, r in enumerate(learning_rate)})
    scalars["learning_rate"] = float(np.mean(learning_rate))
    scalars["images_per_sec"] = float(images_per_sec)
    return scalars


class MetricsWriter:
    """Scalars to TensorBoard (``workdir/tensorboard``, tags 'train/loss', ...) and metrics.jsonl.

    Every write is flushed, so the files are complete even if training stops
    with an error; ``metrics.jsonl`` is appended to across resumed runs (on GCS,
    rewritten whole at each write: ``storage.LineLog``).
    """

    def __init__(self, workdir: str):
        from clu import metric_writers  # Imports TensorFlow summaries: only where used.

        self._summary = metric_writers.SummaryWriter(os.path.join(workdir, TENSORBOARD_DIR))
        self._jsonl = storage.LineLog(os.path.join(workdir, METRICS_FILE))

    def write(self, split: str, step: int, scalars: dict[str, float]) -> None:
        record = {"split": split, "step": int(step), "time": round(time.time(), 3), **scalars}
        self._jsonl.write(json.dumps(record) + "\n")
        self._summary.write_scalars(step, {f"{split}/{k}": v for k, v in scalars.items()})
        self._summary.flush()

    def close(self) -> None:
        self._jsonl.close()
        self._summary.close()


class Reporter:
    """The training loop's one contact for progress and metrics.

    ``tick`` after every step (progress bar in a terminal), ``train`` at log
    points, ``eval`` after each evaluation, ``close`` at the end. Images/s and
    ETA count training time only: evaluations and the first step's compilation
    are left out.
    """

    def __init__(
        self,
        workdir: str,
        *,
        total_steps: int,
        steps_per_epoch: int,
        batch_size: int,
        start_step: int,
        num_models: int = 1,
        stream: IO[str] | None = None,
    ):
        self.active = jax.process_index() == 0
        self._stream = stream if stream is not None else sys.stderr
        self._bar = self.active and self._stream.isatty()
        self._writer = MetricsWriter(workdir) if self.active else None
        self._total, self._per_epoch, self._batch = total_steps, steps_per_epoch, batch_size
        self._num_models = num_models
        self._step = start_step
        now = time.perf_counter()
        self._window_start = self._synced = now
        self._last_tick: float | None = None
        self._last_draw = -float("inf")
        self._excluded = 0.0  # Seconds of evaluation inside the current window.
        self._train_seconds, self._steps_timed = 0.0, 0
        self._latest: dict[str, float] = {}

    @property
    def timing(self) -> tuple[int, float]:
        """(steps, seconds) of training timed so far, up to the last log point: without the
        first step's compilation and without evaluations ((0, 0.0) off process 0)."""
        return self._steps_timed, self._train_seconds

    def _eta(self) -> str:
        if not self._steps_timed:
            return "?"
        return format_duration((self._total - self._step) * self._train_seconds / self._steps_timed)

    def _clear_bar(self) -> None:
        if self._bar:
            self._stream.write("\r\033[K")
            self._stream.flush()

    def tick(self, step: int) -> None:
        """After every step: redraws the progress bar (terminal only, at most 5 times/s)."""
        now = time.perf_counter()
        if self._last_tick is None:  # The first step's jit compilation is not training time.
            self._excluded += now - self._window_start
        self._step, self._last_tick = step, now
        if not self._bar or (now - self._last_draw < _REDRAW_SECONDS and step < self._total):
            return
        self._last_draw = now
        filled = int(_BAR_WIDTH * step / max(1, self._total))
        latest = self._latest
        metrics = (
            f" loss {latest['loss']:.4f} acc {latest['accuracy']:.4f} "
            f"lr {latest['learning_rate']:.3g} {latest['images_per_sec']:.0f} img/s"
            if latest
            else ""
        )
        self._stream.write(
            f"\r\033[K[{'#' * filled}{'.' * (_BAR_WIDTH - filled)}] "
            f"epoch {step / self._per_epoch:.2f} step {step}/{self._total}{metrics} "
            f"ETA {self._eta()}"
        )
        self._stream.flush()

    def train(
        self,
        step: int,
        window: Sequence[dict[str, Any]],
        learning_rate: float | Sequence[float],
    ) -> None:
        """At a log point, with the window's per-step metrics already on the host, and the
        learning rate of its last step (one per model when the models' rates differ)."""
        if not self.active or not window:
            return
        self._synced = now = time.perf_counter()
        seconds = max(now - self._window_start - self._excluded, 1e-9)
        self._train_seconds += seconds
        self._steps_timed += len(window)
        self._window_start, self._excluded = now, 0.0
        images_per_sec = len(window) * self._batch / seconds
        scalars = window_scalars(window, learning_rate, images_per_sec, self._num_models)
        self._latest = scalars
        self._writer.write("train", step, scalars)
        self._clear_bar()
        logging.info(
            "epoch %.2f step %d/%d: loss %.4f accuracy %.4f lr %.4g, %.1f images/s, ETA %s",
            step / self._per_epoch, step, self._total, scalars["loss"], scalars["accuracy"],
            scalars["learning_rate"], scalars["images_per_sec"], self._eta(),
        )  # fmt: skip

    def eval(self, step: int, metrics: dict[str, Any]) -> None:
        """After an evaluation; its duration is left out of images/s and ETA."""
        if not self.active:
            return
        now = time.perf_counter()
        self._excluded += now - max(self._last_tick or now, self._synced)
        scalars = {k: float(metrics[k]) for k in EVAL_SCALARS}
        for index, model in enumerate(metrics.get("models", [])):
            scalars.update({f"model_{index}/{k}": float(model[k]) for k in EVAL_SCALARS})
        self._writer.write("eval", step, scalars)
        self._clear_bar()
        logging.info(
            "step %d eval: loss %.4f accuracy %.4f error %.4f (%d examples)",
            step, metrics["loss"], metrics["accuracy"], metrics["error"], metrics["examples"],
        )  # fmt: skip

    def close(self) -> None:
        if self.active and self._writer is not None:
            self._clear_bar()
            self._writer.close()
            self._writer = None

    def __enter__(self) -> "Reporter":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()
