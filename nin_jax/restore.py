"""A trained model loaded back from a workdir, for the tools (evaluate, predict, class_maps)
and for library use (``load_parts``: the model, its parameters, its preprocessing).

The config (``config.json``) rebuilds the model, ``dataset.json`` and
``preprocess.npz`` the input preprocessing, and the checkpoint the parameters,
whose shapes are checked against the model's: no training data is read.
"""

import dataclasses
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from nin_jax import checkpointing, models, preprocessing
from nin_jax import workdir as workdir_lib
from nin_jax.errors import WorkdirError


@dataclasses.dataclass(frozen=True)
class Trained:
    """A model restored from a workdir: ``model.apply({'params': params}, x)``.

    With ``config.num_models = K > 1`` the parameters are stacked on a leading
    axis; ``model=k`` picks one model, ``model=None`` their ensemble.
    """

    config: ml_collections.ConfigDict
    info: workdir_lib.DatasetInfo
    model: models.NIN
    params: Any
    step: int

    @property
    def num_models(self) -> int:
        return self.config.get("num_models", 1)

    def model_params(self, model: int) -> Any:
        """The parameters of model ``model`` (0 is the only one of a single-model run)."""
        if not 0 <= model < self.num_models:
            raise WorkdirError(
                f"--model={model}: this workdir holds models 0 to {self.num_models - 1}"
            )
        if self.num_models == 1:
            return self.params
        return jax.tree.map(lambda x: x[model], self.params)

    def probabilities(
        self, images: np.ndarray, model: int | None = None, batch_size: int = 256
    ) -> np.ndarray:
        """Class probabilities of uint8 images: model ``model``'s softmax, or (None) the
        mean of every model's (the ensemble; the only model's when there is one)."""
        chosen = range(self.num_models) if model is None else [model]
        total = sum(
            _softmax(self.apply(images, batch_size=batch_size, model=k).astype(np.float64))
            for k in chosen
        )
        return total / len(chosen)

    def apply(
        self,
        images: np.ndarray,
        method: str = "__call__",
        batch_size: int = 256,
        model: int = 0,
    ) -> np.ndarray:
        """Model ``model`` (or one of its methods) on uint8 images, preprocessed as in
        training, in fixed-size jitted batches."""
        stats = self.info.preprocess_params
        params = self.model_params(model)
        dtype = self.config.get("dtype", "float32")

        @jax.jit
        def fn(pixels):
            x = preprocessing.apply(self.info.preprocess, stats, pixels, dtype)
            return self.model.apply(
                {"params": params}, x, train=False, method=getattr(self.model, method)
            )

        outputs = []
        for start in range(0, len(images), batch_size):
            chunk = images[start : start + batch_size]
            pad = batch_size - len(chunk) if len(images) > batch_size else 0
            padded = np.concatenate([chunk, np.zeros((pad, *chunk.shape[1:]), chunk.dtype)])
            outputs.append(np.asarray(fn(padded))[: len(chunk)])
        return np.concatenate(outputs)


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(-1, keepdims=True))
    return shifted / shifted.sum(-1, keepdims=True)


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
    """The model, parameters and dataset info of ``workdir`` at ``step`` (default: latest)."""
    config = workdir_lib.load_config(workdir)
    info = workdir_lib.load_dataset_info(workdir)
    model = models.from_config(config, info.num_classes)
    if model.conv_impl == "fused" and jax.default_backend() != "tpu":
        model = model.clone(conv_impl="auto")  # The same parameters; not interpreted.
    restored, step = checkpointing.read(workdir, step)
    expected = jax.eval_shape(
        lambda: model.init(jax.random.key(0), jnp.zeros((1, *info.image_shape)), train=False)
    )["params"]
    num_models = config.get("num_models", 1)
    if num_models > 1:  # Stacked on a leading model axis.
        expected = jax.tree.map(
            lambda x: jax.ShapeDtypeStruct((num_models, *x.shape), x.dtype), expected
        )
    params = restored.get("params") if isinstance(restored, dict) else None
    mismatch = _describe_mismatch(expected, params or {})
    if mismatch:
        raise WorkdirError(
            f"the checkpoint at step {step} in {checkpointing.directory(workdir)} does not "
            f"belong to the model in {workdir}/config.json: {mismatch}"
        )
    return Trained(config=config, info=info, model=model, params=params, step=step)


class Parts(NamedTuple):
    """What a script needs of a trained workdir, without the trainer (``load_parts``).

    ``model.apply({'params': params}, preprocess(images))`` gives the logits of uint8
    images (N, H, W, C) as the workdir's training saw them: ``preprocess`` is the
    jittable ``preprocessing.apply`` of the run's ``config.preprocess`` with the
    statistics of its ``preprocess.npz`` (float32 NHWC out). With ``config.num_models
    = K > 1`` and ``model=None``, every leaf of ``params`` has a leading axis of K.
    """

    model: models.NIN
    params: Any
    preprocess: Callable[[jax.Array], jax.Array]
    class_names: tuple[str, ...]


def load_parts(workdir: str, step: int | None = None, model: int | None = None) -> Parts:
    """(model, params, preprocess, class_names) of ``workdir`` at ``step`` (default: latest).

    ``model``: one model of a multi-model workdir (``None``: all of them, stacked; a
    one-model workdir's parameters are never stacked). Reads no training data and
    imports no TensorFlow.
    """
    trained = load(workdir, step)
    params = trained.params if model is None else trained.model_params(model)
    name, stats = trained.info.preprocess, trained.info.preprocess_params
    dtype = trained.config.get("dtype", "float32")

    def preprocess(images: jax.Array) -> jax.Array:
        return preprocessing.apply(name, stats, images, dtype)

    return Parts(trained.model, params, preprocess, trained.info.class_names)
