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

Batches hold uint8 images and int32 labels only, so the host's work per image
is a copy of its bytes: preprocessing and augmentation run on the devices,
inside the jitted steps (``nin_jax.preprocessing``, ``nin_jax.augmentation``).
"""

import dataclasses
import os
import re
from collections.abc import Callable, Iterator
from typing import TypeVar

import jax
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds
from google.protobuf import json_format

import nin_jax.datasets.digits  # noqa: F401  (registers the embedded `digits` builder)
import nin_jax.datasets.fashion_standins  # noqa: F401  (and Fashion-MNIST's stand-ins)
from nin_jax import retries, storage
from nin_jax.config_validation import DATASETS
from nin_jax.errors import DatasetError, FileDamagedError

# TF is only the input pipeline here: it must never take an accelerator from JAX.
tf.config.set_visible_devices([], "GPU")
tf.config.set_visible_devices([], "TPU")

KNOWN_DATASETS = DATASETS
Batch = dict[str, np.ndarray]
T = TypeVar("T")
_LOAD_CHUNK = 16384  # Examples per tf.data batch when reading a split into memory.


@dataclasses.dataclass(frozen=True)
class Split:
    """One process's part of a TFDS split, in host memory."""

    images: np.ndarray  # uint8 (N, H, W, C)
    labels: np.ndarray  # int32 (N,)

    def __len__(self) -> int:
        return len(self.labels)


def _damaged(name: str, where: str, error: Exception) -> FileDamagedError:
    """A prepared dataset whose files TFDS cannot read (cut short, corrupt, replaced)."""
    text = re.sub(r"\{\{[^}]*\}\}\s*", "", str(error)).strip()  # TF's "{{function_node ...}}"
    reason = f"{type(error).__name__}: {text.splitlines()[0][:160] if text else ''}"
    return FileDamagedError(
        f"the prepared dataset {name!r} in {where} is damaged ({reason}); delete that "
        f"directory and prepare it again (`tfds build {name}`; digits prepares itself)"
    )


# What TFDS raises for a dataset_info.json it cannot load (read or parse).
_INFO_ERRORS = (json_format.ParseError, RuntimeError, ValueError, OSError)


def _read_remotely(
    read: Callable[[], T], data_dir: str | None, what: str, cut_short: tuple[type, ...]
) -> T:
    """``read()``; from a bucket, retried while it fails with a transient error, or with
    one of ``cut_short``, which a read cut short also gives (a parse error of
    dataset_info.json, a truncated record): only an error that every retry meets again
    is taken for the files' content."""
    if not (data_dir and storage.is_remote(data_dir)):
        return read()

    def retry_if(error: BaseException) -> bool:
        return retries.is_transient(error) or isinstance(error, cut_short)

    return retries.call(read, f"{what} {data_dir}", retry_if=retry_if)


def check_features(builder) -> None:
    """Raises ``DatasetError`` unless the examples are (image of one fixed shape, class label)."""
    features = builder.info.features
    keys = features.keys() if isinstance(features, tfds.features.FeaturesDict) else ()
    image = features["image"] if "image" in keys else None
    label = features["label"] if "label" in keys else None
    if not isinstance(label, tfds.features.ClassLabel) or not isinstance(
        image, tfds.features.Image
    ):
        raise DatasetError(
            f"dataset {builder.name!r} is not image classification as nin_jax reads it: its "
            "examples must hold an 'image' (tfds.features.Image) and a 'label' "
            f"(tfds.features.ClassLabel); it has {', '.join(keys) or type(features).__name__}"
        )
    if None in image.shape or len(image.shape) != 3:
        raise DatasetError(
            f"dataset {builder.name!r} has images of varying size {image.shape}; nin_jax "
            "trains on images of one fixed shape (height, width, channels)"
        )


def find_builder(name: str, data_dir: str | None, try_gcs: bool = False):
    """TFDS's builder of ``name`` (prepared or not), checked to be image classification.

    ``name`` is any TFDS image-classification builder, with its config and version
    if it has them ('emnist/balanced', 'mnist:3.*').
    """
    base, _, config = name.split(":")[0].partition("/")
    try:
        configs = tfds.builder_cls(base).builder_configs
    except tfds.core.registered.DatasetNotFoundError as e:
        raise DatasetError(
            f"unknown dataset {name!r}: TFDS has no builder of that name "
            "(`tfds.list_builders()` lists them; nin_jax's recipes use "
            f"{', '.join(KNOWN_DATASETS)})"
        ) from e
    if config and config not in configs:
        raise DatasetError(f"unknown dataset {name!r}: {base}'s configs are {', '.join(configs)}")
    where = data_dir or "TFDS's data dir"
    try:
        builder = _read_remotely(
            lambda: tfds.builder(name, data_dir=data_dir, try_gcs=try_gcs),
            data_dir, f"reading the dataset info of {name!r} in", _INFO_ERRORS,
        )  # fmt: skip
    except (*_INFO_ERRORS, tf.errors.OpError) as e:  # dataset_info.json
        if retries.is_transient(e):
            raise retries.unreadable(f"the prepared dataset {name!r} in {where}", e) from e
        if isinstance(e, tf.errors.OpError):  # Neither the bucket's fault nor the file's.
            raise
        raise _damaged(name, where, e) from e
    check_features(builder)
    return builder


