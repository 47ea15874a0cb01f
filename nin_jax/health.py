"""Training health: dead class maps, per-block activation and gradient norms, and warnings.

NIN ends in a ReLU on the class layer and a global average: a class whose map is
0 at every position of every image has logit 0 and, behind the ReLU, no
gradient, so it may never come back. A network whose logits are all near 0 sits
at the loss ln C (C classes) with tiny gradients. Both are easy to miss in a
loss curve; these metrics and ``HealthMonitor``'s warnings make them visible.

The jitted functions run inside the train step (``nin_jax.steps``); the monitor
runs on the host at log points, on the window's per-step metrics.
"""

import math
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

# Relative distance to ln C under which the loss counts as stalled.
STALL_TOLERANCE = 0.01
# Steps after the warmup the loss must stay in that band before the monitor warns. The
# recipes leave it within their first epoch, most of them within 200 steps of their warmup
# (docs/RECIPES.md); the stalls it is for (an initialisation too small) last 400 and more.
STALL_STEPS = 200
# Consecutive log points a class map must stay dead before the monitor warns.
DEAD_LOG_POINTS = 2


def block_names(count: int) -> list[str]:
    """The parameter-tree names of ``count`` mlpconv blocks."""
    return [f"mlpconv{i + 1}" for i in range(count)]


def dead_classes(class_maps: jax.Array) -> jax.Array:
    """Float (C,): 1 where a class map (N, h, w, C) is 0 at every position of every image."""
    return (jnp.max(class_maps, axis=(0, 1, 2)) <= 0).astype(jnp.float32)


def activation_rms(block_outputs: Sequence[jax.Array]) -> dict[str, jax.Array]:
    """Root mean square of each block's output, by block name."""
    return {
        name: jnp.sqrt(jnp.mean(jnp.square(x.astype(jnp.float32))))
        for name, x in zip(block_names(len(block_outputs)), block_outputs, strict=True)
    }


def grad_norms(grads: Mapping[str, Any]) -> dict[str, jax.Array]:
    """L2 norm of the gradient of each top-level module (the blocks, and 'fc' if present)."""
    return {name: optax.tree.norm(subtree) for name, subtree in grads.items()}


def train_metrics(block_outputs: Sequence[jax.Array], grads: Mapping[str, Any]) -> dict:
    """The train step's health metrics: scalars ``dead_class_fraction``,
    ``activation_rms/<block>``, ``grad_norm/<module>`` and the vector ``dead_classes``."""
    dead = dead_classes(block_outputs[-1])
    return {
        "dead_classes": dead,
        "dead_class_fraction": jnp.mean(dead),
        **{f"activation_rms/{k}": v for k, v in activation_rms(block_outputs).items()},
        **{f"grad_norm/{k}": v for k, v in grad_norms(grads).items()},
    }


def _names(classes: Sequence[int], class_names: Sequence[str] | None) -> str:
    return ", ".join(str(class_names[c]) if class_names else str(c) for c in classes)


class HealthMonitor:
    """Host-side warnings from each log window's per-step metrics (training goes on).

    ``update`` returns one-line warnings: when the mean loss of the windows' steps
    after ``warmup_steps`` has stayed within ``STALL_TOLERANCE`` of ln C for
    ``patience`` such steps (once per stall: the loss must leave the band before
    it warns again; steps of the warmup never count, so a run shorter than
    warmup + patience is never told it stalls), and when classes have been dead at
    ``DEAD_LOG_POINTS`` consecutive log points (a class is dead at a log point when
    it is dead at every step of the window), naming them once each time they die.
    """

    def __init__(
        self,
        num_classes: int,
        warmup_steps: int,
        class_names: Sequence[str] | None = None,
        patience: int = STALL_STEPS,
    ):
        if num_classes < 2:
            raise ValueError(f"num_classes must be at least 2, got {num_classes}")
        self.num_classes = num_classes
        self.warmup_steps = warmup_steps
        self.patience = patience
        self.class_names = list(class_names) if class_names is not None else None
        self._dead_streak = np.zeros(num_classes, np.int64)
        self._band_steps = 0  # Steps after the warmup the loss has stayed in the band.
        self._warned = False

    def update(self, step: int, window: Sequence[Mapping[str, Any]]) -> list[str]:
        """The warnings for the log window that ends at ``step``."""
        if not window:
            return []
        return [w for w in (self._check_stall(step, window), self._check_dead(step, window)) if w]

    def _check_stall(self, step: int, window: Sequence[Mapping[str, Any]]) -> str | None:
        first = step - len(window) + 1  # The window holds the steps first..step.
        after_warmup = [m["loss"] for i, m in enumerate(window) if first + i > self.warmup_steps]
        if not after_warmup:
            return None
        chance = math.log(self.num_classes)
        loss = float(np.mean(after_warmup))
        if abs(loss - chance) > STALL_TOLERANCE * chance:
            self._band_steps, self._warned = 0, False
            return None
        self._band_steps += len(after_warmup)
        if self._warned or self._band_steps < self.patience:
            return None
        self._warned = True
        return (
            f"step {step}: the loss ({loss:.4f} over the last {len(after_warmup)} steps) has "
            f"stayed within {STALL_TOLERANCE:.0%} of ln {self.num_classes} = {chance:.4f} for "
            f"{self._band_steps} steps after the {self.warmup_steps} warmup steps: the network "
            "is not learning yet (activation_rms/* near 0: an initialisation too small for "
            "the depth, such as N(0, 0.05); otherwise a class layer or a learning rate too "
            "slow to leave the plateau); see config.model.kernel_init, config.model.init_std, "
            "config.lr_multipliers, config.learning_rate and config.warmup_epochs"
        )

    def _check_dead(self, step: int, window: Sequence[Mapping[str, Any]]) -> str | None:
        if "dead_classes" not in window[0]:
            return None
        dead = np.min([np.asarray(m["dead_classes"]) for m in window], axis=0) > 0
        self._dead_streak = np.where(dead, self._dead_streak + 1, 0)
        newly = np.flatnonzero(self._dead_streak == DEAD_LOG_POINTS)
        if not len(newly):
            return None
        total = int(np.sum(self._dead_streak >= DEAD_LOG_POINTS))
        return (
            f"step {step}: the class maps of class(es) {_names(newly, self.class_names)} have "
            f"been 0 for every image over {DEAD_LOG_POINTS} log points ({total} of "
            f"{self.num_classes} classes dead): behind the class layer's ReLU they get no "
            "gradient and may never recover (likely: steps too large, which pushed those maps "
            "below 0 on every image); lower config.learning_rate or raise "
            "config.warmup_epochs; a zero class kernel with a positive bias "
            "(config.model.class_init_std=0, config.model.class_bias=1) starts every map alive"
        )
