"""Cloud TPU slices by accelerator type, their chips' figures, and a slice's compile-only devices.

Accelerator types are spelled as Cloud TPU spells them: ``v4-N`` and ``v5p-N``
count TensorCores (two per chip; JAX sees one device per chip, "megacore"), so
``v4-8`` is 4 chips; ``v5litepod-N`` (or ``v5e-N``) and ``v6e-N`` count chips.
``compile_only_devices`` gives the JAX devices of such a slice on a machine
without a TPU (``jax.experimental.topologies``, which needs libtpu): code can be
compiled for them, not run. Where the figures of ``CHIPS`` come from:
docs/TPU.md.
"""

import dataclasses
import glob
import importlib.util
import math
import os
import pathlib
import re
import sys

from nin_jax.errors import ConfigError, NinError


@dataclasses.dataclass(frozen=True)
class Chip:
    """One TPU generation's chip, as the roofline and the HBM verdict see it."""

    generation: str  # 'v4', 'v5e', 'v5p', 'v6e'
    bf16_tflops: float  # peak dense bf16 matmul TFLOP/s per chip
    hbm_gbps: float  # HBM bandwidth per chip, GB/s (1e9 bytes)
    hbm_gib: float  # HBM per chip, GiB, as Google's spec sheets state it
    usable_hbm_gib: float  # what the compiler lets one program use (its out-of-memory message)
    topology_prefix: str  # the generation in jax.experimental.topologies' names ('v5:2x2x1')
    megacore: bool  # two TensorCores per chip driven as one device
    multi_host_from: int  # chips from which a slice has 4 chips per host (below: one host)


CHIPS = {
    chip.generation: chip
    for chip in (
        Chip("v4", 275.0, 1200.0, 32.0, 30.75, "v4", True, multi_host_from=8),
        Chip("v5e", 197.0, 819.0, 16.0, 15.75, "v5e", False, multi_host_from=16),
        Chip("v5p", 459.0, 2765.0, 95.0, 95.74, "v5", True, multi_host_from=8),
        Chip("v6e", 918.0, 1640.0, 32.0, 31.25, "v6e", False, multi_host_from=16),
    )
}

# Slice shapes (chips per axis) of the accelerator types Cloud TPU offers.
_SHAPES_2D = {1: (1, 1), 4: (2, 2), 8: (2, 4), 16: (4, 4), 32: (4, 8), 64: (8, 8), 128: (8, 16)}
_SHAPES_2D[256] = (16, 16)
_SHAPES_3D = {
    4: (2, 2, 1),
    8: (2, 2, 2),
    16: (2, 2, 4),
    32: (2, 4, 4),
    64: (4, 4, 4),
    128: (4, 4, 8),
    256: (4, 8, 8),
    512: (8, 8, 8),
    768: (8, 8, 12),
    1024: (8, 8, 16),
    2048: (8, 16, 16),
    4096: (16, 16, 16),
}
# Accelerator-type prefix -> (generation, TensorCores per unit of N, chip counts offered).
_PREFIXES = {
    "v4": ("v4", 2, tuple(c for c in _SHAPES_3D if c <= 2048)),
    "v5p": ("v5p", 2, tuple(_SHAPES_3D)),
    "v5litepod": ("v5e", 1, tuple(_SHAPES_2D)),
    "v5e": ("v5e", 1, tuple(_SHAPES_2D)),
    "v6e": ("v6e", 1, tuple(_SHAPES_2D)),
}
_CHIPS_PER_HOST = 4  # Every multi-host slice of these generations: 2 x 2 chips per host.


@dataclasses.dataclass(frozen=True)
class Slice:
    """One slice of an accelerator type."""

    name: str  # as Cloud TPU spells it: 'v4-32', 'v5litepod-8', 'v6e-8'
    chip: Chip
    shape: tuple[int, ...]  # chips per axis of the slice's torus or mesh

    @property
    def chips(self) -> int:
        return math.prod(self.shape)

    @property
    def hosts(self) -> int:
        return 1 if self.chips < self.chip.multi_host_from else self.chips // _CHIPS_PER_HOST

    @property
    def topology_name(self) -> str:
        return f"{self.chip.topology_prefix}:{'x'.join(map(str, self.shape))}"

    def topology_options(self, num_slices: int) -> dict:
        """``get_topology_desc``'s keyword arguments for ``num_slices`` of this slice."""
        per_host = (*self.shape, 1)[:3] if self.hosts == 1 else (2, 2, 1)
        options = {
            "chips_per_host_bounds": per_host,
            "num_slices": num_slices,
            "wrap": self.wrap,
        }
        if self.chip.megacore:
            options["chip_config_name"] = "megacore"
        return options

    @property
    def wrap(self) -> tuple[bool, bool, bool]:
        """Which axes have wraparound links: every axis of a v4/v5p slice of 64 chips or
        more (a full torus); the 16-chip axes of a v5e/v6e slice."""
        if len(self.shape) == 3:
            return (min(self.shape) >= 4,) * 3
        return (self.shape[0] == 16, self.shape[1] == 16, False)


def known_names() -> list[str]:
    """Every accelerator type ``parse`` accepts, in Cloud TPU's spelling (v5e-N aliases
    v5litepod-N and is not listed)."""
    return [
        f"{prefix}-{chips * cores}"
        for prefix, (_, cores, counts) in _PREFIXES.items()
        if prefix != "v5e"
        for chips in counts
    ]


