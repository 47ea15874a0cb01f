"""CIFAR-10 with translation and horizontal flipping: the paper's 8.81% row.

  python -m nin_jax.main --config=configs/cifar10_augmented.py --workdir=/tmp/nin_cifar10_aug

configs/cifar10.py (966,986 parameters; its initialisation and rates included:
see there) plus augmentation. The paper says "translation and
horizontal flipping"; the exact translation range is ours: pad 4 pixels
(zeros, after whitening) and crop a random 32x32 window, flip with
probability 1/2, a fresh draw for every image of every step.
"""

from nin_jax.configs import cifar10


def get_config():
    config = cifar10.get_config()
    config.augment = "crop_flip"
    return config
