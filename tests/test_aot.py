"""Compiling the train and eval steps for TPU slices on this CPU machine (nin_jax.aot).

A tiny NIN on the 8x8 digits: its steps compile in seconds (the paper's widths
take minutes here; docs/TPU.md has their figures). The compiling tests need
libtpu, which the `tpu` extra installs (CI installs it); without it they are
skipped with that reason.
"""

import importlib.util
import json

import pytest
from helpers import TINY_WIDTHS, load_config, run_cli

from nin_jax import planning, tpu_slices
from nin_jax.datasets import catalog
from nin_jax.errors import DatasetError

needs_libtpu = pytest.mark.skipif(
    importlib.util.find_spec("libtpu") is None,
    reason="libtpu is not installed, nothing compiles for a TPU: pip install -e '.[test,tpu]'",
)
TINY = f"--config.model.widths={TINY_WIDTHS}"
TINY_SHAPES_TRAIN = 576  # tests/tiny_datasets.py: the train digits 0-3.


def compile_for(topology: str, num_slices: int = 1, **overrides) -> planning.Plan:
    slice_ = tpu_slices.parse(topology)
    tpu_slices.enter_compile_environment(slice_)
    return planning.plan(load_config("digits", **overrides), slice_, num_slices)


def valid_taps(size: int, kernel: int) -> int:
    """Kernel taps inside the image, summed over the outputs of a 'same' convolution."""
    pad = kernel // 2
    return sum(min(i + pad, size - 1) - max(i - pad, 0) + 1 for i in range(size))


