"""Every check of a config's values, in one place, run before a workdir is touched.

``validate(config)`` raises ``ConfigError`` naming the first bad field, what it
holds and what it may hold, so a typo never reaches ``workdir/config.json``.
The allowed values of the fields that select an implementation are defined
here; the modules that implement them dispatch on these names.
"""

import numbers
import re
from collections.abc import Sequence
from typing import Any

import ml_collections

from nin_jax.errors import ConfigError

# The datasets the recipes are written for; config.dataset takes any TFDS image-classification
# builder name ("fashion_mnist", "emnist/balanced"), checked when its builder is made.
DATASETS = ("digits", "mnist", "cifar10", "cifar100", "svhn_cropped")
_TFDS_NAME = re.compile(r"[a-z][a-z0-9_]*(/[A-Za-z0-9_.+-]+)?(:[0-9.*]+)?")
PREPROCESSINGS = ("standardize", "gcn_zca", "lcn")
AUGMENTATIONS = ("none", "crop_flip")
HEADS = ("gap", "fc", "fc_dropout")
KERNEL_INITS = ("lecun_normal", "he_normal", "he_normal_zero_mean")
CONV_IMPLS = ("auto", "xla", "matmul", "fused")
DTYPES = ("float32", "bfloat16")
LR_SCHEDULES = ("cosine", "step", "constant")

_CHOICES = {
    "preprocess": PREPROCESSINGS,
    "augment": AUGMENTATIONS,
    "model.head": HEADS,
    "model.kernel_init": KERNEL_INITS,
    "model.conv_impl": CONV_IMPLS,
    "dtype": DTYPES,
    "lr_schedule": LR_SCHEDULES,
}


def dataset_builder_name(dataset: str) -> str:
    """The TFDS builder of ``config.dataset`` ('digits/32x32x3' -> 'digits')."""
    return dataset.split("/", 1)[0]


def _get(config: ml_collections.ConfigDict, dotted: str) -> Any:
    value = config
    for key in dotted.split("."):
        value = value[key]
    return value


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _fail(field: str, value: Any, expected: str) -> None:
    raise ConfigError(f"config.{field} is {value!r}; it must be {expected}")


def _is_tfds_builder(name: str) -> bool:
    """Whether TFDS has a builder ``name`` (its config and version aside)."""
    import tensorflow_datasets as tfds  # Only for a dataset outside the recipes'.

    import nin_jax.datasets.digits  # noqa: F401  (registers nin_jax's builders)
    import nin_jax.datasets.fashion_standins  # noqa: F401

    return re.split(r"[/:]", name, maxsplit=1)[0] in tfds.list_builders(
        with_community_datasets=False
    )


def _check_choices(config: ml_collections.ConfigDict) -> None:
    dataset = config.dataset
    named = isinstance(dataset, str) and _TFDS_NAME.fullmatch(dataset)
    if not named or (
        dataset_builder_name(dataset) not in DATASETS and not _is_tfds_builder(dataset)
    ):
        _fail(
            "dataset",
            dataset,
            "a TFDS image-classification builder such as cifar10 or "
            "emnist/balanced (tfds.list_builders() lists them)",
        )
    for field, allowed in _CHOICES.items():
        value = _get(config, field)
        if value not in allowed:
            _fail(field, value, f"one of {', '.join(allowed)}")


def _check_ints(config: ml_collections.ConfigDict) -> None:
    at_least = {
        "batch_size": 1,
        "log_every_steps": 1,
        "checkpoint_every_steps": 1,
        "max_checkpoints": 1,
        "num_train_steps": -1,
        "eval_every_steps": -1,
        "seed": 0,
        "heartbeat_timeout_seconds": 2,
        "shutdown_timeout_seconds": 1,
        "storage_retry_seconds": 1,
    }
    for field, minimum in at_least.items():
        value = _get(config, field)
        if not _is_int(value) or value < minimum:
            _fail(field, value, f"an integer >= {minimum}")
    examples = config.schedule_train_examples
    if examples is not None and not (_is_int(examples) and examples >= 1):
        _fail("schedule_train_examples", examples, "None (the training split) or an integer >= 1")
    if config.eval_every_steps == 0:
        _fail("eval_every_steps", 0, "-1 (once per epoch) or a positive number of steps")


