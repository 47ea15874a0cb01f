"""TensorBoard events and metrics.jsonl from a tiny run; the console progress reporter."""

import io
import json

import numpy as np
import pytest
from helpers import load_config

from nin_jax import reporting, train


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, digits_data_dir) -> str:
    """6 steps, logged every 2, evaluated every 3."""
    path = str(tmp_path_factory.mktemp("metrics_run"))
    config = load_config(
        "digits", data_dir=digits_data_dir, num_train_steps=6, log_every_steps=2,
        eval_every_steps=3, checkpoint_every_steps=100,
    )  # fmt: skip
    train.train_and_evaluate(config, path)
    return path


def read_jsonl(workdir: str) -> list[dict]:
    with open(f"{workdir}/metrics.jsonl") as f:
        return [json.loads(line) for line in f]


def read_events(workdir: str) -> dict[str, list[tuple[int, float]]]:
    """Every scalar in the event files, read with TensorBoard's own loader."""
    from tensorboard.backend.event_processing import event_accumulator
    from tensorboard.util import tensor_util

    accumulator = event_accumulator.EventAccumulator(
        f"{workdir}/tensorboard", size_guidance={event_accumulator.TENSORS: 0}
    )
    accumulator.Reload()
    return {
        tag: [
            (e.step, float(tensor_util.make_ndarray(e.tensor_proto)))
            for e in accumulator.Tensors(tag)
        ]
        for tag in accumulator.Tags()["tensors"]
    }


# Besides these, one activation RMS and one gradient norm per block (nin_jax.health).
TRAIN_SCALARS = {
    "loss", "accuracy", "error", "learning_rate", "images_per_sec", "grad_norm", "param_norm",
    "dead_class_fraction",
}  # fmt: skip
BLOCK_SCALARS = {f"{kind}/mlpconv{i}" for kind in ("activation_rms", "grad_norm") for i in "123"}


@pytest.mark.slow
def test_tensorboard_has_train_and_eval_scalars(workdir):
    events = read_events(workdir)
    names = set(read_jsonl(workdir)[0]) - {"split", "step", "time"}
    assert names == TRAIN_SCALARS | BLOCK_SCALARS
    train_tags = {f"train/{name}" for name in names}
    eval_tags = {f"eval/{name}" for name in reporting.EVAL_SCALARS}
    assert set(events) == train_tags | eval_tags
    for tag in train_tags:
        assert [step for step, _ in events[tag]] == [2, 4, 6]
    for tag in eval_tags:
        assert [step for step, _ in events[tag]] == [3, 6]
    for step, value in events["train/error"]:
        assert value == pytest.approx(1 - dict(events["train/accuracy"])[step])
    assert all(value > 0 for _, value in events["train/grad_norm"] + events["train/param_norm"])


def test_jsonl_holds_the_same_numbers(workdir):
    records = read_jsonl(workdir)
    events = read_events(workdir)
    assert [(r["split"], r["step"]) for r in records] == [
        ("train", 2), ("eval", 3), ("train", 4), ("train", 6), ("eval", 6),
    ]  # fmt: skip
    for record in records:
        for name, value in record.items():
            if name not in ("split", "step", "time"):
                tag = f"{record['split']}/{name}"
                assert dict(events[tag])[record["step"]] == pytest.approx(value, rel=1e-6)
    with open(f"{workdir}/results.json") as f:
        final = json.load(f)
    last_eval = [r for r in records if r["split"] == "eval"][-1]
    assert last_eval["error"] == pytest.approx(final["test_error"])


def test_window_scalars_average_the_steps():
    window = [
        {"loss": np.float32(1.0), "accuracy": np.float32(0.5), "grad_norm": 2.0, "param_norm": 9.0},
        {
            "loss": np.float32(3.0),
            "accuracy": np.float32(0.7),
            "grad_norm": 4.0,
            "param_norm": 11.0,
        },
    ]
    scalars = reporting.window_scalars(window, learning_rate=0.1, images_per_sec=50.0)
    assert scalars == pytest.approx(
        {
            "loss": 2.0, "accuracy": 0.6, "error": 0.4, "learning_rate": 0.1,
            "images_per_sec": 50.0, "grad_norm": 3.0, "param_norm": 10.0,
        }
    )  # fmt: skip


