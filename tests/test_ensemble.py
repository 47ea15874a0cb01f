"""Many models in one step: a K = 2 run is two one-model runs; sweeps; the tools on an ensemble."""

import jax
import numpy as np
import pytest
from helpers import load_config

from nin_jax import ensemble, errors, evaluate, restore, train
from nin_jax.datasets import standins

STEPS = 20
SWEEP = {"learning_rate": (0.02, 0.05), "dropout_rate": (0.3, 0.5)}


def config_of(data_dir: str, **overrides):
    config = load_config(
        "digits", data_dir=data_dir, num_train_steps=STEPS, log_every_steps=10,
        checkpoint_every_steps=10, eval_every_steps=STEPS, seed=3,
    )  # fmt: skip
    config.update(overrides)
    return config


@pytest.fixture(scope="module")
def pair(tmp_path_factory, digits_data_dir) -> tuple[str, dict]:
    """A K = 2 run with a learning-rate and dropout sweep: (workdir, results)."""
    workdir = str(tmp_path_factory.mktemp("pair"))
    config = config_of(digits_data_dir, num_models=2)
    for name, values in SWEEP.items():
        config.sweep[name] = values
    _, results = train.train_and_evaluate(config, workdir)
    return workdir, results


@pytest.mark.slow
def test_two_models_train_exactly_as_two_single_runs(pair, digits_data_dir, tmp_path):
    workdir, results = pair
    stacked = restore.load(workdir).params
    for k in range(2):
        single = config_of(
            digits_data_dir, init_seed=3 + k, learning_rate=SWEEP["learning_rate"][k]
        )
        single.model.dropout_rate = SWEEP["dropout_rate"][k]
        state, alone = train.train_and_evaluate(single, str(tmp_path / f"single_{k}"))
        for ours, theirs in zip(
            jax.tree.leaves(stacked), jax.tree.leaves(state.params), strict=True
        ):
            np.testing.assert_allclose(np.asarray(ours)[k], np.asarray(theirs), atol=1e-5)
        model = results["models"][k]
        assert model["test_accuracy"] == pytest.approx(alone["test_accuracy"])
        assert model["init_seed"] == 3 + k
        assert model["learning_rate"] == SWEEP["learning_rate"][k]


def test_results_hold_every_model_and_the_ensemble(pair):
    _, results = pair
    errors = [m["test_error"] for m in results["models"]]
    assert results["mean_test_error"] == pytest.approx(np.mean(errors))
    assert results["std_test_error"] == pytest.approx(np.std(errors))
    assert results["test_error"] == results["ensemble_test_error"]
    assert results["ensemble_test_accuracy"] == pytest.approx(1 - results["ensemble_test_error"])


@pytest.mark.slow
def test_tools_pick_a_model_or_the_ensemble(pair):
    workdir, results = pair
    for k, model in enumerate(results["models"]):
        evaluated, _ = evaluate.run(workdir, model=k, output_dir=f"{workdir}/eval_{k}")
        assert evaluated["error"] == pytest.approx(model["test_error"])
    evaluated, _ = evaluate.run(workdir, output_dir=f"{workdir}/eval_all")
    assert evaluated["error"] == pytest.approx(results["ensemble_test_error"])

    trained = restore.load(workdir)
    images, _ = standins.load("8x8x1", "test")
    mean = (trained.probabilities(images[:4], 0) + trained.probabilities(images[:4], 1)) / 2
    np.testing.assert_allclose(trained.probabilities(images[:4]), mean, rtol=1e-6)
    maps = trained.apply(images[:2], method="class_maps", model=1)
    assert maps.shape[0] == 2 and maps.shape[-1] == 10
    with pytest.raises(errors.WorkdirError, match="holds models 0 to 1"):
        trained.model_params(2)


def test_model_hyperparameters_follow_the_sweep():
    config = load_config("digits", num_models=3, init_seed=None, seed=5)
    config.sweep.weight_decay = (0.0, 1e-4, 1e-3)
    assert ensemble.init_seeds(config) == [5, 6, 7]
    assert ensemble.model_hyperparameters(config)[2] == {"init_seed": 7, "weight_decay": 1e-3}
