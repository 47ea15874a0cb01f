"""Recipes train and evaluate under mock data on 4 fake CPU devices.

One recipe of each kind (preprocessing, augmentation, network variant, head):
test_recipes.py runs every recipe on one device. XLA_FLAGS must be set before jax
is imported, so one subprocess runs them all (tests/scripts/four_device_recipes.py,
paying the import once); the speed-ups of test_recipes.py apply.
"""

import json
import os
import subprocess
import sys

import pytest
from helpers import REPO_ROOT, SCRIPTS, load_config, xla_flags
from test_recipes import MOCK_EXAMPLES, check_results, seed_zca_cache

# GCN + ZCA with crop/flip, LCN on the SVHN network, the MNIST network, a dense head.
RECIPES = ["cifar10_augmented", "svhn", "mnist", "cifar10_fc_dropout"]


@pytest.mark.slow
def test_every_recipe_on_four_cpu_devices(tmp_path):
    seed_zca_cache(str(tmp_path))
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO_ROOT),
        "XLA_FLAGS": xla_flags(4),
        "JAX_DEFAULT_PRNG_IMPL": "rbg",
    }
    out = subprocess.run(
        [sys.executable, str(SCRIPTS / "four_device_recipes.py"), str(tmp_path), *RECIPES],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    lines = [line.split(" ", 2) for line in out.stdout.splitlines() if line.startswith("RESULT ")]
    assert [name for _, name, _ in lines] == RECIPES
    for _, name, payload in lines:
        results = json.loads(payload)
        check_results(name, load_config(name), results, devices=4)
        assert results["test_examples"] == MOCK_EXAMPLES
