"""Every recipe in configs/ trains and evaluates end to end on 1 device, builds the network
its docstring states and follows docs/RECIPES.md's schedules; the variants' sizes.

Real datasets come from ``tfds.testing.mock_data`` (random images, any split
string accepted); ``digits`` and ``default`` run on the embedded digits.
test_recipes_multidevice.py runs the same on 4 fake CPU devices.

Compilation dominates the time, so the runs use tiny widths, XLA convolutions
(faster to compile than the 'matmul' ones) and the 'rbg' PRNG (threefry's
dropout masks compile slowly on CPU). The ZCA statistics of the mock CIFAR data
are seeded into the cache (identity whitening): fitting a 3072 x 3072 ZCA
takes ~40 s here, and fitting is tested against numpy in test_preprocessing.py.
"""

import importlib
import math
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import REPO_ROOT, load_config

from nin_jax import models, optimizer, statistics, train

RECIPES = sorted(p.stem for p in (REPO_ROOT / "configs").glob("*.py") if p.stem != "__init__")
MOCK_EXAMPLES = 24
# dataset -> (image side, channels, classes).
SHAPES = {
    "digits": (8, 1, 10),
    "mnist": (28, 1, 10),
    "fashion_mnist": (28, 1, 10),
    "cifar10": (32, 3, 10),
    "cifar100": (32, 3, 100),
    "svhn_cropped": (32, 3, 10),
}


def expected_params(config) -> int:
    """The parameter count of ``config``'s NIN, computed layer by layer."""
    side, channels, classes = SHAPES[config.dataset]
    count, fan_in = 0, channels
    for i, (widths, k) in enumerate(
        zip(config.model.widths, config.model.kernel_sizes, strict=True)
    ):
        last = i == len(config.model.widths) - 1
        for j, width in enumerate((*widths, classes) if last else widths):
            count += (k if j == 0 else 1) ** 2 * fan_in * width + width
            fan_in = width
        if not last:
            side = (side - 1) // 2 + 1
    if config.model.head != "gap":
        count += side * side * classes * classes + classes
    return count


def seed_zca_cache(data_dir: str) -> None:
    for dataset in ("cifar10", "cifar100"):
        path = statistics.stats_path(data_dir, dataset, "train")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        np.savez(path, mean=np.zeros(3072, np.float32), whitening=np.eye(3072, dtype=np.float32))


def tiny_recipe(name: str, **overrides):
    """configs/<name>.py with conftest's tiny overrides and XLA convolutions."""
    return load_config(name, model__conv_impl="xla", **overrides)


@pytest.fixture(scope="module", autouse=True)
def fast_prng():
    previous = jax.config.jax_default_prng_impl
    jax.config.update("jax_default_prng_impl", "rbg")
    yield
    jax.config.update("jax_default_prng_impl", previous)


def check_results(name: str, config, results: dict, devices: int) -> None:
    assert results["step"] == 2, name
    assert results["devices"] == devices, name
    assert results["num_params"] == expected_params(config), name
    assert math.isfinite(results["test_loss"]) and 0 <= results["test_accuracy"] <= 1, name


def documented_params(name: str) -> int | None:
    """The parameter count ``configs/<name>.py``'s docstring states ("966,986 parameters")."""
    doc = importlib.import_module(f"nin_jax.configs.{name}").__doc__
    found = re.search(r"([\d,]{6,}) parameters", doc)
    return int(found.group(1).replace(",", "")) if found else None


def test_configs_is_the_package_folder():
    """``--config=configs/x.py`` from the repository root reads the package's recipes."""
    package = sorted(p.name for p in (REPO_ROOT / "nin_jax" / "configs").glob("*.py"))
    assert sorted(p.name for p in (REPO_ROOT / "configs").glob("*.py")) == package
    for name in package:
        linked, original = REPO_ROOT / "configs" / name, REPO_ROOT / "nin_jax" / "configs" / name
        assert linked.read_bytes() == original.read_bytes(), name


@pytest.mark.parametrize("name", RECIPES)
def test_recipe_builds_the_network_its_docstring_states(name):
    config = importlib.import_module(f"nin_jax.configs.{name}").get_config()
    side, channels, classes = SHAPES[config.dataset]
    model = models.from_config(config, classes)
    shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, side, side, channels)))
    count = sum(x.size for x in jax.tree.leaves(shapes))
    assert count == expected_params(config)
    if name not in ("default", "digits"):  # The paper recipes say their size.
        assert documented_params(name) == count, name


