"""CIFAR-10, no augmentation: the paper's 10.41% test error row.

  python -m nin_jax.main --config=configs/cifar10.py --workdir=/tmp/nin_cifar10

From the paper: the CIFAR network (192-160-96 / 192-192-192 / 192-192-10,
966,986 parameters), dropout 0.5 after the first two blocks, global contrast
normalisation + ZCA whitening fitted on the training split, no augmentation.
From the authors' code (mavenlin/cuda-convnet NIN/): N(0, 0.05) weights, zero
biases, SGD momentum 0.9, biases at 2x and the class layer at 0.1x the base
learning rate (config.lr_multipliers), about 200 epochs then the rate / 10 for 30 epochs
and / 10 again for 30 (260 in all).
Ours (not stated by the paper or the authors): batch 128, base rate 0.1 and
weight decay 1e-4 on kernels (the usual values of the Caffe/PyTorch ports),
and 5 warmup epochs, because NIN's ReLU class maps die at a high starting
rate (PAPER_NOTES.md).
Set --config.validation=True to train on 40,000 images and evaluate on the
other 10,000 (the paper tuned on such a split).
"""

from nin_jax.configs import default
from nin_jax.models import VARIANTS


def get_config():
    config = default.get_config()
    config.dataset = "cifar10"
    config.preprocess = "gcn_zca"
    config.augment = "none"
    config.model.widths, config.model.kernel_sizes = VARIANTS["cifar"]
    config.model.init_std = 0.05
    config.lr_multipliers = True
    config.batch_size = 128
    config.num_epochs = 260
    config.learning_rate = 0.1
    config.lr_schedule = "step"
    config.lr_decay_epochs = (200, 230)
    config.lr_decay_factor = 0.1
    config.warmup_epochs = 5.0
    config.momentum = 0.9
    config.weight_decay = 1e-4
    config.eval_every_steps = 3900  # About every 10 epochs.
    config.checkpoint_every_steps = 3900
    return config
