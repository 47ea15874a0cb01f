"""nin_jax: Network In Network in JAX/Flax.

Its library names are used from their modules (``from nin_jax import models, steps``;
``models.NIN``, ``steps.train_step``, ``restore.load_parts``, ...), listed in
docs/LIBRARY.md: nothing is re-exported here, so ``import nin_jax`` imports neither
JAX nor TensorFlow, and each module imports only what it needs.
"""
