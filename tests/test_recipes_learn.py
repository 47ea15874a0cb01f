"""The paper recipes start healthy on real images, where the authors' initialisation does not.

Every check runs the recipe at its real input shape and real widths on its
real-image stand-in (nin_jax/datasets/standins.py), preprocessed as the recipe
says (statistics fitted on the stand-in's first ``FIT_IMAGES`` training images),
forward passes only: at initialisation every logit is equal (the loss is
exactly ln C; within 1% of it for CIFAR-100's random zero-mean class kernel),
every class map is alive on every image, and the blocks keep the input's scale,
where the authors' N(0, 0.05) weights shrink it 25 to 300 times by the second
block (the stall at ln C: docs/RECIPES.md, "Diagnosis").

Then each recipe trains, with its optimizer, initialisation and schedule (its
warmup compressed to ``LEARN_WARMUP_STEPS``), on a fixed batch of real stand-in
images at its input shape: the loss must fall below 0.9 ln C within
``LEARN_STEPS`` steps, where the authors' initialisation stays at ln C. How many
steps the recipes take on the whole stand-in (batches of 128, 70 to 420 steps to
leave ln C) is in docs/RECIPES.md, "Real-image stand-in runs": minutes per
recipe on 2 CPU cores, too long for this suite.

Each check runs on every recipe in the slow tier (full-width networks compile and train
for seconds each); the default tier runs it on the MNIST recipe, the smallest network (and
on the CIFAR-100 one, whose random class kernel takes the other branch).
"""

import functools
import importlib.util
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import REPO_ROOT, set_field

from nin_jax import health, models, optimizer, preprocessing, statistics, steps
from nin_jax.datasets import standins

PAPER_RECIPES = (
    "mnist",
    "cifar10",
    "cifar10_augmented",
    "cifar100",
    "svhn",
    "cifar10_fc",
    "cifar10_fc_dropout",
)
STANDIN_OF = {"mnist": "28x28x1", "cifar100": "pairs_32x32x3"}  # the others: 32x32x3
FIT_IMAGES = 300
PROBE_IMAGES = 16
LEARN_STEPS = 60
LEARN_WARMUP_STEPS = 3
# The authors' initialisation and per-layer rates, one override away from every recipe.
AUTHORS = {
    "model.init_std": 0.05,
    "model.class_init_std": None,
    "model.class_bias": 0.0,
    "lr_multipliers": True,
}


def recipes(fast: tuple[str, ...], among: tuple[str, ...] = PAPER_RECIPES) -> list:
    """``among`` as test parameters, those not in ``fast`` in the slow tier."""
    return [pytest.param(n, marks=() if n in fast else pytest.mark.slow) for n in among]


