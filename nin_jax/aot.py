"""Compile a config's train and eval steps for a Cloud TPU slice, on a machine without one.

  python -m nin_jax.aot --config=configs/svhn.py --topology=v5e-8 \\
      [--num_slices=N] [--max_batch] [--config.FIELD=...]

Says, per chip and for the slice, before the slice is rented: the HBM the steps
need (arguments, outputs, aliased, temporaries, generated code) against the
chip's usable HBM, FITS or DOES NOT FIT; FLOPs and HBM bytes per image of each
step; the roofline bound (compute or HBM bandwidth) in images/s; a lower bound
on the time of the config's whole schedule; the gradient all-reduce's bytes per
step. A readable table, then one JSON line. ``--max_batch`` bisects for the
largest global batch that fits. The steps are those ``nin_jax.train`` runs
(``nin_jax.programs``), compiled by libtpu (``pip install -e '.[tpu]'``) for
the slice's compile-only devices; the dataset need not be downloaded
(``nin_jax.datasets.catalog``). Figures are the compiler's estimates:
docs/TPU.md says how far they go.

Exit codes: 0 fits; 2 does not fit (after the table and the JSON line, one
``error:`` line on stderr) or bad input (one ``error:`` line).
"""

import json
import os
import sys

from absl import flags
from ml_collections import config_flags

