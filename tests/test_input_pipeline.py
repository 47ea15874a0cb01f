"""Per-process splits, exact evaluation coverage and validation splits, on the embedded digits."""

from collections import Counter

import numpy as np
import pytest
from helpers import load_config

from nin_jax import input_pipeline, splits


def rows(split):
    """Examples as sortable byte strings (image + label) for multiset comparisons."""
    flat = np.concatenate([split.images.reshape(len(split), -1), split.labels[:, None]], axis=1)
    return sorted(bytes(r) for r in flat.astype(np.uint8))


@pytest.fixture(scope="module")
def digits(digits_data_dir):
    return input_pipeline.get_builder("digits", digits_data_dir)


@pytest.mark.parametrize("split", ["train", "train+test"])
@pytest.mark.parametrize("drop_remainder", [False, True])
def test_two_processes_read_disjoint_parts_that_cover_the_split(digits, split, drop_remainder):
    whole = input_pipeline.load_split(digits, split, drop_remainder=False)
    parts = [
        input_pipeline.load_split(
            digits, split, drop_remainder=drop_remainder, process_index=i, process_count=2
        )
        for i in range(2)
    ]
    sizes = [len(p) for p in parts]
    if drop_remainder:  # Equal parts (same number of steps on every process).
        assert sizes[0] == sizes[1] and len(whole) - sum(sizes) < 2 * len(split.split("+"))
    else:
        assert sum(sizes) == len(whole) and abs(sizes[0] - sizes[1]) <= len(split.split("+"))
    # No example twice (as a multiset, since digits has duplicate images), none missing
    # beyond the dropped remainder.
    together, every = Counter(rows(parts[0]) + rows(parts[1])), Counter(rows(whole))
    assert not together - every
    assert sum((every - together).values()) == len(whole) - sum(sizes)


def test_eval_batches_cover_1001_examples_once_on_one_and_two_processes(digits, monkeypatch):
    whole = input_pipeline.load_split(digits, "train[:1001]", drop_remainder=False)
    assert len(whole) == 1001

    def unmasked(split, num_batches):
        batches = list(
            input_pipeline.eval_batches(split, global_batch_size=128, num_batches=num_batches)
        )
        mask = np.concatenate([b["mask"] for b in batches]).astype(bool)
        return len(batches), np.concatenate([b["label"] for b in batches])[mask], mask.sum()

    count, labels, real = unmasked(whole, input_pipeline.num_eval_batches(1001, 128))
    assert (count, real) == (8, 1001)  # 7 full batches + 1 with 105 real examples.
    np.testing.assert_array_equal(labels, whole.labels)

    monkeypatch.setattr(input_pipeline.jax, "process_count", lambda: 2)
    num_batches = input_pipeline.num_eval_batches(1001, 128)
    results = [
        unmasked(
            input_pipeline.load_split(
                digits, "train[:1001]", drop_remainder=False, process_index=i, process_count=2
            ),
            num_batches,
        )
        for i in range(2)
    ]
    assert [r[0] for r in results] == [8, 8]  # Both processes run the same number of steps.
    assert [r[2] for r in results] == [501, 500]
    np.testing.assert_array_equal(np.concatenate([r[1] for r in results]), whole.labels)


def test_per_class_validation_takes_the_first_n_of_each_class(digits):
    train_part, validation = splits.per_class_validation(digits, {"train": 5, "test": 3})
    full_train = input_pipeline.load_split(digits, "train", drop_remainder=False)
    full_test = input_pipeline.load_split(digits, "test", drop_remainder=False)

    assert np.bincount(validation.labels, minlength=10).tolist() == [8] * 10
    expected = []
    for full, n in ((full_train, 5), (full_test, 3)):
        chosen = np.sort(np.concatenate([np.nonzero(full.labels == c)[0][:n] for c in range(10)]))
        expected.append(input_pipeline.Split(full.images[chosen], full.labels[chosen]))
    np.testing.assert_array_equal(validation.images, np.concatenate([e.images for e in expected]))
    # Validation and training together are exactly train + test, nothing twice.
    assert len(train_part) + len(validation) == len(full_train) + len(full_test)
    together = input_pipeline.Split(
        np.concatenate([train_part.images, validation.images]),
        np.concatenate([train_part.labels, validation.labels]),
    )
    everything = input_pipeline.Split(
        np.concatenate([full_train.images, full_test.images]),
        np.concatenate([full_train.labels, full_test.labels]),
    )
    assert rows(together) == rows(everything)


def test_sliced_validation_and_the_default_last_tenth(digits):
    assert splits.SLICED_VALIDATION["cifar10"] == ("train[:40000]", "train[40000:]")
    config = load_config("digits", validation=True)
    train_part, validation = splits.load_train_and_eval(config, digits)
    assert (len(train_part), len(validation)) == (1293, 144)  # train[:90%], train[90%:]