def recipes_md_schedules() -> dict[str, tuple]:
    """docs/RECIPES.md's table of schedules: recipe -> (batch, rate, epochs, decays, warmup
    epochs, warmup steps); decays are the step schedule's epochs or "cosine"."""
    rows = {}
    text = (REPO_ROOT / "docs" / "RECIPES.md").read_text()
    pattern = r"^\| ([a-z0-9_, ]+) \| (\d+) \| ([\d.]+) \| (\d+) \| ([\d, ]+|cosine) \| "
    pattern += r"([\d.]+) epoch \((\d+) steps\) \|$"
    for names, *fields in re.findall(pattern, text, re.MULTILINE):
        batch, rate, epochs, decays, warmup, warmup_steps = fields
        row = (int(batch), float(rate), int(epochs), decays, float(warmup), int(warmup_steps))
        rows.update(dict.fromkeys(names.split(", "), row))
    return rows


def test_recipes_md_states_the_recipes_schedules():
    train_examples = {"cifar10": 50_000, "cifar100": 50_000, "svhn_cropped": 604_388}
    documented = recipes_md_schedules()
    assert set(documented) == set(RECIPES) - {"default", "digits"}
    for name, row in documented.items():
        config = importlib.import_module(f"nin_jax.configs.{name}").get_config()
        examples = train_examples.get(config.dataset, 60_000)
        warmup_steps = int(config.warmup_epochs * examples / config.batch_size)
        decays = ", ".join(str(epoch) for epoch in config.lr_decay_epochs)
        if config.lr_schedule == "cosine":
            decays = "cosine"
        got = (config.batch_size, config.learning_rate, config.num_epochs, decays)
        assert (*got, config.warmup_epochs, warmup_steps) == row, name


@pytest.fixture(scope="module")
def mock_data_dir(tmp_path_factory) -> str:
    data_dir = str(tmp_path_factory.mktemp("mock_tfds"))
    seed_zca_cache(data_dir)
    return data_dir


@pytest.mark.slow
@pytest.mark.parametrize("name", [r for r in RECIPES if r not in ("default", "digits")])
def test_recipe_trains_and_evaluates_on_one_device(name, mock_data_dir, tmp_path):
    import tensorflow_datasets as tfds

    config = tiny_recipe(name, data_dir=mock_data_dir)
    with tfds.testing.mock_data(
        policy=tfds.testing.MockPolicy.USE_CODE, num_examples=MOCK_EXAMPLES
    ):
        _, results = train.train_and_evaluate(config, str(tmp_path))
    check_results(name, config, results, devices=1)
    assert results["test_examples"] == MOCK_EXAMPLES


@pytest.mark.slow
@pytest.mark.parametrize("name", ["default", "digits"])
def test_digits_recipes_evaluate_every_example_of_1001_once(name, digits_data_dir, tmp_path):
    """A 1,001-example eval split with global batch 128: 8 batches, the last one padded."""
    config = tiny_recipe(name, data_dir=digits_data_dir, eval_split="train[:1001]", batch_size=128)
    _, results = train.train_and_evaluate(config, str(tmp_path))
    check_results(name, config, results, devices=1)
    assert results["test_examples"] == 1001


def test_authors_learning_rate_multipliers():
    params = {
        f"mlpconv{i}": {
            name: {"kernel": jnp.ones(2), "bias": jnp.ones(2)} for name in ("conv", "cccp2")
        }
        for i in (1, 2, 3)
    }
    multipliers = optimizer.authors_lr_multipliers(params)
    assert multipliers["mlpconv1"]["conv"] == {"kernel": 1.0, "bias": 2.0}
    assert multipliers["mlpconv2"]["cccp2"] == {"kernel": 1.0, "bias": 2.0}
    assert multipliers["mlpconv3"]["cccp2"] == {"kernel": 0.1, "bias": pytest.approx(0.2)}

    def first_update(lr_multipliers):
        config = load_config("cifar10", lr_multipliers=lr_multipliers, weight_decay=0.0)
        tx = optimizer.create_optimizer(config, lambda step: 0.5)
        updates, _ = tx.update(params, tx.init(params), params)  # gradient 1 everywhere
        return updates

    plain, scaled = first_update(False), first_update(True)
    np.testing.assert_allclose(plain["mlpconv3"]["cccp2"]["bias"], -0.5)
    np.testing.assert_allclose(scaled["mlpconv1"]["conv"]["bias"], -1.0)
    np.testing.assert_allclose(scaled["mlpconv1"]["conv"]["kernel"], -0.5)
    np.testing.assert_allclose(scaled["mlpconv3"]["cccp2"]["kernel"], -0.05, rtol=1e-6)
