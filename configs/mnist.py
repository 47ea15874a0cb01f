"""MNIST, 28x28 grayscale, no augmentation (paper: 0.47% test error).

  python -m nin_jax.main --config=configs/mnist.py --workdir=/tmp/nin_mnist

First version with the seed's network; the paper's MNIST variant is issue #3.
"""

from configs import default


def get_config():
    config = default.get_config()
    config.dataset = "mnist"
    config.batch_size = 128
    config.num_epochs = 40
    config.learning_rate = 0.05
    return config
