"""params_io: parameters saved and loaded without a workdir, and damaged files in one line."""

import jax
import numpy as np
import pytest

from nin_jax import params_io
from nin_jax.errors import FileDamagedError, WorkdirError
from nin_jax.models import NIN

TINY = ((4, 4, 4), (4, 4, 4), (4, 4))


def tiny_params(seed: int = 0):
    model = NIN(num_classes=3, widths=TINY)
    return jax.jit(model.init)(jax.random.key(seed), np.zeros((1, 8, 8, 1)))["params"]


def test_round_trip_keeps_every_array_and_the_logits(tmp_path):
    params = tiny_params()
    path = str(tmp_path / "params.npz")
    params_io.save(path, params)
    loaded = params_io.load(path)
    assert jax.tree.structure(loaded) == jax.tree.structure(jax.device_get(params))
    for saved, original in zip(jax.tree.leaves(loaded), jax.tree.leaves(params), strict=True):
        assert saved.dtype == np.float32
        np.testing.assert_array_equal(saved, original)
    x = np.random.default_rng(0).normal(size=(2, 8, 8, 1)).astype(np.float32)
    model = NIN(num_classes=3, widths=TINY)
    np.testing.assert_array_equal(
        model.apply({"params": loaded}, x), model.apply({"params": params}, x)
    )
    with np.load(path) as npz:  # A plain archive named by path, readable without nin_jax.
        assert npz["mlpconv3/cccp2/kernel"].shape == (1, 1, 4, 3)
        assert len(npz.files) == 18


def test_stacked_parameters_keep_their_model_axis(tmp_path):
    stacked = jax.tree.map(lambda *xs: np.stack(xs), tiny_params(0), tiny_params(1))
    path = str(tmp_path / "stacked.npz")
    params_io.save(path, stacked)
    loaded = params_io.load(path)
    assert loaded["mlpconv1"]["conv"]["kernel"].shape == (2, 5, 5, 1, 4)
    np.testing.assert_array_equal(loaded["mlpconv2"]["cccp1"]["bias"][1],
                                  tiny_params(1)["mlpconv2"]["cccp1"]["bias"])  # fmt: skip


def test_flatten_refuses_a_name_with_the_separator():
    with pytest.raises(ValueError, match="holds '/'"):
        params_io.flatten({"a/b": np.zeros(2)})


@pytest.mark.parametrize(
    "content, message",
    [(b"", "not a .npz file"), (b"PK\x03\x04garbage", "damaged"), (b"\x93NUMPY", "not a .npz")],
)
def test_damaged_file_is_one_error(tmp_path, content, message):
    path = tmp_path / "bad.npz"
    path.write_bytes(content)
    with pytest.raises(FileDamagedError, match=message):
        params_io.load(str(path))


def test_missing_file_is_one_error(tmp_path):
    with pytest.raises(WorkdirError, match="no such file"):
        params_io.load(str(tmp_path / "none.npz"))
