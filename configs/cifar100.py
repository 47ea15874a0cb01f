"""CIFAR-100 with the seed's NIN and 100 class maps (paper: 35.68% test error).

python -m nin_jax.main --config=configs/cifar100.py --workdir=/tmp/nin_cifar100
"""

from configs import cifar10


def get_config():
    config = cifar10.get_config()
    config.dataset = "cifar100"
    return config
