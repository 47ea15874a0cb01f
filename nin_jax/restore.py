"""What a workdir holds besides checkpoints, and loading a trained model back from it.

``train.train_and_evaluate`` writes ``config.json`` (the run's config),
``dataset.json`` (class names, image shape, preprocessing) and
``preprocess.npz`` (the preprocessing statistics fitted on the training split),
so the tools (evaluate, predict, class_maps) can rebuild the model and its input
preprocessing without reading the training set again.
"""

import dataclasses
import functools
import json
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
import tensorflow as tf

from nin_jax import models, preprocessing

# Config fields that fix the checkpoint's parameter shapes: a workdir trained with
# other values cannot be resumed or read with this config.
CHECKPOINT_DEFINING_FIELDS = ("dataset", "model.widths", "model.kernel_sizes", "model.head")


PREPROCESS_FILE = "preprocess.npz"


class WorkdirError(ValueError):
    """The workdir lacks what is asked for, or holds a different model; the message says which."""


class ImageError(ValueError):
    """A file given as an image cannot be read as one."""


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """What the model was trained on: enough to turn any image into a model input."""

    dataset: str
    class_names: tuple[str, ...]
    image_shape: tuple[int, int, int]
    preprocess: str  # config.preprocess
    preprocess_params: dict[str, np.ndarray]  # preprocessing.fit's statistics

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def normalize(self, images: np.ndarray) -> np.ndarray:
        """uint8 (N, H, W, C) -> float32, exactly as the training pipeline preprocesses."""
        return np.asarray(self._preprocess(tf.constant(images)))

    @functools.cached_property
    def _preprocess(self) -> Callable:
        return preprocessing.from_params(self.preprocess, self.preprocess_params)

    def read_image(self, path: str) -> np.ndarray:
        """An image file of any size and colour mode as uint8 (H, W, C) of the training shape."""
        from PIL import Image, UnidentifiedImageError

        height, width, channels = self.image_shape
        try:
            with Image.open(path) as image:
                image = image.convert("L" if channels == 1 else "RGB")
                image = image.resize((width, height), Image.Resampling.BILINEAR)
                pixels = np.asarray(image, np.uint8)
        except FileNotFoundError:
            raise ImageError(f"{path}: no such file") from None
        except (UnidentifiedImageError, OSError) as e:
            raise ImageError(f"{path} is not an image file PIL can read ({e})") from None
        return pixels.reshape(height, width, channels)


@dataclasses.dataclass(frozen=True)
class Trained:
    """A model restored from a workdir: ``model.apply({'params': params}, x)``."""

    config: ml_collections.ConfigDict
    info: DatasetInfo
    model: Any  # nin_jax.models.NIN
    params: Any
    step: int

    def apply(self, images: np.ndarray, method: str = "__call__", batch_size: int = 256):
        """The model (or one of its methods) on uint8 images, in fixed-size jitted batches."""
        fn = jax.jit(
            lambda x: self.model.apply(
                {"params": self.params}, x, train=False, method=getattr(self.model, method)
            )
        )
        outputs = []
        for start in range(0, len(images), batch_size):
            chunk = self.info.normalize(images[start : start + batch_size])
            pad = batch_size - len(chunk) if len(images) > batch_size else 0
            padded = np.concatenate([chunk, np.zeros((pad, *chunk.shape[1:]), chunk.dtype)])
            outputs.append(np.asarray(fn(padded))[: len(chunk)])
        return np.concatenate(outputs)


def _tuples(value: Any) -> Any:
    """JSON lists back to the tuples configs use (Flax module fields must be hashable)."""
    if isinstance(value, list):
        return tuple(_tuples(v) for v in value)
    if isinstance(value, dict):
        return {k: _tuples(v) for k, v in value.items()}
    return value


def _read_json(path: str, what: str) -> dict[str, Any]:
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        raise WorkdirError(
            f"{path} is missing; is {os.path.dirname(path) or '.'} a nin_jax workdir ({what})?"
        ) from None
    except json.JSONDecodeError as e:
        raise WorkdirError(f"{path} is not valid JSON ({e})") from None


def load_config(workdir: str) -> ml_collections.ConfigDict:
    """The config a workdir was trained with (``workdir/config.json``)."""
    raw = _read_json(os.path.join(workdir, "config.json"), "written by nin_jax.main")
    return ml_collections.ConfigDict(_tuples(raw))


def _field(config: ml_collections.ConfigDict, dotted: str) -> Any:
    value = config
    for key in dotted.split("."):
        value = value.get(key) if value is not None else None
    return _tuples(value.to_dict() if isinstance(value, ml_collections.ConfigDict) else value)


