"""torch_weights: the seed's state_dict names and layouts against nin_jax's parameters (numpy
only: no torch needed), and the first mismatched tensor named."""

import jax
import numpy as np
import pytest

from nin_jax import torch_weights
from nin_jax.models import CIFAR_WIDTHS, NIN

TINY = ((4, 5, 6), (7, 8, 9), (3, 2))


def shapes(widths=TINY, kernels=(5, 5, 3), channels=3, classes=10):
    model = NIN(num_classes=classes, widths=widths, kernel_sizes=kernels)
    return jax.eval_shape(model.init, jax.random.key(0), np.zeros((1, 8, 8, channels)))["params"]


def random_state(expected: dict, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    return {name: rng.normal(size=shape).astype(np.float32) for name, shape in expected.items()}


def test_the_seeds_names_and_oihw_shapes_for_the_cifar_network():
    expected = torch_weights.expected_torch_shapes(shapes(CIFAR_WIDTHS))
    assert list(expected)[:6] == [
        "features1.0.weight", "features1.0.bias", "features1.2.weight", "features1.2.bias",
        "features1.4.weight", "features1.4.bias",
    ]  # fmt: skip
    assert len(expected) == 18
    assert expected["features1.0.weight"] == (192, 3, 5, 5)
    assert expected["features2.2.weight"] == (192, 192, 1, 1)
    assert expected["features3.0.weight"] == (192, 192, 3, 3)
    assert expected["features3.4.weight"] == (10, 192, 1, 1)
    assert sum(np.prod(s) for s in expected.values()) == 966_986


def test_kernels_are_transposed_oihw_to_hwio_and_back_exactly():
    expected = torch_weights.expected_torch_shapes(shapes())
    state = random_state(expected)
    params = torch_weights.from_torch(state, shapes())
    weight = state["features1.0.weight"]  # (out, in, h, w)
    kernel = params["mlpconv1"]["conv"]["kernel"]  # (h, w, in, out)
    assert kernel.shape == (5, 5, 3, 4)
    assert kernel[1, 2, 0, 3] == weight[3, 0, 1, 2]
    np.testing.assert_array_equal(params["mlpconv3"]["cccp2"]["bias"], state["features3.4.bias"])
    back = torch_weights.to_torch(params)
    assert list(back) == list(expected)
    for name in expected:
        np.testing.assert_array_equal(back[name], state[name])


def test_data_parallel_prefix_is_accepted():
    expected = torch_weights.expected_torch_shapes(shapes())
    state = {f"module.{name}": v for name, v in random_state(expected).items()}
    params = torch_weights.from_torch(state, shapes())
    np.testing.assert_array_equal(
        params["mlpconv2"]["cccp1"]["bias"], state["module.features2.2.bias"]
    )


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda s: s.pop("features2.2.bias"),
         "has no tensor features2.2.bias; the config's network needs it, of shape (8,)"),
        (lambda s: s.__setitem__("features1.0.weight", np.zeros((4, 3, 3, 3))),
         "tensor features1.0.weight is (4, 3, 3, 3) in m.pth; the config's network needs "
         "(4, 3, 5, 5)"),
        (lambda s: s.__setitem__("features4.0.weight", np.zeros(1)),
         "tensor features4.0.weight of m.pth has no place in the config's network"),
    ],
)  # fmt: skip
def test_the_first_mismatched_tensor_is_named(change, message):
    state = random_state(torch_weights.expected_torch_shapes(shapes()))
    change(state)
    with pytest.raises(torch_weights.MismatchError) as error:
        torch_weights.from_torch(state, shapes(), source="m.pth")
    assert message in str(error.value)


def test_a_network_of_other_widths_names_its_first_tensor():
    seed = random_state(torch_weights.expected_torch_shapes(shapes(CIFAR_WIDTHS)))
    with pytest.raises(torch_weights.MismatchError, match=r"features1\.0\.weight is \(192, 3"):
        torch_weights.from_torch(seed, shapes(), source="m.pth")
