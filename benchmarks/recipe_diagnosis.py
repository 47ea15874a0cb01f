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
with per-class accuracy. No TensorFlow: preprocessing (standardize, GCN + ZCA,
LCN) and augmentation (crop + flip) are re-implemented in numpy below, checked
against nin_jax.preprocessing in tests/test_recipes_learn.py.
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

from nin_jax import health, models, optimizer, steps  # noqa: E402
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
GCN_SCALE, ZCA_BIAS = 55.0, 0.1
LCN_SIZE, LCN_SIGMA, LCN_THRESHOLD = 7, 2.0, 1e-4
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


# --- numpy preprocessing (nin_jax/preprocessing.py without TensorFlow) -------------------


def gcn(images: np.ndarray) -> np.ndarray:
    """Each image minus its mean, scaled to L2 norm 55 (flat images stay 0), flattened."""
    x = images.reshape(len(images), -1).astype(np.float64)
    x = x - x.mean(1, keepdims=True)
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return GCN_SCALE * x / np.where(norm < 1e-8, 1.0, norm)


def fit_zca(train: np.ndarray):
    """ZCA of the GCN'd training images from an SVD of the data (no D x D eigensolve):
    ``W = V diag(1/sqrt(lambda + bias)) V^T`` with the null space at ``1/sqrt(bias)``."""
    x = gcn(train)
    mean = x.mean(0)
    _, singular, vt = np.linalg.svd(x - mean, full_matrices=False)
    scale = 1.0 / np.sqrt(singular**2 / len(x) + ZCA_BIAS)

    def whiten(images: np.ndarray) -> np.ndarray:
        centered = gcn(images) - mean
        projected = centered @ vt.T
        out = (projected * scale) @ vt + (centered - projected @ vt) / np.sqrt(ZCA_BIAS)
        return out.reshape(images.shape).astype(np.float32)

    return whiten


def blur(x: np.ndarray) -> np.ndarray:
    """Zero-padded 7x7 Gaussian (sigma 2) blur of each channel of (N, H, W, C)."""
    offsets = np.arange(LCN_SIZE) - LCN_SIZE // 2
    g = np.exp(-(offsets**2) / (2 * LCN_SIGMA**2))
    g /= g.sum()  # The 2-D window is the outer product of this 1-D one.
    half = LCN_SIZE // 2
    for axis in (1, 2):
        pad = [(0, 0)] * 4
        pad[axis] = (half, half)
        padded = np.pad(x, pad)
        size = x.shape[axis]
        x = sum(w * np.take(padded, np.arange(i, i + size), axis=axis) for i, w in enumerate(g))
    return x


def lcn(images: np.ndarray) -> np.ndarray:
    """Local contrast normalisation per channel, as preprocessing.local_contrast_normalize."""
    x = images.astype(np.float64) / 255.0
    centered = x - blur(x)
    local_std = np.sqrt(blur(centered**2))
    divisor = np.maximum(local_std, local_std.mean(axis=(1, 2), keepdims=True))
    return (centered / np.maximum(divisor, LCN_THRESHOLD)).astype(np.float32)


def fit_preprocess(name: str, train: np.ndarray):
    """The numpy version of ``config.preprocess`` fitted on the uint8 training images."""
    if name == "standardize":
        pixels = train.reshape(-1, train.shape[-1]).astype(np.float64)
        mean, std = pixels.mean(0), pixels.std(0)
        return lambda images: ((images - mean) / std).astype(np.float32)
    if name == "gcn_zca":
        return fit_zca(train)
    if name == "lcn":
        return lcn
    raise ValueError(f"unknown preprocess {name!r}")


def crop_flip(images: np.ndarray, rng: np.random.RandomState, pad: int = 4) -> np.ndarray:
    """Random translation by up to ``pad`` pixels (zero padding), then a flip with p = 1/2."""
    n, h, w, _ = images.shape
    padded = np.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    dy, dx = rng.randint(0, 2 * pad + 1, (2, n))
    rows = dy[:, None] + np.arange(h)[None]
    cols = dx[:, None] + np.arange(w)[None]
    out = padded[np.arange(n)[:, None, None], rows[:, :, None], cols[:, None, :]]
    flip = rng.rand(n) < 0.5
    out[flip] = out[flip, :, ::-1]
    return out


# --- one run ------------------------------------------------------------------------------


def standin_data(config):
    """Preprocessed float32 (train images, train labels, test images, test labels)."""
    name = STANDIN_OF[config.dataset]
    train_images, train_labels = standins.load(name, "train")
    test_images, test_labels = standins.load(name, "test")
    preprocess = fit_preprocess(config.preprocess, train_images)
    return preprocess(train_images), train_labels, preprocess(test_images), test_labels


def init_report(state, images: np.ndarray, num_classes: int) -> dict:
    """Input RMS, per-block activation RMS, logit scale and dead classes at initialisation."""
    logits, variables = jax.jit(
        lambda p, x: state.apply_fn({"params": p}, x, train=False, mutable=["intermediates"])
    )(state.params, images)
    outputs = variables["intermediates"]["block_outputs"]
    logits = np.asarray(logits)
    return {
        "input_rms": float(np.sqrt(np.mean(images**2))),
        "activation_rms": {k: float(v) for k, v in health.activation_rms(outputs).items()},
        "logit_std_over_classes": float(np.mean(np.std(logits, axis=1))),
        "logit_mean": float(np.mean(logits)),
        "dead_classes": np.flatnonzero(np.asarray(health.dead_classes(outputs[-1]))).tolist(),
        "initial_loss_vs_ln_c": float(
            np.mean(jax.nn.logsumexp(logits, axis=1) - logits.mean(1)) / math.log(num_classes)
        ),
    }


