"""The seed's PyTorch weights into a workdir, and a workdir's back into PyTorch.

  python -m nin_jax.convert --from_torch=nin.pth --config=configs/cifar10.py --workdir=W \\
      --mean=0.4914,0.4822,0.4465 --std=0.2470,0.2435,0.2616
  python -m nin_jax.convert --to_torch=nin.pth --workdir=W [--step=N] [--model=K]

``--from_torch`` reads a ``state_dict`` of the seed's NIN (benchmarks/torch_nin.py's
names, ``features1.0.weight`` ...; ``torch.save(model.state_dict(), FILE)``), checks
every tensor against the network of ``--config`` (its dataset gives the classes and
the image shape), and writes a workdir the tools and ``nin_jax.main`` read: its
config (with ``preprocess='standardize'`` and the fixed normalisation of ``--mean`` and
``--std``: torchvision's ``Normalize`` after ``ToTensor``, pixels in [0, 1]),
``dataset.json``, ``preprocess.npz`` and a checkpoint at step 0 (a fresh optimizer
state). ``--to_torch`` writes the parameters of a workdir's checkpoint as the seed's
``state_dict``. The layouts: nin_jax.torch_weights. PyTorch is optional (the ``torch``
extra); without it this command says so in one line.
"""

import io
import os
from collections.abc import Mapping
from typing import Any

import numpy as np
from absl import flags
from ml_collections import config_flags

from nin_jax import cli, config_validation, params_io, storage, torch_weights
from nin_jax import workdir as workdir_lib
from nin_jax.errors import ConfigError, FileDamagedError, WorkdirError

FLAGS = flags.FLAGS


def define_flags() -> None:
    """The command's flags (defined when it runs, as the tools': ``nin_jax.main`` defines
    ``--config`` and ``--workdir`` too, and a process may import both modules)."""
    config_flags.DEFINE_config_file(
        "config", None, "--from_torch: the config of the network and dataset.", lock_config=False
    )
    flags.DEFINE_string("from_torch", None, "A PyTorch state_dict of the seed's NIN to convert.")
    flags.DEFINE_string("to_torch", None, "Where to write the workdir's parameters (state_dict).")
    flags.DEFINE_string(
        "workdir", None, "The workdir to write (--from_torch) or read (--to_torch).", required=True
    )
    flags.DEFINE_list("mean", None, "--from_torch: per-channel mean of the input, in [0, 1].")
    flags.DEFINE_list("std", None, "--from_torch: per-channel std of the input, in [0, 1].")
    flags.DEFINE_integer("step", None, "--to_torch: checkpoint step (default: the latest).")
    flags.DEFINE_integer("model", 0, "--to_torch: model k of a multi-model workdir.", lower_bound=0)


_NO_TORCH = (
    "nin_jax.convert reads and writes PyTorch files and needs PyTorch, which is not "
    "installed: pip install 'nin_jax[torch]' (or pip install torch)"
)


def import_torch():
    """The torch module, or one ``ConfigError`` line saying how to install it."""
    try:
        import torch
    except ImportError:
        raise ConfigError(_NO_TORCH) from None
    return torch


def read_state_dict(path: str) -> dict[str, np.ndarray]:
    """The tensors of the ``state_dict`` saved in ``path``, as float32 numpy arrays."""
    torch = import_torch()
    data = params_io.read_input(path, f"--from_torch={path}")
    try:
        loaded = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as e:  # pickle, zipfile and torch raise many types for other files.
        reason = " ".join(str(e).split())[:160] or type(e).__name__
        message = f"{path} is not a PyTorch file torch.load can read ({reason})"
        raise FileDamagedError(message) from None
    if isinstance(loaded, Mapping) and isinstance(loaded.get("state_dict"), Mapping):
        loaded = loaded["state_dict"]  # A training checkpoint holding the state_dict.
    if not isinstance(loaded, Mapping) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in loaded.items()
    ):
        raise FileDamagedError(
            f"{path} holds a {type(loaded).__name__}, not a state_dict of tensors "
            "(torch.save(model.state_dict(), FILE))"
        )
    return {name: tensor.detach().to(torch.float32).numpy() for name, tensor in loaded.items()}


def write_state_dict(path: str, state: Mapping[str, np.ndarray]) -> None:
    """Saves numpy arrays as a ``state_dict`` of torch tensors (``torch.load`` reads it)."""
    import collections

    torch = import_torch()
    tensors = collections.OrderedDict((k, torch.from_numpy(np.array(v))) for k, v in state.items())
    buffer = io.BytesIO()
    torch.save(tensors, buffer)
    storage.write_bytes(storage.output_file(path), buffer.getvalue())


def _channels_flag(name: str, values: list[str] | None, channels: int) -> tuple[float, ...]:
    """The floats of ``--mean`` or ``--std``, one per channel."""
    example = "--mean=0.4914,0.4822,0.4465 --std=0.2470,0.2435,0.2616 (CIFAR-10's)"
    if values is None:
        raise ConfigError(
            f"--from_torch needs --mean and --std: the per-channel normalisation the PyTorch "
            f"model was trained with (torchvision's Normalize after ToTensor), e.g. {example}; "
            "--mean=0 --std=1 for ToTensor alone"
        )
    try:
        numbers = tuple(float(v) for v in values)
    except ValueError:
        raise ConfigError(f"--{name}={','.join(values)}: not numbers") from None
    if len(numbers) == 1:
        numbers *= channels
    if len(numbers) != channels:
        given = f"--{name} has {len(numbers)} values"
        raise ConfigError(f"{given}; the images have {channels} channels (one value each, or one)")
    if name == "std" and min(numbers) <= 0:
        raise ConfigError(f"--std={','.join(values)}: every std must be positive")
    return numbers


