"""restore.load_parts: a workdir's model, parameters, preprocessing and class names."""

import subprocess
import sys

import jax
import numpy as np
import pytest
from helpers import REPO_ROOT

from nin_jax import preprocessing, restore
from nin_jax.errors import WorkdirError


def test_parts_compute_what_the_tools_compute(trained_workdir):
    model, params, preprocess, class_names = restore.load_parts(trained_workdir)
    trained = restore.load(trained_workdir)
    assert class_names == tuple(str(d) for d in range(10))
    images = np.random.default_rng(0).integers(0, 256, (5, 8, 8, 1), dtype=np.uint8)
    x = jax.jit(preprocess)(images)
    assert x.shape == (5, 8, 8, 1) and x.dtype == np.float32
    stats = trained.info.preprocess_params
    np.testing.assert_allclose(x, (images - stats["mean"]) / stats["std"], rtol=1e-6)
    expected = jax.jit(lambda i: preprocessing.apply("standardize", stats, i))(images)
    np.testing.assert_array_equal(x, expected)
    logits = jax.jit(model.apply)({"params": params}, x)
    np.testing.assert_allclose(logits, trained.apply(images), rtol=1e-6, atol=1e-6)


def test_a_model_beyond_the_workdirs_is_refused(trained_workdir):
    with pytest.raises(WorkdirError, match="holds models 0 to 0"):
        restore.load_parts(trained_workdir, model=1)


def test_loading_imports_no_tensorflow(trained_workdir):
    code = (
        "import sys, numpy as np; from nin_jax import restore; "
        f"m, p, f, names = restore.load_parts({trained_workdir!r}); "
        "m.apply({'params': p}, f(np.zeros((1, 8, 8, 1), np.uint8))); "
        "print('tensorflow' in sys.modules)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == "False"