def _check_numbers(config: ml_collections.ConfigDict) -> None:
    ranges = {  # field: (low, high, low inclusive)
        "learning_rate": (0.0, float("inf"), True),
        "weight_decay": (0.0, float("inf"), True),
        "momentum": (0.0, 1.0, True),
        "warmup_epochs": (0.0, float("inf"), True),
        "lr_decay_factor": (0.0, float("inf"), False),
        "model.dropout_rate": (0.0, 1.0, True),
    }
    for field, (low, high, inclusive) in ranges.items():
        value = _get(config, field)
        above = _is_number(value) and (value >= low if inclusive else value > low)
        if not (above and value < high):
            bracket = "[" if inclusive else "("
            _fail(field, value, f"a number in {bracket}{low}, {high})")
    if config.num_train_steps < 0 and not (_is_number(config.num_epochs) and config.num_epochs > 0):
        _fail("num_epochs", config.num_epochs, "a positive number (or set num_train_steps)")
    init_std = config.model.init_std
    if init_std is not None and not (_is_number(init_std) and init_std > 0):
        _fail("model.init_std", init_std, "None (config.model.kernel_init) or a positive number")
    class_std = config.model.class_init_std
    if class_std is not None and not (_is_number(class_std) and class_std >= 0):
        _fail("model.class_init_std", class_std, "None (as the other kernels) or a number >= 0")
    decay_epochs = config.lr_decay_epochs
    if not _is_sequence_of(decay_epochs, _is_number) or list(decay_epochs) != sorted(decay_epochs):
        _fail("lr_decay_epochs", decay_epochs, "a sorted tuple of epochs, e.g. (80, 160)")


def _is_sequence_of(value: Any, predicate) -> bool:
    return isinstance(value, Sequence) and not isinstance(value, str) and all(map(predicate, value))


def _check_model(config: ml_collections.ConfigDict) -> None:
    widths, kernels = config.model.widths, config.model.kernel_sizes
    if not _is_sequence_of(kernels, lambda k: _is_int(k) and k >= 1 and k % 2 == 1) or not kernels:
        _fail("model.kernel_sizes", kernels, "a tuple of odd kernel sizes, one per block")
    positive_ints = lambda block: _is_sequence_of(block, lambda w: _is_int(w) and w >= 1)  # noqa: E731
    if not _is_sequence_of(widths, positive_ints) or len(widths) != len(kernels):
        _fail("model.widths", widths, f"{len(kernels)} tuples of positive widths (one per block)")
    expected = [3] * (len(widths) - 1) + [2]
    if [len(block) for block in widths] != expected:
        _fail(
            "model.widths",
            widths,
            "three widths per block (conv, cccp1, cccp2) and two for the last block, "
            "whose class layer has num_classes outputs",
        )


def _check_profile_steps(config: ml_collections.ConfigDict) -> None:
    steps = config.profile_steps
    if steps is None or len(steps) == 0:
        return
    if not (_is_sequence_of(steps, _is_int) and len(steps) == 2 and 2 <= steps[0] <= steps[1]):
        _fail("profile_steps", steps, "() or (first, last) with 2 <= first <= last")


def _check_models(config: ml_collections.ConfigDict) -> None:
    if not _is_int(config.num_models) or config.num_models < 1:
        _fail("num_models", config.num_models, "an integer >= 1")
    if config.num_models > 1 and config.model.conv_impl == "fused":
        _fail("model.conv_impl", "fused", "another with num_models > 1 (the kernel is per model)")
    if config.init_seed is not None and not (_is_int(config.init_seed) and config.init_seed >= 0):
        _fail("init_seed", config.init_seed, "None (use seed) or an integer >= 0")
    allowed = {  # hyperparameter: (check, what it must be)
        "learning_rate": (lambda v: v >= 0, ">= 0"),
        "weight_decay": (lambda v: v >= 0, ">= 0"),
        "dropout_rate": (lambda v: 0 <= v < 1, "in [0, 1)"),
    }
    for name, values in config.sweep.items():
        if name not in allowed:
            _fail(f"sweep.{name}", values, f"absent: only {', '.join(allowed)} can be swept")
        check, what = allowed[name]
        if len(values) == 0:
            continue
        if len(values) != config.num_models or not _is_sequence_of(values, _is_number):
            _fail(f"sweep.{name}", values, f"() or {config.num_models} numbers (num_models)")
        if not all(check(v) for v in values):
            _fail(f"sweep.{name}", values, f"numbers {what}")


def _check_fixed_standardize(config: ml_collections.ConfigDict) -> None:
    """``standardize_mean``/``standardize_std``: both () or both one number per channel."""
    mean, std = config.get("standardize_mean", ()), config.get("standardize_std", ())
    if not _is_sequence_of(mean, _is_number):
        _fail("standardize_mean", mean, "() or a tuple of per-channel means in pixel units")
    if not _is_sequence_of(std, lambda v: _is_number(v) and v > 0):
        _fail("standardize_std", std, "() or a tuple of positive per-channel stds")
    if len(mean) != len(std):
        _fail("standardize_std", std, f"as many values as standardize_mean ({len(mean)})")
    if len(mean) and config.preprocess != "standardize":
        _fail("standardize_mean", mean, "() unless config.preprocess is 'standardize'")


def validate(config: ml_collections.ConfigDict) -> None:
    """Raises ``ConfigError`` for the first field whose value nin_jax cannot use."""
    checks = (
        _check_choices, _check_ints, _check_numbers, _check_model, _check_models,
        _check_profile_steps, _check_fixed_standardize,
    )  # fmt: skip
    for check in checks:
        check(config)
