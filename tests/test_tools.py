"""plot, evaluate, predict and class_maps on one tiny trained digits workdir."""

import json

import numpy as np
import pytest
from helpers import load_config, run_cli
from PIL import Image

from nin_jax import class_maps, evaluate, images, plot, predict, restore, train
from nin_jax.datasets import standins


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, digits_data_dir) -> str:
    """20 steps of a tiny NIN on digits, checkpoints at 10 and 20."""
    path = str(tmp_path_factory.mktemp("tools_run"))
    config = load_config(
        "digits", data_dir=digits_data_dir, num_train_steps=20, checkpoint_every_steps=10,
        log_every_steps=5, eval_every_steps=10, batch_size=32,
    )  # fmt: skip
    train.train_and_evaluate(config, path)
    return path


def png_size(path) -> tuple[int, int]:
    with Image.open(path) as image:
        image.load()  # Decodes the whole file, not just the header.
        assert image.format == "PNG"
        return image.size


@pytest.mark.slow
def test_plot_renders_curves(workdir, tmp_path):
    output = tmp_path / "curves.png"
    assert plot.run(workdir, str(output)) == str(output)
    width, height = (round(d * plot.DPI) for d in plot.FIGSIZE)
    assert png_size(output) == (width, height)
    curves = plot.read_metrics(f"{workdir}/metrics.jsonl")
    assert sorted(curves["train"]) == [5, 10, 15, 20]
    assert sorted(curves["eval"]) == [10, 20]


def test_evaluate_matches_training_results(workdir):
    result, _ = evaluate.run(workdir)
    assert set(result) >= {"step", "examples", "accuracy", "error", "per_class_accuracy"}
    with open(f"{workdir}/results.json") as f:
        final = json.load(f)
    assert result["step"] == 20
    assert result["examples"] == final["test_examples"] == 360
    assert result["error"] == pytest.approx(final["test_error"], abs=1e-9)
    assert list(result["per_class_accuracy"]) == [str(d) for d in range(10)]
    matrix = np.array(result["confusion_matrix"])
    assert matrix.shape == (10, 10) and matrix.sum() == 360
    assert np.trace(matrix) / 360 == pytest.approx(result["accuracy"])
    size = round(max(4.0, evaluate.CELL_INCHES * 10 + 2.0) * evaluate.DPI)
    assert png_size(f"{workdir}/eval/confusion_step_20.png") == (size, size)
    with open(f"{workdir}/eval/step_20.json") as f:
        assert json.load(f) == result


