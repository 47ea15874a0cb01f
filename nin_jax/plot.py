"""Training and evaluation curves of a workdir, from its metrics.jsonl, as one PNG.

python -m nin_jax.plot --workdir=/tmp/nin_digits [--output=curves.png]

A run of K models (config.num_models) gets one colour per model, from the
``model_<k>/<metric>`` records, beside the models' mean (training) and their
ensemble (evaluation) in black; swept learning rates show one curve per model.
"""

import json
import os
import sys
from typing import NamedTuple

import numpy as np
from absl import flags

from nin_jax import cli, reporting, storage
from nin_jax import workdir as workdir_lib
from nin_jax.errors import FileDamagedError, WorkdirError

FLAGS = flags.FLAGS

FIGSIZE = (10.0, 7.0)  # inches; with DPI this fixes the PNG's pixel size.
DPI = 100


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _parse_record(line: bytes) -> tuple[str, int, dict[str, float]] | None:
    """(split, step, numeric scalars) of one metrics.jsonl line; None if it is not a record."""
    try:
        record = json.loads(line)
    except ValueError:  # Not JSON, or not UTF-8: a line cut short or damaged.
        return None
    if not isinstance(record, dict):
        return None
    split, step = record.pop("split", None), record.pop("step", None)
    if not (isinstance(split, str) and isinstance(step, int) and not isinstance(step, bool)):
        return None
    return split, step, {k: v for k, v in record.items() if _is_number(v)}


def read_metrics(path: str) -> dict[str, dict[int, dict[str, float]]]:
    """{split: {step: scalars}}; a step logged twice (a resumed run) keeps its last record.

    Lines that are not records (one cut short by a crash in the middle of a write, and
    the next run's first record appended to it) are skipped with a one-line warning on
    stderr; a file with no record at all is an error.
    """
    try:
        lines = storage.read_bytes(path).splitlines()
    except FileNotFoundError:
        raise WorkdirError(f"{path} is missing: train first (python -m nin_jax.main)") from None
    except OSError as e:  # A directory in its place, no permission, ...
        raise WorkdirError(f"cannot read {path}: {e.strerror or e}") from None
    curves: dict[str, dict[int, dict[str, float]]] = {}
    skipped = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        record = _parse_record(line)
        if record is None:
            skipped.append(number)
            continue
        split, step, scalars = record
        curves.setdefault(split, {})[step] = scalars
    if not curves and not skipped:
        raise WorkdirError(f"{path} holds no metrics yet")
    if not curves:
        raise FileDamagedError(
            f"{path} is damaged (none of its lines is a metrics record); restore it from a "
            "copy, or see the same metrics with `tensorboard --logdir` on the workdir"
        )
    if skipped:
        print(
            f"warning: {path}: skipped {len(skipped)} line(s) that are not metrics records "
            f"(first: line {skipped[0]}; a write cut short?)",
            file=sys.stderr,
        )
    return curves


def series(curve: dict[int, dict[str, float]], key: str) -> tuple[np.ndarray, np.ndarray]:
    steps = np.array(sorted(s for s, r in curve.items() if key in r))
    return steps, np.array([curve[s][key] for s in steps], np.float64)


class Line(NamedTuple):
    """One curve of a panel: ``model`` k's, or (None) the run's own, mean or ensemble."""

    label: str
    split: str  # 'train' or 'eval'
    model: int | None
    steps: np.ndarray
    values: np.ndarray


def num_models(curves: dict[str, dict[int, dict[str, float]]]) -> int:
    """K of a K-model run (its records have ``model_<k>/loss``); 1 otherwise."""
    keys = {key for curve in curves.values() for record in curve.values() for key in record}
    count = 0
    while f"model_{count}/loss" in keys:
        count += 1
    return max(count, 1)


