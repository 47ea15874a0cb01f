"""The benchmark CLI prints one JSON record with the documented keys and types."""

import json

from helpers import assert_one_line_error, run_cli

TINY = ("--config.model.widths=((8,8,8),(8,8,8),(8,8))", "--batch_size=8", "--steps=1")


def test_benchmark_prints_one_json_record():
    result = run_cli(
        "nin_jax.benchmark", "--config=configs/cifar10.py", *TINY, "--warmup=1", "--input_batches=3"
    )
    assert result.returncode == 0, result.stderr[-2000:]
    lines = [line for line in result.stdout.splitlines() if line.strip()]
    assert len(lines) == 1
    record = json.loads(lines[0])
    for key in (
        "train_images_per_sec",
        "eval_images_per_sec",
        "compile_seconds",
        "input_images_per_sec",
        "input_to_train_ratio",
    ):
        assert isinstance(record[key], float) and record[key] > 0, key
    assert record["batch_size"] == 8
    assert record["devices"] >= 1 and isinstance(record["devices"], int)
    assert record["backend"] == "cpu"
    assert record["conv_impl"] == "matmul"  # 'auto' resolved for the CPU backend.
    assert record["dtype"] == "float32"
    assert record["dataset"] == "cifar10"


def test_benchmark_rejects_bad_flags_in_one_line():
    result = run_cli("nin_jax.benchmark", "--config=configs/cifar10.py", *TINY[:2], "--steps=0")
    assert_one_line_error(result, "flag --steps=0: 0 is not a positive integer")
