"""The original files of each dataset ``nin_jax.prepare`` knows, and what can be checked of them.

Each dataset's files are named as on the dataset's own site (the names at the
end of the URLs its TFDS builder downloads). When a file's bytes are not those
TFDS has checksums for (a recompressed gzip, such as Debian's
``dataset-fashion-mnist`` ships), the checks here still read what the file must
hold: the IDX header's magic number, dimensions and count, a decompressed size
that matches the header, a tarball's members and their sizes, a MATLAB file's
arrays, each against the split sizes TFDS records (``nin_jax.datasets.catalog``).
Each check returns the lines of what it verified; a file that fails one raises
``DatasetError`` naming it.

CIFAR's python tarballs (``cifar-10-python.tar.gz``, ``cifar-100-python.tar.gz``)
are read too: their batches are converted to the binary files that TFDS's
builder reads (one label byte, or coarse and fine for CIFAR-100, then the 3,072
bytes of the image, channel-major), which hold the same pixels in the same order.
"""

import dataclasses
import gzip
import hashlib
import os
import pickle
import struct
import tarfile
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np

from nin_jax.errors import DatasetError

_IDX_IMAGES, _IDX_LABELS = 0x00000803, 0x00000801  # uint8 data, 3 or 1 dimensions.
_CIFAR_RECORD = 3072  # Bytes of one 32x32x3 image.
_MAT_HEADER = b"MATLAB 5.0 MAT-file"


@dataclasses.dataclass(frozen=True)
class Original:
    """One original file: what the builder downloads it as, and how to check it."""

    name: str  # The file's name on the dataset's site (the URL's last part).
    # Reads the file, given the dataset's split sizes; returns the lines of what it verified.
    check: Callable[[Path, dict[str, int]], list[str]]
    # sha256 of the decompressed bytes where they are known (compression-independent).
    content_sha256: str | None = None


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _read_gzip(path: Path) -> bytes:
    try:
        with gzip.open(path, "rb") as f:
            return f.read()
    except (OSError, EOFError, zlib.error) as e:
        raise DatasetError(f"{path} is not a complete gzip file ({e})") from e


def _idx_check(kind: int, split: str, dims: tuple[int, ...], classes: int | None = None):
    """The check of an IDX file (gzipped) of ``split``'s items, each of shape ``dims``."""

    def check(path: Path, sizes: dict[str, int]) -> list[str]:
        count = sizes[split]
        data = _read_gzip(path)
        header_size = 4 + 4 * (1 + len(dims))
        if len(data) < header_size:
            raise DatasetError(f"{path} is too short for an IDX file ({len(data)} bytes)")
        magic, *sizes = struct.unpack(f">{1 + 1 + len(dims)}I", data[:header_size])
        what = "images" if kind == _IDX_IMAGES else "labels"
        if magic != kind:
            raise DatasetError(
                f"{path} is not an IDX file of {what} (magic number {magic:#010x}, "
                f"expected {kind:#010x})"
            )
        if tuple(sizes) != (count, *dims):
            raise DatasetError(
                f"{path} holds {what} of shape {tuple(sizes)}; this dataset's file has "
                f"{(count, *dims)}"
            )
        expected = header_size + count * int(np.prod(dims, dtype=np.int64))
        if len(data) != expected:
            raise DatasetError(
                f"{path} decompresses to {len(data)} bytes; its header says {expected}"
            )
        lines = [f"IDX header: {count} {what}" + (f" of {dims}" if dims else "")]
        lines.append(f"decompressed size {len(data)} bytes, as the header implies")
        if classes is not None:
            labels = np.frombuffer(data, np.uint8, offset=header_size)
            if labels.max() >= classes:
                raise DatasetError(
                    f"{path} holds label {labels.max()}; classes are 0-{classes - 1}"
                )
            lines.append(f"every label in 0-{classes - 1}")
        return lines

    return check


def _idx_files(content: dict[str, str] | None = None) -> tuple:
    content = content or {}
    shapes = {
        "train-images-idx3-ubyte.gz": _idx_check(_IDX_IMAGES, "train", (28, 28)),
        "train-labels-idx1-ubyte.gz": _idx_check(_IDX_LABELS, "train", (), classes=10),
        "t10k-images-idx3-ubyte.gz": _idx_check(_IDX_IMAGES, "test", (28, 28)),
        "t10k-labels-idx1-ubyte.gz": _idx_check(_IDX_LABELS, "test", (), classes=10),
    }
    return tuple(Original(name, check, content.get(name)) for name, check in shapes.items())


def _open_tar(path: Path) -> tarfile.TarFile:
    try:
        return tarfile.open(path, "r:*")
    except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
        raise DatasetError(f"{path} is not a complete tar archive ({e})") from e


