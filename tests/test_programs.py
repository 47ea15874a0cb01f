"""The step builder the trainer and nin_jax.aot share: abstract state and inputs, platforms."""

import jax
import numpy as np
import pytest
from helpers import load_config

from nin_jax import programs, steps


def build(config, image_shape=(8, 8, 1)):
    mesh = steps.create_mesh(config.num_models)
    return mesh, programs.build(config, mesh, 10, image_shape, 10, 100)


@pytest.mark.parametrize("num_models", [1, 2])
def test_abstract_state_is_the_initial_state(num_models):
    """``jax.eval_shape(init)`` (what aot compiles on) has the real state's shapes, dtypes
    and shardings."""
    _, run = build(load_config("digits", num_models=num_models))
    real = run.init()
    abstract = jax.eval_shape(run.init)
    assert jax.tree.structure(real) == jax.tree.structure(abstract)
    for value, spec in zip(jax.tree.leaves(real), jax.tree.leaves(abstract), strict=True):
        assert (value.shape, value.dtype) == (spec.shape, spec.dtype)
        assert value.sharding.is_equivalent_to(spec.sharding, value.ndim)
    kernel = real[0].params["mlpconv1"]["conv"]["kernel"]
    assert kernel.shape == ((num_models,) if num_models > 1 else ()) + (5, 5, 1, 8)


def test_conv_impl_resolves_for_the_mesh_platform():
    config = load_config("digits")
    assert config.model.conv_impl == "auto"
    _, run = build(config)
    assert programs.platform(steps.create_mesh()) == "cpu"
    assert run.model.conv_impl == "matmul"  # On the CPU; 'xla' for a TPU mesh (test_aot.py).


@pytest.mark.parametrize(
    "preprocess, stats",
    [
        ("standardize", {"mean": (3,), "std": (3,)}),
        ("gcn_zca", {"mean": (3072,), "whitening": (3072, 3072)}),
        ("lcn", {}),
    ],
)
def test_abstract_inputs(preprocess, stats):
    config = load_config("cifar10", preprocess=preprocess, batch_size=16)
    inputs = programs.abstract_inputs(config, steps.create_mesh(), (32, 32, 3), 50000)
    assert {k: (v.shape, v.dtype) for k, v in inputs.train_batch.items()} == {
        "image": ((16, 32, 32, 3), np.uint8),
        "label": ((16,), np.int32),
    }
    assert inputs.eval_batch["mask"].shape == (16,) and inputs.table is None
    assert {k: v.shape for k, v in inputs.stats.items()} == stats


def test_abstract_inputs_with_the_split_on_the_devices():
    config = load_config("digits", data_on_device=True, batch_size=16)
    inputs = programs.abstract_inputs(config, steps.create_mesh(), (8, 8, 1), 1437)
    assert {k: v.shape for k, v in inputs.train_batch.items()} == {"index": (16,)}
    assert inputs.table["image"].shape == (1437, 8, 8, 1)
    assert inputs.table["label"].shape == (1437,)


def test_steps_take_the_abstract_inputs():
    """What aot lowers is what training calls: the train step lowers on the abstract inputs
    and runs on concrete arrays of their shapes."""
    config = load_config("digits", batch_size=8)
    mesh, run = build(config)
    inputs = programs.abstract_inputs(config, mesh, (8, 8, 1), 1437)
    abstract_state, abstract_rng = jax.eval_shape(run.init)
    run.train.lower(abstract_state, inputs.train_batch, abstract_rng, inputs.stats, None)
    batch = {k: np.zeros(v.shape, v.dtype) for k, v in inputs.train_batch.items()}
    stats = {k: np.ones(v.shape, v.dtype) for k, v in inputs.stats.items()}
    state, dropout_rng = run.init()
    state, metrics = run.train(
        state, steps.to_global(batch, mesh), dropout_rng, steps.replicate(stats, mesh), None
    )
    assert int(state.step) == 1 and np.isfinite(float(metrics["loss"]))
