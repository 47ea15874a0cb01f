"""Every recipe in configs/ trains and evaluates under mock data on 4 fake CPU devices.

XLA_FLAGS must be set before jax is imported, so one subprocess runs all recipes
(paying the import once); the speed-ups of test_recipes.py apply.
"""

import json
import os
import subprocess
import sys

from conftest import REPO_ROOT, load_config, xla_flags
from test_recipes import MOCK_EXAMPLES, RECIPES, check_results, seed_zca_cache

FOUR_DEVICE_SCRIPT = """
import json, os, sys
import jax
import tensorflow_datasets as tfds
sys.path.insert(0, "tests")
from conftest import load_config
from nin_jax import train
assert jax.device_count() == 4, jax.devices()
data_dir, names = sys.argv[1], sys.argv[2:]
for name in names:
    config = load_config(name, data_dir=data_dir, model__conv_impl="xla")
    with tfds.testing.mock_data(policy=tfds.testing.MockPolicy.USE_CODE, num_examples={n}):
        _, results = train.train_and_evaluate(config, os.path.join(data_dir, 'work-' + name))
    print("RESULT", name, json.dumps(results), flush=True)
"""


def test_every_recipe_on_four_cpu_devices(tmp_path):
    seed_zca_cache(str(tmp_path))
    script = FOUR_DEVICE_SCRIPT.format(n=MOCK_EXAMPLES)
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO_ROOT),
        "XLA_FLAGS": xla_flags(4),
        "JAX_DEFAULT_PRNG_IMPL": "rbg",
    }
    out = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path), *RECIPES],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    lines = [line.split(" ", 2) for line in out.stdout.splitlines() if line.startswith("RESULT ")]
    assert [name for _, name, _ in lines] == RECIPES
    for _, name, payload in lines:
        results = json.loads(payload)
        check_results(name, load_config(name), results, devices=4)
        assert results["test_examples"] == MOCK_EXAMPLES
