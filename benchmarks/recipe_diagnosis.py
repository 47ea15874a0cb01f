"""How a recipe starts on real images: trains it in-process on its stand-in, one JSON line a run.

  python benchmarks/recipe_diagnosis.py --run mnist \\
      --run 'mnist:model.init_std=0.05;model.kernel_init="lecun_normal";lr_multipliers=True' \\
      --steps 300

Each ``--run`` is a recipe of nin_jax/configs with optional overrides
(``field=python literal``, ``;``-separated, dotted for model fields). The recipe
trains with its own optimizer, initialisation and schedule (``steps.train_step``
jitted) on the real-image stand-in of its dataset at its input shape
(nin_jax/datasets/standins.py): 28x28x1 digits for MNIST, 32x32x3 for CIFAR-10
and SVHN, 100 classes of digit pairs at 32x32x3 for CIFAR-100. The learning-rate
schedule is the one of the real dataset's run (its steps per epoch, its
``num_epochs``), so step ``s`` here has the rate of step ``s`` there; with
``--schedule=standin`` it is the schedule of the command-line run on the stand-in
(``--config.num_train_steps=STEPS``: epochs of the stand-in, ``STEPS`` in all).

Printed per run: input RMS after preprocessing, per-block activation RMS and
logit scale at initialisation, the first step's per-block gradient norms, the
steps until the loss falls below 0.9 ln C and until it leaves the 1% band
around ln C, the dead classes at each log point, and the final test accuracy
with per-class accuracy. No TensorFlow: the recipe's preprocessing and
augmentation run on the device as in training (``steps.Inputs``), with the
statistics fitted here in numpy (``fit_stats``; the ZCA is checked against
nin_jax.statistics in tests/test_recipes_learn.py).

``--linear_probe RATE ...`` trains only a softmax regression on the class
layer's inputs of the run's network at initialisation (its last hidden layer
after ReLU, averaged over positions, on every stand-in training image), started
as the recipes' class layer, at each rate, on the features as they are and with
their mean removed; it prints their common mean, between- and within-class
variance and the steps to leave ln C (numpy, seconds).

``--photo_scale`` prints the RMS that GCN + ZCA gives 32x32 patches of real
photographs (scikit-learn's two sample images), the scale real CIFAR inputs
should have, against the 0.12 of the whitened stand-in digits.
"""

import argparse
import ast
import importlib
import json
import math
import sys
import time
from pathlib import Path

import jax
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from nin_jax import health, models, optimizer, preprocessing, steps  # noqa: E402
from nin_jax.datasets import standins  # noqa: E402

# config.dataset -> its stand-in (nin_jax/datasets/standins.py).
STANDIN_OF = {
    "digits": "8x8x1",
    "mnist": "28x28x1",
    "cifar10": "32x32x3",
    "svhn_cropped": "32x32x3",
    "cifar100": "pairs_32x32x3",
}
# Training examples of the real datasets (the recipe's own train_split).
REAL_TRAIN_SIZE = {
    "digits": 1_437,
    "mnist": 60_000,
    "cifar10": 50_000,
    "cifar100": 50_000,
    "svhn_cropped": 604_388,
}
EVAL_BATCH = 500


def parse_run(spec: str):
    """``recipe[:field=literal;...]`` -> the recipe's config with the overrides applied."""
    name, _, overrides = spec.partition(":")
    config = importlib.import_module(f"nin_jax.configs.{name}").get_config()
    for item in filter(None, overrides.split(";")):
        key, _, literal = item.partition("=")
        *parents, leaf = key.strip().split(".")
        target = config
        for parent in parents:
            target = target[parent]
        target[leaf] = ast.literal_eval(literal.strip())
    return config


# --- preprocessing statistics (nin_jax.statistics without its TFDS imports) -------------


def gcn(images: np.ndarray) -> np.ndarray:
    """float64 (N, D): each image minus its mean, scaled to L2 norm 55 (flat images: 0)."""
    x = images.reshape(len(images), -1).astype(np.float64)
    x = x - x.mean(1, keepdims=True)
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return preprocessing.GCN_SCALE * x / np.where(norm < 1e-8, 1.0, norm)


