"""The benchmark CLI prints one JSON record with the documented keys and types."""

import json

import pytest
from helpers import assert_one_line_error, run_cli

TINY = ("--config.model.widths=((8,8,8),(8,8,8),(8,8))", "--batch_size=8", "--steps=1")


@pytest.mark.slow
def test_benchmark_prints_one_json_record(digits_data_dir):
    result = run_cli(
        "nin_jax.benchmark", "--config=configs/digits.py", f"--config.data_dir={digits_data_dir}",
        *TINY, "--warmup=1", "--input_batches=3",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    lines = [line for line in result.stdout.splitlines() if line.strip()]
    assert len(lines) == 1
    record = json.loads(lines[0])
    for key in (
        "train_images_per_sec",
        "fed_images_per_sec",
        "eval_images_per_sec",
        "compile_seconds",
        "input_images_per_sec",
        "input_host_us_per_image",
        "input_to_train_ratio",
        "loop_images_per_sec",
        "loop_to_step_ratio",
    ):
        assert isinstance(record[key], float) and record[key] > 0, key
    assert record["input_bytes_per_image"] == 8 * 8 * 1  # uint8 pixels, nothing else.
    assert record["batch_size"] == 8
    assert record["devices"] >= 1 and isinstance(record["devices"], int)
    assert record["backend"] == "cpu"
    assert record["conv_impl"] == "matmul"  # 'auto' resolved for the CPU backend.
    assert record["dtype"] == "float32"
    assert record["dataset"] == "digits" and record["data_on_device"] is False


@pytest.mark.slow
def test_benchmark_of_two_augmented_cifar_models_on_the_devices():
    result = run_cli(
        "nin_jax.benchmark", "--config=configs/cifar10_augmented.py", *TINY, "--warmup=0",
        "--input_batches=2", "--parts=step", "--parts=input", "--config.data_on_device=True",
        "--config.num_models=2",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    record = json.loads(result.stdout.strip().splitlines()[-1])
    assert record["data_on_device"] is True and record["num_models"] == 2
    assert record["model_images_per_sec"] == pytest.approx(
        2 * record["train_images_per_sec"], rel=0.01
    )
    assert record["one_model_images_per_sec"] > 0 and record["models_to_one_ratio"] > 0
    assert record["input_bytes_per_image"] == 4  # An int32 index per image.
    assert "loop_images_per_sec" not in record


def test_benchmark_rejects_bad_flags_in_one_line():
    result = run_cli("nin_jax.benchmark", "--config=configs/cifar10.py", *TINY[:2], "--steps=0")
    assert_one_line_error(result, "flag --steps=0: 0 is not a positive integer")
