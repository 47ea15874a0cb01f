"""A run planned for a TPU slice from XLA's estimates: does it fit, how fast can it go.

``plan(config, slice_)`` compiles the config's train and eval steps, as
``nin_jax.train`` builds them (``nin_jax.programs``), for the compile-only
devices of the slice, on abstract inputs, and turns XLA's memory and cost
analyses (``nin_jax.xla_costs``) into per-chip HBM against the chip's usable HBM,
FLOPs and bytes per image, a roofline bound in images/s and a lower bound on the
time of the config's whole schedule. ``largest_batch`` bisects for the largest
global batch that fits. Every figure is the compiler's estimate for the jax,
jaxlib and libtpu versions named in ``versions()``, not a measurement.
"""

import contextlib
import dataclasses
import importlib.metadata
import time
from collections.abc import Iterator
from typing import Any

import jax
import ml_collections

from nin_jax import programs, steps, tpu_slices, xla_costs
from nin_jax.datasets import catalog
from nin_jax.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class StepPlan:
    """One compiled step on one device: XLA's analysis, or its out-of-memory figures."""

    analysis: xla_costs.Analysis | None
    out_of_memory: xla_costs.OutOfMemory | None
    compile_seconds: float

    @property
    def hbm_bytes(self) -> int | None:
        if self.analysis is not None:
            return self.analysis.memory.total
        return self.out_of_memory.required

    def fits(self, slice_: tpu_slices.Slice) -> bool:
        """Whether it fits in the usable HBM of one of ``slice_``'s chips."""
        usable = slice_.chip.usable_hbm_gib * 2**30
        return self.analysis is not None and self.analysis.memory.total <= usable


@dataclasses.dataclass(frozen=True)
class Roofline:
    """One step's time at the chip's peak FLOP/s or HBM bandwidth, whichever binds."""

    compute_seconds: float
    memory_seconds: float

    @property
    def seconds(self) -> float:
        return max(self.compute_seconds, self.memory_seconds)

    @property
    def bound(self) -> str:
        return "compute" if self.compute_seconds >= self.memory_seconds else "memory"


