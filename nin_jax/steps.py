"""The jitted train and eval steps, the train state they update, and the mesh they run on.

The batch is sharded along the mesh axis 'data' and the train state is
replicated (with ``config.num_models`` > 1, the stacked state is split along
'model': ``nin_jax.ensemble``); XLA inserts the gradient all-reduce. The same code runs on one CPU,
on several devices of one host and on many hosts (after
``jax.distributed.initialize``). Nothing here imports TensorFlow.

The host hands the steps uint8 images and integer labels (or, with the training
split on the devices, only the rows' indices); preprocessing and augmentation
happen inside the compiled steps (``Inputs``), with the fitted statistics as
arguments.
"""

import dataclasses
import math
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax.training import train_state
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from nin_jax import augmentation, health, preprocessing
from nin_jax.models import NIN

Batch = dict[str, jax.Array]


def model_axis_size(num_models: int, num_devices: int) -> int:
    """Devices along the 'model' axis: the largest count that divides both."""
    return math.gcd(num_models, num_devices)


def create_mesh(num_models: int = 1, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A ('data', 'model') mesh over ``devices`` (default: every device of every process).

    'data' is the outer axis, so each process's devices hold a contiguous block
    of the global batch (the rows its input pipeline yields) for every model.
    Over several TPU slices (devices of distinct ``slice_index``) 'data' spans
    them, each slice one block: the gradients cross between slices once per step.
    """
    devices = jax.devices() if devices is None else list(devices)
    local = sum(d.process_index == devices[0].process_index for d in devices)
    models = model_axis_size(num_models, local)
    auto = (jax.sharding.AxisType.Auto,) * 2
    slices = len({getattr(d, "slice_index", 0) for d in devices})
    if slices > 1:
        per_slice = (len(devices) // slices // models, models)
        grid = mesh_utils.create_hybrid_device_mesh(per_slice, (slices, 1), devices)
        return Mesh(grid, ("data", "model"), axis_types=auto)
    shape = (len(devices) // models, models)
    return jax.make_mesh(shape, ("data", "model"), axis_types=auto, devices=devices)


def state_sharding(mesh: Mesh, num_models: int) -> NamedSharding:
    """Models along 'model' (a stacked state), or replicated (one model)."""
    return NamedSharding(mesh, P("model") if num_models > 1 else P())


class TrainState(train_state.TrainState):
    """Flax's TrainState (step, params, opt_state; apply_fn and tx are static), and the
    model's dropout rate when it is swept per model (None: the model's own)."""

    dropout_rate: jax.Array | None = None


def create_train_state(
    rng: jax.Array,
    model: NIN,
    image_shape: tuple[int, ...],
    optimizer: optax.GradientTransformation,
) -> TrainState:
    """Initial state of ``model`` for images of ``image_shape`` (H, W, C): float32 parameters
    from ``model.init(rng, ...)``, ``optimizer``'s state, step 0. Call it under ``jax.jit``
    (with ``out_shardings=...`` to place it); eager, the initialisers run op by op."""
    params = model.init(rng, jnp.zeros((1, *image_shape), jnp.float32), train=False)["params"]
    return TrainState.create(apply_fn=model.apply, params=params, tx=optimizer)


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels)


def train_step(
    state: TrainState, batch: dict[str, jax.Array], dropout_rng: jax.Array
) -> tuple[TrainState, dict[str, jax.Array]]:
    """One SGD step on a global batch; dropout randomness is a function of (rng, step).

    ``batch``: ``'image'`` float32 (N, H, W, C), already preprocessed (``preprocessing.apply``;
    ``Inputs.train_batch`` does it for the trainer, with augmentation), ``'label'`` int32
    (N,). ``dropout_rng``: a key, folded with ``state.step``. Pure: jit it (the trainer's
    sharded version is ``compile_steps``).

    Metrics: scalars ``loss``, ``accuracy``, ``grad_norm``, ``param_norm`` and
    the health metrics of ``nin_jax.health.train_metrics`` (of this step's
    forward pass and gradients), among them the vector ``dead_classes``.
    """
    step_rng = jax.random.fold_in(dropout_rng, state.step)

    def loss_fn(params):
        logits, variables = state.apply_fn(
            {"params": params},
            batch["image"],
            train=True,
            rngs={"dropout": step_rng},
            mutable=["intermediates"],
            dropout_rate=state.dropout_rate,
        )
        outputs = variables["intermediates"]["block_outputs"]
        return cross_entropy(logits, batch["label"]).mean(), (logits, outputs)

    (loss, (logits, outputs)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    new_state = state.apply_gradients(grads=grads)
    accuracy = jnp.mean(jnp.argmax(logits, -1) == batch["label"])
    return new_state, {
        "loss": loss,
        "accuracy": accuracy,
        "grad_norm": optax.tree.norm(grads),
        "param_norm": optax.tree.norm(new_state.params),
        **health.train_metrics(outputs, grads),
    }


def eval_step(state: TrainState, batch: dict[str, jax.Array]) -> dict[str, jax.Array]:
    """Sums over the real (mask == 1) examples of a padded batch: float32 ``loss_sum``,
    ``correct`` and ``count``. ``batch``: ``'image'`` float32 (N, H, W, C) preprocessed,
    ``'label'`` int32 (N,), ``'mask'`` float32 (N,)."""
    logits = state.apply_fn({"params": state.params}, batch["image"], train=False)
    mask = batch["mask"]
    correct = (jnp.argmax(logits, -1) == batch["label"]) * mask
    return {
        "loss_sum": jnp.sum(cross_entropy(logits, batch["label"]) * mask),
        "correct": jnp.sum(correct),
        "count": jnp.sum(mask),
    }


@dataclasses.dataclass(frozen=True)
class Inputs:
    """How the steps turn what the host hands them into the model's input.

    ``stats`` are the preprocessing statistics (``nin_jax.statistics``);
    ``table`` is the uint8 training split on the devices ({'image', 'label'},
    with ``config.data_on_device``) or None.
    """

    preprocess: str  # config.preprocess
    augment: str  # config.augment
    seed: int  # config.seed: augmentation draws are a function of (seed, step, row)
    dtype: str = "float32"  # config.dtype, the model's computation dtype

    def train_batch(self, stats: Batch, table: Batch | None, batch: Batch, step) -> Batch:
        if "index" in batch:  # Gather the rows from the split on the devices.
            batch = {key: table[key][batch["index"]] for key in ("image", "label")}
        images = preprocessing.apply(self.preprocess, stats, batch["image"], self.dtype)
        images = augmentation.apply(self.augment, images, self.seed, step)
        return {"image": images, "label": batch["label"]}

    def eval_batch(self, stats: Batch, batch: Batch) -> Batch:
        images = preprocessing.apply(self.preprocess, stats, batch["image"], self.dtype)
        return {**batch, "image": images}


def ensemble_eval_step(state: TrainState, batch: dict[str, jax.Array]) -> dict[str, jax.Array]:
    """``eval_step`` of every model of a stacked state, and of their ensemble (the mean of
    the models' softmax): per-model sums have a leading model axis, ``ensemble_*`` do not."""
    sums = jax.vmap(eval_step, in_axes=(0, None))(state, batch)
    logits = jax.vmap(lambda s: s.apply_fn({"params": s.params}, batch["image"], train=False))(
        state
    )
    probabilities = jnp.mean(jax.nn.softmax(logits), axis=0)
    mask, labels = batch["mask"], batch["label"]
    picked = jnp.take_along_axis(probabilities, labels[:, None], axis=-1)[:, 0]
    return {
        **sums,
        "count": sums["count"][0],
        "ensemble_correct": jnp.sum((jnp.argmax(probabilities, -1) == labels) * mask),
        "ensemble_loss_sum": jnp.sum(-jnp.log(jnp.maximum(picked, 1e-30)) * mask),
    }


def compile_steps(
    mesh: jax.sharding.Mesh, inputs: Inputs, num_models: int = 1
) -> tuple[Callable, Callable]:
    """The jitted steps for this mesh: the batch on 'data', the models (if several) on
    'model', everything else replicated.

    ``jit_train(state, batch, dropout_rng, stats, table) -> (state, metrics)`` (the
    state is donated) and ``jit_eval(state, batch, stats) -> sums``. With
    ``num_models > 1`` the state and the dropout keys are stacked on a leading
    model axis and both steps are ``jax.vmap``-ed over it (the batch is shared).
    """

    # Traced under the mesh, so that a kernel XLA cannot partition (conv_impl='fused')
    # finds the 'data' axis to run on each device's shard (jax.shard_map).
    def train_on_inputs(state, batch, dropout_rng, stats, table):
        step = state.step if num_models == 1 else state.step[0]
        with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):
            prepared = inputs.train_batch(stats, table, batch, step)
            if num_models == 1:
                return train_step(state, prepared, dropout_rng)
            return jax.vmap(train_step, in_axes=(0, None, 0))(state, prepared, dropout_rng)

    def eval_on_inputs(state, batch, stats):
        with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):
            prepared = inputs.eval_batch(stats, batch)
            if num_models == 1:
                return eval_step(state, prepared)
            return ensemble_eval_step(state, prepared)

    replicated = NamedSharding(mesh, P())
    data = NamedSharding(mesh, P("data"))
    models = state_sharding(mesh, num_models)
    jit_train = jax.jit(
        train_on_inputs,
        in_shardings=(models, data, models, replicated, replicated),
        out_shardings=(models, replicated),
        donate_argnums=(0,),
    )
    jit_eval = jax.jit(
        eval_on_inputs, in_shardings=(models, data, replicated), out_shardings=replicated
    )
    return jit_train, jit_eval


def replicate(tree, mesh: jax.sharding.Mesh):
    """Host arrays that every process holds whole, as arrays replicated on every device."""
    sharding = NamedSharding(mesh, P())
    return jax.tree.map(
        lambda x: jax.make_array_from_callback(np.shape(x), sharding, lambda index: x[index]),
        tree,
    )


def to_global(batch: dict[str, np.ndarray], mesh: jax.sharding.Mesh) -> dict[str, jax.Array]:
    """Assembles each process's local batch into one global array sharded on 'data'."""
    sharding = NamedSharding(mesh, P("data"))
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), batch)
