"""docs/TPU.md's planning table: every recipe at its own batch on several Cloud TPU slices.

  python benchmarks/tpu_plan.py                 # compile what is missing, then write the table
  python benchmarks/tpu_plan.py --force         # compile everything again (after a change)
  python benchmarks/tpu_plan.py --render_only   # rewrite the table from the saved results

Runs ``python -m nin_jax.aot --config=configs/RECIPE.py --topology=SLICE`` for each
recipe of configs/ and each slice (``--topologies``), one process each, and keeps
each JSON line in ``--results`` (benchmarks/tpu_plan.jsonl), so an interrupted run
resumes where it stopped (JAX's compilation cache cannot help: it does not read
back executables compiled for compile-only TPU devices). Then replaces the part
of docs/TPU.md between the ``<!-- tpu_plan -->`` markers with the table. Needs
libtpu (``pip install -e '.[tpu]'``); each full-size step takes a minute or more
to compile on 2 cores.
"""

import argparse
import json
import pathlib
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parent.parent
TOPOLOGIES = ("v5e-8", "v4-8", "v5p-8", "v6e-8", "v4-32")
BEGIN, END = "<!-- tpu_plan -->", "<!-- /tpu_plan -->"


def recipes() -> list[str]:
    files = (REPO / "nin_jax" / "configs").glob("*.py")
    return sorted(p.stem for p in files if p.stem != "__init__")


def read_results(path: pathlib.Path) -> dict[tuple[str, str], dict]:
    """(recipe, topology as given) -> the aot JSON line, the last one kept."""
    results = {}
    if path.exists():
        for line in path.read_text().splitlines():
            if line.strip():
                record = json.loads(line)
                results[(record["recipe"], record["requested_topology"])] = record
    return results


def compile_one(recipe: str, topology: str) -> dict:
    command = [
        sys.executable, "-m", "nin_jax.aot", f"--config=configs/{recipe}.py",
        f"--topology={topology}",
    ]  # fmt: skip
    out = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    lines = out.stdout.strip().splitlines()
    if out.returncode not in (0, 2) or not lines or not lines[-1].startswith("{"):
        raise RuntimeError(f"{' '.join(command)} failed ({out.returncode}):\n{out.stderr[-3000:]}")
    return {"recipe": recipe, "requested_topology": topology, **json.loads(lines[-1])}


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.0f} s"


def _mib(value: int | None) -> str:
    return "-" if value is None else f"{value / 2**20:,.0f}"


def table(results: dict[tuple[str, str], dict], topologies: list[str]) -> str:
    """The markdown table of the results, recipes in order, slices in ``topologies``' order."""
    rows = [
        "| recipe | slice | batch / chip | fits | HBM / chip, MiB (train, eval) | bound "
        "| GFLOP / image (train) | MB / image (train) | train images/s per chip "
        "| images/s, slice | whole recipe, at least |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    versions = set()
    for recipe in recipes():
        for topology in topologies:
            record = results.get((recipe, topology))
            if record is None:
                continue
            versions.add(", ".join(f"{k} {v}" for k, v in record["estimates_by"].items()))
            train, evaluate = record["train"], record["eval"] or {}
            analysed = "flops_per_image" in train
            cells = [
                recipe,
                f"{record['topology']} ({record['chips']} chips)",
                str(record["batch_per_chip"]),
                "yes" if record["fits"] else "**no**",
                f"{_mib(train['hbm_bytes_per_chip'])}, {_mib(evaluate.get('hbm_bytes_per_chip'))}",
                train.get("bound", "-"),
                f"{train['flops_per_image'] / 1e9:.3f}" if analysed else "-",
                f"{train['bytes_per_image'] / 1e6:.1f}" if analysed else "-",
                f"{train['images_per_sec_per_chip']:,.0f}" if analysed else "-",
                f"{train['images_per_sec']:,.0f}" if analysed else "-",
                _duration(record["schedule"]["roofline_seconds"]),
            ]
            rows.append("| " + " | ".join(cells) + " |")
    made_by = "; ".join(sorted(versions)) or "-"
    return "\n".join([f"Compiler estimates made by {made_by}.", "", *rows])


def render(doc: pathlib.Path, text: str) -> None:
    content = doc.read_text()
    head, rest = content.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    doc.write_text(f"{head}{BEGIN}\n{text}\n{END}{tail}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipes", nargs="*", default=recipes())
    parser.add_argument("--topologies", nargs="*", default=list(TOPOLOGIES))
    parser.add_argument("--results", type=pathlib.Path, default=REPO / "benchmarks/tpu_plan.jsonl")
    parser.add_argument("--doc", type=pathlib.Path, default=REPO / "docs/TPU.md")
    parser.add_argument("--force", action="store_true", help="compile what is saved again")
    parser.add_argument("--render_only", action="store_true")
    args = parser.parse_args()
    results = read_results(args.results)
    if not args.render_only:
        for recipe in args.recipes:
            for topology in args.topologies:
                if (recipe, topology) in results and not args.force:
                    continue
                record = compile_one(recipe, topology)
                results[(recipe, topology)] = record
                with args.results.open("a") as f:
                    f.write(json.dumps(record) + "\n")
                print(f"{recipe} on {topology}: fits {record['fits']}", flush=True)
    render(args.doc, table(results, args.topologies))


if __name__ == "__main__":
    main()