def zca_stats(train: np.ndarray, unit_rms: bool = True) -> dict[str, np.ndarray]:
    """ZCA of the GCN'd training images, ``W = s V diag(1/sqrt(lambda + bias)) V^T`` (unit
    RMS on the training images) as nin_jax.statistics fits it, from an SVD of the data
    rather than an eigensolve of the D x D covariance (seconds instead of a minute on 2
    cores for D = 3072)."""
    x = gcn(train)
    mean = x.mean(0)
    _, singular, vt = np.linalg.svd(x - mean, full_matrices=False)
    bias = preprocessing.ZCA_FILTER_BIAS
    eigenvalues = singular**2 / len(x)
    mean_square = np.sum(eigenvalues / (eigenvalues + bias)) / x.shape[1]
    scale = 1.0 / np.sqrt(mean_square) if unit_rms else 1.0
    gain = 1.0 / np.sqrt(eigenvalues + bias) - 1.0 / np.sqrt(bias)
    whitening = scale * ((vt.T * gain) @ vt + np.eye(x.shape[1]) / np.sqrt(bias))
    return {"mean": mean.astype(np.float32), "whitening": whitening.astype(np.float32)}


def fit_stats(name: str, train: np.ndarray, unit_rms: bool = True) -> dict[str, np.ndarray]:
    """The statistics of preprocessing ``name``, fitted on the uint8 training images
    (``unit_rms``: ``config.zca_unit_rms``)."""
    if name == "standardize":
        pixels = train.reshape(-1, train.shape[-1]).astype(np.float64)
        return {"mean": pixels.mean(0).astype(np.float32), "std": pixels.std(0).astype(np.float32)}
    if name == "gcn_zca":
        return zca_stats(train, unit_rms)
    return {}  # lcn


