"""nin_jax.convert: the seed's PyTorch weights into a workdir the tools and main read, and back.

The logits are compared with the seed's PyTorch module (benchmarks/torch_nin.py) on the
seed's input shape; the CLI runs on the embedded digits. torch is optional: without it
these tests are skipped, except the one that checks what convert says when it is missing.
"""

import json
import re

import jax
import numpy as np
import pytest
from helpers import REPO_ROOT, TINY_WIDTHS, assert_one_line_error, run_cli
from PIL import Image

from nin_jax import class_maps, convert, evaluate, models, predict, restore, torch_weights, train
from nin_jax import workdir as workdir_lib
from nin_jax.errors import ConfigError, FileDamagedError, WorkdirError

CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


def seed_network(torch, widths, kernels, channels=3, seed=0):
    """The seed's PyTorch NIN of these widths, He-initialised (logits of order 1, not the
    1e-2 of PyTorch's default initialisation, so that 1e-5 is a tight bound)."""
    from benchmarks.torch_nin import NIN as SeedNIN

    torch.manual_seed(seed)
    network = SeedNIN(in_channels=channels, widths=widths, kernel_sizes=kernels).eval()
    for module in network.modules():
        if isinstance(module, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(module.weight)
            torch.nn.init.normal_(module.bias, std=0.1)
    return network


def save(torch, network, path) -> str:
    torch.save(network.state_dict(), str(path))
    return str(path)


@pytest.mark.parametrize("variant", ["cifar", "svhn"])
def test_converted_logits_equal_the_pytorch_networks(variant, tmp_path):
    torch = pytest.importorskip("torch")
    widths, kernels = models.VARIANTS[variant]
    network = seed_network(torch, widths, kernels)
    state = convert.read_state_dict(save(torch, network, tmp_path / "nin.pth"))
    x = np.random.default_rng(0).normal(size=(4, 32, 32, 3)).astype(np.float32)
    with torch.no_grad():
        expected = network(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy()
    assert expected.shape == (4, 10) and expected.std() > 1.0
    for conv_impl in ("xla", "matmul"):
        model = models.NIN(num_classes=10, widths=widths, kernel_sizes=kernels, conv_impl=conv_impl)
        shapes = jax.eval_shape(model.init, jax.random.key(0), x)["params"]
        params = torch_weights.from_torch(state, shapes)
        logits = np.asarray(jax.jit(model.apply)({"params": params}, x))
        assert np.abs(logits - expected).max() < 1e-5, conv_impl


def digits_config(data_dir: str, **overrides):
    from helpers import load_config

    return load_config("digits", data_dir=data_dir, **overrides)


def test_a_converted_workdir_preprocesses_as_pytorch_and_converts_back(tmp_path, digits_data_dir):
    """The CIFAR network on digits/32x32x3 (CIFAR's shape): the workdir's uint8 -> logits
    path equals ToTensor + Normalize + the PyTorch network; --to_torch gives the tensors back."""
    torch = pytest.importorskip("torch")
    widths, kernels = models.VARIANTS["cifar"]
    network = seed_network(torch, widths, kernels)
    source = save(torch, network, tmp_path / "nin.pth")
    config = digits_config(digits_data_dir, dataset="digits/32x32x3", model__widths=widths,
                           model__kernel_sizes=kernels)  # fmt: skip
    workdir = str(tmp_path / "w")
    result = convert.from_torch(source, config, workdir, CIFAR_MEAN, CIFAR_STD)
    assert result["tensors"] == 18 and result["classes"] == 10
    assert workdir_lib.load_config(workdir).standardize_mean == pytest.approx(
        tuple(255 * m for m in CIFAR_MEAN)
    )
    images = np.random.default_rng(1).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    pixels = torch.from_numpy(images.transpose(0, 3, 1, 2).astype(np.float32) / 255)
    normalised = (pixels - torch.tensor(CIFAR_MEAN)[:, None, None]) / torch.tensor(CIFAR_STD)[
        :, None, None
    ]
    with torch.no_grad():
        expected = network(normalised).numpy()
    logits = restore.load(workdir).apply(images)
    assert np.abs(logits - expected).max() < 1e-4  # Two roundings of the normalisation.

    back = str(tmp_path / "back.pth")
    convert.to_torch(workdir, back, step=None, model=0)
    original, returned = torch.load(source), torch.load(back)
    assert list(returned) == list(original)
    assert all(torch.equal(returned[name], original[name]) for name in original)


@pytest.fixture(scope="module")
def converted(tmp_path_factory, digits_data_dir):
    """A tiny seed network for the 8x8 digits, converted by the command line."""
    torch = pytest.importorskip("torch")
    root = tmp_path_factory.mktemp("converted")
    network = seed_network(torch, TINY_WIDTHS, (5, 5, 3), channels=1)
    source = save(torch, network, root / "digits.pth")
    flags = [f"--config.data_dir={digits_data_dir}", f"--config.model.widths={TINY_WIDTHS}",
             "--config.num_train_steps=2", "--config.batch_size=8", "--config.warmup_epochs=0",
             "--config.eval_split=test[:16]"]  # fmt: skip
    workdir = str(root / "w")
    result = run_cli(
        "nin_jax.convert", f"--from_torch={source}", "--config=configs/digits.py",
        f"--workdir={workdir}", "--mean=0.3", "--std=0.4", *flags,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return {"workdir": workdir, "stdout": result.stdout, "flags": flags, "source": source}


def test_the_tools_read_a_converted_workdir(converted, tmp_path):
    workdir = converted["workdir"]
    line = converted["stdout"].strip().splitlines()[-1]
    assert line.startswith(f"wrote {workdir}: 18 tensors of ") and "at step 0 (10 classes)" in line
    assert "--config.standardize_mean='(76.5,)' --config.standardize_std='(102.0,)'" in line
    info = workdir_lib.load_dataset_info(workdir)
    assert info.preprocess == "standardize"
    np.testing.assert_allclose(info.preprocess_params["mean"], [76.5])
    np.testing.assert_allclose(info.preprocess_params["std"], [102.0])

    results, _ = evaluate.run(workdir, output_dir=str(tmp_path / "eval"))
    assert results["step"] == 0 and results["examples"] == 16  # eval_split test[:16]
    image = tmp_path / "digit.png"
    Image.fromarray(np.full((8, 8), 200, np.uint8)).save(image)
    top = predict.predict(restore.load(workdir), [str(image)], k=3)[0]["top_k"]
    assert len(top) == 3 and top[0]["probability"] >= top[1]["probability"]
    output = tmp_path / "maps.png"
    class_maps.run(workdir, [], num_images=2, max_maps=10, output=str(output))
    assert output.exists()


def test_main_fine_tunes_a_converted_workdir_from_step_0(converted, tmp_path):
    workdir = str(tmp_path / "w")
    import shutil

    shutil.copytree(converted["workdir"], workdir)
    config = workdir_lib.load_config(workdir)  # What convert wrote: --config and its overrides.
    _, results = train.train_and_evaluate(config, workdir)
    assert results["step"] == 2
    assert [(s["start_step"], s["end_step"]) for s in results["sessions"]] == [(0, 2)]
    np.testing.assert_allclose(
        workdir_lib.load_dataset_info(workdir).preprocess_params["mean"], [76.5]
    )  # fmt: skip: the PyTorch normalisation, not refitted.


@pytest.mark.slow
def test_main_command_fine_tunes_with_the_printed_overrides(converted, tmp_path):
    import shutil

    workdir = str(tmp_path / "w")
    shutil.copytree(converted["workdir"], workdir)
    printed = re.findall(r"--config\.\w+='[^']*'|--config\.preprocess=\w+", converted["stdout"])
    overrides = [arg.replace("'", "") for arg in printed]
    result = run_cli("nin_jax.main", "--config=configs/digits.py", f"--workdir={workdir}",
                     *converted["flags"], *overrides)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    with open(f"{workdir}/results.json") as f:
        assert json.load(f)["sessions"][0]["start_step"] == 0
    refused = run_cli("nin_jax.main", "--config=configs/digits.py", f"--workdir={workdir}",
                      *converted["flags"])  # fmt: skip
    assert_one_line_error(refused, "standardize_mean is (76.5,) there, () in this config")
    back = tmp_path / "back.pth"
    exported = run_cli("nin_jax.convert", f"--to_torch={back}", f"--workdir={workdir}")
    assert exported.returncode == 0, exported.stderr[-3000:]
    assert exported.stdout.strip() == (
        f"wrote {back}: 18 tensors of the seed's network from step 2 of {workdir}; its input: "
        "ToTensor() then Normalize(mean=(0.3000), std=(0.4000))"
    )


def test_a_network_of_another_shape_is_one_line_naming_its_first_tensor(converted, tmp_path):
    torch = pytest.importorskip("torch")
    widths, kernels = models.VARIANTS["cifar"]
    source = save(torch, seed_network(torch, widths, kernels), tmp_path / "cifar.pth")
    result = run_cli(
        "nin_jax.convert", f"--from_torch={source}", "--config=configs/digits.py",
        f"--workdir={tmp_path / 'w'}", "--mean=0.3", "--std=0.4", *converted["flags"],
    )  # fmt: skip
    assert_one_line_error(
        result, "tensor features1.0.weight is (192, 3, 5, 5) in ", "needs (8, 1, 5, 5)"
    )
    assert not (tmp_path / "w").exists()


def test_without_torch_convert_says_so_in_one_line(tmp_path):
    fake = tmp_path / "no_torch" / "torch"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('No module named torch')\n")
    result = run_cli(
        "nin_jax.convert", f"--from_torch={tmp_path / 'x.pth'}", "--config=configs/digits.py",
        f"--workdir={tmp_path / 'w'}", "--mean=0", "--std=1",
        env={"PYTHONPATH": f"{fake.parent}:{REPO_ROOT}"},
    )  # fmt: skip
    assert_one_line_error(result, "needs PyTorch, which is not installed", "nin_jax[torch]")


def test_from_torch_needs_the_pytorch_normalisation(tmp_path, digits_data_dir):
    torch = pytest.importorskip("torch")
    source = save(
        torch, seed_network(torch, TINY_WIDTHS, (5, 5, 3), channels=1), tmp_path / "d.pth"
    )
    config = digits_config(digits_data_dir)
    with pytest.raises(ConfigError, match="--from_torch needs --mean and --std"):
        convert.from_torch(source, config, str(tmp_path / "w"), None, None)
    with pytest.raises(ConfigError, match="--mean has 3 values; the images have 1 channels"):
        convert.from_torch(source, config, str(tmp_path / "w"), ["0.1"] * 3, ["0.2"])
    assert not (tmp_path / "w").exists()


def test_a_file_that_is_no_state_dict_is_one_error(tmp_path):
    torch = pytest.importorskip("torch")
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a pickle at all")
    with pytest.raises(FileDamagedError, match="is not a PyTorch file torch.load can read"):
        convert.read_state_dict(str(garbage))
    listed = tmp_path / "list.pth"
    torch.save([torch.zeros(2)], str(listed))
    with pytest.raises(FileDamagedError, match="holds a list, not a state_dict of tensors"):
        convert.read_state_dict(str(listed))
    with pytest.raises(WorkdirError, match="no such file"):
        convert.read_state_dict(str(tmp_path / "none.pth"))
