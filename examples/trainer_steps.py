"""The trainer's own pieces in a loop of one's own: a config, its optimizer, the pure steps.

  python examples/trainer_steps.py [--data_dir=DIR]

``models.from_config``, ``optimizer.create`` (the config's SGD and learning-rate
schedule), ``steps.create_train_state``, ``steps.train_step`` and ``steps.eval_step``
are what ``nin_jax.main`` runs, without its mesh, workdir, checkpoints or logs. The
steps take preprocessed float32 batches; the loop preprocesses with
``preprocessing.apply``. configs/digits.py at width 32 without dropout, rate 0.05, 500
steps of 32 images: at least 95% test accuracy (tests/test_examples.py checks it,
and that the steps' training loss fell below 0.3).
"""

import argparse
import sys

import jax
import numpy as np

from nin_jax import input_pipeline, models, optimizer, preprocessing, statistics, steps
from nin_jax.configs import digits
from nin_jax.errors import NinError

STATED_ACCURACY = 0.95


def main(data_dir: str | None = None, num_steps: int = 500) -> dict[str, float]:
    """Trains configs/digits.py (width 32) with the trainer's steps; returns the figures."""
    config = digits.get_config()
    config.model.widths = ((32, 32, 32), (32, 32, 32), (32, 32))
    config.model.dropout_rate, config.learning_rate = 0.0, 0.05
    builder = input_pipeline.get_builder(config.dataset, data_dir)
    train = input_pipeline.load_split(builder, "train", drop_remainder=False)
    test = input_pipeline.load_split(builder, "test", drop_remainder=False)
    stats = statistics.fit(config.preprocess, train)

    model = models.from_config(config, num_classes=10)
    steps_per_epoch = len(train) // config.batch_size
    _, tx = optimizer.create(config, steps_per_epoch, total_steps=num_steps)
    state = jax.jit(lambda key: steps.create_train_state(key, model, (8, 8, 1), tx))(
        jax.random.key(config.seed)
    )
    train_step, eval_step = jax.jit(steps.train_step), jax.jit(steps.eval_step)

    order, losses = np.random.default_rng(config.seed), []
    for _ in range(num_steps):
        rows = order.choice(len(train), config.batch_size, replace=False)
        image = preprocessing.apply(config.preprocess, stats, train.images[rows])
        batch = {"image": image, "label": train.labels[rows]}
        state, metrics = train_step(state, batch, jax.random.key(1))  # dropout: fold_in(step)
        losses.append(float(metrics["loss"]))

    image = preprocessing.apply(config.preprocess, stats, test.images)
    mask = np.ones(len(test), np.float32)  # eval_step sums over the rows whose mask is 1
    sums = eval_step(state, {"image": image, "label": test.labels, "mask": mask})
    accuracy = float(sums["correct"] / sums["count"])
    final_loss = float(np.mean(losses[-50:]))
    print(f"digits: test accuracy {accuracy:.2%}, training loss {final_loss:.3f} (last 50 steps)")
    return {"accuracy": accuracy, "final_loss": final_loss, "first_loss": losses[0]}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data_dir", default=None, help="TFDS data dir (default: TFDS's)")
    try:
        main(parser.parse_args().data_dir)
    except NinError as e:  # A workdir or dataset nin_jax cannot use: one line.
        sys.exit(f"error: {e}")