def _fine_tune_overrides(config) -> str:
    # repr: the shortest text that reads back as the same float, as config.json's values.
    mean = ", ".join(repr(float(v)) for v in config.standardize_mean)
    std = ", ".join(repr(float(v)) for v in config.standardize_std)
    return (
        f"--config.preprocess=standardize --config.standardize_mean='({mean},)' "
        f"--config.standardize_std='({std},)'"
    )


def from_torch(path: str, config, workdir: str, mean, std) -> dict[str, Any]:
    """Writes ``workdir`` from the ``state_dict`` in ``path``; returns what it wrote."""
    config_validation.validate(config)
    if config.num_models != 1:
        raise ConfigError("--from_torch makes a one-model workdir: set --config.num_models=1")
    if config.model.head != "gap":
        raise ConfigError(
            f"config.model.head is {config.model.head!r}; the seed's network has global "
            "average pooling ('gap') and no dense layer"
        )
    state_dict = read_state_dict(path)
    checkpoints = os.path.join(workdir, workdir_lib.CHECKPOINT_DIR)
    if storage.isdir(checkpoints) and storage.listdir(checkpoints):
        raise WorkdirError(f"{workdir} already holds checkpoints; convert into a new workdir")

    import jax
    import jax.numpy as jnp
    import orbax.checkpoint as ocp

    from nin_jax import checkpointing, input_pipeline, models, optimizer, steps

    builder = input_pipeline.find_builder(config.dataset, config.data_dir, config.try_gcs)
    image_shape = tuple(int(d) for d in builder.info.features["image"].shape)
    class_names = tuple(builder.info.features["label"].names)
    channels = image_shape[-1]
    mean = _channels_flag("mean", mean, channels)
    std = _channels_flag("std", std, channels)
    with config.unlocked():
        config.preprocess = "standardize"
        config.standardize_mean = tuple(255.0 * m for m in mean)
        config.standardize_std = tuple(255.0 * s for s in std)
    config_validation.validate(config)

    model = models.from_config(config, len(class_names))
    _, tx = optimizer.create(config, steps_per_epoch=1, total_steps=1)  # The state's shape.

    def create() -> steps.TrainState:
        return steps.create_train_state(jax.random.key(0), model, image_shape, tx)

    abstract = jax.eval_shape(create)
    params = torch_weights.from_torch(state_dict, abstract.params, source=path)
    state = jax.jit(create)().replace(params=jax.tree.map(jnp.asarray, params))
    info = workdir_lib.DatasetInfo(
        dataset=config.dataset,
        class_names=class_names,
        image_shape=image_shape,
        preprocess="standardize",
        preprocess_params={
            "mean": np.asarray(config.standardize_mean, np.float32),
            "std": np.asarray(config.standardize_std, np.float32),
        },
    )
    with workdir_lib.WorkdirLock(workdir):
        workdir_lib.write_config(workdir, config)
        workdir_lib.write_dataset_info(workdir, info)
        with checkpointing.create_manager(workdir, config) as manager:
            manager.save(0, args=ocp.args.StandardSave(state))
            manager.wait_until_finished()
    return {"tensors": len(state_dict), "classes": len(class_names), "config": config}


def to_torch(workdir: str, path: str, step: int | None, model: int) -> dict[str, Any]:
    """Writes ``workdir``'s parameters (model ``model``) to ``path`` as the seed's state_dict."""
    import_torch()
    from nin_jax import restore

    trained = restore.load(workdir, step)
    if trained.config.model.head != "gap":
        raise ConfigError(
            f"{workdir} has model.head {trained.config.model.head!r}: the seed's network has "
            "global average pooling and no dense layer, so it has no PyTorch counterpart here"
        )
    state = torch_weights.to_torch(trained.model_params(model))
    write_state_dict(path, state)
    return {"tensors": len(state), "step": trained.step, "info": trained.info}


def _input_line(info: workdir_lib.DatasetInfo) -> str:
    """How the PyTorch model's input must be prepared, as the workdir's was."""
    if info.preprocess == "standardize":
        mean = ", ".join(f"{v / 255:.4f}" for v in info.preprocess_params["mean"])
        std = ", ".join(f"{v / 255:.4f}" for v in info.preprocess_params["std"])
        return f"its input: ToTensor() then Normalize(mean=({mean}), std=({std}))"
    return (
        f"its input: the workdir's {info.preprocess!r} preprocessing (nin_jax/preprocessing.py, "
        "with the statistics in preprocess.npz), which PyTorch code must reproduce"
    )


def main(argv: list[str]) -> None:
    if (FLAGS.from_torch is None) == (FLAGS.to_torch is None):
        cli.fail("give one of --from_torch=FILE.pth (with --config) or --to_torch=FILE.pth")
    if FLAGS.from_torch is not None:
        if FLAGS.config is None:
            cli.fail("--from_torch needs --config: the network and dataset of the weights")
        result = from_torch(FLAGS.from_torch, FLAGS.config, FLAGS.workdir, FLAGS.mean, FLAGS.std)
        print(
            f"wrote {FLAGS.workdir}: {result['tensors']} tensors of {FLAGS.from_torch} at step 0 "
            f"({result['classes']} classes); evaluate, predict and class_maps read it, and "
            "nin_jax.main fine-tunes it with this --config and its overrides plus "
            f"{_fine_tune_overrides(result['config'])}"
        )
        return
    result = to_torch(FLAGS.workdir, FLAGS.to_torch, FLAGS.step, FLAGS.model)
    print(
        f"wrote {FLAGS.to_torch}: {result['tensors']} tensors of the seed's network from "
        f"step {result['step']} of {FLAGS.workdir}; {_input_line(result['info'])}"
    )


if __name__ == "__main__":
    define_flags()
    cli.run(main, quiet=True)
