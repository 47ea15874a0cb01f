"""What XLA says of a compiled program, and where it cannot be taken at its word.

``analyse(compiled)`` reads a ``jax.stages.Compiled``'s memory analysis (HBM per
device: arguments, outputs, aliased, temporaries, generated code), its cost
analysis (FLOPs, bytes accessed, per device and per call) and its optimised HLO,
for the three cases where the cost analysis is blind: a ``while`` loop's body is
counted once whatever its trip count, a custom call (a kernel XLA does not
emit itself) is counted as nothing unless it carries its own cost estimate (a
Pallas kernel's ``cost_estimate``, which XLA adds in), and collectives (the
gradient all-reduce) move bytes over the chip-to-chip links that the HBM figures
do not include.
``out_of_memory(error)`` turns the compiler's out-of-memory error into figures.
"""

import dataclasses
import math
import re

# Bytes per element of HLO's element types.
_ELEMENT_BYTES = {
    "pred": 1, "s4": 0.5, "u4": 0.5, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2,
    "s32": 4, "u32": 4, "f32": 4, "s64": 8, "u64": 8, "f64": 8, "c64": 8, "c128": 16,
}  # fmt: skip
_ARRAY = re.compile(r"\b(pred|[suf]\d+|bf16|c64|c128|f8\w*)\[([\d,]*)\]")
# One HLO instruction: `%name = SHAPE op(OPERANDS), attributes`.
_INSTRUCTION = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*(.*?)\s([a-z][\w\-]*)\((.*)$")
_COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute")
_UNITS = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


def array_bytes(text: str) -> int:
    """Bytes of the arrays whose shapes ``text`` spells ('(f32[2,3]{1,0}, bf16[4])': 32)."""
    total = 0.0
    for element, dims in _ARRAY.findall(text):
        size = _ELEMENT_BYTES.get(element, 1)  # f8 variants: 1 byte.
        total += size * math.prod(int(d) for d in dims.split(",") if d)
    return int(total)


@dataclasses.dataclass(frozen=True)
class Memory:
    """HBM one device needs for the program, in bytes (XLA's buffer assignment)."""

    arguments: int
    outputs: int
    aliased: int  # outputs that reuse a donated argument's buffer
    temporaries: int
    generated_code: int

    @property
    def total(self) -> int:
        return self.arguments + self.outputs - self.aliased + self.temporaries + self.generated_code


@dataclasses.dataclass(frozen=True)
class Costs:
    """XLA's cost analysis of one call, per device."""

    flops: float
    bytes_accessed: float
    transcendentals: float
    optimal_seconds: float | None  # the TPU compiler's own estimate of the call's time


@dataclasses.dataclass(frozen=True)
class HloFacts:
    """What the optimised HLO shows that the cost analysis does not account for."""

    while_loops: tuple[int | None, ...]  # known trip count of each loop (None: unknown)
    custom_calls: dict[str, int]  # target -> count, of the custom calls XLA does not cost
    custom_call_bytes: int  # operands and results of those custom calls, per device
    costed_kernels: int  # custom calls with a cost estimate (Pallas kernels): counted by XLA
    costed_kernel_bytes: int  # their operands and results, per device
    all_reduce_bytes: int  # results of the all-reduces per device: gradients and metrics
    other_collectives: dict[str, int]  # op -> count


@dataclasses.dataclass(frozen=True)
class Analysis:
    memory: Memory
    costs: Costs
    hlo: HloFacts


def memory(compiled) -> Memory:
    stats = compiled.memory_analysis()
    return Memory(
        arguments=int(stats.argument_size_in_bytes),
        outputs=int(stats.output_size_in_bytes),
        aliased=int(stats.alias_size_in_bytes),
        temporaries=int(stats.temp_size_in_bytes),
        generated_code=int(stats.generated_code_size_in_bytes),
    )


def costs(compiled) -> Costs:
    analysis = compiled.cost_analysis()
    if isinstance(analysis, list):  # Older jax: one dict per program.
        analysis = analysis[0]
    optimal = analysis.get("optimal_seconds")
    return Costs(
        flops=float(analysis.get("flops", 0.0)),
        bytes_accessed=float(analysis.get("bytes accessed", 0.0)),
        transcendentals=float(analysis.get("transcendentals", 0.0)),
        optimal_seconds=None if optimal is None or optimal <= 0 else float(optimal),
    )


def hlo_facts(hlo_text: str) -> HloFacts:
    """Loops, custom calls and collectives of an optimised HLO module's text.

    An async collective counts once (its ``-start``). A custom call's bytes are its
    result's and its operands' (found by name: optimised HLO omits operand shapes); one
    whose backend config holds a ``cost_estimate`` is costed by XLA and counted apart.
    """
    instructions = [m.groups() for m in map(_INSTRUCTION.match, hlo_text.splitlines()) if m]
    shapes = {name: shape for name, shape, _, _ in instructions}
    loops: list[int | None] = []
    calls: dict[str, int] = {}
    call_bytes = all_reduce = costed = costed_bytes = 0
    others: dict[str, int] = {}
    for _, shape, op, rest in instructions:
        base = op.removesuffix("-start")
        if op == "while":
            trip = re.search(r'"known_trip_count":\{"n":"(\d+)"', rest)
            loops.append(int(trip[1]) if trip else None)
        elif op == "custom-call":
            target = re.search(r'custom_call_target="([^"]+)"', rest)
            name = target[1] if target else "?"
            operands = re.findall(r"%([\w.\-]+)", rest.split(")", 1)[0])
            size = array_bytes(shape) + sum(array_bytes(shapes.get(o, "")) for o in operands)
            if "cost_estimate" in rest:
                costed, costed_bytes = costed + 1, costed_bytes + size
            else:
                calls[name] = calls.get(name, 0) + 1
                call_bytes += size
        elif base == "all-reduce" and not op.endswith("-done"):
            all_reduce += array_bytes(shape)
        elif base in _COLLECTIVES and not op.endswith("-done"):
            others[base] = others.get(base, 0) + 1
    return HloFacts(tuple(loops), calls, call_bytes, costed, costed_bytes, all_reduce, others)


def analyse(compiled) -> Analysis:
    return Analysis(memory(compiled), costs(compiled), hlo_facts(compiled.as_text()))


@dataclasses.dataclass(frozen=True)
class OutOfMemory:
    """The compiler's figures when a program does not fit: bytes needed (None: not stated)
    and bytes available per device, and its first line."""

    required: int | None
    available: int | None
    message: str


def _bytes(figure: str) -> int:
    number, unit = re.fullmatch(r"([\d.]+)\s*([KMGT]?)i?B?", figure.strip()).groups()
    return int(float(number) * _UNITS[unit])


_SIZE = r"([\d.]+\s*[KMGT]?i?B?)"
_OOM_PATTERNS = (  # (required, available) in the TPU compiler's messages.
    re.compile(rf"\({_SIZE}\) exceeds available HBM \({_SIZE}\)"),
    re.compile(rf"Used {_SIZE} of {_SIZE} hbm"),
)


def out_of_memory(error: Exception) -> OutOfMemory | None:
    """The figures of a compile-time out-of-memory error, or None for any other error."""
    message = str(error)
    if "RESOURCE_EXHAUSTED" not in message and "out of memory" not in message.lower():
        return None
    first = message.strip().splitlines()[0]
    for pattern in _OOM_PATTERNS:
        found = pattern.search(message)
        if found:
            return OutOfMemory(_bytes(found[1]), _bytes(found[2]), first)
    return OutOfMemory(None, None, first)
