"""Throughput of the train step, the input pipeline and the whole training loop, as one JSON line.

  python -m nin_jax.benchmark --config=configs/cifar10.py --batch_size=128 --steps=10
  python -m nin_jax.benchmark --config=configs/cifar10.py \\
      --torch_script=benchmarks/torch_throughput.py   # adds the ratio to the seed's PyTorch NIN

Three parts (``--parts``, default all):

* ``step``: the jitted train and eval steps ``nin_jax.train`` runs, on the state it
  builds, fed a synthetic uint8 batch already on the devices (preprocessing and
  augmentation included, as in training), timed after compilation; and the
  same step fed from host memory each time (``fed_images_per_sec``). With
  ``--config.num_models=K``, ``model_images_per_sec`` is K x images/s, and the
  one-model step of the same config is timed after it
  (``one_model_images_per_sec``, ``models_to_one_ratio``).
* ``input``: the tf.data pipeline alone, on synthetic uint8 images of the
  dataset's shape held in memory: images/s, the host CPU time spent per image
  (all threads) and the bytes per image handed to the devices.
* ``loop``: ``train.train_and_evaluate`` itself (input, step, metrics, periodic
  work) on the embedded digits resized to the dataset's shape, its steady
  images/s against the bare step's.

The ``step`` part needs neither TensorFlow nor a dataset (``--parts=step`` on a
machine without them).
"""

import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import flags
from ml_collections import config_flags

from nin_jax import cli, config_validation, models, programs, steps

PARTS = ("step", "input", "loop")
# (image shape, classes) of each dataset, as its TFDS builder declares them, and the
# embedded stand-in of that shape the loop part trains on.
DATASETS = {
    "mnist": ((28, 28, 1), 10, "digits/28x28x1"),
    "fashion_mnist": ((28, 28, 1), 10, "digits/28x28x1"),
    "cifar10": ((32, 32, 3), 10, "digits/32x32x3"),
    "cifar100": ((32, 32, 3), 100, "digits/pairs_32x32x3"),
    "svhn_cropped": ((32, 32, 3), 10, "digits/32x32x3"),
    "digits": ((8, 8, 1), 10, "digits"),
    "digits/8x8x1": ((8, 8, 1), 10, "digits"),
    "digits/28x28x1": ((28, 28, 1), 10, "digits/28x28x1"),
    "digits/32x32x3": ((32, 32, 3), 10, "digits/32x32x3"),
    "digits/pairs_32x32x3": ((32, 32, 3), 100, "digits/pairs_32x32x3"),
}

_CONFIG = config_flags.DEFINE_config_file("config", None, "Training configuration file.")
flags.mark_flag_as_required("config")
_BATCH_SIZE = flags.DEFINE_integer(
    "batch_size", None, "Global batch size (default: the config's).", lower_bound=1
)
_STEPS = flags.DEFINE_integer("steps", 10, "Timed train and eval steps.", lower_bound=1)
_WARMUP = flags.DEFINE_integer("warmup", 2, "Untimed steps run after compilation.", lower_bound=0)
_DTYPE = flags.DEFINE_enum("dtype", None, ["float32", "bfloat16"], "Computation dtype.")
_INPUT_BATCHES = flags.DEFINE_integer(
    "input_batches", 50, "Batches timed from the input pipeline.", lower_bound=1
)
_PARTS = flags.DEFINE_multi_enum("parts", list(PARTS), PARTS, "What to measure.")
_TORCH_SCRIPT = flags.DEFINE_string(
    "torch_script", None, "Path of benchmarks/torch_throughput.py, run right after nin_jax."
)


def synthetic_split(config: ml_collections.ConfigDict, count: int) -> dict[str, np.ndarray]:
    """Random uint8 images and labels of the dataset's shape (speed does not depend on them)."""
    shape, num_classes, _ = DATASETS[config.dataset]
    rng = np.random.default_rng(0)
    return {
        "image": rng.integers(0, 256, (count, *shape), dtype=np.uint8),
        "label": rng.integers(0, num_classes, count, dtype=np.int32),
    }


def synthetic_stats(config: ml_collections.ConfigDict) -> dict[str, np.ndarray]:
    """Statistics of the right shapes for ``config.preprocess``, costing what real ones cost
    to apply (fitting a real ZCA takes longer than the benchmark itself)."""
    shape, _, _ = DATASETS[config.dataset]
    if config.preprocess == "standardize":
        channels = shape[-1]
        return {
            "mean": np.full(channels, 127.5, np.float32),
            "std": np.full(channels, 74.0, np.float32),
        }
    if config.preprocess == "gcn_zca":
        dim = int(np.prod(shape))
        return {"mean": np.zeros(dim, np.float32), "whitening": np.eye(dim, dtype=np.float32)}
    return {}