def _how_to_prepare(name: str) -> str:
    from nin_jax.datasets import originals

    on_network = f"`tfds build {name}` on a machine with network access"
    if name in originals.ORIGINALS:
        command = f"python -m nin_jax.prepare --dataset={name} --from=DIR"
        return f"prepare it from its original files (`{command}`) or with {on_network}"
    return f"prepare it with {on_network}"


def get_builder(name: str, data_dir: str | None, try_gcs: bool = False):
    """The prepared TFDS builder of ``name``; prepares it if needed (offline for ``digits``)."""
    builder = find_builder(name, data_dir, try_gcs)
    try:
        builder.download_and_prepare()
    except Exception as e:  # TFDS raises many types when offline or misconfigured.
        if storage.is_remote(builder.data_dir) and retries.is_transient(e):
            raise retries.unreadable(f"the dataset {name!r} in {builder.data_dir}", e) from e
        raise DatasetError(
            f"dataset {name!r} is not prepared in {builder.data_dir} and could not be "
            f"downloaded ({type(e).__name__}); {_how_to_prepare(name)} and point "
            "config.data_dir at it, or set config.try_gcs=True"
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

    def load() -> list[Batch]:
        ds = builder.as_dataset(split=split).batch(_LOAD_CHUNK)
        return list(tfds.as_numpy(ds))

    try:
        chunks = _read_remotely(
            load, builder.data_dir, f"reading split {split!r} from", (tf.errors.OpError,)
        )
    except tf.errors.OpError as e:  # A shard cut short or corrupt (DataLossError, ...).
        if retries.is_transient(e):
            what = f"split {split!r} of the prepared dataset {builder.name!r} in {builder.data_dir}"
            raise retries.unreadable(what, e) from e
        raise _damaged(builder.name, builder.data_dir, e) from e
    except (ValueError, KeyError, AssertionError) as e:
        available = ", ".join(builder.info.splits.keys())
        raise DatasetError(
            f"cannot read split {split!r} of {builder.name} (available: {available}): {e}"
        ) from e
    return Split(
        images=np.concatenate([c["image"] for c in chunks]),
        labels=np.concatenate([c["label"] for c in chunks]).astype(np.int32),
    )


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
    seed: int,
    start_step: int = 0,
    indices_only: bool = False,
) -> Iterator[Batch]:
    """Endless local training batches of uint8 images and int32 labels, from step ``start_step``.

    ``split`` is the whole training split. Global batch ``b`` of epoch ``e`` is
    ``permutation(seed, e)[b * G:(b + 1) * G]``; process ``i`` yields its rows
    ``[i * L, (i + 1) * L)``, the rows ``make_array_from_process_local_data``
    gives its devices on a 'data' mesh ordered by process. ``indices_only``:
    yield only the rows' indices (``{'index'}``), for a split held on the devices.
    """
    batch_size = local_batch_size(global_batch_size)
    per_epoch = steps_per_epoch(split, global_batch_size)
    if per_epoch == 0:
        raise DatasetError(
            f"the training split has {len(split)} examples, fewer than one batch of "
            f"{global_batch_size}"
        )
    count = len(split)
    first_row = jax.process_index() * batch_size

    def epoch_index_batches(epoch):
        order = tf.random.experimental.stateless_shuffle(
            tf.range(count), seed=tf.stack([tf.constant(seed, tf.int64), epoch])
        )
        order = tf.reshape(order[: per_epoch * global_batch_size], (per_epoch, global_batch_size))
        return tf.data.Dataset.from_tensor_slices(order[:, first_row : first_row + batch_size])

    first_epoch = start_step // per_epoch
    ds = tf.data.Dataset.range(first_epoch, np.iinfo(np.int64).max).flat_map(epoch_index_batches)
    ds = ds.skip(start_step - first_epoch * per_epoch)
    if indices_only:
        ds = ds.map(lambda idx: {"index": idx})
    else:
        images, labels = tf.constant(split.images), tf.constant(split.labels)
        ds = ds.map(
            lambda idx: {"image": tf.gather(images, idx), "label": tf.gather(labels, idx)},
            num_parallel_calls=tf.data.AUTOTUNE,
        )
    return _as_numpy(ds.prefetch(tf.data.AUTOTUNE))


def eval_batches(split: Split, *, global_batch_size: int, num_batches: int) -> Iterator[Batch]:
    """``num_batches`` local uint8 batches covering the split once; padding has ``mask == 0``."""
    batch_size = local_batch_size(global_batch_size)
    padded = num_batches * batch_size
    if padded < len(split):
        raise ValueError(f"{num_batches} batches of {batch_size} cannot hold {len(split)} examples")
    pad = padded - len(split)
    images = np.concatenate([split.images, np.zeros((pad, *split.images.shape[1:]), np.uint8)])
    labels = np.concatenate([split.labels, np.zeros(pad, np.int32)])
    mask = (np.arange(padded) < len(split)).astype(np.float32)
    ds = tf.data.Dataset.from_tensor_slices({"image": images, "label": labels, "mask": mask})
    return _as_numpy(ds.batch(batch_size).prefetch(tf.data.AUTOTUNE))


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
