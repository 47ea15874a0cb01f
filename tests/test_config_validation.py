"""Every recipe passes validation; each kind of bad value is named in one line."""

import pytest
from helpers import load_config
from test_recipes import RECIPES

from nin_jax import config_validation, errors, models
from nin_jax.configs import default


@pytest.mark.parametrize("name", RECIPES)
def test_every_recipe_is_valid(name):
    config_validation.validate(load_config(name))


def test_the_allowed_names_are_the_models():
    """The model's choices, checked here without importing JAX, are the ones it implements."""
    assert config_validation.KERNEL_INITS == tuple(models.KERNEL_INITS)
    assert config_validation.HEADS == models.HEADS


@pytest.mark.parametrize(
    "field, value, message",
    [
        (
            "dataset",
            "imagenet",
            "config.dataset is 'imagenet'; it must be a TFDS image-classification",
        ),
        ("dtype", "float16", "config.dtype is 'float16'; it must be one of float32, bfloat16"),
        ("lr_schedule", "linear", "one of cosine, step, constant"),
        ("augment", "flip", "config.augment is 'flip'"),
        ("preprocess", "zca", "config.preprocess is 'zca'"),
        ("model.head", "mlp", "config.model.head is 'mlp'"),
        ("model.conv_impl", "cudnn", "config.model.conv_impl is 'cudnn'"),
        ("batch_size", 0, "config.batch_size is 0; it must be an integer >= 1"),
        ("num_train_steps", -2, "config.num_train_steps is -2"),
        ("eval_every_steps", 0, "config.eval_every_steps is 0"),
        ("momentum", 1.5, "config.momentum is 1.5; it must be a number in [0.0, 1.0)"),
        ("model.dropout_rate", 1.0, "config.model.dropout_rate is 1.0"),
        ("learning_rate", -0.1, "config.learning_rate is -0.1"),
        ("lr_decay_epochs", (160, 80), "config.lr_decay_epochs is (160, 80)"),
        ("model.kernel_sizes", (5, 4, 3), "config.model.kernel_sizes is (5, 4, 3)"),
        ("model.widths", ((8, 8), (8, 8, 8), (8, 8)), "three widths per block"),
        ("model.init_std", -1.0, "config.model.init_std is -1.0"),
        ("model.kernel_init", "glorot", "config.model.kernel_init is 'glorot'; it must be one of"),
        ("model.class_init_std", -0.1, "config.model.class_init_std is -0.1"),
        ("profile_steps", (1, 3), "config.profile_steps is (1, 3)"),
        ("num_models", 0, "config.num_models is 0; it must be an integer >= 1"),
        ("init_seed", -1, "config.init_seed is -1"),
        ("heartbeat_timeout_seconds", 1, "config.heartbeat_timeout_seconds is 1; it must be an"),
        ("shutdown_timeout_seconds", 0, "config.shutdown_timeout_seconds is 0; it must be an"),
        ("sweep.learning_rate", (0.1, 0.2), "config.sweep.learning_rate is (0.1, 0.2); it must"),
        ("sweep.dropout_rate", (1.0,), "config.sweep.dropout_rate is (1.0,)"),
        ("standardize_mean", (1.0, "a"), "config.standardize_mean is (1.0, 'a')"),
        ("standardize_std", (0.0,), "config.standardize_std is (0.0,); it must be () or"),
        ("standardize_mean", (1.0,), "config.standardize_std is (); it must be as many values"),
    ],
)
def test_a_bad_value_is_named(field, value, message):
    config = default.get_config()
    *parents, leaf = field.split(".")
    target = config
    for parent in parents:
        target = target[parent]
    target[leaf] = value
    with pytest.raises(errors.ConfigError) as error:
        config_validation.validate(config)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_fixed_standardization_belongs_to_standardize():
    config = default.get_config()
    config.preprocess, config.standardize_mean, config.standardize_std = "lcn", (1.0,), (2.0,)
    with pytest.raises(errors.ConfigError, match="unless config.preprocess is 'standardize'"):
        config_validation.validate(config)
    config.preprocess = "standardize"
    config_validation.validate(config)
