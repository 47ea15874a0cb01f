"""Data augmentation on the devices, inside the jitted train step.

``config.augment='crop_flip'`` (the augmented CIFAR-10 recipe): after
preprocessing, each image is padded with 4 zero pixels per side, a random
window of its size is cut out, and it is flipped horizontally with probability
1/2. The draws are a pure function of (seed, step, row of the global batch):
they are drawn for the whole global batch from one key, and JAX's partitionable
random numbers do not depend on how the batch is sharded, so 1 host x 4 devices
and 2 hosts x 2 devices see the same images, and a resumed run sees exactly
what an uninterrupted one saw.
"""

import jax
import jax.numpy as jnp

CROP_PAD = 4
_AUGMENT_STREAM = 0x61756720  # Keeps augmentation draws apart from any other use of the seed.


def step_key(seed: int, step: jax.Array) -> jax.Array:
    """The key of training step ``step``'s augmentation draws."""
    return jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), _AUGMENT_STREAM), step)


def crop_flip(images: jax.Array, key: jax.Array, pad: int = CROP_PAD) -> jax.Array:
    """Per image: a random translation by up to ``pad`` pixels (zero-filled), then a
    horizontal flip with probability 1/2."""
    count, height, width, channels = images.shape
    crop_key, flip_key = jax.random.split(key)
    offsets = jax.random.randint(crop_key, (count, 2), 0, 2 * pad + 1)
    flips = jax.random.bernoulli(flip_key, 0.5, (count,))
    padded = jnp.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)))

    def one(image, offset, flip):
        window = jax.lax.dynamic_slice(image, (offset[0], offset[1], 0), (height, width, channels))
        return jnp.where(flip, window[:, ::-1], window)

    return jax.vmap(one)(padded, offsets, flips)


def apply(name: str, images: jax.Array, seed: int, step: jax.Array) -> jax.Array:
    """``config.augment`` ``name`` ('none' or 'crop_flip') of the batch of ``step``."""
    if name == "crop_flip":
        return crop_flip(images, step_key(seed, step))
    return images
