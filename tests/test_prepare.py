"""nin_jax.prepare: TFDS's prepared datasets from original files the tests write, no network.

Each format (MNIST's IDX, CIFAR's binary and python tarballs, SVHN's MATLAB
files) is written with a few dozen images of known pixels; the prepared dataset
must hold exactly those images and labels, with TFDS's own features, version
and split names. The split sizes are made small for it (tests/scripts/prepare_small.py).
"""

import gzip
import io
import pickle
import struct
import tarfile
from pathlib import Path

import helpers
import numpy as np
import pytest
import tensorflow_datasets as tfds
from helpers import assert_one_line_error, run_cli

from nin_jax import prepare
from nin_jax.datasets import catalog, originals
from nin_jax.errors import DatasetError

SCRIPT = "tests.scripts.prepare_small"
FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")  # Debian's dataset-fashion-mnist.


@pytest.fixture(autouse=True)
def small_splits(monkeypatch) -> dict[str, int]:
    """Every dataset's splits at prepare_small.SMALL's sizes, for this test only."""
    from scripts import prepare_small
    from tensorflow_datasets.image_classification import mnist as tfds_mnist

    monkeypatch.setattr(catalog, "DATASETS", dict(catalog.DATASETS))
    monkeypatch.setattr(originals, "ORIGINALS", dict(originals.ORIGINALS))
    for name in ("_TRAIN_EXAMPLES", "_TEST_EXAMPLES"):
        monkeypatch.setattr(tfds_mnist, name, getattr(tfds_mnist, name))
    prepare_small.use_small_splits()
    return prepare_small.SMALL


def images_of(count: int, shape: tuple[int, ...], seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (count, *shape), dtype=np.uint8)


def labels_of(count: int, classes: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed + 1).integers(0, classes, count).astype(np.uint8)


def write_gz(path: Path, data: bytes) -> None:
    path.write_bytes(gzip.compress(data))


def write_mnist(directory: Path, sizes: dict[str, int]) -> dict[str, tuple]:
    """The four IDX files; returns each split's (images HWC, labels)."""
    directory.mkdir(parents=True, exist_ok=True)
    written = {}
    for split, prefix in (("train", "train"), ("test", "t10k")):
        count = sizes[split]
        images, labels = images_of(count, (28, 28), len(split)), labels_of(count, 10, len(split))
        write_gz(
            directory / f"{prefix}-images-idx3-ubyte.gz",
            struct.pack(">4I", 0x803, count, 28, 28) + images.tobytes(),
        )
        write_gz(
            directory / f"{prefix}-labels-idx1-ubyte.gz",
            struct.pack(">2I", 0x801, count) + labels.tobytes(),
        )
        written[split] = (images[..., None], labels)
    return written


