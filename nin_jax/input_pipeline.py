"""Input: TFDS splits held in host memory, fed through tf.data, deterministic in (seed, step).

Every process yields *local* batches of ``global_batch_size // process_count``
examples. Each process holds the whole training split (small image datasets fit
in host memory) and takes its rows of every global batch; evaluation splits are
divided between processes (``tfds.split_for_jax_process``).

Global training batches are a pure function of (seed, step), whatever the
number of processes: each epoch is a seeded permutation of the split. A run
resumed at step ``s``, on any number of hosts, sees the same batches as one that
never stopped, with no pipeline state to checkpoint. Evaluation batches cover
every example exactly once; the last batch is padded and its padding has
``mask == 0``.
"""

import dataclasses
import os
from collections.abc import Callable, Iterator

import jax
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

import nin_jax.datasets.digits  # noqa: F401  (registers the embedded `digits` builder)
from nin_jax.config_validation import DATASETS
from nin_jax.errors import DatasetError

# TF is only the input pipeline here: it must never take an accelerator from JAX.
tf.config.set_visible_devices([], "GPU")
tf.config.set_visible_devices([], "TPU")

KNOWN_DATASETS = DATASETS
Batch = dict[str, np.ndarray]
_LOAD_CHUNK = 16384  # Examples per tf.data batch when reading a split into memory.


@dataclasses.dataclass(frozen=True)
class Split:
    """One process's part of a TFDS split, in host memory."""

    images: np.ndarray  # uint8 (N, H, W, C)
    labels: np.ndarray  # int32 (N,)

    def __len__(self) -> int:
        return len(self.labels)


def get_builder(name: str, data_dir: str | None, try_gcs: bool = False):
    """The prepared TFDS builder of ``name``; prepares it if needed (offline for ``digits``)."""
    known = KNOWN_DATASETS + nin_jax.datasets.digits.CONFIG_NAMES
    if name not in known:
        raise DatasetError(f"unknown dataset {name!r}; known: {', '.join(known)}")
    builder = tfds.builder(name, data_dir=data_dir, try_gcs=try_gcs)
    try:
        builder.download_and_prepare()
    except Exception as e:  # TFDS raises many types when offline or misconfigured.
        raise DatasetError(
            f"dataset {name!r} is not prepared in {builder.data_dir} and could not be "
            f"downloaded ({type(e).__name__}); prepare it with `tfds build {name}` on a "
            "machine with network access and point config.data_dir at it, or set "
            "config.try_gcs=True"
        ) from e
    return builder


def num_classes(builder) -> int:
    return builder.info.features["label"].num_classes


def load_split(
    builder,
    split: str,
    *,
    drop_remainder: bool,
    process_index: int | None = None,
    process_count: int | None = None,
) -> Split:
    """This process's part of ``split`` as numpy arrays.

    ``drop_remainder=True`` gives every process the same number of examples
    (needed for training: all processes must run the same number of steps).
    ``process_index``/``process_count`` default to JAX's (tests simulate others).
    """
    process_count = jax.process_count() if process_count is None else process_count
    if process_count > 1:
        index = jax.process_index() if process_index is None else process_index
        split = tfds.split_for_jax_process(
            split, process_index=index, process_count=process_count, drop_remainder=drop_remainder
        )
    try:
        ds = builder.as_dataset(split=split).batch(_LOAD_CHUNK)
        chunks = list(tfds.as_numpy(ds))
    except (ValueError, KeyError, AssertionError) as e:
        available = ", ".join(builder.info.splits.keys())
        raise DatasetError(
            f"cannot read split {split!r} of {builder.name} (available: {available}): {e}"
        ) from e
    return Split(
        images=np.concatenate([c["image"] for c in chunks]),
        labels=np.concatenate([c["label"] for c in chunks]).astype(np.int32),
    )


