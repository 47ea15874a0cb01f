"""Input: TFDS splits held in host memory, fed through tf.data, deterministic in (seed, step).

Every process loads only its own part of each split (``tfds.split_for_jax_process``)
and yields *local* batches of ``global_batch_size // process_count`` examples.

Training batches are a pure function of (seed, step): each epoch is a seeded
permutation of the process's examples, so a run resumed at step ``s`` sees the
same batches as one that never stopped, with no pipeline state to checkpoint.
Evaluation batches cover every example exactly once; the last batch is padded
and its padding has ``mask == 0``.
"""

import dataclasses
import os
from collections.abc import Iterator

import jax
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

import nin_jax.datasets  # noqa: F401  (registers the embedded `digits` builder)

# TF is only the input pipeline here: it must never take an accelerator from JAX.
tf.config.set_visible_devices([], "GPU")
tf.config.set_visible_devices([], "TPU")

KNOWN_DATASETS = ("digits", "mnist", "cifar10", "cifar100", "svhn_cropped")
Batch = dict[str, np.ndarray]
_LOAD_CHUNK = 16384  # Examples per tf.data batch when reading a split into memory.


class DatasetError(ValueError):
    """The dataset cannot be used as configured (unknown, unprepared, bad split)."""


@dataclasses.dataclass(frozen=True)
class Split:
    """One process's part of a TFDS split, in host memory."""

    images: np.ndarray  # uint8 (N, H, W, C)
    labels: np.ndarray  # int32 (N,)

    def __len__(self) -> int:
        return len(self.labels)


def get_builder(name: str, data_dir: str | None, try_gcs: bool = False):
    """The prepared TFDS builder of ``name``; prepares it if needed (offline for ``digits``)."""
    if name not in KNOWN_DATASETS:
        raise DatasetError(f"unknown dataset {name!r}; known: {', '.join(KNOWN_DATASETS)}")
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


def load_split(builder, split: str, *, drop_remainder: bool) -> Split:
    """This process's part of ``split`` as numpy arrays.

    ``drop_remainder=True`` gives every process the same number of examples
    (needed for training: all processes must run the same number of steps).
    """
    if jax.process_count() > 1:
        split = tfds.split_for_jax_process(split, drop_remainder=drop_remainder)
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
    """Per-channel mean and std of uint8 images, pooled over all processes."""
    pixels = images.reshape(-1, images.shape[-1]).astype(np.float64)
    moments = np.stack([np.full(pixels.shape[1], len(pixels)), pixels.sum(0), (pixels**2).sum(0)])
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        moments = np.asarray(multihost_utils.process_allgather(moments)).sum(0)
    count, total, total_sq = moments
    mean = total / count
    std = np.sqrt(np.maximum(total_sq / count - mean**2, 1e-12))
    return mean.astype(np.float32), std.astype(np.float32)


def _normalize(images: tf.Tensor, mean: np.ndarray, std: np.ndarray) -> tf.Tensor:
    return (tf.cast(images, tf.float32) - mean) / std


def local_batch_size(global_batch_size: int) -> int:
    processes = jax.process_count()
    if global_batch_size % jax.device_count():
        raise DatasetError(
            f"batch_size {global_batch_size} is not divisible by the {jax.device_count()} devices"
        )
    return global_batch_size // processes


def steps_per_epoch(split: Split, global_batch_size: int) -> int:
    return len(split) // local_batch_size(global_batch_size)


def train_batches(
    split: Split,
    *,
    global_batch_size: int,
    mean: np.ndarray,
    std: np.ndarray,
    seed: int,
    start_step: int = 0,
) -> Iterator[Batch]:
    """Endless local training batches, starting at global step ``start_step``."""
    batch_size = local_batch_size(global_batch_size)
    per_epoch = steps_per_epoch(split, global_batch_size)
    if per_epoch == 0:
        raise DatasetError(
            f"the training split has {len(split)} examples per process, "
            f"fewer than one batch of {batch_size}"
        )
    images, labels = tf.constant(split.images), tf.constant(split.labels)
    count = len(split)
    shuffle_seed = np.array([seed, jax.process_index()], np.int64)

    def epoch_index_batches(epoch):
        order = tf.random.experimental.stateless_shuffle(
            tf.range(count), seed=tf.stack([shuffle_seed[0] + epoch, shuffle_seed[1]])
        )
        order = tf.reshape(order[: per_epoch * batch_size], (per_epoch, batch_size))
        return tf.data.Dataset.from_tensor_slices(order)

    first_epoch = start_step // per_epoch
    ds = tf.data.Dataset.range(first_epoch, np.iinfo(np.int64).max).flat_map(epoch_index_batches)
    ds = ds.skip(start_step - first_epoch * per_epoch)
    ds = ds.map(
        lambda idx: {
            "image": _normalize(tf.gather(images, idx), mean, std),
            "label": tf.gather(labels, idx),
        },
        num_parallel_calls=tf.data.AUTOTUNE,
    )
    return _as_numpy(ds.prefetch(tf.data.AUTOTUNE))


def eval_batches(
    split: Split, *, global_batch_size: int, mean: np.ndarray, std: np.ndarray, num_batches: int
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
        lambda b: {**b, "image": _normalize(b["image"], mean, std)},
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
