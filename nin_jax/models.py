"""Network In Network (Lin, Chen & Yan, 2013) as pure Flax linen modules, NHWC.

The network is three mlpconv blocks (a k x k convolution and two 1 x 1 "cccp"
convolutions, each followed by ReLU), 3x3/2 max pooling and dropout after the
first two blocks, and global average pooling over the last block's class maps.

Convolutions have three implementations with one parameter tree
(``kernel`` in HWIO layout and ``bias``, as ``flax.linen.Conv``):

* ``'xla'``: ``lax.conv_general_dilated`` (1 x 1 convolutions as matmuls over
  channels) and ``reduce_window`` max pooling: what ``'auto'`` picks on GPU and
  TPU, and the faster of the two for one model on a GPU;
* ``'matmul'``: 1 x 1 convolutions as matmuls over the channel axis, k x k
  convolutions as Winograd F(4x4, k x k) (or im2col for the RGB layer and small
  maps), and max pooling with an argmax-mask gradient (``nin_jax.cpu_ops``).
  XLA:CPU runs these several times faster than its native convolution gradients
  and select-and-scatter;
* ``'fused'`` (TPU): ``'xla'``'s k x k convolutions and pooling, and the rest of
  each mlpconv block (the convolution's bias and ReLU, both 1x1 layers and their
  ReLUs) as one Pallas kernel (``nin_jax.fused_mlpconv``), which keeps those
  activations out of HBM. Elsewhere it runs in Pallas's interpreter (for tests).

``conv_impl='auto'`` picks ``'matmul'`` on the CPU backend and ``'xla'``
elsewhere, so a checkpoint moves between CPU and accelerators unchanged; the
backend is that of the devices the model will run on (``from_config``'s
``platform``: a TPU when compiling for one from a CPU machine), by default JAX's.
With several models in one step (``config.num_models``) on a GPU, ``'matmul'``
is the faster (its matmuls batch under ``jax.vmap``, a convolution becomes a
grouped one): set it explicitly (docs/PERFORMANCE.md, "Many models on one GPU").
"""

import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

from nin_jax import cpu_ops

Dtype = Any

# Widths of each mlpconv block (k x k conv, cccp1, cccp2) and its kernel size.
# The class layer (the last block's cccp2) has ``num_classes`` outputs, so the
# last block lists two widths only.
CIFAR_WIDTHS = ((192, 160, 96), (192, 192, 192), (192, 192))
CIFAR_KERNELS = (5, 5, 3)
# The paper's per-dataset networks (its Tables and the authors' definitions; see
# docs/RECIPES.md): name -> (widths, kernel_sizes).
# Parameters: cifar 966,986 (3 channels in, 10 classes), svhn 1,986,026, mnist 349,674.
VARIANTS = {
    "cifar": (CIFAR_WIDTHS, CIFAR_KERNELS),
    "svhn": (((128, 96, 64), (320, 256, 128), (384, 256)), (5, 5, 5)),
    "mnist": (((96, 64, 48), (128, 96, 48), (128, 96)), (5, 5, 5)),
}
HEADS = ("gap", "fc", "fc_dropout")


def zero_mean_over_fan_in(init: nn.initializers.Initializer) -> nn.initializers.Initializer:
    """``init`` with each output unit's kernel shifted to mean 0 over its fan-in (and scaled
    by ``sqrt(n / (n - 1))`` to keep its variance).

    Why: the inputs of every layer but the first are ReLU outputs, all positive, so a
    random kernel turns their common mean into a fixed offset per output channel, and
    in the class layer into a fixed offset per class. With 100 classes those offsets,
    and the class layer's updates along the same common direction, swamp the small
    differences between classes (docs/RECIPES.md, "6. A hundred classes"). A zero-mean
    kernel sees only the inputs' variation.
    """

    def initialise(key: jax.Array, shape: Sequence[int], dtype: Dtype = jnp.float32) -> jax.Array:
        kernel = init(key, shape, dtype)
        fan_in_axes = tuple(range(len(shape) - 1))
        fan_in = math.prod(shape[:-1])
        centred = kernel - jnp.mean(kernel, axis=fan_in_axes, keepdims=True)
        return (centred * jnp.sqrt(fan_in / (fan_in - 1))).astype(dtype)

    return initialise


