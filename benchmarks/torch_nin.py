"""The seed's network: the PyTorch NIN of nin_jax's founding document.

The founding document defines the network nin_jax reproduces by its PyTorch layer list
for CIFAR (3 x 32 x 32 input, 10 classes); ``print(NIN())`` prints that list. It is
``nin_jax.models.NIN(num_classes=10)`` in NCHW, with the same 966,986 parameters
(tests/test_models.py checks that the two compute the same logits), and the reference
that benchmarks/torch_throughput.py times. PyTorch is optional: ``pip install torch``.
"""

from torch import nn


def mlpconv(in_channels: int, widths: tuple[int, ...], kernel_size: int, pool: bool):
    """A k x k convolution and two 1 x 1 convolutions, each followed by ReLU; with ``pool``,
    then 3x3/2 max pooling with padding 1 and dropout 0.5."""
    layers = []
    for width, size in zip(widths, (kernel_size, 1, 1), strict=True):
        layers += [nn.Conv2d(in_channels, width, size, stride=1, padding=size // 2), nn.ReLU()]
        in_channels = width
    if pool:
        layers += [nn.MaxPool2d(3, stride=2, padding=1), nn.Dropout(0.5)]
    return nn.Sequential(*layers)


SEED_WIDTHS = ((192, 160, 96), (192, 192, 192), (192, 192))
SEED_KERNELS = (5, 5, 3)


class NIN(nn.Module):
    """The seed's CIFAR NIN. Its last pooling, ``AvgPool2d(8)``, is global for 32 x 32 inputs.

    ``widths`` and ``kernel_sizes`` (as nin_jax.models.NIN's: the last block's class
    layer is not listed) give the paper's other networks with the seed's layer names,
    for the conversion tests; the defaults are the seed's.
    """

    def __init__(
        self,
        in_channels: int = 3,
        num_classes: int = 10,
        widths=SEED_WIDTHS,
        kernel_sizes=SEED_KERNELS,
    ):
        super().__init__()
        last = len(widths) - 1
        for index, (block, size) in enumerate(zip(widths, kernel_sizes, strict=True)):
            block = tuple(block) + ((num_classes,) if index == last else ())
            setattr(self, f"features{index + 1}", mlpconv(in_channels, block, size, index < last))
            in_channels = block[-1]
        self.num_blocks = len(widths)
        self.gap = nn.AvgPool2d(8, stride=1, padding=0)

    def forward(self, x):
        for index in range(self.num_blocks):
            x = getattr(self, f"features{index + 1}")(x)
        return self.gap(x).flatten(1)