def check_compatible(workdir: str, config: ml_collections.ConfigDict) -> None:
    """Refuses to train ``config`` in a workdir whose checkpoints belong to another model.

    Called before anything is written, so the workdir's config.json keeps
    describing its checkpoints.
    """
    checkpoints = os.path.join(workdir, "checkpoints")
    if not (os.path.isdir(checkpoints) and os.listdir(checkpoints)):
        return
    if not os.path.exists(os.path.join(workdir, "config.json")):
        return  # Nothing to compare with; a mismatch surfaces when restoring.
    saved = load_config(workdir)
    for field in CHECKPOINT_DEFINING_FIELDS:
        old, new = _field(saved, field), _field(config, field)
        if old != new:
            raise WorkdirError(
                f"workdir {workdir} holds checkpoints of a different model or dataset "
                f"({field} is {old!r} there, {new!r} in this config); use another workdir"
            )


def write_dataset_info(
    workdir: str,
    class_names: Sequence[str],
    image_shape: Sequence[int],
    dataset: str,
    preprocess: str,
    preprocess_params: dict[str, np.ndarray],
) -> None:
    """Saves ``dataset.json`` and ``preprocess.npz`` (process 0 only)."""
    if jax.process_index() != 0:
        return
    payload = {
        "dataset": dataset,
        "class_names": list(class_names),
        "image_shape": [int(d) for d in image_shape],
        "preprocess": preprocess,
    }
    with open(os.path.join(workdir, "dataset.json"), "w") as f:
        json.dump(payload, f, indent=2)
    np.savez(os.path.join(workdir, PREPROCESS_FILE), **preprocess_params)


def load_dataset_info(workdir: str) -> DatasetInfo:
    raw = _read_json(os.path.join(workdir, "dataset.json"), "written when training starts")
    with np.load(os.path.join(workdir, PREPROCESS_FILE)) as stats:
        params = {key: stats[key] for key in stats.files}
    return DatasetInfo(
        dataset=raw["dataset"],
        class_names=tuple(raw["class_names"]),
        image_shape=tuple(raw["image_shape"]),
        preprocess=raw["preprocess"],
        preprocess_params=params,
    )


def _describe_mismatch(expected, restored) -> str:
    """The first parameter whose path or shape differs, for a one-line error."""
    want = {
        jax.tree_util.keystr(p): x.shape for p, x in jax.tree_util.tree_leaves_with_path(expected)
    }
    got = {
        jax.tree_util.keystr(p): x.shape for p, x in jax.tree_util.tree_leaves_with_path(restored)
    }
    for path in sorted(want.keys() | got.keys()):
        if want.get(path) != got.get(path):
            return (
                f"parameter {path} is {got.get(path)} in the checkpoint, "
                f"the model needs {want.get(path)}"
            )
    return ""


def load(workdir: str, step: int | None = None) -> Trained:
    """The model, parameters and dataset info of ``workdir`` at ``step`` (default: latest).

    The checkpoint (a whole TrainState) is restored without a target, read-only, and
    its parameters are checked against the shapes of the model in config.json.
    """
    config = load_config(workdir)
    info = load_dataset_info(workdir)
    model = models.from_config(config, info.num_classes)
    directory = os.path.join(os.path.abspath(workdir), "checkpoints")
    if not os.path.isdir(directory):
        raise WorkdirError(f"no checkpoint in {directory}: train first (python -m nin_jax.main)")
    options = ocp.CheckpointManagerOptions(read_only=True, create=False, save_interval_steps=0)
    with ocp.CheckpointManager(directory, options=options) as manager:
        steps = sorted(manager.all_steps())
        if not steps:
            raise WorkdirError(
                f"no checkpoint in {directory}: train first (python -m nin_jax.main)"
            )
        step = steps[-1] if step is None else step
        if step not in steps:
            raise WorkdirError(
                f"no checkpoint at step {step} in {directory}; available: "
                + ", ".join(map(str, steps))
            )
        restored = manager.restore(step, args=ocp.args.StandardRestore())
    expected = jax.eval_shape(
        lambda: model.init(jax.random.key(0), jnp.zeros((1, *info.image_shape)), train=False)
    )["params"]
    params = restored.get("params") if isinstance(restored, dict) else None
    mismatch = _describe_mismatch(expected, params or {})
    if mismatch:
        raise WorkdirError(
            f"the checkpoint at step {step} in {directory} does not belong to the model in "
            f"{workdir}/config.json: {mismatch}"
        )
    return Trained(config=config, info=info, model=model, params=params, step=step)


def run_tool(main: Callable[[list[str]], None], argv: list[str] | None = None) -> None:
    """Runs a tool's ``main``; the errors a user can fix become one line and exit code 2."""
    from absl import logging

    from nin_jax import input_pipeline, train

    logging.set_verbosity(logging.ERROR)  # Orbax's notes on read-only managers are noise here.
    try:
        main(sys.argv[1:] if argv is None else argv)
    except (
        WorkdirError,
        ImageError,
        input_pipeline.DatasetError,
        train.TrainingError,
        OSError,
    ) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