@dataclasses.dataclass(frozen=True)
class Plan:
    """A config compiled for ``num_slices`` x ``slice``: its steps and what follows from them."""

    config: ml_collections.ConfigDict
    slice: tpu_slices.Slice
    num_slices: int
    mesh_shape: dict[str, int]
    conv_impl: str
    train_examples: int
    eval_examples: int
    schedule: Any  # nin_jax.train.Schedule
    train: StepPlan
    eval: StepPlan | None  # None: not compiled (``plan``'s eval_unless_train_fails)

    @property
    def chips(self) -> int:
        return self.slice.chips * self.num_slices

    @property
    def hosts(self) -> int:
        return self.slice.hosts * self.num_slices

    @property
    def fits(self) -> bool:
        return all(step is not None and step.fits(self.slice) for step in (self.train, self.eval))

    def per_image(self, step: StepPlan, figure: float) -> float:
        """A per-device figure of one call of ``step`` as the slice's total per image."""
        return figure * self.chips / self.config.batch_size

    @staticmethod
    def hbm_bytes(step: StepPlan) -> float:
        """HBM bytes one device moves per call of ``step``: XLA's count, plus the operands and
        results of the custom calls it does not cost (a lower bound for those)."""
        return step.analysis.costs.bytes_accessed + step.analysis.hlo.custom_call_bytes

    def roofline(self, step: StepPlan) -> Roofline | None:
        if step.analysis is None:
            return None
        chip, costs = self.slice.chip, step.analysis.costs
        return Roofline(
            compute_seconds=costs.flops / (chip.bf16_tflops * 1e12),
            memory_seconds=self.hbm_bytes(step) / (chip.hbm_gbps * 1e9),
        )

    @property
    def evaluations(self) -> int:
        """Evaluations of the run: every ``eval_every`` steps and at the last step."""
        total, every = self.schedule.total_steps, self.schedule.eval_every
        return total // every + (1 if total % every else 0)

    @property
    def eval_batches(self) -> int:
        """Eval steps per evaluation (``input_pipeline.num_eval_batches`` on the slice's hosts)."""
        per_host = -(-self.eval_examples // self.hosts)
        return max(1, -(-per_host // (self.config.batch_size // self.hosts)))

    def schedule_seconds(self) -> float | None:
        """The whole schedule (training and every evaluation) at the roofline: a lower bound."""
        if self.eval is None:
            return None
        train, evaluate = self.roofline(self.train), self.roofline(self.eval)
        if train is None or evaluate is None:
            return None
        evaluation = self.evaluations * self.eval_batches * evaluate.seconds
        return self.schedule.total_steps * train.seconds + evaluation


def versions() -> dict[str, str]:
    """The versions of the software whose estimates these are."""
    found = {}
    for package in ("jax", "jaxlib", "libtpu"):
        try:
            found[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            found[package] = "not installed"
    return found


@contextlib.contextmanager
def no_compilation_cache() -> Iterator[None]:
    """JAX's persistent compilation cache off: it cannot read back an executable compiled for
    compile-only devices (libtpu 0.0.42: 'PjRtCompiler must be constructed with a Client')."""
    enabled = jax.config.jax_enable_compilation_cache
    jax.config.update("jax_enable_compilation_cache", False)
    try:
        yield
    finally:
        jax.config.update("jax_enable_compilation_cache", enabled)


def compile_step(lowered_fn, *args) -> StepPlan:
    """Lowers and compiles ``lowered_fn(*args)``; a compile-time out-of-memory is a verdict."""
    start = time.perf_counter()
    try:
        with no_compilation_cache():
            compiled = lowered_fn.lower(*args).compile()
    except jax.errors.JaxRuntimeError as e:
        oom = xla_costs.out_of_memory(e)
        if oom is None:
            raise
        return StepPlan(None, oom, time.perf_counter() - start)
    return StepPlan(xla_costs.analyse(compiled), None, time.perf_counter() - start)


def plan(
    config: ml_collections.ConfigDict,
    slice_: tpu_slices.Slice,
    num_slices: int = 1,
    devices: list | None = None,
    eval_unless_train_fails: bool = False,
) -> Plan:
    """Compiles ``config``'s steps for ``num_slices`` x ``slice_`` (``devices``: its
    compile-only devices, when already made) and plans the run.
    ``eval_unless_train_fails``: skip the eval step (``Plan.eval`` None) when the train
    step does not fit."""
    from nin_jax.train import Schedule  # Imports TensorFlow: only when planning.

    devices = tpu_slices.compile_only_devices(slice_, num_slices) if devices is None else devices
    if config.batch_size % len(devices):
        raise ConfigError(
            f"config.batch_size {config.batch_size} is not divisible by the {len(devices)} "
            f"devices of {num_slices} x {slice_.name}"
        )
    facts = catalog.facts(config.dataset, config.data_dir)
    train_examples, eval_examples = catalog.train_and_eval_sizes(config)
    schedule = Schedule.from_config(config, train_examples)
    mesh = steps.create_mesh(config.num_models, devices)
    run = programs.build(
        config, mesh, facts.num_classes, facts.image_shape,
        schedule.steps_per_epoch, schedule.total_steps,
    )  # fmt: skip
    state, dropout_rng = jax.eval_shape(run.init)
    inputs = programs.abstract_inputs(config, mesh, facts.image_shape, train_examples)
    train = compile_step(
        run.train, state, inputs.train_batch, dropout_rng, inputs.stats, inputs.table
    )
    evaluate = None
    if not eval_unless_train_fails or train.fits(slice_):
        evaluate = compile_step(run.eval, state, inputs.eval_batch, inputs.stats)
    return Plan(
        config=config,
        slice=slice_,
        num_slices=num_slices,
        mesh_shape=dict(mesh.shape),
        conv_impl=run.model.conv_impl,
        train_examples=train_examples,
        eval_examples=eval_examples,
        schedule=schedule,
        train=train,
        eval=evaluate,
    )


def with_batch(config: ml_collections.ConfigDict, batch_size: int) -> ml_collections.ConfigDict:
    changed = config.copy_and_resolve_references()
    changed.batch_size = batch_size
    return changed


@dataclasses.dataclass(frozen=True)
class BatchSearch:
    """``largest_batch``'s answer: the plan at the largest global batch that fits (None: not
    even one image per device), every (batch, fits) compiled, and the training split's size
    when it, not the HBM, is the limit."""

    best: Plan | None
    tried: list[tuple[int, bool]]
    capped_by_split: int | None


def largest_batch(
    config: ml_collections.ConfigDict, slice_: tpu_slices.Slice, num_slices: int = 1
) -> BatchSearch:
    """The largest global batch (a multiple of the device count, at most the training split)
    whose train and eval steps fit: doubling or halving from ``config.batch_size``, then
    bisecting, one compile of each step per batch tried."""
    devices = tpu_slices.compile_only_devices(slice_, num_slices)
    unit = len(devices)
    cap = catalog.train_and_eval_sizes(config)[0] // unit * unit
    tried: list[tuple[int, bool]] = []
    plans: dict[int, Plan] = {}

    def fits(batch: int) -> bool:
        if batch > cap:
            return False
        trial = with_batch(config, batch)
        plans[batch] = plan(trial, slice_, num_slices, devices, eval_unless_train_fails=True)
        tried.append((batch, plans[batch].fits))
        return plans[batch].fits

    start = min(cap, max(unit, config.batch_size // unit * unit))
    low, high = 0, None  # The largest batch known to fit (0: none), the smallest known not to.
    if fits(start):
        low = start
        while high is None:
            if fits(2 * low):
                low *= 2
            else:
                high = min(2 * low, cap + unit)
    else:
        high = start
        while low == 0 and high > unit:
            candidate = max(unit, high // 2 // unit * unit)
            if fits(candidate):
                low = candidate
            else:
                high = candidate
    while low and high - low > unit:
        middle = (low + high) // 2 // unit * unit
        if fits(middle):
            low = middle
        else:
            high = middle
    return BatchSearch(plans.get(low), tried, cap if low == cap else None)
