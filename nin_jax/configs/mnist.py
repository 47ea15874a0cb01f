"""MNIST, no augmentation: the paper's 0.47% row.

  python -m nin_jax.main --config=configs/mnist.py --workdir=/tmp/nin_mnist

From the paper: the MNIST network (96-64-48 / 128-96-48 / 128-96-10 with 5x5
kernels, 349,674 parameters; 28 -> 14 -> 7 after pooling), 28x28 grayscale,
no augmentation. From the authors' code: SGD momentum 0.9, biases at 2x the
base rate (config.lr_multipliers, which also puts the class layer at 0.1x, as
their SVHN file does).
Ours, measured on real digits at 28x28 (docs/RECIPES.md, "Diagnosis"):
He-normal kernels, and the class layer's kernel at 0 with bias 1, instead of
the authors' N(0, 0.05) weights: with those, activations shrink about 1,000x by
the last block, the loss stays at ln 10 for 400 steps and longer, and class maps
die later; here every class map starts at 1 everywhere (equal logits, no dead
map) and the blocks keep the input's scale. Base rate 0.01 with half an epoch of
warmup: at 0.01 without the 0.1x class layer, or at 0.02-0.05, the activations
grow until the loss spikes back to ln 10.
Ours (the paper gives no MNIST preprocessing or schedule): per-pixel-value
standardisation, batch 128, weight decay 1e-4, 60 epochs with the rate / 10
after 40 and 50.
The authors' initialisation instead: --config.model.init_std=0.05
--config.model.class_init_std=None --config.model.class_bias=0.
"""

from nin_jax.configs import default
from nin_jax.models import VARIANTS


def get_config():
    config = default.get_config()
    config.dataset = "mnist"
    config.preprocess = "standardize"
    config.augment = "none"
    config.model.widths, config.model.kernel_sizes = VARIANTS["mnist"]
    config.model.kernel_init = "he_normal"
    config.model.class_init_std = 0.0
    config.model.class_bias = 1.0
    config.lr_multipliers = True
    config.batch_size = 128
    config.num_epochs = 60
    config.learning_rate = 0.01
    config.lr_schedule = "step"
    config.lr_decay_epochs = (40, 50)
    config.lr_decay_factor = 0.1
    config.warmup_epochs = 0.5
    config.momentum = 0.9
    config.weight_decay = 1e-4
    config.eval_every_steps = 4690  # About every 10 epochs.
    return config
