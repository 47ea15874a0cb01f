"""Cloud TPU accelerator types: chips, hosts, topology names; the compile environment."""

import pytest

from nin_jax import tpu_slices
from nin_jax.errors import ConfigError


@pytest.mark.parametrize(
    "name, canonical, chips, hosts, topology, megacore",
    [
        ("v4-8", "v4-8", 4, 1, "v4:2x2x1", True),  # TensorCores: 2 per chip.
        ("v4-32", "v4-32", 16, 4, "v4:2x2x4", True),
        ("v5p-8", "v5p-8", 4, 1, "v5:2x2x1", True),
        ("v5e-8", "v5litepod-8", 8, 1, "v5e:2x4", False),  # Chips.
        ("v5litepod-16", "v5litepod-16", 16, 4, "v5e:4x4", False),
        ("v6e-8", "v6e-8", 8, 1, "v6e:2x4", False),
        ("v6e-256", "v6e-256", 256, 64, "v6e:16x16", False),
    ],
)
def test_accelerator_types(name, canonical, chips, hosts, topology, megacore):
    slice_ = tpu_slices.parse(name)
    assert (slice_.name, slice_.chips, slice_.hosts, slice_.topology_name) == (
        canonical,
        chips,
        hosts,
        topology,
    )
    options = slice_.topology_options(num_slices=1)
    assert (options.get("chip_config_name") == "megacore") == megacore
    per_host = options["chips_per_host_bounds"]
    assert per_host[0] * per_host[1] * per_host[2] * hosts == chips


def test_torus_wraparound():
    assert tpu_slices.parse("v4-128").wrap == (True, True, True)  # 4x4x4: a full torus.
    assert tpu_slices.parse("v4-64").wrap == (False, False, False)
    assert tpu_slices.parse("v5e-256").wrap == (True, True, False)


@pytest.mark.parametrize("name", ["v4-6", "v5e-2", "v3-8", "v5p", "tpu-v4-8", ""])
def test_unknown_names_list_the_known_ones(name):
    with pytest.raises(ConfigError) as error:
        tpu_slices.parse(name)
    message = str(error.value)
    assert "\n" not in message
    for known in ("v4-8", "v4-32", "v5p-8", "v5litepod-8", "v6e-8"):
        assert f" {known}," in message


def test_chip_figures():
    """The table's figures (sources: docs/TPU.md); usable HBM below the chip's."""
    figures = {g: (c.bf16_tflops, c.hbm_gbps, c.hbm_gib) for g, c in tpu_slices.CHIPS.items()}
    assert figures == {
        "v4": (275, 1200, 32),
        "v5e": (197, 819, 16),
        "v5p": (459, 2765, 95),
        "v6e": (918, 1640, 32),
    }
    for chip in tpu_slices.CHIPS.values():
        assert 0.9 * chip.hbm_gib < chip.usable_hbm_gib < 1.01 * chip.hbm_gib


def test_compile_environment_without_a_tpu(monkeypatch):
    monkeypatch.setattr(tpu_slices, "tpu_attached", lambda: False)
    env = tpu_slices.compile_environment(tpu_slices.parse("v4-32"))
    assert env["JAX_PLATFORMS"] == "cpu"
    assert env["TPU_SKIP_MDS_QUERY"] == "1"  # No metadata-server lookups.
    assert env["TPU_ACCELERATOR_TYPE"] == "v4-32"
    monkeypatch.setattr(tpu_slices, "tpu_attached", lambda: True)  # A TPU VM: libtpu's own.
    assert tpu_slices.compile_environment(tpu_slices.parse("v4-32")) == {"JAX_PLATFORMS": "cpu"}


@pytest.fixture
def libtpu_without_a_tpu(monkeypatch):
    """This machine as one with libtpu installed, no TPU chip and no GPU plugin."""
    real = tpu_slices.importlib.util.find_spec
    installed = {"libtpu": object(), "jax_plugins": None}
    monkeypatch.setattr(
        tpu_slices.importlib.util,
        "find_spec",
        lambda n: installed[n] if n in installed else real(n),
    )
    monkeypatch.setattr(tpu_slices, "tpu_attached", lambda: False)
    monkeypatch.delenv("JAX_PLATFORMS")
    return installed


def test_cpu_machines_skip_libtpu(libtpu_without_a_tpu):
    assert tpu_slices.skip_absent_tpu()
    assert tpu_slices.os.environ["JAX_PLATFORMS"] == "cpu"


def test_tpu_vms_gpu_machines_and_explicit_platforms_keep_jax_s_choice(
    libtpu_without_a_tpu, monkeypatch
):
    monkeypatch.setattr(tpu_slices, "tpu_attached", lambda: True)
    assert not tpu_slices.skip_absent_tpu()
    monkeypatch.setattr(tpu_slices, "tpu_attached", lambda: False)
    libtpu_without_a_tpu["jax_plugins"] = object()  # e.g. jax_plugins.xla_cuda12
    assert not tpu_slices.skip_absent_tpu()
    monkeypatch.setenv("JAX_PLATFORMS", "tpu,cpu")
    assert not tpu_slices.skip_absent_tpu()
    assert tpu_slices.os.environ["JAX_PLATFORMS"] == "tpu,cpu"
