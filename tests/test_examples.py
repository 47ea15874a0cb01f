"""examples/: each script run on the embedded digits, its claim checked; docs/LIBRARY.md's code
blocks are the examples' own code."""

import importlib.util
import re
import textwrap

import numpy as np
import pytest
from helpers import REPO_ROOT, load_config
from PIL import Image

from nin_jax import train
from nin_jax.errors import NinError

EXAMPLES = REPO_ROOT / "examples"
WIDTH_32 = ((32, 32, 32), (32, 32, 32), (32, 32))


def example(name: str):
    """examples/<name>.py as a module (the scripts are no package)."""
    spec = importlib.util.spec_from_file_location(f"examples_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def two_models(tmp_path_factory, digits_data_dir) -> str:
    """Two digits models of width 32 trained together for 500 steps (about 98% each)."""
    path = str(tmp_path_factory.mktemp("two_models"))
    config = load_config(
        "digits", data_dir=digits_data_dir, num_models=2, num_train_steps=500, batch_size=32,
        learning_rate=0.05, warmup_epochs=0.5, model__widths=WIDTH_32, model__dropout_rate=0.0,
        log_every_steps=500, checkpoint_every_steps=500, eval_every_steps=500,
    )  # fmt: skip
    _, results = train.train_and_evaluate(config, path)
    assert min(m["test_accuracy"] for m in results["models"]) > 0.9
    return path


def test_own_training_loop_reaches_its_stated_accuracy(digits_data_dir, capsys):
    loop = example("train_loop")
    accuracy = loop.main(data_dir=digits_data_dir)
    assert accuracy >= loop.STATED_ACCURACY == 0.95
    assert f"test accuracy {accuracy:.2%} after 300 steps" in capsys.readouterr().out
    body = (EXAMPLES / "train_loop.py").read_text().split("def main", 1)[1].split("\n\n\nif")[0]
    assert len(body.splitlines()) <= 45  # "about 40 lines"


def test_the_trainers_steps_in_a_loop_of_ones_own(digits_data_dir):
    steps_example = example("trainer_steps")
    figures = steps_example.main(data_dir=digits_data_dir)
    assert figures["accuracy"] >= steps_example.STATED_ACCURACY == 0.95
    assert figures["first_loss"] == pytest.approx(np.log(10), abs=0.01)  # Class layer at 0.
    assert figures["final_loss"] < 0.3


def test_saliency_puts_more_gradient_mass_on_the_strokes(two_models, tmp_path):
    output = tmp_path / "saliency.png"
    fractions, density = example("saliency").main(two_models, str(output), num_images=16)
    assert len(fractions) == 16
    assert fractions.mean() > 0.5  # More of the mass on the strokes than on the background,
    assert density.mean() > 1.0  # and more per pixel.
    with Image.open(output) as image:
        assert image.format == "PNG" and image.size == (1920, 260)


def test_mean_of_per_example_gradients_is_the_batch_gradient(two_models, capsys):
    result = example("per_example_grads").main(two_models, num_images=32)
    assert result["norms"].shape == (32,) and np.all(result["norms"] >= 0)
    assert result["norms"].max() > 2 * np.median(result["norms"])  # Some examples pull harder.
    assert result["gap"] < 1e-4 * result["scale"]
    assert "per-example gradients - batch gradient" in capsys.readouterr().out


def test_linear_probe_by_block(two_models, capsys):
    accuracies = example("linear_probe").main(two_models)
    assert list(accuracies) == ["input", "mlpconv1", "mlpconv2", "mlpconv3", "network"]
    assert all(accuracies[f"mlpconv{b}"] > accuracies["input"] > 0.8 for b in (1, 2, 3))
    assert abs(accuracies["mlpconv3"] - accuracies["network"]) <= 0.02
    printed = capsys.readouterr().out
    assert "mlpconv2 (512 features): probe accuracy" in printed  # 4 x 4 x 32 features


def test_vmap_over_stacked_models_equals_evaluate(two_models):
    figures = example("vmap_models").main(two_models)
    assert len(figures) == 2
    for model in figures:
        assert model["vmap_accuracy"] == pytest.approx(model["evaluate_accuracy"], abs=1e-9)
        assert model["vmap_error"] == pytest.approx(model["evaluate_error"], abs=1e-9)
    assert figures[0]["vmap_accuracy"] != figures[1]["vmap_accuracy"]  # Two models, not one.


def test_vmap_example_refuses_a_one_model_workdir(trained_workdir):
    # The scripts turn a NinError into one `error:` line and exit code 1 (sys.exit).
    with pytest.raises(NinError, match="holds one model: train one with --config.num_models"):
        example("vmap_models").main(trained_workdir)


def drop_blank_lines(text: str) -> str:
    return "".join(line for line in text.splitlines(keepends=True) if line.strip())


def test_library_md_code_blocks_are_the_examples_code():
    page = (REPO_ROOT / "docs" / "LIBRARY.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", page, re.S)
    assert len(blocks) >= 5
    sources = {path.name: path.read_text() for path in EXAMPLES.glob("*.py")}
    # Verbatim, at the indentation it has in the script; blank lines aside (ruff formats the
    # page's blocks as modules, two blank lines around a def).
    sources = {name: drop_blank_lines(text) for name, text in sources.items()}
    for block in blocks:
        indented = [drop_blank_lines(textwrap.indent(block, " " * n)) for n in (0, 4, 8)]
        homes = [name for name, text in sources.items() if any(b in text for b in indented)]
        assert homes, f"this block of docs/LIBRARY.md is in no examples/*.py:\n{block}"
