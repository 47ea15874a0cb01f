"""train_and_evaluate end to end: one step on mock data, and resume == uninterrupted."""

import json

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds
from helpers import load_config

from nin_jax import health, train


@pytest.mark.slow  # test_recipes.py trains every recipe under mock data too.
@pytest.mark.parametrize("name", ["svhn", "cifar10", "mnist"])
def test_one_step_end_to_end_on_mock_data(name, tmp_path):
    # Standardisation for all: fitting CIFAR's 3072 x 3072 ZCA takes ~40 s here, and the
    # recipes' own preprocessing is covered by test_recipes.py.
    config = load_config(name, num_train_steps=1, preprocess="standardize")
    with tfds.testing.mock_data(policy=tfds.testing.MockPolicy.USE_CODE, num_examples=20):
        state, results = train.train_and_evaluate(config, str(tmp_path))
    assert int(state.step) == 1
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved == results
    assert {"test_accuracy", "test_error", "step", "train_seconds"} <= set(saved)
    assert saved["step"] == 1 and saved["test_examples"] == 20
    assert saved["test_error"] == pytest.approx(1 - saved["test_accuracy"])
    assert (tmp_path / "checkpoints" / "1").is_dir()


def params_of(state):
    return [np.asarray(p) for p in jax.tree.leaves(state.params)]


@pytest.mark.slow
def test_resume_continues_from_the_last_checkpoint(tmp_path, digits_data_dir):
    # A constant rate makes the schedule independent of the step budget, so the resumed run
    # must reproduce an uninterrupted one exactly (data order and dropout depend on the step).
    config = load_config(
        "digits", data_dir=digits_data_dir, checkpoint_every_steps=2, lr_schedule="constant"
    )
    config.num_train_steps = 3
    train.train_and_evaluate(config, str(tmp_path / "resumed"))
    config.num_train_steps = 6
    resumed, results = train.train_and_evaluate(
        config, str(tmp_path / "resumed"), allow_schedule_change=True
    )
    assert results["step"] == 6 and results["train_steps"] == 6
    first, second = results["sessions"]
    assert (first["start_step"], first["end_step"], second["start_step"]) == (0, 3, 3)
    assert second["schedule_changes"] == {"num_train_steps": [3, 6]}
    _, again = train.train_and_evaluate(config, str(tmp_path / "resumed"))  # Evaluates only.
    assert again["sessions"] == results["sessions"] and again["train_steps"] == 6
    assert again["images_per_sec"] == results["images_per_sec"] > 0

    uninterrupted, _ = train.train_and_evaluate(config, str(tmp_path / "straight"))
    for a, b in zip(params_of(resumed), params_of(uninterrupted), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-6)


@pytest.mark.slow
def test_the_split_on_the_devices_trains_exactly_as_host_batches(tmp_path, digits_data_dir):
    """config.data_on_device gathers the same rows on the devices: the same training."""
    trained = {}
    for on_device in (False, True):
        config = load_config(
            "digits", data_dir=digits_data_dir, num_train_steps=4, augment="crop_flip",
            data_on_device=on_device,
        )  # fmt: skip
        state, _ = train.train_and_evaluate(config, str(tmp_path / f"on_device_{on_device}"))
        trained[on_device] = params_of(state)
    for a, b in zip(trained[False], trained[True], strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.slow
def test_a_run_pinned_at_ln_c_logs_one_warning(tmp_path, digits_data_dir, caplog):
    """Tiny initial weights keep every logit near 0: the loop says so, and trains on."""
    caplog.set_level("WARNING", logger="absl")
    steps = health.STALL_STEPS + 10
    config = load_config(
        "digits", data_dir=digits_data_dir, num_train_steps=steps, log_every_steps=steps // 3,
        model__init_std=1e-4,
    )  # fmt: skip
    _, results = train.train_and_evaluate(config, str(tmp_path))
    stalls = [r.getMessage() for r in caplog.records if "within 1% of ln 10" in r.getMessage()]
    assert len(stalls) == 1 and stalls[0].startswith(f"step {steps}: the loss (2.30")
    assert f"for {steps} steps after the 0 warmup steps" in stalls[0]
    assert "config.model.kernel_init" in stalls[0]
    assert results["step"] == steps


def test_a_tfds_dataset_by_name_trains_and_evaluates(tmp_path):
    """Any TFDS image-classification builder (one the tests register)."""
    import tiny_datasets  # noqa: F401  (registers the builders)

    config = load_config("digits", dataset="tiny_shapes", data_dir=str(tmp_path / "tfds"))
    state, results = train.train_and_evaluate(config, str(tmp_path / "workdir"))
    assert int(state.step) == 2 and results["test_examples"] == 144  # Test digits 0-3.
    assert results["dataset"] == "tiny_shapes"
    dataset = json.loads((tmp_path / "workdir" / "dataset.json").read_text())
    assert dataset["class_names"] == ["disc", "ring", "bar", "cross"]
    assert dataset["image_shape"] == [12, 12, 3]


def test_the_host_waits_for_the_step_two_back(monkeypatch):
    waited = []
    monkeypatch.setattr(train.jax, "block_until_ready", waited.append)
    in_flight = train.StepsInFlight(limit=2)
    for step in range(1, 6):
        in_flight.add(step)
        assert waited == list(range(1, max(step - 2, 0) + 1))
