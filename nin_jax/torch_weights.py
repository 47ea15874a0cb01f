"""The seed's PyTorch NIN's ``state_dict`` and nin_jax's parameters, one from the other.

The seed's network (benchmarks/torch_nin.py) names its convolutions by block and by
position in the block's ``nn.Sequential`` ([Conv2d, ReLU] x 3, then MaxPool2d and
Dropout in the first two blocks): block ``b``'s k x k convolution is
``features<b>.0``, its cccp1 ``features<b>.2`` and its cccp2 ``features<b>.4``, each
with a ``weight`` and a ``bias``. nin_jax's are ``mlpconv<b>/{conv,cccp1,cccp2}/
{kernel,bias}``. What differs, and how it is handled:

* **Kernel layout**: PyTorch's OIHW (out, in, height, width) against nin_jax's HWIO:
  ``kernel = weight.transpose(2, 3, 1, 0)`` and back with ``(3, 2, 0, 1)``: exact
  (no arithmetic), so a round trip gives the same tensors bit for bit.
* **Padding**: both convolutions are stride 1 with ``k // 2`` zero padding ('same');
  both max poolings are 3x3, stride 2, padding 1 with padded cells never winning
  (PyTorch pads with -inf, nin_jax's ``reduce_window`` too), and both round the
  output size down (``floor((H - 1) / 2) + 1``): nothing to convert.
* **The last pooling**: the seed's ``AvgPool2d(8, stride=1)`` is the global mean of
  the class maps when they are 8 x 8, i.e. for 32 x 32 inputs, which is where the
  two compute the same logits; nin_jax's global average pooling is global at every
  input size (the seed's would give a spatial output on larger inputs, and fails on
  smaller ones).
* Dropout and ReLU have no parameters. The seed has no dense layer: a config with
  ``model.head`` 'fc' or 'fc_dropout' has no PyTorch counterpart here.

The functions take and give numpy arrays (``to_numpy_state`` turns a ``state_dict`` of
tensors into them), so this module does not import torch.
"""

from collections.abc import Mapping
from typing import Any

import numpy as np

from nin_jax.errors import NinError

LAYERS = ("conv", "cccp1", "cccp2")
_POSITIONS = {"conv": 0, "cccp1": 2, "cccp2": 4}  # Index in the seed's nn.Sequential.
_DATA_PARALLEL_PREFIX = "module."  # What torch.nn.DataParallel adds to every name.


class MismatchError(NinError):
    """A ``state_dict`` that is not the config's network: the message names the tensor."""


def torch_name(block: str, layer: str, leaf: str) -> str:
    """'features1.0.weight' for ('mlpconv1', 'conv', 'kernel')."""
    index = int(block.removeprefix("mlpconv"))
    return f"features{index}.{_POSITIONS[layer]}.{'weight' if leaf == 'kernel' else 'bias'}"


def expected_torch_shapes(params_shapes: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
    """The seed's tensor names and shapes for nin_jax parameters of these shapes (a tree of
    arrays or of ``jax.ShapeDtypeStruct``), in the network's order."""
    shapes = {}
    for block in sorted(params_shapes, key=lambda name: int(name.removeprefix("mlpconv"))):
        for layer in LAYERS:
            leaves = params_shapes[block][layer]
            kernel = tuple(leaves["kernel"].shape)
            shapes[torch_name(block, layer, "kernel")] = (kernel[3], kernel[2], *kernel[:2])
            shapes[torch_name(block, layer, "bias")] = tuple(leaves["bias"].shape)
    return shapes


def _strip_data_parallel(state: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    if state and all(name.startswith(_DATA_PARALLEL_PREFIX) for name in state):
        return {name.removeprefix(_DATA_PARALLEL_PREFIX): v for name, v in state.items()}
    return dict(state)


def from_torch(
    state: Mapping[str, np.ndarray], params_shapes: Mapping[str, Any], source: str = "the file"
) -> dict[str, Any]:
    """nin_jax parameters (float32 numpy, HWIO kernels) from the seed's ``state_dict``.

    ``params_shapes``: the shapes the config's model needs (``jax.eval_shape`` of its
    init). A missing, extra or differently shaped tensor raises ``MismatchError`` naming
    the first one in the network's order (then the first extra one).
    """
    state = _strip_data_parallel(state)
    expected = expected_torch_shapes(params_shapes)
    for name, shape in expected.items():
        if name not in state:
            raise MismatchError(
                f"{source} has no tensor {name}; the config's network needs it, of shape {shape}"
            )
        got = tuple(np.shape(state[name]))
        if got != shape:
            raise MismatchError(
                f"tensor {name} is {got} in {source}; the config's network needs {shape}"
            )
    extra = [name for name in state if name not in expected]
    if extra:
        raise MismatchError(
            f"tensor {extra[0]} of {source} has no place in the config's network "
            f"({len(extra)} such tensors; it has {len(expected)}: features1.0.weight ...)"
        )
    params: dict[str, Any] = {}
    for block in params_shapes:
        params[block] = {}
        for layer in LAYERS:
            weight = np.asarray(state[torch_name(block, layer, "kernel")], np.float32)
            params[block][layer] = {
                "kernel": np.ascontiguousarray(weight.transpose(2, 3, 1, 0)),
                "bias": np.asarray(state[torch_name(block, layer, "bias")], np.float32),
            }
    return params


def to_torch(params: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """The seed's ``state_dict`` (numpy arrays, OIHW weights, in the network's order) of
    nin_jax parameters of one model."""
    state = {}
    for block in sorted(params, key=lambda name: int(name.removeprefix("mlpconv"))):
        for layer in LAYERS:
            kernel = np.asarray(params[block][layer]["kernel"], np.float32)
            state[torch_name(block, layer, "kernel")] = np.ascontiguousarray(
                kernel.transpose(3, 2, 0, 1)
            )
            state[torch_name(block, layer, "bias")] = np.asarray(
                params[block][layer]["bias"], np.float32
            )
    return state
