"""Training: learning on a fixed batch, end-to-end runs, resume, and device-count invariance."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import optax
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from conftest import REPO_ROOT, init_state, load_config, xla_flags

from nin_jax import input_pipeline, models, optimizer, steps, train

SCRIPTS = REPO_ROOT / "tests" / "scripts"
sys.path.insert(0, str(SCRIPTS))
import train_fixed_batch  # noqa: E402


def to_float(images):
    return tf.cast(images, tf.float32)


def test_loss_decreases_on_a_fixed_batch():
    config = load_config("digits", learning_rate=0.05, model__dropout_rate=0.0)
    config.model.widths = ((32, 32, 32), (32, 32, 32), (32, 32))
    model = models.from_config(config, num_classes=10)
    tx = optimizer.create_optimizer(config, optax.constant_schedule(config.learning_rate))
    state = init_state(model, (8, 8, 1), tx)
    rng = np.random.default_rng(0)
    batch = {
        "image": rng.normal(size=(16, 8, 8, 1)).astype(np.float32),
        "label": rng.integers(0, 10, 16).astype(np.int32),
    }
    step = jax.jit(steps.train_step)
    losses = []
    for _ in range(40):
        state, metrics = step(state, batch, jax.random.key(1))
        losses.append(float(metrics["loss"]))
    assert int(state.step) == 40
    assert losses[-1] < 0.7 * losses[0], losses
    assert np.mean(losses[-10:]) < np.mean(losses[:10])


def test_learning_rate_warms_up_then_decays():
    config = load_config("digits", learning_rate=0.1, warmup_epochs=1.0)
    cosine = optimizer.create_learning_rate_fn(config, steps_per_epoch=10, total_steps=30)
    assert float(cosine(0)) == 0.0
    assert float(cosine(5)) == pytest.approx(0.05)
    assert float(cosine(10)) == pytest.approx(0.1)
    assert float(cosine(30)) == pytest.approx(0.0, abs=1e-7)
    config.update({"lr_schedule": "step", "lr_decay_epochs": (2,), "lr_decay_factor": 0.1})
    stepwise = optimizer.create_learning_rate_fn(config, steps_per_epoch=10, total_steps=30)
    assert [float(stepwise(s)) for s in (15, 25)] == pytest.approx([0.1, 0.01])


def test_weight_decay_applies_to_kernels_only():
    params = {"conv": {"kernel": np.ones((1, 1, 2, 2)), "bias": np.ones(2)}}
    tx = optimizer.create_optimizer(
        load_config("digits", weight_decay=0.5, momentum=0.0), optax.constant_schedule(1.0)
    )
    zeros = jax.tree.map(np.zeros_like, params)
    updates, _ = tx.update(zeros, tx.init(params), params)
    np.testing.assert_allclose(updates["conv"]["kernel"], -0.5)
    np.testing.assert_allclose(updates["conv"]["bias"], 0.0)


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


def test_resume_continues_from_the_last_checkpoint(tmp_path, digits_data_dir):
    # A constant rate makes the schedule independent of the step budget, so the resumed run
    # must reproduce an uninterrupted one exactly (data order and dropout depend on the step).
    config = load_config(
        "digits", data_dir=digits_data_dir, checkpoint_every_steps=2, lr_schedule="constant"
    )
    config.num_train_steps = 3
    train.train_and_evaluate(config, str(tmp_path / "resumed"))
    config.num_train_steps = 6
    resumed, results = train.train_and_evaluate(config, str(tmp_path / "resumed"))
    assert results["step"] == 6 and results["steps_this_run"] == 3

    uninterrupted, _ = train.train_and_evaluate(config, str(tmp_path / "straight"))
    for a, b in zip(params_of(resumed), params_of(uninterrupted), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-6)


def test_eval_batches_cover_every_example_once():
    split = input_pipeline.Split(
        images=np.zeros((37, 4, 4, 1), np.uint8), labels=np.arange(37, dtype=np.int32)
    )
    batches = list(
        input_pipeline.eval_batches(split, global_batch_size=8, preprocess=to_float, num_batches=5)
    )
    assert [len(b["label"]) for b in batches] == [8] * 5
    seen = np.concatenate([b["label"][b["mask"] == 1] for b in batches])
    np.testing.assert_array_equal(np.sort(seen), np.arange(37))


def test_train_batches_are_a_function_of_seed_and_step():
    split = input_pipeline.Split(
        images=np.arange(40, dtype=np.uint8).reshape(40, 1, 1, 1),
        labels=np.arange(40, dtype=np.int32),
    )
    kwargs = dict(global_batch_size=8, preprocess=to_float, seed=3)
    stream = input_pipeline.train_batches(split, **kwargs)
    first = [next(stream)["label"] for _ in range(12)]  # 5 steps per epoch: crosses epochs.
    later = input_pipeline.train_batches(split, start_step=7, **kwargs)
    for expected in first[7:]:
        np.testing.assert_array_equal(next(later)["label"], expected)
    np.testing.assert_array_equal(np.sort(np.concatenate(first[:5])), np.arange(40))


def fixed_batch_training_on_four_devices() -> dict:
    env = {
        **os.environ,
        "XLA_FLAGS": xla_flags(4),
        "PYTHONPATH": str(REPO_ROOT),
    }
    out = subprocess.run(
        [sys.executable, str(SCRIPTS / "train_fixed_batch.py")],
        env=env, capture_output=True, text=True, timeout=300, check=True,
    )  # fmt: skip
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_four_devices_give_the_same_training_as_one():
    one = train_fixed_batch.fixed_batch_training()  # This process has one CPU device.
    four = fixed_batch_training_on_four_devices()
    assert (one["devices"], four["devices"]) == (1, 4)
    np.testing.assert_allclose(four["losses"], one["losses"], rtol=1e-5)
    assert four["checksum"] == pytest.approx(one["checksum"], rel=1e-5)