def test_svhn_validation_under_mock_data(monkeypatch, tmp_path):
    import tensorflow_datasets as tfds

    monkeypatch.setattr(splits, "SVHN_VALIDATION_PER_CLASS", {"train": 2, "extra": 1})
    config = load_config("svhn", validation=True, data_dir=str(tmp_path))
    with tfds.testing.mock_data(policy=tfds.testing.MockPolicy.USE_CODE, num_examples=80):
        builder = input_pipeline.get_builder("svhn_cropped", str(tmp_path))
        train_part, validation = splits.load_train_and_eval(config, builder)
    assert np.bincount(validation.labels, minlength=10).tolist() == [3] * 10
    assert validation.images.shape == (30, 32, 32, 3)
    assert len(train_part) > 80  # The tails of train and extra plus the heads' other examples.


def test_eval_batches_cover_every_example_once():
    split = input_pipeline.Split(
        images=np.zeros((37, 4, 4, 1), np.uint8), labels=np.arange(37, dtype=np.int32)
    )
    batches = list(input_pipeline.eval_batches(split, global_batch_size=8, num_batches=5))
    assert [len(b["label"]) for b in batches] == [8] * 5
    seen = np.concatenate([b["label"][b["mask"] == 1] for b in batches])
    np.testing.assert_array_equal(np.sort(seen), np.arange(37))


def test_train_batches_are_a_function_of_seed_and_step():
    split = input_pipeline.Split(
        images=np.arange(40, dtype=np.uint8).reshape(40, 1, 1, 1),
        labels=np.arange(40, dtype=np.int32),
    )
    kwargs = dict(global_batch_size=8, seed=3)
    stream = input_pipeline.train_batches(split, **kwargs)
    first = [next(stream)["label"] for _ in range(12)]  # 5 steps per epoch: crosses epochs.
    later = input_pipeline.train_batches(split, start_step=7, **kwargs)
    for expected in first[7:]:
        np.testing.assert_array_equal(next(later)["label"], expected)
    np.testing.assert_array_equal(np.sort(np.concatenate(first[:5])), np.arange(40))


def test_any_tfds_image_classification_dataset_by_name(tmp_path):
    import tiny_datasets  # noqa: F401  (registers the builders)

    builder = input_pipeline.get_builder("tiny_shapes", str(tmp_path))
    split = input_pipeline.load_split(builder, "train", drop_remainder=False)
    assert split.images.shape == (576, 12, 12, 3) and split.images.dtype == np.uint8
    assert input_pipeline.num_classes(builder) == 4


@pytest.mark.parametrize(
    "name, fragment",
    [
        ("tiny_variable_size", "has images of varying size (None, None, 3)"),
        ("tiny_captions", "must hold an 'image' (tfds.features.Image) and a 'label'"),
        ("no_such_dataset", "unknown dataset 'no_such_dataset': TFDS has no builder"),
    ],
)
def test_datasets_nin_jax_cannot_read_are_one_line(name, fragment, tmp_path):
    import tiny_datasets  # noqa: F401

    with pytest.raises(input_pipeline.DatasetError) as error:
        input_pipeline.get_builder(name, str(tmp_path))
    assert fragment in str(error.value) and "\n" not in str(error.value)


@pytest.fixture
def no_waits(monkeypatch):
    monkeypatch.setattr(input_pipeline.retries.time, "sleep", lambda seconds: None)


def flaky_builder(monkeypatch, real, failures: int, error: Exception) -> list[str]:
    """tfds.builder failing ``failures`` times with ``error``, then giving ``real``."""
    calls = []

    def builder(name, data_dir=None, try_gcs=False):
        calls.append(data_dir)
        if len(calls) <= failures:
            raise error
        return real

    monkeypatch.setattr(input_pipeline.tfds, "builder", builder)
    return calls


def test_a_bucket_that_does_not_answer_is_not_a_damaged_dataset(digits, monkeypatch, no_waits):
    import tensorflow as tf

    unavailable = tf.errors.UnavailableError(None, None, "HTTP response code 503")
    calls = flaky_builder(monkeypatch, digits, 100, unavailable)
    with pytest.raises(input_pipeline.retries.StorageError) as raised:
        input_pipeline.find_builder("digits", "gs://b/tfds")
    assert str(raised.value).startswith("cannot read the prepared dataset 'digits' in gs://b/tfds")
    assert "is damaged" not in str(raised.value)
    assert len(calls) == input_pipeline.retries.TRIES


def test_a_parse_error_from_a_bucket_is_retried_before_it_is_damage(digits, monkeypatch, no_waits):
    from google.protobuf import json_format

    cut_short = json_format.ParseError("Failed to parse dataset_info.json: Unexpected end")
    calls = flaky_builder(monkeypatch, digits, 2, cut_short)  # A read cut short, twice.
    assert input_pipeline.find_builder("digits", "gs://b/tfds") is digits and len(calls) == 3
    calls = flaky_builder(monkeypatch, digits, 100, cut_short)  # Every read: the file itself.
    with pytest.raises(input_pipeline.FileDamagedError, match="'digits' in gs://b/tfds is dama"):
        input_pipeline.find_builder("digits", "gs://b/tfds")
    calls = flaky_builder(monkeypatch, digits, 100, cut_short)  # On a disk: at once.
    with pytest.raises(input_pipeline.FileDamagedError):
        input_pipeline.find_builder("digits", "/data/tfds")
    assert len(calls) == 1