def panel_lines(
    curves: dict[str, dict[int, dict[str, float]]], key: str, splits=("train", "eval")
) -> list[Line]:
    """The curves of ``key`` in ``splits``: per model when the records have them, then the
    run's own (for K models: the mean over the models, or the ensemble's evaluation).
    A per-model learning rate (a sweep) replaces the mean, which no model followed."""
    count = num_models(curves)
    lines = []
    for split in splits:
        curve = curves.get(split, {})
        per_model = [series(curve, f"model_{k}/{key}") for k in range(count)] if count > 1 else []
        for k, (steps, values) in enumerate(per_model):
            if len(steps):
                lines.append(Line(f"model {k} {split}", split, k, steps, values))
        if key == "learning_rate" and any(len(steps) for steps, _ in per_model):
            continue
        steps, values = series(curve, key)
        if len(steps):
            own = {"train": "mean", "eval": "ensemble"}[split] if count > 1 else split
            lines.append(Line(own, split, None, steps, values))
    return lines


def _draw(ax, lines: list[Line], scale: float = 1.0, styles=None) -> None:
    """``lines`` on ``ax``: a colour per model (the run's own curves black when there are
    models), a style per split (or per line, ``styles``)."""
    for index, line in enumerate(lines):
        style = styles[index] if styles else ("o-" if line.split == "eval" else "-")
        if line.model is not None:
            color = f"C{line.model % 10}"
        else:
            color = "black" if any(other.model is not None for other in lines) else None
        ax.plot(
            line.steps, line.values * scale, style, label=line.label, color=color,
            markersize=3, linewidth=1.0 if line.model is not None else 1.5,
        )  # fmt: skip


def _norm_label(label: str, name: str) -> str:
    """'train' -> 'grad norm', 'model 0 train' -> 'model 0 grad norm', 'mean' -> 'mean ...'."""
    return label.replace("train", name) if "train" in label else f"{label} {name}"


def render(curves: dict[str, dict[int, dict[str, float]]], title: str, output: str) -> None:
    """Loss, error, learning rate and norms against the step, in a 2x2 grid."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    evaluation = curves.get("eval", {})
    count = num_models(curves)
    legend = {"fontsize": 7 if count > 1 else None, "ncol": 2 if count > 2 else 1}
    fig, axes = plt.subplots(2, 2, figsize=FIGSIZE, dpi=DPI)
    panels = [
        (axes[0, 0], "loss", "cross-entropy loss", 1.0),
        (axes[0, 1], "error", "error (%)", 100.0),
    ]
    for ax, key, label, scale in panels:
        _draw(ax, panel_lines(curves, key), scale)
        ax.set_ylabel(label)
        ax.legend(**legend)
    rates = panel_lines(curves, "learning_rate", splits=("train",))
    _draw(axes[1, 0], rates)
    if len(rates) > 1:
        axes[1, 0].legend(**legend)
    axes[1, 0].set_ylabel("learning rate")
    for key, style in (("grad_norm", "-"), ("param_norm", "--")):
        name = key.replace("_", " ")
        lines = panel_lines(curves, key, splits=("train",))
        named = [line._replace(label=_norm_label(line.label, name)) for line in lines]
        _draw(axes[1, 1], named, styles=[style] * len(named))
    axes[1, 1].set_yscale("log")
    axes[1, 1].set_ylabel("global L2 norm")
    axes[1, 1].legend(**legend)
    for ax in axes.flat:
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    if evaluation:
        last = max(evaluation)
        which = "ensemble eval error" if count > 1 else "eval error"
        title += f"  ({which} {100 * evaluation[last]['error']:.2f}% at step {last})"
    fig.suptitle(title)
    fig.tight_layout()
    storage.write_figure(fig, output, DPI)
    plt.close(fig)


def define_flags() -> None:
    flags.DEFINE_string("workdir", None, "The training run's workdir.", required=True)
    flags.DEFINE_string("output", None, "PNG path (default: WORKDIR/curves.png).")


def run(workdir: str, output: str | None = None) -> str:
    """Draws ``workdir``'s curves; returns the PNG's path (default: WORKDIR/curves.png)."""
    curves = read_metrics(os.path.join(workdir, reporting.METRICS_FILE))
    config = workdir_lib.load_config(workdir)
    output = storage.output_file(output or os.path.join(workdir, "curves.png"))
    render(curves, f"NIN on {config.dataset} ({workdir})", output)
    return output


def main(argv: list[str]) -> None:
    print(f"wrote {run(FLAGS.workdir, FLAGS.output)}")


if __name__ == "__main__":
    define_flags()
    cli.run(main, quiet=True)
