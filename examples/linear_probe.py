"""A linear probe on each mlpconv block's output: what the paper asks of its mlpconv layers.

  python examples/linear_probe.py --workdir=/tmp/nin_digits [--model=0]

Each block's output (after its last ReLU, before pooling) is sown into the
``intermediates`` collection as ``block_outputs``: ``model.apply(..., mutable=
['intermediates'])`` returns them beside the logits. Each is flattened into one
feature vector per image, and a linear classifier (scikit-learn's ridge regression
onto the classes' one-hot codes, solved in closed form: a fraction of a second)
fitted on the training split's features is scored on the test split's: how
linearly the classes separate after each block, beside a probe on the model's
input (the preprocessed pixels). The accuracies are printed by block. Measured on
a workdir trained as tests/test_examples.py's fixture (two models, width 32, 500
steps; model 0): input 92.8%, mlpconv1 98.6%, mlpconv2 98.3%, mlpconv3 97.2%, the
network 97.5%: every block's features separate the digits better than the pixels
do, and the last block's (the class maps, whose means are the logits) about as
well as the network. The test checks both: each block's probe above the input's,
the last one within 2 points of the network's accuracy.
"""

import argparse
import sys

import jax
import numpy as np
from sklearn.linear_model import RidgeClassifier

from nin_jax import input_pipeline, restore, workdir
from nin_jax.errors import NinError


def block_features(parts: restore.Parts, images: np.ndarray) -> list[np.ndarray]:
    """The model's input, then each block's output, for uint8 ``images`` (N, H, W, C),
    flattened: [(N, H*W*C), (N, h*w*c), ...]."""
    model, params, preprocess, _ = parts

    @jax.jit
    def outputs(images):
        x = preprocess(images)
        _, state = model.apply({"params": params}, x, mutable=["intermediates"])
        return [x, *state["intermediates"]["block_outputs"]]  # one (N, h, w, c) per block

    return [np.asarray(block).reshape(len(images), -1) for block in outputs(images)]


def main(workdir_path: str, model: int = 0) -> dict[str, float]:
    """Probe accuracy on the test split by block, and the network's own accuracy."""
    parts = restore.load_parts(workdir_path, model=model)
    config = workdir.load_config(workdir_path)
    builder = input_pipeline.get_builder(config.dataset, config.data_dir)
    train = input_pipeline.load_split(builder, "train", drop_remainder=False)
    test = input_pipeline.load_split(builder, "test", drop_remainder=False)
    accuracies = {}
    pairs = zip(
        block_features(parts, train.images), block_features(parts, test.images), strict=True
    )
    for index, (train_x, test_x) in enumerate(pairs):
        name = f"mlpconv{index}" if index else "input"
        probe = RidgeClassifier(alpha=1.0).fit(train_x, train.labels)
        accuracies[name] = float(probe.score(test_x, test.labels))
        print(f"{name} ({train_x.shape[1]} features): probe accuracy {accuracies[name]:.2%}")
    logits = parts.model.apply({"params": parts.params}, parts.preprocess(test.images))
    accuracies["network"] = float(np.mean(np.argmax(logits, -1) == test.labels))
    print(f"the network itself: {accuracies['network']:.2%}")
    return accuracies


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", required=True, help="a trained workdir")
    parser.add_argument("--model", type=int, default=0, help="model k of a multi-model run")
    args = parser.parse_args()
    try:
        main(args.workdir, args.model)
    except NinError as e:  # A workdir or dataset nin_jax cannot use: one line.
        sys.exit(f"error: {e}")
