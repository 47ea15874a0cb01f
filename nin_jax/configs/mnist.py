"""MNIST, no augmentation: the paper's 0.47% row.

  python -m nin_jax.main --config=configs/mnist.py --workdir=/tmp/nin_mnist

From the paper: the MNIST network (96-64-48 / 128-96-48 / 128-96-10 with 5x5
kernels, 349,674 parameters; 28 -> 14 -> 7 after pooling), 28x28 grayscale,
no augmentation. From the authors' code: N(0, 0.05) weights, momentum 0.9, biases
at 2x and the class layer at 0.1x the base rate (config.lr_multipliers).
Ours (the paper gives no MNIST preprocessing or schedule): per-pixel-value
standardisation, batch 128, base rate 0.05, weight decay 1e-4, 60 epochs
with the rate / 10 after 40 and 50, one warmup epoch.
"""

from nin_jax.configs import default
from nin_jax.models import VARIANTS


def get_config():
    config = default.get_config()
    config.dataset = "mnist"
    config.preprocess = "standardize"
    config.augment = "none"
    config.model.widths, config.model.kernel_sizes = VARIANTS["mnist"]
    config.model.init_std = 0.05
    config.lr_multipliers = True
    config.batch_size = 128
    config.num_epochs = 60
    config.learning_rate = 0.05
    config.lr_schedule = "step"
    config.lr_decay_epochs = (40, 50)
    config.lr_decay_factor = 0.1
    config.warmup_epochs = 1.0
    config.momentum = 0.9
    config.weight_decay = 1e-4
    config.eval_every_steps = 4690  # About every 10 epochs.
    return config