def test_window_scalars_of_models_with_their_own_learning_rates():
    window = [{"loss": np.array([1.0, 3.0]), "accuracy": np.array([0.5, 0.7])}]
    scalars = reporting.window_scalars(
        window, learning_rate=[0.01, 0.03], images_per_sec=8.0, num_models=2
    )
    assert scalars["model_0/learning_rate"] == 0.01 and scalars["model_1/learning_rate"] == 0.03
    assert scalars["learning_rate"] == pytest.approx(0.02)  # their mean, as for every metric
    assert scalars["model_1/loss"] == 3.0 and scalars["loss"] == 2.0
    shared = reporting.window_scalars(window, 0.01, 8.0, num_models=2)
    assert shared["learning_rate"] == 0.01 and "model_0/learning_rate" not in shared


def test_results_time_training_without_compilation_and_keep_every_session(workdir):
    """The fixture's one session: 6 steps, timed without the first step's compilation
    (which jax.monitoring times on its own) and without the two evaluations."""
    with open(f"{workdir}/results.json") as f:
        final = json.load(f)
    (session,) = final["sessions"]
    assert (session["start_step"], session["end_step"], session["ended"]) == (0, 6, "finished")
    assert final["train_steps"] == 6 and final["train_seconds"] == session["train_seconds"] > 0
    assert final["compile_seconds"] == session["compile_seconds"] > 0
    # Batch 8; train_seconds is rounded to 1 ms, images_per_sec computed before rounding.
    seconds = session["train_seconds"]
    slowest, fastest = 6 * 8 / (seconds + 0.0005), 6 * 8 / max(seconds - 0.0005, 1e-9)
    assert final["images_per_sec"] == session["images_per_sec"]
    assert slowest - 0.01 <= final["images_per_sec"] <= fastest + 0.01
    with open(f"{workdir}/runs.json") as f:
        assert json.load(f)["runs"] == final["sessions"]


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def run_reporter(tmp_path, stream) -> str:
    reporter = reporting.Reporter(
        str(tmp_path), total_steps=4, steps_per_epoch=2, batch_size=8, start_step=0, stream=stream
    )
    metrics = {"loss": 0.5, "accuracy": 0.75, "grad_norm": 1.0, "param_norm": 2.0}
    for step in range(1, 5):
        reporter.tick(step)
        if step % 2 == 0:
            reporter.train(step, [metrics, metrics], learning_rate=0.01)
    reporter.eval(4, {"loss": 0.4, "accuracy": 0.8, "error": 0.2, "examples": 10})
    reporter.close()
    steps, seconds = reporter.timing
    assert steps == 4 and seconds > 0
    return stream.getvalue()


def test_progress_bar_in_a_terminal(tmp_path):
    output = run_reporter(tmp_path, FakeTerminal())
    bars = [line for line in output.split("\r") if line.startswith("\033[K[")]
    last_bar = bars[-1]
    assert "[" + "#" * reporting._BAR_WIDTH + "]" in last_bar
    assert "epoch 2.00 step 4/4" in last_bar
    assert "loss 0.5000 acc 0.7500 lr 0.01" in last_bar and "ETA 0:00:00" in last_bar
    assert "step 1/4" in bars[0] and "loss" not in bars[0]  # No metrics before the first log.
    assert output.endswith("\r\033[K")  # close() leaves a clean line.


def test_log_lines_and_no_bar_when_not_a_terminal(tmp_path, caplog):
    caplog.set_level("INFO", logger="absl")
    assert run_reporter(tmp_path, io.StringIO()) == ""
    lines = [r.getMessage() for r in caplog.records if r.name == "absl"]
    assert lines[0].startswith("epoch 1.00 step 2/4: loss 0.5000 accuracy 0.7500 lr 0.01,")
    assert "images/s, ETA 0:00:0" in lines[0]
    assert lines[-1] == "step 4 eval: loss 0.4000 accuracy 0.8000 error 0.2000 (10 examples)"
    assert [r["step"] for r in read_jsonl(str(tmp_path))] == [2, 4, 4]


def test_format_duration():
    assert reporting.format_duration(3725.4) == "1:02:05"
    assert reporting.format_duration(59.6) == "0:01:00"
