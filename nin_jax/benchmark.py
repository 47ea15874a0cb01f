"""Throughput of the real model, train step and input pipeline, as one JSON line.

  python -m nin_jax.benchmark --config=configs/cifar10.py --batch_size=128 --steps=10
  python -m nin_jax.benchmark --config=configs/cifar10.py \\
      --torch_script=../shared/reference/torch_throughput.py   # adds the PyTorch ratio

The train and eval steps are the jitted functions ``nin_jax.train`` runs, on the
state it builds, fed synthetic batches already on the devices, timed after
compilation. The input pipeline is timed alone, on synthetic uint8 images of
the dataset's shape held in memory (as ``load_split`` holds real ones), so no
dataset has to be downloaded.
"""

import json
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import jax
import ml_collections
import numpy as np
import tensorflow_datasets as tfds
from absl import flags
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
from ml_collections import config_flags

from nin_jax import cli, config_validation, input_pipeline, models, optimizer, preprocessing, steps

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
_TORCH_SCRIPT = flags.DEFINE_string(
    "torch_script", None, "Path of the reference torch_throughput.py, run right after nin_jax."
)


def dataset_spec(config: ml_collections.ConfigDict) -> tuple[tuple[int, ...], int]:
    """(image shape, number of classes) from the TFDS builder's metadata; needs no data."""
    features = tfds.builder(config.dataset, data_dir=config.data_dir).info.features
    return tuple(features["image"].shape), features["label"].num_classes