def evaluate(state, images: np.ndarray, labels: np.ndarray, num_classes: int) -> dict:
    """Test accuracy, per-class accuracy and the classes whose maps are 0 on every test image."""
    apply = jax.jit(
        lambda p, x: state.apply_fn({"params": p}, x, train=False, mutable=["intermediates"])
    )
    predictions, map_max = [], np.zeros(num_classes)
    for start in range(0, len(images), EVAL_BATCH):
        logits, variables = apply(state.params, images[start : start + EVAL_BATCH])
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


def train_run(
    spec: str, num_steps: int, log_every: int, seed: int, schedule: str, data_cache: dict
) -> dict:
    config = parse_run(spec)
    key = (config.dataset, config.preprocess)
    if key not in data_cache:
        data_cache[key] = standin_data(config)
    train_x, train_y, test_x, test_y = data_cache[key]
    num_classes = standins.STANDINS[STANDIN_OF[config.dataset]].num_classes
    per_epoch = len(train_x) // config.batch_size
    if schedule == "real":
        steps_per_epoch = REAL_TRAIN_SIZE[config.dataset] // config.batch_size
        schedule_steps = math.ceil(config.num_epochs * steps_per_epoch)
    else:
        steps_per_epoch, schedule_steps = per_epoch, num_steps
    lr_fn = optimizer.create_learning_rate_fn(config, steps_per_epoch, schedule_steps)
    model = models.from_config(config, num_classes)
    params_rng, dropout_rng = jax.random.split(jax.random.key(seed))
    tx = optimizer.create_optimizer(config, lr_fn)
    state = jax.jit(lambda rng: steps.create_train_state(rng, model, train_x.shape[1:], tx))(
        params_rng
    )
    init = init_report(state, train_x[: config.batch_size], num_classes)
    train_step = jax.jit(steps.train_step, donate_argnums=0)

    rng = np.random.RandomState(seed)
    order = np.array([], np.int64)
    losses, log, window, first_grads = [], [], [], None
    dead_since: dict[int, int] = {}
    start = time.perf_counter()
    for step in range(1, num_steps + 1):
        if len(order) < config.batch_size:
            order = rng.permutation(len(train_x))[: per_epoch * config.batch_size]
        idx, order = order[: config.batch_size], order[config.batch_size :]
        images = train_x[idx]
        if config.augment == "crop_flip":
            images = crop_flip(images, rng)
        state, metrics = train_step(state, {"image": images, "label": train_y[idx]}, dropout_rng)
        window.append(metrics)
        if step % log_every and step != num_steps:
            continue
        window = jax.device_get(window)
        if first_grads is None:
            first_grads = {k[10:]: float(v) for k, v in window[0].items() if k[:10] == "grad_norm/"}
        window_losses = [float(m["loss"]) for m in window]
        losses.extend(window_losses)
        dead = np.min([m["dead_classes"] for m in window], axis=0) > 0
        for c in np.flatnonzero(dead):
            dead_since.setdefault(int(c), step)
        log.append(
            {
                "step": step,
                "loss": round(float(np.mean(window_losses)), 4),
                "accuracy": round(float(np.mean([m["accuracy"] for m in window])), 4),
                "lr": round(float(lr_fn(step - 1)), 6),
                "dead": np.flatnonzero(dead).tolist(),
                "activation_rms": {
                    k[15:]: round(float(v), 4)
                    for k, v in window[-1].items()
                    if k.startswith("activation_rms/")
                },
                "grad_norm": round(float(np.mean([m["grad_norm"] for m in window])), 4),
            }
        )
        if not math.isfinite(log[-1]["loss"]):
            break
        window = []
    train_seconds = time.perf_counter() - start
    chance = math.log(num_classes)
    losses = np.array(losses)
    return {
        "run": spec,
        "seed": seed,
        "device": jax.devices()[0].device_kind,
        "standin": STANDIN_OF[config.dataset],
        "image_shape": list(train_x.shape[1:]),
        "num_classes": num_classes,
        "steps": len(losses),
        "schedule": schedule,
        "schedule_steps_per_epoch": steps_per_epoch,
        "standin_steps_per_epoch": per_epoch,
        "warmup_steps": int(config.warmup_epochs * steps_per_epoch),
        "train_seconds": round(train_seconds, 1),
        "init": init,
        "first_step_grad_norm": first_grads,
        "steps_to_below_0.9_ln_c": first_step(losses, 0.9 * chance),
        "steps_to_leave_1pct_band": first_step(losses, (1 - health.STALL_TOLERANCE) * chance),
        "dead_since_step": dead_since,
        "final_dead": log[-1]["dead"],
        "log": log,
        **evaluate(state, test_x, test_y, num_classes),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", action="append", required=True, help="recipe[:field=literal;...]")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--log_every", type=int, default=10)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument(
        "--schedule",
        choices=("real", "standin"),
        default="real",
        help="learning-rate schedule of the real dataset's run, or of the stand-in's CLI run",
    )
    parser.add_argument("--output", help="also append the JSON lines to this file")
    args = parser.parse_args(argv)
    data_cache: dict = {}
    for spec in args.run:
        for seed in args.seeds:
            result = json.dumps(
                train_run(spec, args.steps, args.log_every, seed, args.schedule, data_cache)
            )
            print(result, flush=True)
            if args.output:
                with open(args.output, "a") as f:
                    f.write(result + "\n")


if __name__ == "__main__":
    main()