def parse(name: str) -> Slice:
    """The slice of accelerator type ``name`` ('v4-32', 'v5litepod-8', 'v5e-8', 'v6e-8')."""
    match = re.fullmatch(r"(v4|v5p|v5litepod|v5e|v6e)-(\d+)", name.strip().lower())
    if match:
        generation, cores, counts = _PREFIXES[match[1]]
        count = int(match[2])
        if count % cores == 0 and count // cores in counts:
            chip = CHIPS[generation]
            chips = count // cores
            shape = _SHAPES_3D[chips] if cores == 2 else _SHAPES_2D[chips]
            canonical = "v5litepod" if match[1] == "v5e" else match[1]
            return Slice(f"{canonical}-{count}", chip, shape)
    raise ConfigError(
        f"unknown TPU accelerator type {name!r}; known: {', '.join(known_names())} "
        "(v5e-N is v5litepod-N)"
    )


_GOOGLE_PCI_VENDOR = "0x1ae0"  # TPU chips; also Google's network cards (then: "attached").


def tpu_attached() -> bool:
    """Whether this machine may have TPU chips: their device files (/dev/accel*, v4; /dev/vfio/*,
    v5p and later) or a PCI device of Google's. Errs towards yes."""
    if _device_files("/dev", r"accel\d+") or _device_files("/dev/vfio", r"\d+"):
        return True
    for vendor in glob.glob("/sys/bus/pci/devices/*/vendor"):
        try:
            if pathlib.Path(vendor).read_text().strip() == _GOOGLE_PCI_VENDOR:
                return True
        except OSError:
            continue
    return False


def skip_absent_tpu() -> bool:
    """Makes the CPU JAX's platform where libtpu is installed but nothing it could drive is:
    no TPU (``tpu_attached``), no other accelerator plugin, ``JAX_PLATFORMS`` unset. JAX would
    otherwise start libtpu at its first device query, print its warnings and fall back to the
    CPU (docs/TPU.md, "CPU machines"). Call before JAX's first device query; returns whether
    it changed anything."""
    if "JAX_PLATFORMS" in os.environ or importlib.util.find_spec("libtpu") is None:
        return False
    if importlib.util.find_spec("jax_plugins") is not None or tpu_attached():  # GPU plugins.
        return False
    os.environ["JAX_PLATFORMS"] = "cpu"
    if "jax" in sys.modules:  # Imported: it read the environment then.
        import jax

        jax.config.update("jax_platforms", "cpu")
    return True


def _device_files(directory: str, pattern: str) -> list[str]:
    try:
        return [n for n in os.listdir(directory) if re.fullmatch(pattern, n)]
    except OSError:
        return []


def compile_environment(slice_: Slice) -> dict[str, str]:
    """Environment variables for compiling for ``slice_`` on this machine, set before JAX
    starts: the CPU as JAX's only backend (the TPU is a compile target only, and a TPU VM's
    chips stay free for training) and, without TPU chips, libtpu told what the metadata
    server would have told it, so it neither queries one nor prints warnings, and its
    one-process lock skipped (compile-only use opens no chip)."""
    environment = {"JAX_PLATFORMS": "cpu"}
    if not tpu_attached():
        environment.update(
            TPU_SKIP_MDS_QUERY="1",
            TPU_ACCELERATOR_TYPE=slice_.name,
            TPU_WORKER_ID="0",
            TPU_WORKER_HOSTNAMES="localhost",
            ALLOW_MULTIPLE_LIBTPU_LOAD="1",
        )
    return environment


def enter_compile_environment(slice_: Slice) -> None:
    """Sets ``compile_environment`` in this process (the user's TPU settings kept), before its
    first TPU topology; JAX's backend becomes the CPU unless it already started otherwise."""
    environment = compile_environment(slice_)
    os.environ["JAX_PLATFORMS"] = environment.pop("JAX_PLATFORMS")
    for name, value in environment.items():
        os.environ.setdefault(name, value)
    if "jax" in sys.modules:  # Imported: its platforms were read from the environment then.
        import jax

        try:
            jax.config.update("jax_platforms", "cpu")
        except RuntimeError:  # Its backends started: compiling for the slice works regardless.
            pass


def compile_only_devices(slice_: Slice, num_slices: int = 1) -> list:
    """The JAX devices of ``num_slices`` x ``slice_``: compile for them, run nothing."""
    import jax
    from jax.experimental import topologies

    try:
        topology = topologies.get_topology_desc(
            slice_.topology_name, platform="tpu", **slice_.topology_options(num_slices)
        )
    except RuntimeError as e:  # JaxRuntimeError too.
        raise _libtpu_error(e) from e
    devices = list(topology.devices)
    expected = slice_.chips * num_slices
    if len(devices) != expected:  # A libtpu that splits chips differently.
        raise NinError(
            f"libtpu gave {len(devices)} devices for {num_slices} x {slice_.name}, expected "
            f"{expected} (one per chip); jax {jax.__version__}"
        )
    return devices


def _libtpu_error(error: Exception) -> NinError:
    message = str(error)
    if "TPU support not installed" in message:
        return NinError(
            "compiling for a TPU slice needs libtpu: pip install -e '.[tpu]' "
            "(jax[tpu] at the installed jax's version)"
        )
    if "lockfile" in message or "already in use" in message:
        return NinError(
            "libtpu is in use by another process on this machine (a training run?); "
            "run this command on a machine without one, or after it"
        )
    first = message.strip().splitlines()[0] if message.strip() else type(error).__name__
    return NinError(f"libtpu cannot describe this slice: {first}")