def photo_patches(downscale: int, per_photo: int = 2500, seed: int = 0) -> np.ndarray:
    """uint8 random 32x32x3 patches of scikit-learn's two sample photographs, downscaled."""
    from PIL import Image
    from sklearn.datasets import load_sample_images

    rng = np.random.RandomState(seed)
    patches = []
    for photo in load_sample_images().images:
        height, width, _ = photo.shape
        size = (width // downscale, height // downscale)
        small = np.asarray(Image.fromarray(photo).resize(size, Image.Resampling.BILINEAR))
        for _ in range(per_photo):
            y, x = rng.randint(0, small.shape[0] - 32), rng.randint(0, small.shape[1] - 32)
            patches.append(small[y : y + 32, x : x + 32])
    return np.stack(patches)


def zca_output_rms(images: np.ndarray) -> float:
    """RMS of GCN + ZCA (fitted on ``images``) applied to ``images``: from the eigenvalues,
    ``sqrt(sum(lambda / (lambda + bias)) / D)``."""
    x = gcn(images)
    eigenvalues = np.linalg.svd(x - x.mean(0), compute_uv=False) ** 2 / len(x)
    whitened = eigenvalues / (eigenvalues + preprocessing.ZCA_FILTER_BIAS)
    return float(np.sqrt(whitened.sum() / x.shape[1]))


def rescaled(name: str, stats: dict[str, np.ndarray], factor: float) -> dict[str, np.ndarray]:
    """Statistics whose preprocessing output is ``factor`` times the original's."""
    if name == "standardize":
        return {**stats, "std": stats["std"] / np.float32(factor)}
    if name == "gcn_zca":
        return {**stats, "whitening": stats["whitening"] * np.float32(factor)}
    raise ValueError(f"--input_rms needs preprocess 'standardize' or 'gcn_zca', not {name!r}")


# --- one run ------------------------------------------------------------------------------


def standin_data(config, input_rms: float | None = None):
    """uint8 (train images, train labels, test images, test labels) and the fitted
    statistics; ``input_rms``: statistics rescaled so the preprocessed training images
    have that RMS."""
    name = STANDIN_OF[config.dataset]
    train_images, train_labels = standins.load(name, "train")
    test_images, test_labels = standins.load(name, "test")
    stats = fit_stats(config.preprocess, train_images, config.zca_unit_rms)
    if input_rms is not None:
        rms = float(np.sqrt(np.mean(preprocess(config.preprocess, stats, train_images) ** 2)))
        stats = rescaled(config.preprocess, stats, input_rms / rms)
    return train_images, train_labels, test_images, test_labels, stats


def cached_standin(config, input_rms: float | None, data_cache: dict):
    """``standin_data`` of the config's stand-in (computed once per dataset, preprocessing
    and input RMS in ``data_cache``) and its class count."""
    key = (config.dataset, config.preprocess, input_rms)
    if key not in data_cache:
        data_cache[key] = standin_data(config, input_rms)
    return data_cache[key], standins.STANDINS[STANDIN_OF[config.dataset]].num_classes


def preprocess(name: str, stats: dict, images: np.ndarray) -> np.ndarray:
    """float32 model inputs of uint8 ``images``, in chunks of ``EVAL_BATCH``."""
    apply = jax.jit(preprocessing.apply, static_argnums=0)
    chunks = range(0, len(images), EVAL_BATCH)
    return np.concatenate(
        [np.asarray(apply(name, stats, images[i : i + EVAL_BATCH])) for i in chunks]
    )


def init_report(state, inputs: np.ndarray, num_classes: int) -> dict:
    """Input RMS, per-block activation RMS, logit scale and dead classes at initialisation."""
    logits, variables = jax.jit(
        lambda p, x: state.apply_fn({"params": p}, x, train=False, mutable=["intermediates"])
    )(state.params, inputs)
    outputs = variables["intermediates"]["block_outputs"]
    logits = np.asarray(logits)
    loss = np.mean(jax.nn.logsumexp(logits, axis=1) - logits.mean(1))
    return {
        "input_rms": float(np.sqrt(np.mean(inputs**2))),
        "activation_rms": {k: float(v) for k, v in health.activation_rms(outputs).items()},
        "logit_std_over_classes": float(np.mean(np.std(logits, axis=1))),
        "logit_mean": float(np.mean(logits)),
        "dead_classes": np.flatnonzero(np.asarray(health.dead_classes(outputs[-1]))).tolist(),
        "uniform_label_loss_over_ln_c": float(loss / math.log(num_classes)),
    }


def evaluate(state, inputs: np.ndarray, labels: np.ndarray, num_classes: int) -> dict:
    """Test accuracy, per-class accuracy and the classes whose maps are 0 on every test image."""
    apply = jax.jit(
        lambda p, x: state.apply_fn({"params": p}, x, train=False, mutable=["intermediates"])
    )
    predictions, map_max = [], np.zeros(num_classes)
    for start in range(0, len(inputs), EVAL_BATCH):
        logits, variables = apply(state.params, inputs[start : start + EVAL_BATCH])
        predictions.append(np.argmax(np.asarray(logits), 1))
        maps = np.asarray(variables["intermediates"]["block_outputs"][-1])
        map_max = np.maximum(map_max, maps.max(axis=(0, 1, 2)))
    predictions = np.concatenate(predictions)
    per_class = [float(np.mean(predictions[labels == c] == c)) for c in range(num_classes)]
    return {
        "test_accuracy": float(np.mean(predictions == labels)),
        "per_class_accuracy": [round(a, 4) for a in per_class],
        "min_class_accuracy": min(per_class),
        "classes_at_zero": [c for c, a in enumerate(per_class) if a == 0.0],
        "dead_classes_on_test": np.flatnonzero(map_max <= 0).tolist(),
    }


def first_step(losses: np.ndarray, threshold: float) -> int | None:
    """1-based index of the first step whose loss is below ``threshold``."""
    below = np.flatnonzero(losses < threshold)
    return int(below[0]) + 1 if len(below) else None


def schedule_length(config, schedule: str, standin_per_epoch: int, num_steps: int):
    """(steps per epoch, total steps) of the learning-rate schedule (see the module doc)."""
    if schedule == "real":
        per_epoch = REAL_TRAIN_SIZE[config.dataset] // config.batch_size
        return per_epoch, math.ceil(config.num_epochs * per_epoch)
    return standin_per_epoch, num_steps


def log_point(step: int, window: list[dict], learning_rate: float) -> dict:
    """One log point's summary of the window's per-step metrics (already on the host)."""
    dead = np.min([m["dead_classes"] for m in window], axis=0) > 0
    return {
        "step": step,
        "loss": round(float(np.mean([m["loss"] for m in window])), 4),
        "accuracy": round(float(np.mean([m["accuracy"] for m in window])), 4),
        "lr": round(learning_rate, 6),
        "dead": np.flatnonzero(dead).tolist(),
        "activation_rms": {
            k.split("/")[1]: round(float(v), 4)
            for k, v in window[-1].items()
            if k.startswith("activation_rms/")
        },
        "grad_norm": round(float(np.mean([m["grad_norm"] for m in window])), 4),
    }


def train_run(
    spec: str,
    num_steps: int,
    log_every: int,
    seed: int,
    schedule: str,
    input_rms: float | None,
    data_cache: dict,
) -> dict:
    """Trains run ``spec`` for ``num_steps`` on its stand-in; the JSON-able report."""
    config = parse_run(spec)
    (train_x, train_y, test_x, test_y, stats), num_classes = cached_standin(
        config, input_rms, data_cache
    )
    standin_per_epoch = len(train_x) // config.batch_size
    per_epoch, total = schedule_length(config, schedule, standin_per_epoch, num_steps)
    lr_fn = optimizer.create_learning_rate_fn(config, per_epoch, total)
    model = models.from_config(config, num_classes)
    tx = optimizer.create_optimizer(config, lr_fn)
    params_rng, dropout_rng = jax.random.split(jax.random.key(seed))
    state = jax.jit(lambda rng: steps.create_train_state(rng, model, train_x.shape[1:], tx))(
        params_rng
    )
    init = init_report(
        state, preprocess(config.preprocess, stats, train_x[: config.batch_size]), num_classes
    )
    inputs = steps.Inputs(config.preprocess, config.augment, seed)
    train_step = jax.jit(
        lambda state, batch, stats: steps.train_step(
            state, inputs.train_batch(stats, None, batch, state.step), dropout_rng
        ),
        donate_argnums=0,
    )
    rng = np.random.RandomState(seed)
    order = np.array([], np.int64)
    losses, log, window, first_grads = [], [], [], None
    start = time.perf_counter()
    for step in range(1, num_steps + 1):
        if len(order) < config.batch_size:
            order = rng.permutation(len(train_x))[: standin_per_epoch * config.batch_size]
        idx, order = order[: config.batch_size], order[config.batch_size :]
        state, metrics = train_step(state, {"image": train_x[idx], "label": train_y[idx]}, stats)
        window.append(metrics)
        if step % log_every and step != num_steps:
            continue
        window = jax.device_get(window)
        if first_grads is None:
            first_grads = {
                k.split("/")[1]: float(v)
                for k, v in window[0].items()
                if k.startswith("grad_norm/")
            }
        losses.extend(float(m["loss"]) for m in window)
        log.append(log_point(step, window, float(lr_fn(step - 1))))
        window = []
        if not math.isfinite(log[-1]["loss"]):
            break
    train_seconds = time.perf_counter() - start
    chance = math.log(num_classes)
    losses = np.array(losses)
    dead_since: dict[int, int] = {}
    for point in log:
        for c in point["dead"]:
            dead_since.setdefault(c, point["step"])
    return {
        "run": spec,
        "seed": seed,
        "device": jax.devices()[0].device_kind,
        "standin": STANDIN_OF[config.dataset],
        "image_shape": list(train_x.shape[1:]),
        "num_classes": num_classes,
        "steps": len(losses),
        "schedule": schedule,
        "input_rms_set": input_rms,
        "schedule_steps_per_epoch": per_epoch,
        "standin_steps_per_epoch": standin_per_epoch,
        "warmup_steps": int(config.warmup_epochs * per_epoch),
        "train_seconds": round(train_seconds, 1),
        "init": init,
        "first_step_grad_norm": first_grads,
        "steps_to_below_0.9_ln_c": first_step(losses, 0.9 * chance),
        "steps_to_leave_1pct_band": first_step(losses, (1 - health.STALL_TOLERANCE) * chance),
        "dead_since_step": dead_since,
        "final_dead": log[-1]["dead"],
        "log": log,
        **evaluate(state, preprocess(config.preprocess, stats, test_x), test_y, num_classes),
    }


# --- the class layer alone on the initial network's features ------------------------------


def class_layer_inputs(config, seed: int, data_cache: dict):
    """The class layer's inputs (the last block's cccp1 after ReLU, averaged over positions)
    of the config's network at initialisation, on every stand-in training image; the
    labels; the class count."""
    (train_x, train_y, _, _, stats), num_classes = cached_standin(config, None, data_cache)
    model = models.from_config(config, num_classes)
    inputs = preprocess(config.preprocess, stats, train_x)
    params = jax.jit(model.init)(jax.random.key(seed), inputs[:1])["params"]
    last_block = f"mlpconv{len(config.model.widths)}"

    @jax.jit
    def features(images):
        _, state = model.apply(
            {"params": params}, images, capture_intermediates=True, mutable=["intermediates"]
        )
        hidden = state["intermediates"][last_block]["cccp1"]["__call__"][0]
        return jax.nn.relu(hidden).mean(axis=(1, 2))

    chunks = range(0, len(inputs), EVAL_BATCH)
    feats = np.concatenate([np.asarray(features(inputs[i : i + EVAL_BATCH])) for i in chunks])
    return feats.astype(np.float64), train_y, num_classes


def softmax_regression(
    feats, labels, num_classes, rate, steps, batch_size, warmup, seed=0, momentum=0.9
) -> np.ndarray:
    """Losses of SGD with momentum on a softmax regression started as the recipes' class
    layer (kernel 0, bias 1, biases at 2x the rate), batches drawn with replacement."""
    kernel = np.zeros((feats.shape[1], num_classes))
    bias = np.ones(num_classes)
    kernel_velocity, bias_velocity = np.zeros_like(kernel), np.zeros_like(bias)
    rng = np.random.RandomState(seed)
    rows = np.arange(batch_size)
    losses = []
    for step in range(steps):
        idx = rng.randint(0, len(feats), batch_size)
        logits = feats[idx] @ kernel + bias
        logits -= logits.max(1, keepdims=True)
        probs = np.exp(logits)
        probs /= probs.sum(1, keepdims=True)
        losses.append(-np.log(probs[rows, labels[idx]]).mean())
        probs[rows, labels[idx]] -= 1
        probs /= batch_size
        kernel_velocity = momentum * kernel_velocity + feats[idx].T @ probs
        bias_velocity = momentum * bias_velocity + probs.sum(0)
        scale = rate * min(1.0, step / warmup) if warmup else rate
        kernel -= scale * kernel_velocity
        bias -= 2 * scale * bias_velocity
        if not np.isfinite(losses[-1]):
            break
    return np.array(losses)


def linear_probe(spec: str, rates, steps: int, seed: int, data_cache: dict) -> dict:
    """How fast the class layer alone learns on the initial network's features, as they are
    and with their mean over the training images removed (docs/RECIPES.md, section 6)."""
    config = parse_run(spec)
    feats, labels, num_classes = class_layer_inputs(config, seed, data_cache)
    class_means = np.stack([feats[labels == c].mean(0) for c in range(num_classes)])
    chance = math.log(num_classes)
    warmup = int(config.warmup_epochs * (len(feats) // config.batch_size))
    report = {
        "linear_probe": spec,
        "num_classes": num_classes,
        "feature_mean": round(float(feats.mean()), 4),
        "feature_rms": round(float(np.sqrt(np.mean(feats**2))), 4),
        "common_mean_sq": round(float(np.sum(feats.mean(0) ** 2)), 2),
        "between_class_var": round(float(np.sum(class_means.var(0))), 3),
        "within_class_var": round(float(np.mean(np.sum((feats - class_means[labels]) ** 2, 1))), 3),
        "runs": [],
    }
    for centred in (False, True):
        x = feats - feats.mean(0) if centred else feats
        for rate in rates:
            losses = softmax_regression(
                x, labels, num_classes, rate, steps, config.batch_size, warmup
            )
            smooth = np.convolve(losses, np.ones(10) / 10, "valid") / chance  # as log points
            leave = first_step(smooth, 1 - health.STALL_TOLERANCE)
            report["runs"].append(
                {
                    "centred": centred,
                    "rate": rate,
                    "steps_to_leave_1pct_band": None if leave is None else leave + 9,
                    "min_loss_over_ln_c": round(float(np.nanmin(smooth)), 4),
                    "final_loss_over_ln_c": round(float(smooth[-1]), 4),
                }
            )
    return report


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", action="append", default=[], help="recipe[:field=literal;...]")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--log_every", type=int, default=10)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument(
        "--schedule",
        choices=("real", "standin"),
        default="real",
        help="learning-rate schedule of the real dataset's run, or of the stand-in's CLI run",
    )
    parser.add_argument(
        "--input_rms",
        type=float,
        help="rescale the preprocessed images to this RMS (real data's scale can differ)",
    )
    parser.add_argument(
        "--linear_probe",
        type=float,
        nargs="+",
        metavar="RATE",
        help="instead of training: the class layer alone on the initial network's features, "
        "at these rates, for --steps steps",
    )
    parser.add_argument("--output", help="also append the JSON lines to this file")
    parser.add_argument(
        "--photo_scale",
        action="store_true",
        help="print the GCN + ZCA output RMS of 32x32 patches of real photographs",
    )
    args = parser.parse_args(argv)

    def emit(result: dict) -> None:
        line = json.dumps(result)
        print(line, flush=True)
        if args.output:
            with open(args.output, "a") as f:
                f.write(line + "\n")

    if args.photo_scale:
        for downscale in (2, 4, 8):
            rms = zca_output_rms(photo_patches(downscale))
            emit({"photo_patches_downscale": downscale, "gcn_zca_rms": round(rms, 4)})
    data_cache: dict = {}
    for spec in args.run:
        for seed in args.seeds:
            if args.linear_probe:
                emit(linear_probe(spec, args.linear_probe, args.steps, seed, data_cache))
                continue
            emit(
                train_run(
                    spec,
                    args.steps,
                    args.log_every,
                    seed,
                    args.schedule,
                    args.input_rms,
                    data_cache,
                )
            )


if __name__ == "__main__":
    main()
