"""Per-example gradient norms with ``jax.vmap(jax.grad(...))``, of a trained workdir's model.

  python examples/per_example_grads.py --workdir=/tmp/nin_digits [--num_images=64]

``jax.grad`` of one example's loss, ``vmap``-ed over the batch, gives every example's
gradient in one compiled call (no loop over examples); their global L2 norms rank
the examples by how hard they pull on the parameters. The mean of the per-example
gradients is the gradient of the batch's mean loss: the script prints the largest
difference between the two, and tests/test_examples.py checks that it is float32
rounding: below 1e-4 of the batch gradient's largest entry (measured: 2e-5 on 64
test digits).
"""

import argparse
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax

from nin_jax import input_pipeline, restore, workdir
from nin_jax.errors import NinError


def per_example_gradients(parts: restore.Parts, images: np.ndarray, labels: np.ndarray):
    """(each example's gradient: the parameters' tree with a leading batch axis, the batch
    gradient) of the cross-entropy of uint8 ``images`` (N, H, W, C) and int ``labels``."""
    model, params, preprocess, _ = parts

    def loss(params, image, label):  # One example: image (H, W, C), label ().
        logits = model.apply({"params": params}, preprocess(image[None]))
        return optax.softmax_cross_entropy_with_integer_labels(logits, label[None])[0]

    per_example = jax.jit(jax.vmap(jax.grad(loss), in_axes=(None, 0, 0)))(params, images, labels)

    def batch_loss(params):
        return jnp.mean(jax.vmap(loss, in_axes=(None, 0, 0))(params, images, labels))

    return per_example, jax.jit(jax.grad(batch_loss))(params)


def main(workdir_path: str, num_images: int = 64, model: int = 0) -> dict[str, np.ndarray]:
    """Prints the largest per-example norms; returns the norms and the mean-vs-batch gap."""
    parts = restore.load_parts(workdir_path, model=model)
    config = workdir.load_config(workdir_path)
    builder = input_pipeline.get_builder(config.dataset, config.data_dir)
    test = input_pipeline.load_split(builder, f"test[:{num_images}]", drop_remainder=False)
    per_example, batch_grad = per_example_gradients(parts, test.images, test.labels)
    norms = np.asarray(jax.vmap(optax.tree.norm)(per_example))
    mean_grad = jax.tree.map(lambda g: g.mean(0), per_example)
    pairs = zip(jax.tree.leaves(mean_grad), jax.tree.leaves(batch_grad), strict=True)
    gap = max(float(jnp.abs(a - b).max()) for a, b in pairs)
    scale = max(float(jnp.abs(b).max()) for b in jax.tree.leaves(batch_grad))
    for i in np.argsort(-norms)[:5]:
        name = parts.class_names[test.labels[i]]
        print(f"test image {i} (class {name}): gradient norm {norms[i]:.4f}")
    print(f"mean of {len(norms)} per-example gradients - batch gradient: largest difference "
          f"{gap:.2e} (the batch gradient's largest entry: {scale:.2e})")  # fmt: skip
    return {"norms": norms, "gap": gap, "scale": scale}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", required=True, help="a trained workdir")
    parser.add_argument("--num_images", type=int, default=64)
    parser.add_argument("--model", type=int, default=0, help="model k of a multi-model run")
    args = parser.parse_args()
    try:
        main(args.workdir, args.num_images, args.model)
    except NinError as e:  # A workdir or dataset nin_jax cannot use: one line.
        sys.exit(f"error: {e}")
