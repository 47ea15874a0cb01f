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


def _mib(value: int) -> str:
    return f"{value / _MIB:,.1f}"


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
    if step.analysis is None:  # hbm_bytes_per_chip: what the compiler says the step needs.
        record["out_of_memory"] = step.out_of_memory.message
        record["out_of_memory_bytes"] = step.out_of_memory.required
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
        bytes_per_image=plan.per_image(step, plan.hbm_bytes(step)),
        bound=roofline.bound,
        roofline_step_seconds=roofline.seconds,
        compute_seconds=roofline.compute_seconds,
        memory_seconds=roofline.memory_seconds,
        images_per_sec_per_chip=images / roofline.seconds / plan.chips,
        images_per_sec=images / roofline.seconds,
        xla_optimal_seconds=costs.optimal_seconds,
        all_reduce_bytes_per_chip=hlo.all_reduce_bytes,
        costs_are_lower_bounds=bool(hlo.while_loops),  # A loop's body is counted once.
        while_loops=list(hlo.while_loops),
        custom_calls=hlo.custom_calls,
        custom_call_bytes=hlo.custom_call_bytes,
        costed_kernels=hlo.costed_kernels,
        costed_kernel_bytes=hlo.costed_kernel_bytes,
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
            "train_examples": plan.train_examples,
            "eval_examples": plan.eval_examples,
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
                f"results, {hlo.custom_call_bytes:,} bytes per chip ({share:.2%} of XLA's "
                "count), are added to the HBM traffic (a lower bound for them)"
            )
        if hlo.costed_kernels:
            notes.append(
                f"{name}: {hlo.costed_kernels} Pallas kernel call(s) (conv_impl='fused') are "
                "counted from their own estimates: their matmuls, and their operands and "
                f"results read and written once ({hlo.costed_kernel_bytes:,} bytes per chip)"
            )
        if hlo.other_collectives:
            ops = ", ".join(f"{op} x{n}" for op, n in sorted(hlo.other_collectives.items()))
            notes.append(f"{name}: collectives besides the all-reduce: {ops}")
    notes.append(
        "the all-reduce (gradients and metrics) crosses the chip-to-chip links: not in the "
        "HBM figures or the roofline"
    )
    if plan.config.dtype == "float32":
        notes.append(
            "float32: the compute bound uses the bf16 peak (TPU matmuls at JAX's default "
            "precision are one bf16 pass)"
        )
    if plan.config.preprocess == "gcn_zca" and plan.config.dtype == "float32":
        notes.append(
            "the ZCA whitening matmul runs at HIGHEST precision (several bf16 passes); its "
            "FLOPs are counted once"
        )
    return notes


def _cell(step: dict | None, path: str, fmt) -> str:
    """``fmt`` of the figure at dotted ``path`` of a step's record; '-' where there is none."""
    value = step
    for key in path.split("."):
        value = None if value is None else value.get(key)
    return "-" if value is None else fmt(value)


_MEMORY_ROWS = (
    ("arguments", "hbm.arguments"),
    ("outputs", "hbm.outputs"),
    ("aliased (donated; counted once)", "hbm.aliased"),
    ("temporaries", "hbm.temporaries"),
    ("generated code", "hbm.generated_code"),
)
_COST_ROWS = (  # (label, record key, scale, format)
    ("GFLOP", "flops_per_image", 1e-9, "{:,.4g}"),
    ("MB of HBM traffic", "bytes_per_image", 1e-6, "{:,.4g}"),
)
_ROOFLINE_ROWS = (
    ("compute time, ms", "compute_seconds", 1e3, "{:,.4g}"),
    ("HBM time, ms", "memory_seconds", 1e3, "{:,.4g}"),
    ("bound", "bound", None, "{}"),
    ("images/s per chip", "images_per_sec_per_chip", 1, "{:,.0f}"),
    ("images/s, all chips", "images_per_sec", 1, "{:,.0f}"),
    ("XLA's own step estimate, ms", "xla_optimal_seconds", 1e3, "{:,.4g}"),
    ("all-reduce, MB per chip", "all_reduce_bytes_per_chip", 1e-6, "{:,.4g}"),
)