def add_to_tar(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def cifar_arrays(count: int, classes: int, seed: int):
    chw = images_of(count, (3, 32, 32), seed)
    return chw, labels_of(count, classes, seed), labels_of(count, 20, seed + 7)


def write_cifar(directory: Path, dataset: str, sizes: dict, python: bool) -> dict[str, tuple]:
    """CIFAR-10 or -100's binary or python tarball; returns each split's (images, labels)."""
    directory.mkdir(parents=True, exist_ok=True)
    classes = 10 if dataset == "cifar10" else 100
    splits = {"train": cifar_arrays(sizes["train"], classes, 1)}
    splits["test"] = cifar_arrays(sizes["test"], classes, 2)
    if dataset == "cifar10":
        parts = {f"data_batch_{i}": ("train", i - 1, 5) for i in range(1, 6)}
        parts["test_batch"] = ("test", 0, 1)
    else:
        parts = {"train": ("train", 0, 1), "test": ("test", 0, 1)}
    spec = originals.CIFAR_PYTHON[dataset]
    name = originals.PYTHON_TARBALLS[dataset] if python else originals.ORIGINALS[dataset][0].name
    with tarfile.open(directory / name, "w:gz") as tar:
        for part, (split, index, count) in parts.items():
            chw, fine, coarse = splits[split]
            share = len(fine) // count
            rows = slice(index * share, (index + 1) * share)
            flat = chw[rows].reshape(share, -1)
            if python:
                batch = {b"data": flat}
                if dataset == "cifar10":
                    batch[b"labels"] = fine[rows].tolist()
                else:
                    batch[b"fine_labels"], batch[b"coarse_labels"] = (
                        fine[rows].tolist(),
                        coarse[rows].tolist(),
                    )
                add_to_tar(tar, f"{spec.prefix}/{part}", pickle.dumps(batch))
            else:
                labels = [fine[rows, None]]
                if dataset == "cifar100":
                    labels.insert(0, coarse[rows, None])
                record = np.concatenate([*labels, flat], axis=1)
                add_to_tar(tar, f"{spec.binary_prefix}/{part}.bin", record.tobytes())
        names = {
            key: [f"super_{i}" for i in range(20)]
            if b"coarse" in key
            else [f"class_{i}" for i in range(classes)]
            for key in spec.names
        }
        if python:
            meta = {key: [n.encode() for n in value] for key, value in names.items()}
            add_to_tar(tar, f"{spec.prefix}/{spec.meta}", pickle.dumps(meta))
        else:
            for key, text_name in spec.names.items():
                text = ("\n".join(names[key]) + "\n").encode()
                add_to_tar(tar, f"{spec.binary_prefix}/{text_name}", text)
    return {s: (chw.transpose(0, 2, 3, 1), fine) for s, (chw, fine, _) in splits.items()}


def write_svhn(directory: Path, sizes: dict) -> dict[str, tuple]:
    from scipy import io as scipy_io

    directory.mkdir(parents=True, exist_ok=True)
    written = {}
    for seed, split in enumerate(("train", "test", "extra")):
        images = images_of(sizes[split], (32, 32, 3), seed)
        labels = labels_of(sizes[split], 10, seed) + 1  # SVHN's labels are 1-10 (10 is "0").
        scipy_io.savemat(
            directory / f"{split}_32x32.mat",
            {"X": images.transpose(1, 2, 3, 0), "y": labels[:, None]},
        )
        written[split] = (images, labels % 10)
    return written


def read_prepared(dataset: str, data_dir: Path) -> dict[str, tuple]:
    builder = tfds.builder(dataset, data_dir=str(data_dir))
    out = {}
    for split in builder.info.splits:
        examples = list(tfds.as_numpy(builder.as_dataset(split=split)))
        out[split] = (
            np.stack([e["image"] for e in examples]),
            np.array([e["label"] for e in examples]),
        )
    return out


def by_image(images: np.ndarray, labels: np.ndarray) -> list:
    return sorted(zip((i.tobytes() for i in images), labels.tolist(), strict=True))


def assert_prepared_equal(dataset: str, data_dir: Path, written: dict) -> None:
    prepared = read_prepared(dataset, data_dir)
    assert set(prepared) == set(written)
    for split, (images, labels) in written.items():
        assert by_image(*prepared[split]) == by_image(images, labels.astype(np.int64)), split
    info = tfds.builder(dataset, data_dir=str(data_dir)).info
    reference = tfds.builder(dataset, data_dir=str(data_dir / "unprepared")).info
    assert info.version == reference.version and info.full_name == reference.full_name
    assert repr(info.features) == repr(reference.features)


def tree(path: Path) -> str:
    return helpers.tree_hash(path) if path.exists() else "absent"


WRITERS = {
    "mnist": lambda d, s: write_mnist(d, s),
    "fashion_mnist": lambda d, s: write_mnist(d, s),
    "cifar10": lambda d, s: write_cifar(d, "cifar10", s, python=False),
    "cifar10 python": lambda d, s: write_cifar(d, "cifar10", s, python=True),
    "cifar100": lambda d, s: write_cifar(d, "cifar100", s, python=False),
    "cifar100 python": lambda d, s: write_cifar(d, "cifar100", s, python=True),
    "svhn_cropped": lambda d, s: write_svhn(d, s),
}


@pytest.mark.parametrize("form", WRITERS)
def test_each_format_gives_the_images_written(form, tmp_path, small_splits):
    dataset = form.split()[0]
    written = WRITERS[form](tmp_path / "originals", small_splits)
    lines = prepare.prepare(dataset, tmp_path / "originals", str(tmp_path / "tfds"))
    assert_prepared_equal(dataset, tmp_path / "tfds", written)
    assert lines[-1].startswith(f"prepared {dataset}/")
    assert any("not verified" in line and "differ from TFDS's record" in line for line in lines)
    assert any("verified examples per split" in line for line in lines)
    assert not [p for p in (tmp_path / "tfds").rglob("*") if "incomplete" in p.name]


def test_files_matching_tfds_checksums_say_so(tmp_path, small_splits, monkeypatch):
    write_mnist(tmp_path / "originals", small_splits)
    recorded = {
        p.name: tfds.download.checksums.UrlInfo(
            size=p.stat().st_size, checksum=originals.file_sha256(p), filename=p.name
        )
        for p in (tmp_path / "originals").iterdir()
    }
    monkeypatch.setattr(prepare, "_url_infos", lambda builder: recorded)
    lines = prepare.prepare("mnist", tmp_path / "originals", str(tmp_path / "tfds"))
    assert sum("size and sha256 equal to TFDS's record" in line for line in lines) == 4
    assert not any(line.startswith("not verified") for line in lines)


def test_a_second_prepare_changes_nothing(tmp_path, small_splits):
    write_mnist(tmp_path / "originals", small_splits)
    prepare.prepare("mnist", tmp_path / "originals", str(tmp_path / "tfds"))
    before = tree(tmp_path / "tfds")
    lines = prepare.prepare("mnist", tmp_path / "originals", str(tmp_path / "tfds"))
    assert lines == [f"mnist 3.0.1 is already prepared in {tmp_path / 'tfds' / 'mnist' / '3.0.1'}"]
    assert tree(tmp_path / "tfds") == before


def cut(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def swap(path: Path, other: Path) -> None:
    path.write_bytes(other.read_bytes())


BAD = {
    "missing": (
        "mnist",
        lambda d: (d / "t10k-labels-idx1-ubyte.gz").unlink(),
        "t10k-labels-idx1-ubyte.gz is missing",
    ),
    "truncated gzip": (
        "mnist",
        lambda d: cut(d / "train-images-idx3-ubyte.gz"),
        "train-images-idx3-ubyte.gz is not a complete gzip file",
    ),
    "labels for images": (
        "mnist",
        lambda d: swap(d / "train-images-idx3-ubyte.gz", d / "train-labels-idx1-ubyte.gz"),
        "train-images-idx3-ubyte.gz is not an IDX file of images",
    ),
    "another dataset's tarball": (
        "cifar100",
        lambda d: swap(d / "cifar-100-binary.tar.gz", d / "cifar-10-binary.tar.gz"),
        "cifar-100-binary.tar.gz has no cifar-100-binary/train.bin",
    ),
    "truncated tarball": (
        "cifar10",
        lambda d: cut(d / "cifar-10-binary.tar.gz"),
        "cifar-10-binary.tar.gz is cut short or corrupt",
    ),
    "a tarball for a MATLAB file": (
        "svhn_cropped",
        lambda d: swap(d / "test_32x32.mat", d / "cifar-10-binary.tar.gz"),
        "test_32x32.mat is not a MATLAB 5.0 file",
    ),
}


@pytest.fixture
def all_originals(tmp_path, small_splits) -> Path:
    directory = tmp_path / "originals"
    write_mnist(directory, small_splits)
    write_cifar(directory, "cifar10", small_splits, python=False)
    write_cifar(directory, "cifar100", small_splits, python=False)
    write_svhn(directory, small_splits)
    return directory


@pytest.mark.parametrize("case", BAD)
def test_bad_input_names_the_file_and_leaves_the_data_dir(case, tmp_path, all_originals):
    dataset, spoil, fragment = BAD[case]
    spoil(all_originals)
    data_dir = tmp_path / "tfds"
    data_dir.mkdir()
    (data_dir / "other.txt").write_text("kept")
    before = tree(data_dir)
    with pytest.raises(DatasetError) as error:
        prepare.prepare(dataset, all_originals, str(data_dir))
    assert fragment in str(error.value) and "\n" not in str(error.value)
    assert tree(data_dir) == before


def test_an_unwritable_data_dir_is_one_line(tmp_path, all_originals):
    (tmp_path / "a_file").write_text("")
    with pytest.raises(DatasetError, match="cannot write to the data dir .*a_file/tfds"):
        prepare.prepare("mnist", all_originals, str(tmp_path / "a_file" / "tfds"))


def test_a_failed_copy_leaves_the_data_dir_as_it_was(tmp_path, all_originals, monkeypatch):
    import tensorflow as tf

    copy, calls = tf.io.gfile.copy, []

    def failing_copy(source, destination, overwrite=False):
        calls.append(destination)
        if len(calls) == 3:
            raise tf.errors.UnavailableError(None, None, "the disk went away")
        copy(source, destination, overwrite)

    monkeypatch.setattr(tf.io.gfile, "copy", failing_copy)
    data_dir = tmp_path / "tfds"
    data_dir.mkdir()
    with pytest.raises(tf.errors.UnavailableError):
        prepare.prepare("mnist", all_originals, str(data_dir))
    assert len(calls) == 3 and list(data_dir.iterdir()) == []


def test_bad_input_on_the_command_line_is_one_line(all_originals, tmp_path):
    (all_originals / "test_32x32.mat").unlink()
    bad = run_cli(
        SCRIPT, "--dataset=svhn_cropped", f"--from={all_originals}", f"--data_dir={tmp_path}/d"
    )
    assert_one_line_error(bad, f"{all_originals / 'test_32x32.mat'} is missing")
    assert not (tmp_path / "d").exists()


def test_an_unknown_dataset_names_those_known(tmp_path):
    with pytest.raises(DatasetError, match="knows the original files of mnist, fashion_mnist"):
        prepare.prepare("imagenet2012", tmp_path, str(tmp_path / "tfds"))


@pytest.mark.slow
@pytest.mark.skipif(not FASHION_MNIST.is_dir(), reason="apt-get install dataset-fashion-mnist")
def test_debian_fashion_mnist_into_a_bucket(gcs, tmp_path):
    """The real 70,000 images, recompressed by Debian: content verified, written into gs://."""
    result = helpers.run_cli(
        "nin_jax.prepare", "--dataset=fashion_mnist", f"--from={FASHION_MNIST}",
        f"--data_dir={gcs.url('prepared')}", env=gcs.env(), prefix=gcs.command([]), timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("decompressed content equal to the dataset's (sha256)") == 4
    assert "verified examples per split {'train': 60000, 'test': 10000}" in result.stdout
    names = gcs.names("prepared/fashion_mnist/3.0.1/")
    assert any(n.endswith("dataset_info.json") for n in names)
    assert any("fashion_mnist-train.tfrecord" in n for n in names)


def test_the_fashion_mnist_standin_is_its_images_at_32x32x3(tmp_path, small_splits):
    from nin_jax import input_pipeline
    from nin_jax.datasets import standins

    written = write_mnist(tmp_path / "originals", small_splits)
    prepare.prepare("fashion_mnist", tmp_path / "originals", str(tmp_path / "tfds"))
    builder = input_pipeline.get_builder("fashion_mnist_standins/32x32x3", str(tmp_path / "tfds"))
    assert builder.info.features["label"].names[0] == "T-shirt/top"
    images, labels = written["test"]
    expected = standins.to_uint8(standins.resize(images[..., 0] / 255.0, 32, 32), 3)
    split = input_pipeline.load_split(builder, "test", drop_remainder=False, process_count=1)
    assert by_image(split.images, split.labels.astype(np.int64)) == by_image(
        expected, labels.astype(np.int64)
    )
