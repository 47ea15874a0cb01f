"""Restoring checkpoints: newest readable first, never deleting when none fits; saving leaves
the preemption sync point to the training loop."""

import threading

import optax
import orbax.checkpoint as ocp
import pytest
from helpers import init_state, load_config
from jax.experimental import multihost_utils

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


def test_a_bucket_that_does_not_answer_is_not_a_damaged_checkpoint(tmp_path, monkeypatch):
    """A restore that fails with a transient error through every retry says the bucket did
    not answer and deletes nothing; one that succeeds at a retry resumes."""
    config = load_config("digits", model__widths=((4, 4, 4), (4, 4, 4), (4, 4)))
    state = init_state(models.from_config(config, num_classes=10), (8, 8, 1), optax.sgd(0.1))
    manager = checkpointing.create_manager(str(tmp_path), config)
    for step in (3, 6):
        manager.save(step, args=ocp.args.StandardSave(state))
    manager.wait_until_finished()
    monkeypatch.setattr(checkpointing.retries.time, "sleep", lambda seconds: None)
    restore = manager.restore
    calls = []

    def flaky(step, args):
        calls.append(step)
        if len(calls) <= failures:
            raise ValueError("UNAVAILABLE: Error reading gs://b/run/checkpoints/6/_METADATA")
        return restore(step, args=args)

    monkeypatch.setattr(manager, "restore", flaky)
    failures = 100
    with pytest.raises(errors.StorageError, match="checkpoint at step 6 .* did not answer"):
        checkpointing.restore_or_keep(manager, state)
    assert calls == [6] * checkpointing.retries.TRIES and manager.all_steps() == [3, 6]
    calls.clear()
    failures = 2
    checkpointing.restore_or_keep(manager, state)
    assert calls == [6, 6, 6] and manager.all_steps() == [3, 6]


@pytest.mark.parametrize("manager_class", [ocp.CheckpointManager, checkpointing.TrainingManager])
def test_only_the_training_loop_asks_the_preemption_sync_point(
    manager_class, tmp_path, monkeypatch
):
    """Orbax's own manager asks it from its finalising thread with the step it saved, which
    can lag the loop and make the sync protocol pick a step one process already passed (a
    multi-process hang on SIGTERM); the training manager never asks it."""
    calls = []
    monkeypatch.setattr(
        multihost_utils,
        "reached_preemption_sync_point",
        lambda step: calls.append((threading.current_thread().name, step)) or False,
    )
    config = load_config("digits", model__widths=((4, 4, 4), (4, 4, 4), (4, 4)))
    state = init_state(models.from_config(config, num_classes=10), (8, 8, 1), optax.sgd(0.1))
    options = ocp.CheckpointManagerOptions(create=True)
    with manager_class(str(tmp_path / "checkpoints"), options=options) as manager:
        for step in (3, 6):
            manager.save(step, args=ocp.args.StandardSave(state))
        manager.wait_until_finished()
    if manager_class is ocp.CheckpointManager:  # What the training manager guards against.
        assert ("save_finalize", 3) in calls, calls
    else:
        assert calls == []


def test_a_save_the_bucket_did_not_answer_is_one_line_and_keeps_the_last(tmp_path, monkeypatch):
    """The error of a save in Orbax's background thread (raised by the next save, the wait or
    the close) becomes one StorageError; the newest complete checkpoint stays."""
    config = load_config("digits", model__widths=((4, 4, 4), (4, 4, 4), (4, 4)))
    state = init_state(models.from_config(config, num_classes=10), (8, 8, 1), optax.sgd(0.1))
    manager = checkpointing.create_manager(str(tmp_path), config)
    manager.save(3, args=ocp.args.StandardSave(state))
    manager.wait_until_finished()

    def unavailable(self, *args, **kwargs):
        raise ValueError("UNAVAILABLE: HTTP status 503 writing gs://b/run/checkpoints/6/d/x")

    monkeypatch.setattr(ocp.CheckpointManager, "save", unavailable)
    with pytest.raises(
        errors.StorageError, match=r"^cannot write a checkpoint \(saving step 6\) in "
    ):
        manager.save(6, args=ocp.args.StandardSave(state))
    monkeypatch.setattr(ocp.CheckpointManager, "wait_until_finished", unavailable)
    with pytest.raises(errors.StorageError, match="^cannot write a checkpoint in .*did not"):
        manager.close()
    monkeypatch.undo()
    assert checkpointing.create_manager(str(tmp_path), config).all_steps() == [3]


def test_tensorstore_gets_the_retry_budget(monkeypatch):
    monkeypatch.setattr(checkpointing.retries, "budget_seconds", 5.0)
    checkpointing.bound_tensorstore_retries()
    spec = checkpointing.ts_utils.get_ts_context(use_ocdbt=True).spec.to_json()
    monkeypatch.undo()
    checkpointing.bound_tensorstore_retries()  # The default budget again.
    assert spec["gcs_request_retries"] == {"max_retries": 4}  # 1 + 3 retries; 1 s, 32 s: defaults.
