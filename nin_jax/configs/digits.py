"""The offline default: the seed's CIFAR NIN on scikit-learn's 8x8 digits (embedded).

  python -m nin_jax.main --config=configs/digits.py --workdir=/tmp/nin_digits

1,437 training and 360 test images (nin_jax/datasets/digits.py). Warmup and a
small batch follow the measurements in PAPER_NOTES.md; a few minutes on 2 CPU cores.
"""

from nin_jax.configs import default


def get_config():
    config = default.get_config()
    config.dataset = "digits"
    config.batch_size = 32
    config.num_epochs = 22
    config.learning_rate = 0.02
    config.warmup_epochs = 2.0
    config.log_every_steps = 100
    config.checkpoint_every_steps = 500
    config.eval_every_steps = 220
    return config