def tiny_forward_flops(size: int = 8, channels: int = 1, classes: int = 10) -> int:
    """FLOPs of the tiny NIN's convolutions per image, padding excluded (as XLA counts)."""
    macs = 0
    widths = [*TINY_WIDTHS[:-1], (*TINY_WIDTHS[-1], classes)]
    for block, (block_widths, kernel) in enumerate(zip(widths, (5, 5, 3), strict=True)):
        taps = valid_taps(size, kernel) ** 2
        macs += channels * block_widths[0] * taps
        for fan_in, fan_out in zip(block_widths, block_widths[1:], strict=False):
            macs += size * size * fan_in * fan_out
        channels = block_widths[-1]
        if block < 2:
            size = -(-size // 2)  # 3x3/2 max pooling, padding 1.
    return 2 * macs


@pytest.fixture(scope="module")
def single_host():
    return compile_for("v5e-4", batch_size=32)


@needs_libtpu
def test_single_host_slice(single_host):
    plan = single_host
    assert plan.fits and plan.mesh_shape == {"data": 4, "model": 1} and plan.hosts == 1
    assert plan.conv_impl == "xla"  # 'auto' resolved for the TPU, not this CPU backend.
    train, evaluate = plan.train.analysis, plan.eval.analysis
    params = sum(
        a * b * c * d + d
        for a, b, c, d in [(5, 5, 1, 8), (1, 1, 8, 8), (1, 1, 8, 8), (5, 5, 8, 8), (1, 1, 8, 8)]
        + [(1, 1, 8, 8), (3, 3, 8, 8), (1, 1, 8, 8), (1, 1, 8, 10)]
    )
    state_bytes = 2 * 4 * params  # Parameters and SGD momentum, float32, on every chip.
    assert train.memory.arguments >= state_bytes + 8 * (64 + 4)  # + 8 images, labels per chip.
    assert train.memory.aliased >= state_bytes  # The donated state's buffers are reused.
    # The gradient all-reduce: every parameter's float32 gradient, plus a few scalar metrics.
    assert 4 * params <= train.hlo.all_reduce_bytes <= 4 * params + 1024
    assert evaluate.hlo.all_reduce_bytes < 64  # Three sums.
    # Eval: the forward pass, whose convolutions XLA counts without the padded taps.
    eval_flops = plan.per_image(plan.eval, evaluate.costs.flops)
    assert tiny_forward_flops() <= eval_flops <= 1.2 * tiny_forward_flops()
    train_flops = plan.per_image(plan.train, train.costs.flops)
    assert 2 * eval_flops < train_flops < 5 * eval_flops
    roofline = plan.roofline(plan.train)
    assert roofline.bound == "memory"  # 8 channels do no matmul work worth the name.
    hbm_bytes = train.costs.bytes_accessed + train.hlo.custom_call_bytes  # + uncosted calls'.
    assert roofline.memory_seconds == pytest.approx(hbm_bytes / 819e9)
    # load_config's 2 steps, then one evaluation of the 360 test digits in 12 batches of 32.
    assert (plan.schedule.total_steps, plan.evaluations, plan.eval_batches) == (2, 1, 12)


@needs_libtpu
def test_fused_kernels_compile_and_are_costed(single_host):
    """conv_impl='fused': each block's kernel, forward and backward, compiled for the TPU
    (not interpreted), costed by XLA from its own estimate; the XLA path's FLOPs kept."""
    plan = compile_for("v5e-4", batch_size=32, model__conv_impl="fused")
    assert plan.fits and plan.conv_impl == "fused"
    train, evaluate = plan.train.analysis.hlo, plan.eval.analysis.hlo
    assert (train.costed_kernels, evaluate.costed_kernels) == (6, 3)
    assert "tpu_custom_call" not in train.custom_calls and not train.while_loops
    # Activations in, activations out, at least: 8 channels of each 8x8 (then 4x4, 2x2) map.
    assert train.costed_kernel_bytes > 32 / 4 * 8 * (64 + 16 + 4) * 4 * 2
    flops = plan.per_image(plan.train, plan.train.analysis.costs.flops)
    xla_flops = single_host.per_image(single_host.train, single_host.train.analysis.costs.flops)
    assert flops == pytest.approx(xla_flops, rel=0.25)  # The backward kernel recomputes.


@needs_libtpu
@pytest.mark.slow
def test_multi_host_slice(single_host):
    plan = compile_for("v5e-16", batch_size=64)
    assert plan.fits and plan.hosts == 4 and plan.mesh_shape == {"data": 16, "model": 1}
    assert plan.train.analysis.hlo.all_reduce_bytes == (
        single_host.train.analysis.hlo.all_reduce_bytes
    )  # The same gradients, over 16 chips.


@needs_libtpu
@pytest.mark.slow
def test_two_models(single_host):
    plan = compile_for("v5e-4", batch_size=32, num_models=2)
    assert plan.fits and plan.mesh_shape == {"data": 2, "model": 2}
    one, two = (p.per_image(p.train, p.train.analysis.costs.flops) for p in (single_host, plan))
    assert two == pytest.approx(2 * one, rel=0.1)  # Each image trains both models.


@needs_libtpu
@pytest.mark.slow
def test_split_on_the_devices(single_host):
    plan = compile_for("v5e-4", batch_size=32, data_on_device=True)
    assert plan.fits
    table = 1437 * (8 * 8 * 1 + 4)  # The training split's uint8 images and int32 labels.
    extra = plan.train.analysis.memory.arguments - single_host.train.analysis.memory.arguments
    assert extra >= table - 8 * (64 + 4)


@needs_libtpu
@pytest.mark.slow
def test_two_slices():
    plan = compile_for("v5e-4", num_slices=2, batch_size=32)
    assert plan.fits and plan.chips == 8 and plan.hosts == 2
    assert plan.mesh_shape == {"data": 8, "model": 1}


@needs_libtpu
@pytest.mark.slow
def test_a_batch_far_too_large_does_not_fit():
    """SVHN at the paper's widths, 131,072 images per v5e chip: the compiler's out-of-memory
    is the verdict, with its figures, the table and the JSON line; exit code 2."""
    out = run_cli(
        "nin_jax.aot", "--config=configs/svhn.py", "--topology=v5e-4",
        "--config.batch_size=524288", "--config.num_epochs=1",
    )  # fmt: skip
    assert out.returncode == 2, out.stderr[-3000:]
    assert "DOES NOT FIT" in out.stdout
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["fits"] is False and result["topology"] == "v5litepod-4"
    train = result["train"]
    assert train["hbm_bytes_per_chip"] > 15.75 * 2**30
    errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "DOES NOT FIT" in errors[0]
    assert "Traceback" not in out.stderr


def test_unknown_topology_is_one_line():
    out = run_cli("nin_jax.aot", "--config=configs/digits.py", "--topology=v9-8", TINY)
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: unknown TPU accelerator type 'v9-8'")
    assert "v5litepod-8" in lines[0] and out.stdout == ""


def test_largest_batch_bisects(monkeypatch):
    """Doubling from the config's batch, then bisecting to a multiple of the device count."""
    slice_ = tpu_slices.parse("v5e-8")
    monkeypatch.setattr(tpu_slices, "compile_only_devices", lambda s, n: list(range(8)))

    limit = 1000

    class Fake:
        def __init__(self, config):
            self.config, self.fits = config, config.batch_size <= limit

    monkeypatch.setattr(planning, "plan", lambda config, *args, **kwargs: Fake(config))
    search = planning.largest_batch(load_config("svhn", batch_size=128), slice_)
    assert search.best.config.batch_size == 1000  # The largest multiple of 8 up to 1000.
    assert [b for b, _ in search.tried][:4] == [128, 256, 512, 1024]
    assert len(search.tried) <= 4 + 7 and search.capped_by_split is None
    limit = 10**9  # Then the training split is the limit: 1,437 digits, 1,432 in batches of 8.
    capped = planning.largest_batch(load_config("digits", batch_size=32), slice_)
    assert capped.best.config.batch_size == 1432 and capped.capped_by_split == 1432


@needs_libtpu
def test_a_tfds_dataset_by_name_plans_from_its_builder_info(tmp_path):
    import tiny_datasets  # noqa: F401  (registers the builders)

    from nin_jax import input_pipeline

    input_pipeline.get_builder("tiny_shapes", str(tmp_path))  # Prepares it (offline).
    plan = compile_for("v5e-4", batch_size=8, dataset="tiny_shapes", data_dir=str(tmp_path))
    assert plan.fits and plan.train_examples == TINY_SHAPES_TRAIN
    assert plan.schedule.steps_per_epoch == TINY_SHAPES_TRAIN // 8


def test_a_dataset_not_prepared_asks_for_it_in_one_line(tmp_path):
    import tiny_datasets  # noqa: F401

    with pytest.raises(DatasetError, match="known once it is prepared: prepare it"):
        catalog.facts("tiny_shapes", str(tmp_path))