def _tar_members(path: Path, expected: dict[str, int]) -> dict[str, bytes]:
    """The bytes of the tarball's members ``expected`` (name -> size, or -1: any size)."""
    found = {}
    with _open_tar(path) as tar:
        try:
            for member in tar:
                if member.name in expected and member.isfile():
                    found[member.name] = tar.extractfile(member).read()
        except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
            raise DatasetError(f"{path} is cut short or corrupt ({e})") from e
    missing = [name for name in expected if name not in found]
    if missing:
        raise DatasetError(f"{path} has no {missing[0]}; it is not this dataset's tarball")
    for name, size in expected.items():
        if size >= 0 and len(found[name]) != size:
            raise DatasetError(
                f"{path}: {name} has {len(found[name])} bytes; this dataset's has {size}"
            )
    return found


def _binary_tar_check(prefix: str, files: dict[str, tuple[str, int]], label_bytes: int):
    """The check of a CIFAR binary tarball: ``files`` under ``prefix``, each holding a
    ``1 / parts`` share of a split (name -> (split, parts))."""

    files_of = files

    def check(path: Path, sizes: dict[str, int]) -> list[str]:
        files = {name: sizes[split] // parts for name, (split, parts) in files_of.items()}
        record = label_bytes + _CIFAR_RECORD
        expected = {f"{prefix}/{name}": n * record for name, n in files.items()}
        _tar_members(path, expected)
        total = sum(files.values())
        return [f"tar members {', '.join(files)}: {total} records of {record} bytes"]

    return check


@dataclasses.dataclass(frozen=True)
class PythonTarball:
    """A CIFAR python tarball and how its pickles map onto the binary tarball's files."""

    prefix: str  # Directory inside the tarball.
    # pickle name -> (binary file name, split, parts): the file holds 1/parts of the split.
    batches: dict[str, tuple[str, str, int]]
    label_keys: tuple[bytes, ...]  # Per-record label fields, in the binary record's order.
    meta: str  # Pickle of the class names.
    names: dict[bytes, str]  # meta key -> the binary tarball's text file of names.
    binary_prefix: str  # Directory the builder reads the binary files from.


def _unpickle(data: bytes, where: str) -> dict:
    try:
        return pickle.loads(data, encoding="bytes")  # The user's own dataset file.
    except Exception as e:  # noqa: BLE001  (pickle raises many types on bad bytes)
        raise DatasetError(f"{where} is not a CIFAR python batch ({type(e).__name__})") from e


def _python_batches(path: Path, spec: PythonTarball) -> dict[str, dict]:
    expected = {f"{spec.prefix}/{name}": -1 for name in (*spec.batches, spec.meta)}
    members = _tar_members(path, expected)
    return {
        name.rsplit("/", 1)[1]: _unpickle(data, f"{path}: {name}") for name, data in members.items()
    }


def python_tar_check(spec: PythonTarball, path: Path, sizes: dict[str, int]) -> list[str]:
    """The check of a CIFAR python tarball (``spec``) at ``path``."""
    batches = _python_batches(path, spec)
    total = 0
    for name, (_, split, parts) in spec.batches.items():
        count = sizes[split] // parts
        batch = batches[name]
        data = np.asarray(batch.get(b"data"))
        if data.shape != (count, _CIFAR_RECORD) or any(
            len(batch.get(key, ())) != count for key in spec.label_keys
        ):
            raise DatasetError(
                f"{path}: {spec.prefix}/{name} does not hold {count} images of "
                f"{_CIFAR_RECORD} bytes with their labels"
            )
        total += count
    return [f"python batches {', '.join(spec.batches)}: {total} images of 32x32x3"]


def python_to_binary(path: Path, spec: PythonTarball, out_dir: Path) -> Path:
    """Writes the binary files TFDS's CIFAR builder reads from a python tarball's batches;
    returns the directory to give the builder in place of the extracted binary tarball."""
    batches = _python_batches(path, spec)
    target = out_dir / spec.binary_prefix
    target.mkdir(parents=True)
    for name, (binary_name, _, _) in spec.batches.items():
        batch = batches[name]
        labels = [np.asarray(batch[key], np.uint8)[:, None] for key in spec.label_keys]
        records = np.concatenate([*labels, np.asarray(batch[b"data"], np.uint8)], axis=1)
        (target / binary_name).write_bytes(records.tobytes())
    meta = batches[spec.meta]
    for key, text_name in spec.names.items():
        names = [n.decode() if isinstance(n, bytes) else str(n) for n in meta[key]]
        (target / text_name).write_text("\n".join(names) + "\n")
    return out_dir


def _mat_check(split: str):
    def check(path: Path, sizes: dict[str, int]) -> list[str]:
        count = sizes[split]
        with open(path, "rb") as f:
            header = f.read(len(_MAT_HEADER))
        if header != _MAT_HEADER:
            raise DatasetError(f"{path} is not a MATLAB 5.0 file (its header is {header[:19]!r})")
        from scipy import io as scipy_io

        try:
            data = scipy_io.loadmat(str(path), variable_names=("X", "y"))
        except Exception as e:  # noqa: BLE001  (scipy raises many types on a cut file)
            raise DatasetError(f"{path} cannot be read as a MATLAB file ({e})") from e
        images, labels = data.get("X"), data.get("y")
        if images is None or labels is None or images.shape != (32, 32, 3, count):
            shape = None if images is None else images.shape
            raise DatasetError(
                f"{path}: X has shape {shape}; this dataset's has (32, 32, 3, {count})"
            )
        if labels.shape != (count, 1) or labels.min() < 1 or labels.max() > 10:
            raise DatasetError(f"{path}: y is not {count} labels in 1-10")
        return [f"MATLAB header; X (32, 32, 3, {count}) and y ({count}, 1) with labels 1-10"]

    return check


_CIFAR10_BATCHES = {f"data_batch_{i}": (f"data_batch_{i}.bin", "train", 5) for i in range(1, 6)}
CIFAR_PYTHON = {
    "cifar10": PythonTarball(
        prefix="cifar-10-batches-py",
        batches={**_CIFAR10_BATCHES, "test_batch": ("test_batch.bin", "test", 1)},
        label_keys=(b"labels",),
        meta="batches.meta",
        names={b"label_names": "batches.meta.txt"},
        binary_prefix="cifar-10-batches-bin",
    ),
    "cifar100": PythonTarball(
        prefix="cifar-100-python",
        batches={"train": ("train.bin", "train", 1), "test": ("test.bin", "test", 1)},
        label_keys=(b"coarse_labels", b"fine_labels"),
        meta="meta",
        names={
            b"coarse_label_names": "coarse_label_names.txt",
            b"fine_label_names": "fine_label_names.txt",
        },
        binary_prefix="cifar-100-binary",
    ),
}
PYTHON_TARBALLS = {"cifar10": "cifar-10-python.tar.gz", "cifar100": "cifar-100-python.tar.gz"}

# The decompressed IDX files of Fashion-MNIST (measured on Debian's dataset-fashion-mnist,
# whose gzip bytes differ from the dataset's site while the files inside are the same).
_FASHION_MNIST_CONTENT = {
    "train-images-idx3-ubyte.gz": (
        "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888"
    ),
    "train-labels-idx1-ubyte.gz": (
        "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9"
    ),
    "t10k-images-idx3-ubyte.gz": (
        "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b"
    ),
    "t10k-labels-idx1-ubyte.gz": (
        "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34"
    ),
}

ORIGINALS: dict[str, tuple[Original, ...]] = {
    "mnist": _idx_files(),
    "fashion_mnist": _idx_files(_FASHION_MNIST_CONTENT),
    "cifar10": (
        Original(
            "cifar-10-binary.tar.gz",
            _binary_tar_check(
                "cifar-10-batches-bin",
                {
                    **{f"data_batch_{i}.bin": ("train", 5) for i in range(1, 6)},
                    "test_batch.bin": ("test", 1),
                },
                label_bytes=1,
            ),
        ),
    ),
    "cifar100": (
        Original(
            "cifar-100-binary.tar.gz",
            _binary_tar_check(
                "cifar-100-binary", {"train.bin": ("train", 1), "test.bin": ("test", 1)}, 2
            ),
        ),
    ),
    "svhn_cropped": (
        Original("train_32x32.mat", _mat_check("train")),
        Original("test_32x32.mat", _mat_check("test")),
        Original("extra_32x32.mat", _mat_check("extra")),
    ),
}


def content_sha256(path: Path) -> str:
    """sha256 of a file's decompressed bytes (gzip) or of its bytes."""
    if path.suffix == ".gz":
        return _sha256(_read_gzip(path))
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def file_sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def check_known(dataset: str) -> None:
    if dataset not in ORIGINALS:
        known = ", ".join(ORIGINALS)
        raise DatasetError(f"nin_jax.prepare knows the original files of {known}, not {dataset!r}")


def find(source: Path, dataset: str) -> dict[str, Path]:
    """The dataset's original files in ``source`` (a directory): builder file name -> path.

    For CIFAR, the binary tarball if present, else the python one (under the binary's name).
    """
    check_known(dataset)
    if not source.is_dir():
        raise DatasetError(f"--from={source}: no such directory")
    found = {}
    for original in ORIGINALS[dataset]:
        path = source / original.name
        python = PYTHON_TARBALLS.get(dataset)
        if not path.is_file() and python and (source / python).is_file():
            path = source / python
        if not path.is_file():
            alternative = f" (or {python})" if python else ""
            raise DatasetError(f"{path} is missing{alternative}: {dataset} needs it")
        if not os.access(path, os.R_OK):
            raise DatasetError(f"{path} is not readable")
        found[original.name] = path
    return found


def verify(dataset: str, name: str, path: Path, sizes: dict[str, int]) -> list[str]:
    """Checks ``path`` as the dataset's file ``name``, given the split sizes TFDS records;
    the lines of what was verified."""
    original = next(o for o in ORIGINALS[dataset] if o.name == name)
    if path.name == PYTHON_TARBALLS.get(dataset):
        return python_tar_check(CIFAR_PYTHON[dataset], path, sizes)
    lines = original.check(path, sizes)
    if original.content_sha256:
        if content_sha256(path) != original.content_sha256:
            raise DatasetError(
                f"{path} is not {dataset}'s {name}: its decompressed content differs from "
                "the dataset's (another dataset's file, or a modified one)"
            )
        lines.append("decompressed content equal to the dataset's (sha256)")
    return lines