def _seconds_per_call(fn: Callable[[], Any], calls: int) -> float:
    """Seconds per call of ``fn``, which returns something to block on."""
    start = time.perf_counter()
    for _ in range(calls):
        out = fn()
    jax.block_until_ready(out)
    return (time.perf_counter() - start) / calls


def benchmark_steps(config: ml_collections.ConfigDict, num_steps: int, warmup: int) -> dict:
    """Compile time and images/s of the jitted train and eval steps."""
    shape, num_classes, _ = DATASETS[config.dataset]
    mesh = steps.create_mesh(config.num_models)
    run = programs.build(config, mesh, num_classes, shape, max(1, num_steps), total_steps=10**6)
    state, dropout_rng = run.init()
    batch_size = config.batch_size // jax.process_count()
    split = synthetic_split(config, 4 * batch_size)
    host_batch = {key: value[:batch_size] for key, value in split.items()}
    stats = steps.replicate(synthetic_stats(config), mesh)
    table = steps.replicate(split, mesh) if config.data_on_device else None
    if config.data_on_device:
        train_input = {"index": np.arange(batch_size, dtype=np.int32)}
    else:
        train_input = host_batch
    train_batch = steps.to_global(train_input, mesh)
    eval_batch = steps.to_global({**host_batch, "mask": np.ones(batch_size, np.float32)}, mesh)
    jit_train, jit_eval = run.train, run.eval

    start = time.perf_counter()
    train_fn = jit_train.lower(state, train_batch, dropout_rng, stats, table).compile()
    eval_fn = jit_eval.lower(state, eval_batch, stats).compile()
    compile_seconds = time.perf_counter() - start

    def train_once(batch_fn):
        nonlocal state
        state, metrics = train_fn(state, batch_fn(), dropout_rng, stats, table)
        return metrics

    on_device = lambda: train_batch  # noqa: E731
    from_host = lambda: steps.to_global(train_input, mesh)  # noqa: E731
    for _ in range(warmup):
        train_once(on_device)
    jax.block_until_ready(state)
    train_seconds = _seconds_per_call(lambda: train_once(on_device), num_steps)
    fed_seconds = _seconds_per_call(lambda: train_once(from_host), num_steps)
    jax.block_until_ready(eval_fn(state, eval_batch, stats))
    eval_seconds = _seconds_per_call(lambda: eval_fn(state, eval_batch, stats), num_steps)
    return {
        "train_images_per_sec": round(config.batch_size / train_seconds, 2),
        "model_images_per_sec": round(config.num_models * config.batch_size / train_seconds, 2),
        "fed_images_per_sec": round(config.batch_size / fed_seconds, 2),
        "eval_images_per_sec": round(config.batch_size / eval_seconds, 2),
        "compile_seconds": round(compile_seconds, 2),
        "train_step_seconds": round(train_seconds, 4),
    }


def benchmark_input(config: ml_collections.ConfigDict, num_batches: int) -> dict:
    """Images/s, host CPU time per image (all threads) and bytes per image handed to the
    devices, of ``input_pipeline.train_batches`` on synthetic in-memory uint8 images."""
    from nin_jax import input_pipeline

    batch_size = input_pipeline.local_batch_size(config.batch_size)
    arrays = synthetic_split(config, batch_size * max(2, min(num_batches, 64)))
    batches = input_pipeline.train_batches(
        input_pipeline.Split(arrays["image"], arrays["label"]),
        global_batch_size=config.batch_size, seed=0, indices_only=config.data_on_device,
    )  # fmt: skip
    first = next(batches)  # Builds the pipeline and fills the prefetch buffer.
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(num_batches):
        next(batches)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    images = num_batches * batch_size
    payload = first["index"] if config.data_on_device else first["image"]
    return {
        "input_images_per_sec": round(images / wall, 2),
        "input_host_us_per_image": round(1e6 * cpu / images, 3),
        "input_bytes_per_image": payload.nbytes // batch_size,
    }


