"""Training and evaluation curves of a workdir, from its metrics.jsonl, as one PNG.

python -m nin_jax.plot --workdir=/tmp/nin_digits [--output=curves.png]
"""

import json
import os
import sys

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


def render(curves: dict[str, dict[int, dict[str, float]]], title: str, output: str) -> None:
    """Loss, error, learning rate and norms against the step, in a 2x2 grid."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    train, evaluation = curves.get("train", {}), curves.get("eval", {})
    fig, axes = plt.subplots(2, 2, figsize=FIGSIZE, dpi=DPI)
    panels = [
        (axes[0, 0], "loss", "cross-entropy loss", False),
        (axes[0, 1], "error", "error (%)", True),
    ]
    for ax, key, label, percent in panels:
        for name, curve, style in (("train", train, "-"), ("eval", evaluation, "o-")):
            steps, values = series(curve, key)
            if len(steps):
                ax.plot(steps, values * (100 if percent else 1), style, label=name, markersize=3)
        ax.set_ylabel(label)
        ax.legend()
    steps, lr = series(train, "learning_rate")
    axes[1, 0].plot(steps, lr)
    axes[1, 0].set_ylabel("learning rate")
    for key in ("grad_norm", "param_norm"):
        steps, values = series(train, key)
        axes[1, 1].plot(steps, values, label=key.replace("_", " "))
    axes[1, 1].set_yscale("log")
    axes[1, 1].set_ylabel("global L2 norm")
    axes[1, 1].legend()
    for ax in axes.flat:
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    if evaluation:
        last = max(evaluation)
        title += f"  (eval error {100 * evaluation[last]['error']:.2f}% at step {last})"
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
