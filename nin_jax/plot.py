"""Training and evaluation curves of a workdir, from its metrics.jsonl, as one PNG.

python -m nin_jax.plot --workdir=/tmp/nin_digits [--output=curves.png]
"""

import argparse
import json
import os

import numpy as np

from nin_jax import restore

FIGSIZE = (10.0, 7.0)  # inches; with DPI this fixes the PNG's pixel size.
DPI = 100


def read_metrics(path: str) -> dict[str, dict[int, dict[str, float]]]:
    """{split: {step: scalars}}; a step logged twice (a resumed run) keeps its last record."""
    if not os.path.exists(path):
        raise restore.WorkdirError(f"{path} is missing: train first (python -m nin_jax.main)")
    curves: dict[str, dict[int, dict[str, float]]] = {}
    with open(path) as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                curves.setdefault(record.pop("split"), {})[int(record.pop("step"))] = record
            except (json.JSONDecodeError, KeyError, TypeError, ValueError):
                raise restore.WorkdirError(f"{path}:{number} is not a metrics record") from None
    if not curves:
        raise restore.WorkdirError(f"{path} holds no metrics yet")
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
    fig.savefig(output, dpi=DPI)
    plt.close(fig)


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m nin_jax.plot", description=__doc__)
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--output", help="PNG path (default: WORKDIR/curves.png)")
    args = parser.parse_args(argv)
    output = args.output or os.path.join(args.workdir, "curves.png")
    curves = read_metrics(os.path.join(args.workdir, "metrics.jsonl"))
    config = restore.load_config(args.workdir)
    render(curves, f"NIN on {config.dataset} ({args.workdir})", output)
    print(f"wrote {output}")


if __name__ == "__main__":
    restore.run_tool(main)