def table(result: dict, notes: list[str]) -> str:
    """The readable report of a plan's JSON ``record``."""
    steps_ = (result["train"], result["eval"])
    chip, schedule = result["chip"], result["schedule"]
    versions = ", ".join(f"{k} {v}" for k, v in result["estimates_by"].items())
    slices = f"{result['num_slices']} x " if result["num_slices"] > 1 else ""
    mesh = " x ".join(f"{k} {v}" for k, v in result["mesh"].items())

    def header(title: str) -> str:
        return f"{title:34}{'train':>14}{'eval':>14}"

    def row(label: str, path: str, fmt, costs: bool = False) -> str:
        def cell(step) -> str:
            low = costs and step is not None and step.get("costs_are_lower_bounds")
            return (">= " if low else "") + _cell(step, path, fmt)

        return f"  {label:32}" + "".join(f"{cell(step):>14}" for step in steps_)

    def scaled(scale, pattern):
        return lambda v: pattern.format(v if scale is None else v * scale)

    lines = [
        f"{result['config']} on {slices}{result['topology']}: {result['chips']} chips "
        f"(TPU {chip['generation']}), {result['hosts']} host(s); mesh {mesh}",
        f"  {result['dataset']}, global batch {result['batch_size']:,} "
        f"({result['batch_per_chip']:,} per chip), {result['dtype']}, conv_impl "
        f"{result['conv_impl']}, {result['num_models']} model(s), data_on_device "
        f"{result['data_on_device']}",
        f"  Compiler estimates (XLA's memory and cost analyses), not measurements: {versions}",
        "",
        header("HBM per chip, MiB"),
        *(row(label, path, _mib) for label, path in _MEMORY_ROWS),
        row("total", "hbm.total", _mib),
        *(
            [row("needs (the compiler's error)", "out_of_memory_bytes", lambda v: f"> {_mib(v)}")]
            if any(s and "out_of_memory" in s for s in steps_)
            else []
        ),
        row(
            f"of {chip['usable_hbm_gib']} GiB usable",
            "hbm_bytes_per_chip",
            lambda v: f"{v / (chip['usable_hbm_gib'] * 2**30):.1%}",
        ),
        *(f"  compiler: {s['out_of_memory']}" for s in steps_ if s and "out_of_memory" in s),
        "",
        f"Verdict: {'FITS' if result['fits'] else 'DOES NOT FIT'} in "
        f"{chip['usable_hbm_gib']} GiB of HBM per chip",
        "",
        header("Per image (slice total / batch)"),
        *(row(label, key, scaled(k, f), costs=True) for label, key, k, f in _COST_ROWS),
        "",
        header("Roofline per step")
        + f"   ({chip['bf16_tflops']:g} bf16 TFLOP/s, {chip['hbm_gbps']:,.0f} GB/s HBM per chip)",
        *(row(label, key, scaled(k, f)) for label, key, k, f in _ROOFLINE_ROWS),
        "",
        f"Schedule: {schedule['total_steps']:,} train steps ({schedule['steps_per_epoch']:,} per "
        f"epoch) and {schedule['evaluations']} evaluations of {schedule['eval_steps_each']} eval "
        f"steps: at least {_duration(schedule['roofline_seconds'])} at the roofline (no per-step "
        "overhead, input or chip-to-chip time)",
        "",
        "Notes:",
        *(f"  - {note}" for note in notes),
    ]
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    config = _CONFIG.value
    config_validation.validate(config)
    slice_ = tpu_slices.parse(_TOPOLOGY.value)
    tpu_slices.enter_compile_environment(slice_)
    from nin_jax import planning

    config_file = config_flags.get_config_filename(flags.FLAGS["config"])
    overrides = config_flags.get_override_values(flags.FLAGS["config"])
    if _MAX_BATCH.value:
        search = planning.largest_batch(config, slice_, _NUM_SLICES.value)
        tried = ", ".join(f"{b:,} {'fits' if ok else 'no'}" for b, ok in search.tried)
        if search.best is None:
            print(f"Largest global batch that fits: none (tried {tried})")
            cli.fail(f"{config_file} does not fit on {slice_.name} even at one image per chip")
        result = record(search.best, config_file, overrides)
        print(table(result, caveats(search.best)))
        cap = search.capped_by_split
        limit = f" (the training split's {cap:,} examples are the limit)" if cap else ""
        print(f"\nLargest global batch that fits: {result['batch_size']:,}{limit}; tried {tried}")
        print(json.dumps({**result, "max_batch": True}))
        return
    plan = planning.plan(config, slice_, _NUM_SLICES.value)
    result = record(plan, config_file, overrides)
    print(table(result, caveats(plan)))
    print(json.dumps(result))
    sys.stdout.flush()
    if not plan.fits:
        need = max(step["hbm_bytes_per_chip"] or 0 for step in (result["train"], result["eval"]))
        cli.fail(
            f"{config_file} does not fit on {slice_.name}: a step needs {need / 2**30:.2f} GiB "
            f"of the {slice_.chip.usable_hbm_gib} GiB of HBM per chip (DOES NOT FIT)"
        )


if __name__ == "__main__":
    cli.run(main, quiet=True)