@functools.cache
def diagnosis():
    """benchmarks/recipe_diagnosis.py as a module (its numpy statistics fitting)."""
    spec = importlib.util.spec_from_file_location(
        "recipe_diagnosis", REPO_ROOT / "benchmarks" / "recipe_diagnosis.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def recipe(name: str, **overrides):
    """configs/<name>.py with ``overrides`` (dotted keys) and XLA convolutions (fast to
    compile)."""
    config = importlib.import_module(f"nin_jax.configs.{name}").get_config()
    config.model.conv_impl = "xla"
    for key, value in overrides.items():
        set_field(config, key.split("."), value)
    return config


@functools.cache
def standin_inputs(name: str, preprocess: str) -> tuple[np.ndarray, int]:
    """(the first ``PROBE_IMAGES`` training images of a stand-in, preprocessed, its classes)."""
    images = standins.load(name, "train")[0][:FIT_IMAGES]
    stats = diagnosis().fit_stats(preprocess, images)
    probe = images[:PROBE_IMAGES]
    inputs = np.asarray(jax.jit(preprocessing.apply, static_argnums=0)(preprocess, stats, probe))
    return inputs, standins.STANDINS[name].num_classes


def recipe_inputs(name: str, config):
    return standin_inputs(STANDIN_OF.get(name, "32x32x3"), config.preprocess)


def init_probe(config, images: np.ndarray, num_classes: int) -> dict:
    """Loss over ln C, dead classes and block RMS over input RMS at initialisation."""
    model = models.from_config(config, num_classes)
    params = jax.jit(model.init)(jax.random.key(0), images[:1])["params"]
    apply = jax.jit(lambda p, x: model.apply({"params": p}, x, mutable=["intermediates"]))
    logits, variables = apply(params, images)
    outputs = variables["intermediates"]["block_outputs"]
    uniform_loss = jnp.mean(jax.nn.logsumexp(logits, -1) - jnp.mean(logits, -1))
    input_rms = float(np.sqrt(np.mean(images**2)))
    return {
        "uniform_loss_over_ln_c": float(uniform_loss) / math.log(num_classes),
        "logit_spread": float(jnp.max(logits) - jnp.min(logits)),
        "dead": np.asarray(health.dead_classes(outputs[-1])),
        "relative_rms": [float(v) / input_rms for v in health.activation_rms(outputs).values()],
    }


@pytest.mark.parametrize("name", recipes(("mnist", "cifar100")))
def test_recipe_starts_with_equal_logits_live_maps_and_kept_scale(name):
    config = recipe(name)
    images, num_classes = recipe_inputs(name, config)
    probe = init_probe(config, images, num_classes)
    if config.model.head == "gap" and config.model.class_init_std == 0.0:
        # Every class map is 1 everywhere: equal logits.
        assert probe["logit_spread"] == 0.0
        assert probe["uniform_loss_over_ln_c"] == pytest.approx(1.0, abs=1e-6)
    else:  # CIFAR-100's random zero-mean class kernel: nearly equal logits.
        assert probe["uniform_loss_over_ln_c"] == pytest.approx(1.0, abs=0.01)
    assert not probe["dead"].any()
    first, second = probe["relative_rms"][:2]
    assert 0.5 < first < 3 and 0.5 < second < 3, probe["relative_rms"]


@pytest.mark.slow
def test_a_random_class_kernel_needs_zero_mean_kernels_to_start_near_ln_c():
    """The class layer's inputs share a large positive mean: random He-normal kernels turn
    it into per-class offsets (logits far apart), zero-mean ones do not."""
    losses = {}
    for kernel_init in ("he_normal", "he_normal_zero_mean"):
        config = recipe("cifar100", **{"model.kernel_init": kernel_init})
        images, num_classes = recipe_inputs("cifar100", config)
        losses[kernel_init] = init_probe(config, images, num_classes)["uniform_loss_over_ln_c"]
    assert losses["he_normal"] > 1.2 and losses["he_normal_zero_mean"] < 1.01, losses


@pytest.mark.parametrize("name", recipes(("mnist",), among=("mnist", "cifar10", "svhn")))
def test_the_authors_initialisation_shrinks_activations_with_depth(name):
    config = recipe(name, **AUTHORS)
    images, num_classes = recipe_inputs(name, config)
    probe = init_probe(config, images, num_classes)
    assert probe["relative_rms"][1] < 0.1, probe["relative_rms"]
    assert probe["logit_spread"] < 0.1


def test_diagnosis_zca_matches_nin_jax_statistics():
    """The script's SVD-based ZCA against the package's eigendecomposition, with fewer
    images than dimensions (the covariance's null space is whitened too)."""
    images = standins.load("32x32x3", "test")[0][:40, ::4, ::4]  # 40 images of 8x8x3
    mean, whitening = statistics.zca_from_moments(*statistics.zca_moments(images))
    stats = diagnosis().zca_stats(images)
    np.testing.assert_allclose(stats["mean"], mean, atol=1e-4)
    np.testing.assert_allclose(stats["whitening"], whitening, rtol=1e-3, atol=1e-3)


def fixed_batch_losses(
    config, images: np.ndarray, labels: np.ndarray, num_classes: int, stop_below: float = 0.0
):
    """Losses over ln C for up to ``LEARN_STEPS`` steps on one fixed batch of uint8
    ``images`` (until one is below ``stop_below``), with the recipe's optimizer and
    schedule in epochs of ``LEARN_WARMUP_STEPS / warmup_epochs`` steps (its warmup lasts
    ``LEARN_WARMUP_STEPS``; its decays come later)."""
    per_epoch = max(1, round(LEARN_WARMUP_STEPS / config.warmup_epochs))
    tx = optimizer.create_optimizer(
        config, optimizer.create_learning_rate_fn(config, per_epoch, 10 * LEARN_STEPS)
    )
    model = models.from_config(config, num_classes)
    state = jax.jit(lambda key: steps.create_train_state(key, model, images.shape[1:], tx))(
        jax.random.key(0)
    )
    stats = diagnosis().fit_stats(config.preprocess, images)
    inputs = steps.Inputs(config.preprocess, config.augment, 0)
    step = jax.jit(
        lambda state, batch: steps.train_step(
            state, inputs.train_batch(stats, None, batch, state.step), jax.random.key(1)
        )
    )
    batch = {"image": images, "label": labels.astype(np.int32)}
    losses = []
    for _ in range(LEARN_STEPS):
        state, metrics = step(state, batch)
        losses.append(float(metrics["loss"]) / math.log(num_classes))
        if losses[-1] < stop_below:
            break
    return np.array(losses)


@functools.cache
def learning_batch(standin: str) -> tuple[np.ndarray, np.ndarray, int]:
    """8 training images of a stand-in, of 8 different classes, their labels, its classes."""
    images, labels = standins.load(standin, "train")
    _, first = np.unique(labels, return_index=True)
    rows = np.sort(first)[:8]
    return images[rows], labels[rows], standins.STANDINS[standin].num_classes


@pytest.mark.parametrize("name", recipes(("mnist",)))
def test_recipe_takes_a_fixed_batch_of_real_images_below_0_9_ln_c(name):
    images, labels, num_classes = learning_batch(STANDIN_OF.get(name, "32x32x3"))
    relative = fixed_batch_losses(recipe(name), images, labels, num_classes, stop_below=0.9)
    assert relative[0] == pytest.approx(1.0, abs=0.02)  # Equal logits at the start.
    assert relative.min() < 0.9, relative.round(3)


@pytest.mark.slow
def test_the_authors_initialisation_stays_at_ln_c_on_the_same_batch():
    images, labels, num_classes = learning_batch("28x28x1")
    relative = fixed_batch_losses(recipe("mnist", **AUTHORS), images, labels, num_classes)
    assert relative.min() > 0.99, relative.round(3)


def test_diagnosis_softmax_regression_starts_at_ln_c_and_learns_real_pairs():
    """The class-layer-alone probe: kernel 0 and bias 1 give loss ln C at the first step;
    on the pairs' pixels (8x16, gray) it learns 100 classes."""
    images, labels = standins.load("pairs_32x32x3", "train")
    pixels = images[:, ::4, ::2, 0].reshape(len(images), -1) / 255.0
    losses = diagnosis().softmax_regression(pixels, labels, 100, 1.0, 100, 128, 11)
    assert losses[0] == pytest.approx(math.log(100), rel=1e-9)
    assert losses[-10:].mean() < 0.5 * math.log(100), losses[-10:]