from nin_jax import cli, config_validation, tpu_slices

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Training configuration file (configs/*.py).", lock_config=True
)
_TOPOLOGY = flags.DEFINE_string(
    "topology", None, "Cloud TPU accelerator type: v4-8, v5p-8, v5litepod-8 (or v5e-8), v6e-8, ..."
)
_NUM_SLICES = flags.DEFINE_integer(
    "num_slices", 1, "Slices of that type, data-parallel over the network (multislice).", 1
)
_MAX_BATCH = flags.DEFINE_bool(
    "max_batch", False, "Search for the largest global batch that fits (several compiles)."
)
flags.mark_flags_as_required(["config", "topology"])

_MIB = 2**20


def _mib(value: int | None) -> str:
    return "-" if value is None else f"{value / _MIB:,.1f}"


def _figure(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    for unit, size in (("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f} {unit}"
    return f"{seconds:.1f} s"


def step_record(plan, step) -> dict | None:
    """The JSON figures of one step of ``plan`` (None: not compiled)."""
    if step is None:
        return None
    record = {"hbm_bytes_per_chip": step.hbm_bytes, "compile_seconds": round(step.compile_seconds)}
    if step.analysis is None:
        record["out_of_memory"] = step.out_of_memory.message
        record["usable_hbm_bytes_stated"] = step.out_of_memory.available
        return record
    memory, costs, hlo = step.analysis.memory, step.analysis.costs, step.analysis.hlo
    roofline = plan.roofline(step)
    images = plan.config.batch_size
    record.update(
        hbm={
            "arguments": memory.arguments,
            "outputs": memory.outputs,
            "aliased": memory.aliased,
            "temporaries": memory.temporaries,
            "generated_code": memory.generated_code,
            "total": memory.total,
        },
        flops_per_chip=costs.flops,
        bytes_accessed_per_chip=costs.bytes_accessed,
        flops_per_image=plan.per_image(step, costs.flops),
        bytes_per_image=plan.per_image(step, costs.bytes_accessed),
        bound=roofline.bound,
        roofline_step_seconds=roofline.seconds,
        compute_seconds=roofline.compute_seconds,
        memory_seconds=roofline.memory_seconds,
        images_per_sec_per_chip=images / roofline.seconds / plan.chips,
        images_per_sec=images / roofline.seconds,
        xla_optimal_seconds=costs.optimal_seconds,
        all_reduce_bytes_per_chip=hlo.all_reduce_bytes,
        while_loops=list(hlo.while_loops),
        custom_calls=hlo.custom_calls,
        custom_call_bytes=hlo.custom_call_bytes,
        other_collectives=hlo.other_collectives,
    )
    return record


def record(plan, config_file: str, overrides: dict) -> dict:
    """The JSON line of ``plan``."""
    from nin_jax import planning

    config, chip = plan.config, plan.slice.chip
    return {
        "config": config_file,
        "overrides": {
            k: repr(v) if not isinstance(v, int | float | str) else v for k, v in overrides.items()
        },
        "topology": plan.slice.name,
        "num_slices": plan.num_slices,
        "chips": plan.chips,
        "hosts": plan.hosts,
        "mesh": plan.mesh_shape,
        "chip": {
            "generation": chip.generation,
            "bf16_tflops": chip.bf16_tflops,
            "hbm_gbps": chip.hbm_gbps,
            "hbm_gib": chip.hbm_gib,
            "usable_hbm_gib": chip.usable_hbm_gib,
        },
        "dataset": config.dataset,
        "batch_size": config.batch_size,
        "batch_per_chip": config.batch_size // plan.chips,
        "dtype": config.dtype,
        "conv_impl": plan.conv_impl,
        "num_models": config.num_models,
        "data_on_device": config.data_on_device,
        "fits": plan.fits,
        "train": step_record(plan, plan.train),
        "eval": step_record(plan, plan.eval),
        "schedule": {
            "total_steps": plan.schedule.total_steps,
            "steps_per_epoch": plan.schedule.steps_per_epoch,
            "evaluations": plan.evaluations,
            "eval_steps_each": plan.eval_batches,
            "roofline_seconds": plan.schedule_seconds(),
        },
        "estimates_by": planning.versions(),
    }


def caveats(plan) -> list[str]:
    """Where XLA's cost analysis is blind, for this plan's steps."""
    notes = []
    for name, step in (("train", plan.train), ("eval", plan.eval)):
        if step is None or step.analysis is None:
            continue
        hlo, costs = step.analysis.hlo, step.analysis.costs
        if hlo.while_loops:
            trips = ", ".join("?" if t is None else str(t) for t in hlo.while_loops)
            notes.append(
                f"{name}: {len(hlo.while_loops)} while loop(s) (trip counts {trips}): XLA counts "
                "a loop's body once, so its FLOPs and bytes are lower bounds"
            )
        if hlo.custom_calls:
            calls = ", ".join(f"{t} x{n}" for t, n in sorted(hlo.custom_calls.items()))
            share = hlo.custom_call_bytes / max(costs.bytes_accessed, 1.0)
            notes.append(
                f"{name}: custom calls ({calls}) are not costed by XLA; their operands and "
                f"results are {hlo.custom_call_bytes:,} bytes per chip ({share:.2%} of the "
                "bytes counted)"
            )
        if hlo.other_collectives:
            ops = ", ".join(f"{op} x{n}" for op, n in sorted(hlo.other_collectives.items()))
            notes.append(f"{name}: collectives besides the all-reduce: {ops}")
    if plan.config.dtype == "float32":
        notes.append(
            "float32: the compute bound uses the bf16 peak (TPU matmuls at JAX's default "
            "precision are one bf16 pass); HIGHEST-precision matmuls (ZCA) take several"
        )
    return notes


def table(plan, config_file: str) -> str:
    """The readable report of ``plan``."""
    from nin_jax import planning

    config, chip = plan.config, plan.slice.chip
    versions = ", ".join(f"{k} {v}" for k, v in planning.versions().items())
    slices = f"{plan.num_slices} x " if plan.num_slices > 1 else ""
    mesh = " x ".join(f"{k} {v}" for k, v in plan.mesh_shape.items())
    steps_ = [("train", plan.train), ("eval", plan.eval)]
    lines = [
        f"{config_file} on {slices}{plan.slice.name}: {plan.chips} chips (TPU {chip.generation}), "
        f"{plan.hosts} host(s); mesh {mesh}",
        f"  {config.dataset}, global batch {config.batch_size} "
        f"({config.batch_size // plan.chips} per chip), {config.dtype}, conv_impl "
        f"{plan.conv_impl}, {config.num_models} model(s), data_on_device {config.data_on_device}",
        f"  Compiler estimates (XLA's memory and cost analyses), not measurements: {versions}",
        "",
        f"{'HBM per chip, MiB':34}{'train':>14}{'eval':>14}",
    ]

    def row(label: str, cell) -> str:
        return f"  {label:32}" + "".join(f"{cell(step):>14}" for _, step in steps_)

    def analysed(fn):
        return lambda step: "-" if step is None or step.analysis is None else fn(step)

    for label, field in (
        ("arguments", "arguments"),
        ("outputs", "outputs"),
        ("aliased (donated; counted once)", "aliased"),
        ("temporaries", "temporaries"),
        ("generated code", "generated_code"),
    ):
        lines.append(row(label, analysed(lambda s, f=field: _mib(getattr(s.analysis.memory, f)))))
    lines.append(row("total", lambda s: "-" if s is None else _mib(s.hbm_bytes)))
    usable = f"of {chip.usable_hbm_gib} GiB usable"
    lines.append(
        row(usable, lambda s: "-" if s is None else f"{s.hbm_bytes / plan.usable_hbm:.1%}")
    )
    for _, step in steps_:
        if step is not None and step.out_of_memory is not None:
            lines.append(f"  compiler: {step.out_of_memory.message}")
    verdict = "FITS" if plan.fits else "DOES NOT FIT"
    lines += ["", f"Verdict: {verdict} in {chip.usable_hbm_gib} GiB of HBM per chip", ""]

    peak = f"{chip.bf16_tflops:g} bf16 TFLOP/s, {chip.hbm_gbps:,.0f} GB/s HBM per chip"
    lines.append(f"{'Per image (slice total / batch)':34}{'train':>14}{'eval':>14}")
    lines.append(
        row("GFLOP", analysed(lambda s: _figure(plan.per_image(s, s.analysis.costs.flops) / 1e9)))
    )  # noqa: E501
    lines.append(
        row(
            "MB of HBM traffic",
            analysed(lambda s: _figure(plan.per_image(s, s.analysis.costs.bytes_accessed) / 1e6)),
        )
    )  # noqa: E501
    lines += ["", f"{'Roofline per step':34}{'train':>14}{'eval':>14}   ({peak})"]
    roof = lambda fn: analysed(lambda s: fn(plan.roofline(s)))  # noqa: E731
    lines.append(row("compute time, ms", roof(lambda r: _figure(r.compute_seconds * 1e3))))
    lines.append(row("HBM time, ms", roof(lambda r: _figure(r.memory_seconds * 1e3))))
    lines.append(row("bound", roof(lambda r: r.bound)))
    lines.append(
        row("images/s per chip", roof(lambda r: _rate(config.batch_size / r.seconds / plan.chips)))
    )  # noqa: E501
    lines.append(
        row(f"images/s, {plan.chips} chips", roof(lambda r: _rate(config.batch_size / r.seconds)))
    )  # noqa: E501
    lines.append(
        row(
            "XLA's own step estimate, ms",
            analysed(
                lambda s: _figure(
                    None
                    if s.analysis.costs.optimal_seconds is None
                    else s.analysis.costs.optimal_seconds * 1e3
                )
            ),
        )
    )  # noqa: E501
    lines.append(
        row(
            "all-reduce, MB per chip",
            analysed(lambda s: _figure(s.analysis.hlo.all_reduce_bytes / 1e6)),
        )
    )  # noqa: E501
    schedule = plan.schedule
    lines += [
        "",
        f"Schedule: {schedule.total_steps:,} train steps ({schedule.steps_per_epoch:,} per epoch)"
        f" and {plan.evaluations} evaluations of {plan.eval_batches} eval steps: at least "
        f"{_duration(plan.schedule_seconds())} at the roofline (no per-step overhead, input or "
        "chip-to-chip time)",
    ]
    notes = caveats(plan) + [
        "the all-reduce (gradients and metrics) crosses the chip-to-chip links: not in the "
        "HBM figures or the roofline"
    ]
    lines += ["", "Notes:"] + [f"  - {note}" for note in notes]
    return "\n".join(lines)


def _set_compile_environment(slice_: tpu_slices.Slice) -> None:
    """JAX on the CPU, libtpu as a compiler only (``tpu_slices.compile_environment``)."""
    environment = tpu_slices.compile_environment(slice_)
    os.environ["JAX_PLATFORMS"] = environment.pop("JAX_PLATFORMS")
    for name, value in environment.items():
        os.environ.setdefault(name, value)
    import jax

    jax.config.update("jax_platforms", "cpu")


def main(argv: list[str]) -> None:
    config = _CONFIG.value
    config_validation.validate(config)
    slice_ = tpu_slices.parse(_TOPOLOGY.value)
    _set_compile_environment(slice_)
    from nin_jax import planning

    config_file = config_flags.get_config_filename(flags.FLAGS["config"])
    overrides = config_flags.get_override_values(flags.FLAGS["config"])
    if _MAX_BATCH.value:
        search = planning.largest_batch(config, slice_, _NUM_SLICES.value)
        tried = ", ".join(f"{b:,} {'fits' if ok else 'no'}" for b, ok in search.tried)
        if search.best is None:
            print(f"largest global batch: none fits (tried {tried})")
            cli.fail(f"{config_file} does not fit on {slice_.name} even at one image per chip")
        plan = search.best
        print(table(plan, config_file))
        cap = (
            f" (the training split's {search.capped_by_split:,} examples cap it)"
            if search.capped_by_split
            else ""
        )
        print(f"\nLargest global batch that fits: {plan.config.batch_size:,}{cap}; tried {tried}")
        print(json.dumps({**record(plan, config_file, overrides), "max_batch": True}))
        return
    plan = planning.plan(config, slice_, _NUM_SLICES.value)
    print(table(plan, config_file))
    print(json.dumps(record(plan, config_file, overrides)))
    sys.stdout.flush()
    if not plan.fits:
        worst = max(
            (s for s in (plan.train, plan.eval) if s is not None), key=lambda s: s.hbm_bytes or 0
        )
        needed = (
            "more than it has" if worst.hbm_bytes is None else f"{worst.hbm_bytes / 2**30:.2f} GiB"
        )
        cli.fail(
            f"{config_file} does not fit on {slice_.name}: a step needs {needed} of the "
            f"{slice_.chip.usable_hbm_gib} GiB of HBM per chip (DOES NOT FIT)"
        )


if __name__ == "__main__":
    cli.run(main, quiet=True)