def channel_stats(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and std of uint8 images."""
    pixels = images.reshape(-1, images.shape[-1]).astype(np.float64)
    mean = pixels.mean(0)
    std = np.sqrt(np.maximum((pixels**2).mean(0) - mean**2, 1e-12))
    return mean.astype(np.float32), std.astype(np.float32)


def crop_flip(
    images: tf.Tensor, seed: tf.Tensor, pad: int = 4, rows: tuple[int, int] | None = None
) -> tf.Tensor:
    """Per image: a random translation by up to ``pad`` pixels (zero-padded), then a
    horizontal flip with probability 1/2; a pure function of the stateless ``seed``.

    ``rows=(first, total)``: ``images`` are rows ``first..`` of a batch of ``total``;
    the randomness is drawn for all ``total`` rows, so each row's transform does not
    depend on how the batch is split between processes.
    """
    shape = tf.shape(images)
    size, height, width = shape[0], shape[1], shape[2]
    first, total = rows if rows is not None else (0, size)
    crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    offsets = tf.random.stateless_uniform((total, 2), crop_seed, maxval=2 * pad + 1, dtype=tf.int32)
    offsets = offsets[first : first + size]
    padded = tf.pad(images, [[0, 0], [pad, pad], [pad, pad], [0, 0]])
    rows = offsets[:, :1] + tf.range(height)[None]
    cols = offsets[:, 1:] + tf.range(width)[None]
    cropped = tf.gather(tf.gather(padded, rows, axis=1, batch_dims=1), cols, axis=2, batch_dims=1)
    flip = (tf.random.stateless_uniform((total,), flip_seed) < 0.5)[first : first + size]
    return tf.where(flip[:, None, None, None], tf.reverse(cropped, [2]), cropped)


def local_batch_size(global_batch_size: int) -> int:
    processes = jax.process_count()
    if global_batch_size % jax.device_count():
        raise DatasetError(
            f"batch_size {global_batch_size} is not divisible by the {jax.device_count()} devices"
        )
    return global_batch_size // processes


def steps_per_epoch(split: Split, global_batch_size: int) -> int:
    """Global batches in an epoch of the whole training ``split``."""
    local_batch_size(global_batch_size)  # Checks divisibility by the devices.
    return len(split) // global_batch_size


def train_batches(
    split: Split,
    *,
    global_batch_size: int,
    preprocess: Callable[[tf.Tensor], tf.Tensor],
    seed: int,
    start_step: int = 0,
    augment: str = "none",
) -> Iterator[Batch]:
    """Endless local training batches, starting at global step ``start_step``.

    ``split`` is the whole training split. Global batch ``b`` of epoch ``e`` is
    ``permutation(seed, e)[b * G:(b + 1) * G]``; process ``i`` yields its rows
    ``[i * L, (i + 1) * L)``, the rows ``make_array_from_process_local_data``
    gives its devices on a 'data' mesh ordered by process. ``preprocess`` maps a
    uint8 batch to float32; ``augment`` ('none' or 'crop_flip') is applied after
    it, drawn for the whole global batch from (seed, step), so batches do not
    depend on the number of processes.
    """
    batch_size = local_batch_size(global_batch_size)
    per_epoch = steps_per_epoch(split, global_batch_size)
    if per_epoch == 0:
        raise DatasetError(
            f"the training split has {len(split)} examples, fewer than one batch of "
            f"{global_batch_size}"
        )
    images, labels = tf.constant(split.images), tf.constant(split.labels)
    count = len(split)
    first_row = jax.process_index() * batch_size
    augment_seed = tf.constant([seed, 1], tf.int64)

    def epoch_index_batches(epoch):
        order = tf.random.experimental.stateless_shuffle(
            tf.range(count), seed=tf.stack([tf.constant(seed, tf.int64), epoch])
        )
        order = tf.reshape(order[: per_epoch * global_batch_size], (per_epoch, global_batch_size))
        return tf.data.Dataset.from_tensor_slices(order[:, first_row : first_row + batch_size])

    first_epoch = start_step // per_epoch
    ds = tf.data.Dataset.range(first_epoch, np.iinfo(np.int64).max).flat_map(epoch_index_batches)
    ds = ds.skip(start_step - first_epoch * per_epoch).enumerate(start=start_step)

    def make_batch(step, idx):
        batch = preprocess(tf.gather(images, idx))
        if augment == "crop_flip":
            step_seed = tf.random.experimental.stateless_fold_in(augment_seed, step)
            batch = crop_flip(batch, step_seed, rows=(first_row, global_batch_size))
        return {"image": batch, "label": tf.gather(labels, idx)}

    ds = ds.map(make_batch, num_parallel_calls=tf.data.AUTOTUNE)
    return _as_numpy(ds.prefetch(tf.data.AUTOTUNE))


def eval_batches(
    split: Split,
    *,
    global_batch_size: int,
    preprocess: Callable[[tf.Tensor], tf.Tensor],
    num_batches: int,
) -> Iterator[Batch]:
    """``num_batches`` local batches covering the split once; padding has ``mask == 0``."""
    batch_size = local_batch_size(global_batch_size)
    padded = num_batches * batch_size
    if padded < len(split):
        raise ValueError(f"{num_batches} batches of {batch_size} cannot hold {len(split)} examples")
    pad = padded - len(split)
    images = np.concatenate([split.images, np.zeros((pad, *split.images.shape[1:]), np.uint8)])
    labels = np.concatenate([split.labels, np.zeros(pad, np.int32)])
    mask = (np.arange(padded) < len(split)).astype(np.float32)
    ds = tf.data.Dataset.from_tensor_slices({"image": images, "label": labels, "mask": mask})
    ds = ds.batch(batch_size).map(
        lambda b: {**b, "image": preprocess(b["image"])},
        num_parallel_calls=tf.data.AUTOTUNE,
    )
    return _as_numpy(ds.prefetch(tf.data.AUTOTUNE))


def num_eval_batches(total_examples: int, global_batch_size: int) -> int:
    """Batches each process runs so that the largest process part fits (same on all)."""
    per_process = -(-total_examples // jax.process_count())
    return max(1, -(-per_process // local_batch_size(global_batch_size)))


def _as_numpy(ds: tf.data.Dataset) -> Iterator[Batch]:
    options = tf.data.Options()
    options.deterministic = True
    # Host cores belong to XLA first: a small private pool keeps tf.data from
    # competing with the train step (a few threads still outrun it tenfold).
    options.threading.private_threadpool_size = max(1, min(4, (os.cpu_count() or 2) // 2))
    options.threading.max_intra_op_parallelism = 1
    return iter(tfds.as_numpy(ds.with_options(options)))
