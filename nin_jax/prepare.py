"""TFDS's prepared form of a dataset, made from its original files with no network.

  python -m nin_jax.prepare --dataset=fashion_mnist --from=/usr/share/datasets/fashion-mnist \
      --data_dir=~/tensorflow_datasets

``tfds build NAME`` downloads. This runs TFDS's own builder for NAME with every
download answered by the file of the same name in ``--from``, so what it writes
is what ``tfds build`` writes (name, version, features, split names and sizes,
example order) and TFDS and nin_jax read it as usual. Each file is first checked
against TFDS's recorded checksum; one that differs (a recompressed gzip, such as
Debian's ``dataset-fashion-mnist``) is checked by content instead
(``nin_jax.datasets.originals``), and the lines printed say what was verified
and what was not. The split sizes written are compared with TFDS's recorded
figures (``nin_jax.datasets.catalog``).

The builder writes into a local temporary directory; the finished dataset is
then copied into ``--data_dir`` (a ``gs://`` bucket works) with each
``dataset_info.json``, the file by which TFDS knows a dataset is prepared,
copied last. A failure anywhere removes what this run added, so the data dir is
left as it was: never a half-written dataset.
"""

import os
import tempfile
from pathlib import Path

import tensorflow as tf
import tensorflow_datasets as tfds
from absl import flags, logging
from etils import epath

from nin_jax import cli
from nin_jax.datasets import catalog, originals
from nin_jax.errors import DatasetError

FLAGS = flags.FLAGS
_INFO_FILE = "dataset_info.json"


class _OriginalFiles(tfds.download.DownloadManager):
    """TFDS's download manager with every download answered by a local file of that name."""

    def __init__(self, *, files: dict[str, Path], **kwargs) -> None:
        super().__init__(**kwargs)
        self._files = files

    def _download_or_get_cache(self, resource):
        import promise  # TFDS's own dependency, as its download manager uses it.

        url = getattr(resource, "url", resource)
        name = url.rsplit("/", 1)[-1]
        if name not in self._files:
            raise DatasetError(f"TFDS's builder asks for {url}, and --from has no {name}")
        return promise.Promise.resolve(epath.Path(self._files[name]))


def _url_infos(builder) -> dict[str, object]:
    """TFDS's recorded (size, sha256) of each file, by file name."""
    return {url.rsplit("/", 1)[-1]: info for url, info in (builder.url_infos or {}).items()}


def check_files(dataset: str, files: dict[str, Path], recorded: dict) -> list[str]:
    """What was and was not verified of each file; raises ``DatasetError`` on a bad one."""
    lines = []
    for name, path in files.items():
        info = recorded.get(name)
        if info is not None and path.name == name and path.stat().st_size == info.size:
            if originals.file_sha256(path) == info.checksum:
                lines.append(f"verified {path}: size and sha256 equal to TFDS's record")
                continue
        checks = originals.verify(dataset, name, path, catalog.DATASETS[dataset].split_sizes)
        lines += [f"verified {path}: {check}" for check in checks]
        why = "a converted python tarball" if path.name != name else "a recompressed or other copy"
        lines.append(f"not verified {path}: its bytes differ from TFDS's record ({why})")
    return lines


def _check_split_sizes(dataset: str, builder) -> list[str]:
    sizes = {str(name): split.num_examples for name, split in builder.info.splits.items()}
    described = catalog.DATASETS[dataset]
    if sizes != described.split_sizes:
        raise DatasetError(
            f"the files gave {dataset} splits of {sizes} examples; TFDS records "
            f"{described.split_sizes}"
        )
    return [f"verified examples per split {sizes}: equal to TFDS's recorded figures"]


def _build(dataset: str, files: dict[str, Path], work: Path):
    """TFDS's builder of ``dataset`` run in ``work`` on ``files``; the prepared builder."""
    builder = tfds.builder(dataset, data_dir=str(work / "data"))
    download_dir = work / "downloads"

    def make_download_manager(download_dir, download_config):
        return _OriginalFiles(
            files=files,
            download_dir=download_dir,
            extract_dir=work / "extracted",
            manual_dir=work / "manual",
            url_infos=builder.url_infos,
            dataset_name=builder.name,
        )

    builder._make_download_manager = make_download_manager  # noqa: SLF001  (the one hook)
    try:
        builder.download_and_prepare(download_dir=str(download_dir))
    except DatasetError:
        raise
    except (OSError, ValueError, KeyError, EOFError, tf.errors.OpError) as e:
        raise DatasetError(
            f"TFDS's {dataset} builder could not read the files ({type(e).__name__}: "
            f"{str(e).splitlines()[0][:200] if str(e) else ''})"
        ) from e
    return builder


