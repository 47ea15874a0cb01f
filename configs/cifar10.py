"""CIFAR-10 with the seed's NIN, no augmentation (paper: 10.41% test error).

  python -m nin_jax.main --config=configs/cifar10.py --workdir=/tmp/nin_cifar10

First version; the paper-faithful recipe (GCN + ZCA, step schedule) is issue #3.
"""

from configs import default


def get_config():
    config = default.get_config()
    config.dataset = "cifar10"
    config.batch_size = 128
    config.num_epochs = 240
    config.learning_rate = 0.1
    config.lr_schedule = "step"
    config.lr_decay_epochs = (80, 160)
    config.warmup_epochs = 5.0
    config.eval_every_steps = 2000
    return config
