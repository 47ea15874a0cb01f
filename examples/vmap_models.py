"""The models of a ``num_models`` workdir evaluated at once by ``jax.vmap`` over their parameters.

  python examples/vmap_models.py --workdir=/tmp/nin_digits_k5

A run with ``config.num_models = K`` keeps its K models' parameters stacked on a
leading axis (``restore.load_parts(workdir)``: every leaf (K, ...)). ``jax.vmap`` of
``model.apply`` over that axis computes every model's logits in one call, (K, N,
classes). The script prints each model's test accuracy and error beside those of
``nin_jax.evaluate --model=k``, which runs the models one at a time; they are equal
(tests/test_examples.py checks it to 1e-9).
"""

import argparse
import sys
import tempfile

import jax
import numpy as np

from nin_jax import evaluate, input_pipeline, restore, workdir
from nin_jax.errors import NinError


def main(workdir_path: str) -> list[dict[str, float]]:
    """Per model: the accuracy and error by ``vmap`` and by ``nin_jax.evaluate``."""
    model, stacked, preprocess, _ = restore.load_parts(workdir_path)
    config = workdir.load_config(workdir_path)
    if config.num_models == 1:
        raise NinError(f"{workdir_path} holds one model: train one with --config.num_models=K")
    builder = input_pipeline.get_builder(config.dataset, config.data_dir)
    test = input_pipeline.load_split(builder, config.eval_split, drop_remainder=False)

    @jax.jit
    def all_logits(stacked, images):
        x = preprocess(images)
        return jax.vmap(lambda params: model.apply({"params": params}, x))(stacked)

    predictions = np.asarray(all_logits(stacked, test.images)).argmax(-1)  # (K, N)
    accuracies = (predictions == test.labels).mean(axis=1)
    figures = []
    with tempfile.TemporaryDirectory() as output_dir:
        for k, accuracy in enumerate(accuracies):
            result, _ = evaluate.run(workdir_path, output_dir=output_dir, model=k)
            figures.append({"vmap_accuracy": float(accuracy), "vmap_error": 1.0 - float(accuracy),
                            "evaluate_accuracy": result["accuracy"],
                            "evaluate_error": result["error"]})  # fmt: skip
            print(f"model {k}: vmap accuracy {accuracy:.4%}, "
                  f"nin_jax.evaluate --model={k}: {result['accuracy']:.4%}")  # fmt: skip
    return figures


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", required=True, help="a workdir trained with num_models > 1")
    try:
        main(parser.parse_args().workdir)
    except NinError as e:  # A workdir or dataset nin_jax cannot use: one line.
        sys.exit(f"error: {e}")
