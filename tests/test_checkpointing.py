"""Restoring checkpoints: newest readable first, never deleting when none fits."""

import optax
import orbax.checkpoint as ocp
import pytest
from helpers import init_state, load_config

from nin_jax import checkpointing, errors, models


def test_checkpoint_of_another_config_is_an_error_and_kept(tmp_path):
    """Nothing is deleted when no checkpoint fits: the config changed, not the checkpoints."""

    def state_and_manager(widths):
        config = load_config("digits", model__widths=widths)
        model = models.from_config(config, num_classes=10)
        state = init_state(model, (8, 8, 1), optax.sgd(0.1))
        return state, checkpointing.create_manager(str(tmp_path), config)

    state, manager = state_and_manager(((4, 4, 4), (4, 4, 4), (4, 4)))
    manager.save(5, args=ocp.args.StandardSave(state))
    manager.wait_until_finished()
    restored = checkpointing.restore_or_keep(manager, state)  # It fits its own config.
    assert manager.all_steps() == [5] and int(restored.step) == int(state.step)
    other, manager = state_and_manager(((8, 4, 4), (4, 4, 4), (4, 4)))
    with pytest.raises(errors.TrainingError, match="no checkpoint in .* can be restored"):
        checkpointing.restore_or_keep(manager, other)
    assert manager.all_steps() == [5]