@pytest.mark.slow
def test_evaluate_command_at_a_chosen_step(workdir, tmp_path):
    result = run_cli(
        "nin_jax.evaluate", f"--workdir={workdir}", "--step=10", f"--output_dir={tmp_path}"
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "step 10" in result.stdout and result.stdout.count("% correct") == 10
    assert (tmp_path / "confusion_step_10.png").exists()


def write_test_images(tmp_path) -> tuple[list[str], np.ndarray]:
    """Two digits test images saved as a 32x32 RGB PNG and an 8x8 grayscale JPEG."""
    images, _ = standins.load("8x8x1", "test")
    big = Image.fromarray(images[0, ..., 0]).resize((32, 32), Image.Resampling.NEAREST)
    paths = [str(tmp_path / "a.png"), str(tmp_path / "b.jpg")]
    big.convert("RGB").save(paths[0])
    Image.fromarray(images[1, ..., 0]).save(paths[1], quality=100)
    return paths, images[:2]


def test_predict_json(workdir, tmp_path):
    paths, _ = write_test_images(tmp_path)
    result = run_cli("nin_jax.predict", f"--workdir={workdir}", "--json", "--top_k=10", *paths)
    assert result.returncode == 0, result.stderr[-2000:]
    result = json.loads(result.stdout)
    assert result["step"] == 20
    assert [p["file"] for p in result["predictions"]] == paths
    for prediction in result["predictions"]:
        probabilities = [entry["probability"] for entry in prediction["top_k"]]
        assert set(prediction["top_k"][0]) == {"class", "name", "probability"}
        assert sum(probabilities) == pytest.approx(1.0, abs=1e-6)
        assert probabilities == sorted(probabilities, reverse=True)
        assert sorted(entry["class"] for entry in prediction["top_k"]) == list(range(10))


def test_predict_preprocessing_matches_the_model_input(workdir, tmp_path):
    """An 8x8 grayscale PNG is read back exactly and predicted like the raw test image."""
    digit_images, _ = standins.load("8x8x1", "test")
    path = tmp_path / "exact.png"
    Image.fromarray(digit_images[3, ..., 0]).save(path)
    trained = restore.load(workdir)
    np.testing.assert_array_equal(images.read_image(str(path), (8, 8, 1)), digit_images[3])
    expected = trained.probabilities(digit_images[3:4])[0]
    (result,) = predict.predict(trained, [str(path)], k=3)
    assert [entry["class"] for entry in result["top_k"]] == list(np.argsort(-expected)[:3])
    assert result["top_k"][0]["probability"] == pytest.approx(expected.max(), rel=1e-5)


def test_predict_text(workdir, tmp_path):
    paths, _ = write_test_images(tmp_path)
    trained = restore.load(workdir)
    lines = predict.format_lines(predict.predict(trained, paths, k=3))
    assert [line.split(":")[0] for line in lines] == paths
    assert all(len(line.split(":")[1].split(",")) == 3 for line in lines)


def test_class_maps_of_eval_images(workdir, tmp_path):
    output = tmp_path / "maps.png"
    class_maps.run(workdir, [], num_images=4, output=str(output))
    width, height = (round(d * class_maps.DPI) for d in class_maps.figure_size(4, 10))
    assert png_size(output) == (width, height)


def test_class_maps_of_given_images(workdir, tmp_path):
    paths, _ = write_test_images(tmp_path)
    output = tmp_path / "given.png"
    class_maps.run(workdir, paths, max_maps=3, output=str(output))
    width, height = (round(d * class_maps.DPI) for d in class_maps.figure_size(2, 3))
    assert png_size(output) == (width, height)


def test_class_maps_average_to_the_logits(workdir):
    """What the figure shows is what the model decides on: logits are the maps' means."""
    digit_images, _ = standins.load("8x8x1", "test")
    trained = restore.load(workdir)
    maps = trained.apply(digit_images[:5], method="class_maps")
    assert maps.shape[0] == 5 and maps.shape[-1] == 10 and (maps >= 0).all()
    np.testing.assert_allclose(maps.mean(axis=(1, 2)), trained.apply(digit_images[:5]), rtol=1e-5)


def test_shown_classes_are_the_best_scored_when_too_many():
    scores = np.array([0.1, 0.9, 0.3, 0.7])
    np.testing.assert_array_equal(class_maps.shown_classes(scores, 4), [0, 1, 2, 3])
    np.testing.assert_array_equal(class_maps.shown_classes(scores, 2), [1, 3])


def test_class_maps_rows_of_files_name_the_file():
    names = [str(d) for d in range(10)]
    assert class_maps.row_title(3, None, "5", names) == "true 3\npred 5"
    assert class_maps.row_title(None, "/data/scans/seven.png", "7", names) == "seven.png\npred 7"
    long = class_maps.row_title(None, "/d/a_very_long_file_name_07.png", "7", names)
    assert long == "...e_name_07.png\npred 7"  # 16 characters: the end of the name


def k_model_curves() -> dict:
    """metrics.jsonl records of a 2-model learning-rate sweep, as read_metrics returns them."""
    train = {
        step: {
            "loss": 2.0 / step, "model_0/loss": 1.5 / step, "model_1/loss": 2.5 / step,
            "accuracy": 0.5, "error": 0.5, "model_0/error": 0.4, "model_1/error": 0.6,
            "learning_rate": 0.015, "model_0/learning_rate": 0.01, "model_1/learning_rate": 0.02,
            "grad_norm": 1.0, "model_0/grad_norm": 0.9, "model_1/grad_norm": 1.1,
            "param_norm": 5.0, "model_0/param_norm": 4.9, "model_1/param_norm": 5.1,
        }
        for step in (10, 20)
    }  # fmt: skip
    evaluation = {20: {"loss": 0.1, "error": 0.05, "model_0/loss": 0.2, "model_1/loss": 0.3}}
    return {"train": train, "eval": evaluation}


def test_plot_of_k_models_draws_each_model_and_its_swept_rate(tmp_path):
    curves = k_model_curves()
    assert plot.num_models(curves) == 2
    loss = {line.label: line for line in plot.panel_lines(curves, "loss")}
    assert list(loss) == ["model 0 train", "model 1 train", "mean", "model 0 eval",
                          "model 1 eval", "ensemble"]  # fmt: skip
    np.testing.assert_allclose(loss["model 1 train"].values, [0.25, 0.125])
    assert loss["model 1 train"].model == 1 and loss["ensemble"].model is None
    rates = plot.panel_lines(curves, "learning_rate", splits=("train",))
    # No mean rate: no model followed it.
    assert [(line.label, line.values[0]) for line in rates] == [
        ("model 0 train", 0.01), ("model 1 train", 0.02),
    ]  # fmt: skip
    one = {"train": {10: {"loss": 1.0, "learning_rate": 0.1}}}
    assert [line.label for line in plot.panel_lines(one, "loss")] == ["train"]
    output = tmp_path / "k.png"
    plot.render(curves, "two models", str(output))
    assert png_size(output) == tuple(round(d * plot.DPI) for d in plot.FIGSIZE)