# Fan-in-scaled kernel initialisers (``NIN.kernel_init``): LeCun's keeps the variance of a
# linear layer's output, He's (2x the variance) that of a layer followed by ReLU.
KERNEL_INITS = {
    "lecun_normal": nn.initializers.lecun_normal,
    "he_normal": nn.initializers.he_normal,
    "he_normal_zero_mean": lambda: zero_mean_over_fan_in(nn.initializers.he_normal()),
}


def resolve_conv_impl(conv_impl: str, platform: str | None = None) -> str:
    """Maps ``'auto'`` to the fastest implementation on ``platform`` ('cpu', 'gpu', 'tpu'; the
    platform of the devices the model runs on; default: JAX's default backend)."""
    if conv_impl == "auto":
        platform = jax.default_backend() if platform is None else platform
        return "matmul" if platform == "cpu" else "xla"
    if conv_impl not in ("xla", "matmul", "fused"):
        raise ValueError(f"conv_impl must be 'auto', 'xla', 'matmul' or 'fused', got {conv_impl!r}")
    return conv_impl


def max_pool_3x3_s2(x: jax.Array, impl: str) -> jax.Array:
    """3x3 max pooling, stride 2, padding 1 (padded cells never win), as PyTorch's MaxPool2d."""
    if impl in ("xla", "fused"):
        return nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    return cpu_ops.max_pool_3x3_s2(x)


