"""Trains each recipe named on the command line for two steps on mock data; prints the results.

Run with XLA_FLAGS=--xla_force_host_platform_device_count=4 (test_recipes_multidevice.py).
  python tests/scripts/four_device_recipes.py DATA_DIR RECIPE...
"""

import json
import os
import sys

import jax
import tensorflow_datasets as tfds

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # tests/
from helpers import load_config  # noqa: E402
from test_recipes import MOCK_EXAMPLES  # noqa: E402

from nin_jax import train  # noqa: E402

if __name__ == "__main__":
    assert jax.device_count() == 4, jax.devices()
    data_dir, names = sys.argv[1], sys.argv[2:]
    for name in names:
        config = load_config(name, data_dir=data_dir, model__conv_impl="xla")
        with tfds.testing.mock_data(
            policy=tfds.testing.MockPolicy.USE_CODE, num_examples=MOCK_EXAMPLES
        ):
            _, results = train.train_and_evaluate(config, os.path.join(data_dir, "work-" + name))
        print("RESULT", name, json.dumps(results), flush=True)
