"""The paper's ablation: mlpconv + a fully connected layer with dropout.

  python -m nin_jax.main --config=configs/cifar10_fc_dropout.py --workdir=/tmp/nin_cifar10_fcd

configs/cifar10_fc.py with dropout (rate config.model.dropout_rate = 0.5)
before the dense layer; 973,396 parameters, as configs/cifar10_fc.py.
"""

from nin_jax.configs import cifar10_fc


def get_config():
    config = cifar10_fc.get_config()
    config.model.head = "fc_dropout"
    return config