def conv_same_xla(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """XLA's stride-1 'same' convolution of NHWC ``x`` with an HWIO ``kernel``."""
    pad = kernel.shape[0] // 2
    return jax.lax.conv_general_dilated(
        x,
        kernel,
        window_strides=(1, 1),
        padding=((pad, pad), (pad, pad)),
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
    )


class Conv2D(nn.Module):
    """Stride-1 'same' convolution with ``nn.Conv``'s parameters and two implementations."""

    features: int
    kernel_size: int
    conv_impl: str = "xla"
    dtype: Dtype = jnp.float32
    kernel_init: nn.initializers.Initializer = nn.initializers.lecun_normal()
    bias_init: nn.initializers.Initializer = nn.initializers.zeros

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        k, in_features = self.kernel_size, x.shape[-1]
        kernel = self.param("kernel", self.kernel_init, (k, k, in_features, self.features))
        bias = self.param("bias", self.bias_init, (self.features,))
        x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
        if self.conv_impl == "xla" and k == 1:
            # A matmul over channels: under jax.vmap (several models) it stays one
            # batched matmul, where a convolution becomes a slow grouped one.
            y = jnp.einsum("nhwc,co->nhwo", x, kernel.reshape(in_features, self.features))
        elif self.conv_impl == "xla":
            y = conv_same_xla(x, kernel)
        else:
            y = (
                cpu_ops.pointwise_conv(x, kernel.reshape(in_features, self.features))
                if k == 1
                else cpu_ops.conv_same(x, kernel)
            )
        return y + bias


class ConvParams(nn.Module):
    """``Conv2D``'s parameters without its computation: ``(kernel, bias)`` in ``dtype``."""

    features: int
    kernel_size: int
    dtype: Dtype = jnp.float32
    kernel_init: nn.initializers.Initializer = nn.initializers.lecun_normal()
    bias_init: nn.initializers.Initializer = nn.initializers.zeros

    @nn.compact
    def __call__(self, in_features: int) -> tuple[jax.Array, jax.Array]:
        k = self.kernel_size
        kernel = self.param("kernel", self.kernel_init, (k, k, in_features, self.features))
        bias = self.param("bias", self.bias_init, (self.features,))
        return kernel.astype(self.dtype), bias.astype(self.dtype)


class MlpConv(nn.Module):
    """One mlpconv block: k x k conv -> ReLU -> 1x1 (cccp1) -> ReLU -> 1x1 (cccp2) -> ReLU."""

    widths: Sequence[int]
    kernel_size: int
    conv_impl: str = "xla"
    dtype: Dtype = jnp.float32
    kernel_init: nn.initializers.Initializer = nn.initializers.lecun_normal()
    # The initialisation of the block's last layer (cccp2): its kernel's (None: as the
    # others) and its bias (the others' start at 0).
    last_kernel_init: nn.initializers.Initializer | None = None
    last_bias: float = 0.0
    # conv_impl='fused': run the kernel in Pallas's interpreter (any backend) or compiled
    # for a TPU.
    interpret: bool = False

    def _inits(self, name: str) -> dict[str, nn.initializers.Initializer]:
        last = name == "cccp2"
        kernel_init = self.kernel_init
        if last and self.last_kernel_init is not None:
            kernel_init = self.last_kernel_init
        bias_init = nn.initializers.constant(self.last_bias if last else 0.0)
        return {"kernel_init": kernel_init, "bias_init": bias_init}

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        names = ("conv", "cccp1", "cccp2")
        if self.conv_impl == "fused":
            return self._fused(x, names)
        for name, width in zip(names, self.widths, strict=True):
            kernel_size = self.kernel_size if name == "conv" else 1
            conv = Conv2D(
                width, kernel_size, self.conv_impl, self.dtype, **self._inits(name), name=name
            )
            x = nn.relu(conv(x))
        return x

    def _fused(self, x: jax.Array, names: Sequence[str]) -> jax.Array:
        from nin_jax import fused_mlpconv  # Pallas: imported by the runs that use it only.

        fan_ins = (x.shape[-1], *self.widths[:2])
        sizes = zip(names, (self.kernel_size, 1, 1), fan_ins, self.widths, strict=True)
        (k0, b0), (k1, b1), (k2, b2) = (
            ConvParams(width, size, self.dtype, **self._inits(name), name=name)(fan_in)
            for name, size, fan_in, width in sizes
        )
        y = conv_same_xla(x.astype(self.dtype), k0)
        w1, w2 = k1.reshape(k1.shape[2:]), k2.reshape(k2.shape[2:])
        return fused_mlpconv.tail(y, b0, w1, b1, w2, b2, interpret=self.interpret)


class NIN(nn.Module):
    """Network In Network. ``NIN(num_classes=10)`` is the seed's CIFAR network.

    Attributes:
      num_classes: outputs of the class layer (the last cccp layer).
      widths: per block, the widths of the k x k conv and the cccp layers; the
        last block omits its class layer, whose width is ``num_classes``.
      kernel_sizes: the k of each block's first convolution.
      dropout_rate: dropout after each of the first two blocks' pooling.
      head: 'gap' (the paper's global average pooling of the class maps), or,
        for the paper's ablation, 'fc' (the class maps flattened into one dense
        layer, ``h*w*C*C + C`` more parameters) or 'fc_dropout' (the same with
        dropout ``dropout_rate`` before the dense layer).
      kernel_init: the fan-in-scaled kernel initialiser, a key of ``KERNEL_INITS``
        ('lecun_normal', Flax's default, 'he_normal', or 'he_normal_zero_mean':
        He-normal kernels of mean 0 over their fan-in); ignored when ``init_std``
        is set.
      init_std: ``None`` for ``kernel_init``, or the std of a fixed Gaussian
        initialisation of every kernel (0.05 in the authors' cuda-convnet code).
      class_init_std: ``None`` to initialise the class layer's kernel (and an fc
        head's dense kernel) as the others, or the std of its Gaussian
        initialisation (0: zeros).
      class_bias: the initial bias of the class layer (the last cccp layer).
      conv_impl: 'auto', 'xla', 'matmul' or 'fused' (see the module docstring).
      dtype: computation dtype; parameters stay float32.
      pallas_interpret: with ``conv_impl='fused'``, run its kernel in Pallas's
        interpreter; ``None``: unless JAX's default backend is a TPU
        (``from_config`` sets it for the devices the model runs on).
    """

    num_classes: int = 10
    widths: Sequence[Sequence[int]] = CIFAR_WIDTHS
    kernel_sizes: Sequence[int] = CIFAR_KERNELS
    dropout_rate: float = 0.5
    head: str = "gap"
    kernel_init: str = "lecun_normal"
    init_std: float | None = None
    class_init_std: float | None = None
    class_bias: float = 0.0
    conv_impl: str = "auto"
    dtype: Dtype = jnp.float32
    pallas_interpret: bool | None = None

    def setup(self):
        if len(self.widths) != len(self.kernel_sizes):
            raise ValueError("widths and kernel_sizes need one entry per block")
        if self.head not in HEADS:
            raise ValueError(f"head must be one of {', '.join(HEADS)}, got {self.head!r}")
        if self.kernel_init not in KERNEL_INITS:
            raise ValueError(
                f"kernel_init must be one of {', '.join(KERNEL_INITS)}, got {self.kernel_init!r}"
            )
        kernel_init = (
            KERNEL_INITS[self.kernel_init]()
            if self.init_std is None
            else nn.initializers.normal(self.init_std)
        )
        class_kernel_init = (
            None if self.class_init_std is None else nn.initializers.normal(self.class_init_std)
        )
        impl = resolve_conv_impl(self.conv_impl)
        last = len(self.widths) - 1
        self.blocks = [
            MlpConv(
                tuple(widths) + ((self.num_classes,) if i == last else ()),
                kernel_size,
                conv_impl=impl,
                dtype=self.dtype,
                kernel_init=kernel_init,
                last_kernel_init=class_kernel_init if i == last else None,
                last_bias=self.class_bias if i == last else 0.0,
                interpret=(
                    jax.default_backend() != "tpu"
                    if self.pallas_interpret is None
                    else self.pallas_interpret
                ),
                name=f"mlpconv{i + 1}",
            )
            for i, (widths, kernel_size) in enumerate(
                zip(self.widths, self.kernel_sizes, strict=True)
            )
        ]
        self._pool_impl = impl
        if self.head != "gap":
            fc_init = kernel_init if class_kernel_init is None else class_kernel_init
            self.fc = nn.Dense(self.num_classes, dtype=self.dtype, kernel_init=fc_init)

    def _dropout(self, x: jax.Array, train: bool, rate: float | jax.Array | None) -> jax.Array:
        """Inverted dropout at ``rate`` (default ``dropout_rate``), which may be a traced
        per-model value (nin_jax.ensemble's sweeps); masks from the 'dropout' RNG stream."""
        rate = self.dropout_rate if rate is None else rate
        if not train or (isinstance(rate, int | float) and rate == 0.0):
            return x
        keep = 1.0 - rate
        mask = jax.random.bernoulli(self.make_rng("dropout"), keep, x.shape)
        return jnp.where(mask, x / keep, 0.0).astype(x.dtype)

    def class_maps(
        self, x: jax.Array, train: bool = False, dropout_rate: jax.Array | None = None
    ) -> jax.Array:
        """The last mlpconv block's output: one non-negative map per class, (N, h, w, C).

        Each block's output is appended to ``intermediates['block_outputs']``, kept
        only when that collection is mutable (the health metrics of nin_jax.steps).
        """
        for block in self.blocks:
            x = block(x)
            self.sow("intermediates", "block_outputs", x)
            if block is not self.blocks[-1]:
                x = max_pool_3x3_s2(x, self._pool_impl)
                x = self._dropout(x, train, dropout_rate)
        return x

    def __call__(
        self, x: jax.Array, train: bool = False, dropout_rate: jax.Array | None = None
    ) -> jax.Array:
        """Logits (N, num_classes), float32, from NHWC images of any spatial size.

        ``dropout_rate`` overrides the attribute (a per-model value under ``jax.vmap``).
        """
        maps = self.class_maps(x, train=train, dropout_rate=dropout_rate)
        if self.head == "gap":
            return jnp.mean(maps.astype(jnp.float32), axis=(1, 2))
        features = maps.reshape(maps.shape[0], -1)
        if self.head == "fc_dropout":
            features = self._dropout(features, train, dropout_rate)
        return self.fc(features).astype(jnp.float32)


DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def from_config(config, num_classes: int, platform: str | None = None) -> NIN:
    """The NIN of ``config.model`` computing in ``config.dtype`` (an ml_collections config).

    ``platform``: where it will run (``resolve_conv_impl``), when that is not JAX's default
    backend (e.g. compiling for a TPU on a CPU machine, ``nin_jax.aot``).
    """
    fields = config.model.to_dict()
    fields["conv_impl"] = resolve_conv_impl(fields["conv_impl"], platform)
    if platform is not None:
        fields["pallas_interpret"] = platform != "tpu"
    return NIN(num_classes=num_classes, dtype=DTYPES[config.dtype], **fields)
