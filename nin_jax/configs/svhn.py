"""SVHN (TFDS svhn_cropped) on train + extra: the paper's 2.35% row.

  python -m nin_jax.main --config=configs/svhn.py --workdir=/tmp/nin_svhn

From the paper: the SVHN network (128-96-64 / 320-256-128 / 384-256-10,
1,986,026 parameters), training on train + extra (604,388 images), local
contrast normalisation, no augmentation; --config.validation=True holds out
its 6,000-image validation split (400 per class from train, 200 from extra).
From the authors' code: N(0, 0.05) weights, SGD momentum 0.9,
biases at 2x and the class layer at 0.1x the base rate (config.lr_multipliers).
Ours (the paper gives no SVHN schedule): batch 128, base rate 0.05 (lower than
CIFAR's, for the wider network), weight decay 1e-4, 20 epochs (94k steps) with
the rate / 10 after 10 and 15, and half an epoch of warmup.
"""

from nin_jax.configs import default
from nin_jax.models import VARIANTS


def get_config():
    config = default.get_config()
    config.dataset = "svhn_cropped"
    config.train_split = "train+extra"
    config.preprocess = "lcn"
    config.augment = "none"
    config.model.widths, config.model.kernel_sizes = VARIANTS["svhn"]
    config.model.init_std = 0.05
    config.lr_multipliers = True
    config.batch_size = 128
    config.num_epochs = 20
    config.learning_rate = 0.05
    config.lr_schedule = "step"
    config.lr_decay_epochs = (10, 15)
    config.lr_decay_factor = 0.1
    config.warmup_epochs = 0.5
    config.momentum = 0.9
    config.weight_decay = 1e-4
    config.eval_every_steps = 4700  # About once an epoch.
    config.checkpoint_every_steps = 4700
    return config