def _copy_tree(source: Path, target: str, added: list[str]) -> None:
    """Copies ``source`` into ``target`` (any filesystem tf.io.gfile knows), each
    ``dataset_info.json`` last; every file and directory it creates goes into ``added``."""
    files = sorted(p for p in source.rglob("*") if p.is_file())
    files.sort(key=lambda p: p.name == _INFO_FILE)  # Stable: the info files go last.
    for path in files:
        destination = os.path.join(target, str(path.relative_to(source)))
        for directory in reversed(_missing_directories(os.path.dirname(destination))):
            tf.io.gfile.makedirs(directory)
            added.append(directory)
        if tf.io.gfile.exists(destination):
            continue  # Another config or version's shared file (.config/metadata.json).
        tf.io.gfile.copy(str(path), destination)
        added.append(destination)


def _missing_directories(path: str) -> list[str]:
    """``path`` and those of its parents that do not exist, deepest first."""
    missing = []
    while path != os.path.dirname(path) and not tf.io.gfile.exists(path):
        missing.append(path)
        path = os.path.dirname(path)
    return missing


def _remove(added: list[str]) -> None:
    for path in reversed(added):  # Files before their directories.
        try:
            if tf.io.gfile.isdir(path):
                tf.io.gfile.rmtree(path)
            else:
                tf.io.gfile.remove(path)
        except tf.errors.OpError as e:
            logging.warning("could not remove %s: %s", path, e)


def _check_writable(data_dir: str) -> None:
    probe = os.path.join(data_dir, f".nin_jax_prepare_probe_{os.getpid()}")
    added = list(reversed(_missing_directories(data_dir)))
    try:
        tf.io.gfile.makedirs(data_dir)
        with tf.io.gfile.GFile(probe, "w") as f:
            f.write("")
        tf.io.gfile.remove(probe)
    except (tf.errors.OpError, OSError) as e:
        _remove(added)
        raise DatasetError(f"cannot write to the data dir {data_dir} ({type(e).__name__})") from e
    _remove(added)  # The copy makes them again; a failure before it leaves nothing behind.


def prepare(dataset: str, source: Path, data_dir: str) -> list[str]:
    """Writes TFDS's prepared ``dataset`` into ``data_dir`` from the original files in
    ``source``; returns the lines of what was verified and written."""
    originals.check_known(dataset)
    existing = tfds.builder(dataset, data_dir=data_dir)
    if tf.io.gfile.exists(os.path.join(existing.data_dir, _INFO_FILE)):
        return [f"{dataset} {existing.version} is already prepared in {existing.data_dir}"]
    files = originals.find(source, dataset)
    _check_writable(data_dir)
    lines = check_files(dataset, files, _url_infos(existing))
    with tempfile.TemporaryDirectory(prefix="nin_jax_prepare_") as tmp:
        work = Path(tmp)
        if any(p.name != name for name, p in files.items()):  # CIFAR's python tarball.
            tarball = next(iter(files.values()))
            converted = originals.python_to_binary(
                tarball, originals.CIFAR_PYTHON[dataset], work / "converted"
            )
            files = {name: converted for name in files}
        builder = _build(dataset, files, work)
        lines += _check_split_sizes(dataset, builder)
        added: list[str] = []
        try:
            _copy_tree(work / "data", data_dir, added)
        except BaseException:
            _remove(added)
            raise
    sizes = ", ".join(f"{name} {s.num_examples}" for name, s in builder.info.splits.items())
    lines.append(f"prepared {builder.info.full_name} in {data_dir} ({sizes} examples)")
    return lines


def define_flags() -> None:
    flags.DEFINE_string("dataset", None, f"One of: {', '.join(originals.ORIGINALS)}.")
    flags.DEFINE_string("from", None, "Directory holding the dataset's original files.")
    flags.DEFINE_string(
        "data_dir", None, "TFDS data dir to write into (default: TFDS's, ~/tensorflow_datasets)."
    )
    flags.mark_flags_as_required(["dataset", "from"])


def main(argv: list[str]) -> None:
    del argv
    data_dir = FLAGS.data_dir or os.path.expanduser("~/tensorflow_datasets")
    if not data_dir.startswith("gs://"):
        data_dir = os.path.abspath(os.path.expanduser(data_dir))
    source = Path(os.path.expanduser(FLAGS["from"].value))
    for line in prepare(FLAGS.dataset, source, data_dir):
        print(line, flush=True)


if __name__ == "__main__":
    define_flags()
    cli.run(main, quiet=True)
