"""TFDS builders shipped with nin_jax (importing this registers them)."""

from nin_jax.datasets.digits import Digits

__all__ = ["Digits"]