def synthetic_batch(batch_size: int, image_shape, num_classes: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    return {
        "image": rng.standard_normal((batch_size, *image_shape), dtype=np.float32),
        "label": rng.integers(0, num_classes, batch_size, dtype=np.int32),
        "mask": np.ones(batch_size, np.float32),
    }


def _time_calls(fn: Callable[[], Any], steps: int) -> float:
    """Seconds per call of ``fn``, which returns something to block on."""
    start = time.perf_counter()
    for _ in range(steps):
        out = fn()
    jax.block_until_ready(out)
    return (time.perf_counter() - start) / steps


def benchmark_steps(
    config: ml_collections.ConfigDict, num_steps: int, warmup: int
) -> dict[str, float]:
    """Compile time and images/s of the jitted train and eval steps."""
    image_shape, num_classes = dataset_spec(config)
    mesh = steps.create_mesh()
    model = models.from_config(config, num_classes)
    learning_rate_fn = optimizer.create_learning_rate_fn(
        config, max(1, num_steps), warmup + num_steps + 1
    )
    tx = optimizer.create_optimizer(config, learning_rate_fn)
    params_rng, dropout_rng = jax.random.split(jax.random.key(config.seed))
    init = jax.jit(
        lambda rng: steps.create_train_state(rng, model, image_shape, tx),
        out_shardings=NamedSharding(mesh, P()),
    )
    state = init(params_rng)
    host_batch = synthetic_batch(
        input_pipeline.local_batch_size(config.batch_size), image_shape, num_classes
    )
    train_batch = steps.to_global({k: host_batch[k] for k in ("image", "label")}, mesh)
    eval_batch = steps.to_global(host_batch, mesh)
    jit_train, jit_eval = steps.compile_steps(mesh)

    start = time.perf_counter()
    train_fn = jit_train.lower(state, train_batch, dropout_rng).compile()
    eval_fn = jit_eval.lower(state, eval_batch).compile()
    compile_seconds = time.perf_counter() - start

    def train_once():
        nonlocal state
        state, metrics = train_fn(state, train_batch, dropout_rng)
        return metrics

    for _ in range(warmup):
        train_once()
    jax.block_until_ready(state)
    train_seconds = _time_calls(train_once, num_steps)
    jax.block_until_ready(eval_fn(state, eval_batch))
    eval_seconds = _time_calls(lambda: eval_fn(state, eval_batch), num_steps)
    return {
        "train_images_per_sec": round(config.batch_size / train_seconds, 2),
        "eval_images_per_sec": round(config.batch_size / eval_seconds, 2),
        "compile_seconds": round(compile_seconds, 2),
        "train_step_seconds": round(train_seconds, 4),
    }


def synthetic_preprocess(
    config: ml_collections.ConfigDict, split: input_pipeline.Split
) -> preprocessing.Preprocess:
    """``config.preprocess`` with statistics of the right shapes, costing what real ones cost
    to apply (fitting a real ZCA takes longer than the benchmark itself)."""
    if config.preprocess == "gcn_zca":
        dim = int(np.prod(split.images.shape[1:]))
        params = {"mean": np.zeros(dim, np.float32), "whitening": np.eye(dim, dtype=np.float32)}
    else:
        params = preprocessing.fit(config.preprocess, split)
    return preprocessing.from_params(config.preprocess, params)


def benchmark_input(config: ml_collections.ConfigDict, num_batches: int) -> float:
    """Images/s of ``input_pipeline.train_batches`` (the config's preprocessing and
    augmentation) on synthetic in-memory uint8 images."""
    image_shape, num_classes = dataset_spec(config)
    batch_size = input_pipeline.local_batch_size(config.batch_size)
    count = batch_size * max(2, min(num_batches, 64))
    rng = np.random.default_rng(0)
    split = input_pipeline.Split(
        images=rng.integers(0, 256, (count, *image_shape), dtype=np.uint8),
        labels=rng.integers(0, num_classes, count, dtype=np.int32),
    )
    batches = input_pipeline.train_batches(
        split, global_batch_size=config.batch_size, preprocess=synthetic_preprocess(config, split),
        seed=0, augment=config.augment,
    )  # fmt: skip
    next(batches)  # Builds the pipeline and fills the prefetch buffer.
    start = time.perf_counter()
    for _ in range(num_batches):
        next(batches)
    return num_batches * batch_size / (time.perf_counter() - start)


def run_torch_reference(script: str, batch_size: int, steps: int) -> float:
    """``train_images_per_sec`` printed by the seed's PyTorch throughput script."""
    out = subprocess.run(
        [sys.executable, script, "--batch_size", str(batch_size), "--steps", str(steps)],
        capture_output=True,
        text=True,
        check=True,
    )
    return float(json.loads(out.stdout.strip().splitlines()[-1])["train_images_per_sec"])


def run(
    config: ml_collections.ConfigDict, *, steps: int, warmup: int, input_batches: int
) -> dict[str, Any]:
    """The benchmark's JSON record for ``config`` (its batch_size and dtype)."""
    result: dict[str, Any] = {
        "dataset": config.dataset,
        "batch_size": config.batch_size,
        "dtype": config.dtype,
        "conv_impl": models.resolve_conv_impl(config.model.conv_impl),
        "backend": jax.default_backend(),
        "devices": jax.device_count(),
        "device_kind": jax.devices()[0].device_kind,
    }
    result.update(benchmark_steps(config, steps, warmup))
    result["input_images_per_sec"] = round(benchmark_input(config, input_batches), 2)
    result["input_to_train_ratio"] = round(
        result["input_images_per_sec"] / result["train_images_per_sec"], 2
    )
    return result


def main(argv: list[str]) -> None:
    config = _CONFIG.value
    with config.unlocked():
        if _BATCH_SIZE.value is not None:
            config.batch_size = _BATCH_SIZE.value
        if _DTYPE.value is not None:
            config.dtype = _DTYPE.value
    config_validation.validate(config)
    result = run(
        config, steps=_STEPS.value, warmup=_WARMUP.value, input_batches=_INPUT_BATCHES.value
    )
    if _TORCH_SCRIPT.value:
        torch_ips = run_torch_reference(_TORCH_SCRIPT.value, config.batch_size, _STEPS.value)
        result["torch_train_images_per_sec"] = torch_ips
        result["ratio_to_torch"] = round(result["train_images_per_sec"] / torch_ips, 3)
    print(json.dumps(result))


if __name__ == "__main__":
    cli.run(main)