def benchmark_loop(config: ml_collections.ConfigDict, num_steps: int) -> dict:
    """Steady images/s of ``train.train_and_evaluate`` on the stand-in of the dataset's shape:
    the second of two log windows of ``num_steps`` steps (the first holds the compilation)."""
    from nin_jax import reporting, storage, train

    loop_config = config.copy_and_resolve_references()
    loop_config.dataset = DATASETS[config.dataset][2]
    loop_config.train_split, loop_config.eval_split = "train", f"test[:{config.batch_size}]"
    loop_config.validation = False
    loop_config.num_train_steps = 2 * num_steps
    loop_config.log_every_steps = num_steps
    loop_config.eval_every_steps = loop_config.checkpoint_every_steps = 10**9
    with tempfile.TemporaryDirectory() as workdir:
        train.train_and_evaluate(loop_config, workdir)
        lines = storage.read_text(f"{workdir}/{reporting.METRICS_FILE}").splitlines()
        records = [json.loads(line) for line in lines]
    windows = [r for r in records if r["split"] == "train"]
    return {"loop_images_per_sec": round(windows[-1]["images_per_sec"], 2)}


def one_model(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """``config`` with one model and no sweep."""
    single = config.copy_and_resolve_references()
    single.num_models = 1
    for name in single.sweep:
        single.sweep[name] = ()
    return single


def run_torch_reference(script: str, batch_size: int, num_steps: int) -> float:
    """``train_images_per_sec`` printed by the seed's PyTorch throughput script."""
    out = subprocess.run(
        [sys.executable, script, "--batch_size", str(batch_size), "--steps", str(num_steps)],
        capture_output=True,
        text=True,
        check=True,
    )
    return float(json.loads(out.stdout.strip().splitlines()[-1])["train_images_per_sec"])


def run(
    config: ml_collections.ConfigDict,
    *,
    num_steps: int,
    warmup: int,
    input_batches: int,
    parts: tuple[str, ...] = PARTS,
) -> dict[str, Any]:
    """The benchmark's JSON record for ``config`` (its batch_size, dtype and data placement)."""
    result: dict[str, Any] = {
        "dataset": config.dataset,
        "batch_size": config.batch_size,
        "dtype": config.dtype,
        "conv_impl": models.resolve_conv_impl(config.model.conv_impl),
        "data_on_device": config.data_on_device,
        "num_models": config.num_models,
        "backend": jax.default_backend(),
        "devices": jax.device_count(),
        "device_kind": jax.devices()[0].device_kind,
    }
    if "step" in parts:
        result.update(benchmark_steps(config, num_steps, warmup))
        if config.num_models > 1:  # The one-model step of the same config, for the ratio.
            one = benchmark_steps(one_model(config), num_steps, warmup)
            result["one_model_images_per_sec"] = one["train_images_per_sec"]
            ratio = result["model_images_per_sec"] / one["train_images_per_sec"]
            result["models_to_one_ratio"] = round(ratio, 3)
    if "input" in parts:
        result.update(benchmark_input(config, input_batches))
    if "loop" in parts:
        result.update(benchmark_loop(config, num_steps))
    if "step" in parts and "input" in parts:
        ratio = result["input_images_per_sec"] / result["train_images_per_sec"]
        result["input_to_train_ratio"] = round(ratio, 2)
    if "step" in parts and "loop" in parts:
        ratio = result["loop_images_per_sec"] / result["train_images_per_sec"]
        result["loop_to_step_ratio"] = round(ratio, 3)
    return result


def main(argv: list[str]) -> None:
    config = _CONFIG.value
    with config.unlocked():
        if _BATCH_SIZE.value is not None:
            config.batch_size = _BATCH_SIZE.value
        if _DTYPE.value is not None:
            config.dtype = _DTYPE.value
    config_validation.validate(config)
    if _TORCH_SCRIPT.value and "step" not in _PARTS.value:
        cli.fail("--torch_script compares train steps: keep 'step' in --parts")
    result = run(
        config, num_steps=_STEPS.value, warmup=_WARMUP.value, input_batches=_INPUT_BATCHES.value,
        parts=tuple(_PARTS.value),
    )  # fmt: skip
    if _TORCH_SCRIPT.value:
        torch_ips = run_torch_reference(_TORCH_SCRIPT.value, config.batch_size, _STEPS.value)
        result["torch_train_images_per_sec"] = torch_ips
        result["ratio_to_torch"] = round(result["train_images_per_sec"] / torch_ips, 3)
    print(json.dumps(result))


if __name__ == "__main__":
    cli.run(main)
