"""SVHN (TFDS svhn_cropped), trained on train + extra (paper: 2.35% test error).

  python -m nin_jax.main --config=configs/svhn.py --workdir=/tmp/nin_svhn

First version with the seed's CIFAR-sized network; the paper's SVHN variant is issue #3.
"""

from configs import default


def get_config():
    config = default.get_config()
    config.dataset = "svhn_cropped"
    config.train_split = "train+extra"
    config.batch_size = 128
    config.num_epochs = 20
    config.learning_rate = 0.05
    config.warmup_epochs = 0.5
    config.eval_every_steps = 5000
    return config
