"""CIFAR-100, no augmentation: the paper's 35.68% row.

  python -m nin_jax.main --config=configs/cifar100.py --workdir=/tmp/nin_cifar100

The paper uses the CIFAR-10 settings unchanged (except the 100-map class
layer: 984,356 parameters), so this is configs/cifar10.py on cifar100, GCN + ZCA
statistics fitted on CIFAR-100's own training split, with two changes of ours
for the 100 classes, measured on the real-image stand-in (100 classes of digit
pairs, docs/RECIPES.md, "6. A hundred classes"): with the CIFAR-10 recipe the
loss stayed at ln 100 for 600 steps there.
- Kernels He-normal with mean 0 over each fan-in ('he_normal_zero_mean'), the
  class layer's included (bias 1 kept): the class layer's inputs are ReLU
  outputs with a large common mean, which a zero-mean kernel does not turn into
  per-class offsets, so its kernel can start random and pass gradients to the
  blocks below from the first step (a plain He-normal class kernel starts the
  loss at 1.50 ln 100, a zero-mean one at 1.002 ln 100).
- Base rate 0.03: at CIFAR-10's 0.01 the loss was still at 0.997 ln 100 at step
  370; at 0.05 it left ln 100 at step 298 and fell back to it by step 370.
With both, this recipe left ln 100 on the stand-in at step 310 of a first epoch
of 390 steps, and reached 93.4% test accuracy at step 1,500, no class below 70%.
The CIFAR-10 recipe's initialisation and rate instead:
--config.model.kernel_init=he_normal --config.model.class_init_std=0
--config.learning_rate=0.01; the authors' as for CIFAR-10 (configs/cifar10.py).
"""

from nin_jax.configs import cifar10


def get_config():
    config = cifar10.get_config()
    config.dataset = "cifar100"
    config.model.kernel_init = "he_normal_zero_mean"
    config.model.class_init_std = None
    config.learning_rate = 0.03
    return config
