"""A model's parameters in one ``.npz`` file, without a workdir (library use).

``save(path, params)`` writes every leaf of the nested parameter dict (``{'mlpconv1':
{'conv': {'kernel': ..., 'bias': ...}, ...}, ...}``, as ``NIN.init(...)['params']``
returns it, stacked on a leading model axis or not) as one array named by its path,
``mlpconv1/conv/kernel``; ``load(path)`` gives the same nested dict of numpy arrays
back. The file is a plain numpy archive: no pickle, readable without nin_jax
(``np.load(path)``). A workdir's checkpoints are Orbax's (``nin_jax.checkpointing``);
this is for the parameters a notebook or script makes and wants to keep.
"""

import io
from collections.abc import Mapping
from typing import Any

import numpy as np

from nin_jax import storage
from nin_jax.errors import FileDamagedError, WorkdirError

SEPARATOR = "/"
_REMEDY = "save the parameters again (nin_jax.params_io.save)"


def flatten(params: Mapping[str, Any], prefix: str = "") -> dict[str, np.ndarray]:
    """``{'a/b/kernel': array}`` from a nested mapping of arrays (``jax.Array`` or numpy)."""
    flat = {}
    for key, value in params.items():
        if SEPARATOR in key:
            raise ValueError(f"parameter name {key!r} holds {SEPARATOR!r}")
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, name + SEPARATOR))
        else:
            flat[name] = np.asarray(value)
    return flat


def unflatten(flat: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """The nested dict of ``flatten``'s output."""
    nested: dict[str, Any] = {}
    for name, array in flat.items():
        *parents, leaf = name.split(SEPARATOR)
        node = nested
        for parent in parents:
            node = node.setdefault(parent, {})
        node[leaf] = array
    return nested


def save(path: str, params: Mapping[str, Any]) -> None:
    """Writes ``params`` (a nested dict of arrays) to ``path`` (local or ``gs://``), atomically."""
    buffer = io.BytesIO()
    np.savez(buffer, **flatten(params))
    storage.write_bytes(path, buffer.getvalue())


def read_input(path: str, label: str | None = None) -> bytes:
    """The bytes of a file the user named (``label``: how, e.g. ``--from_torch=PATH``); a
    missing or unreadable one is a one-line ``WorkdirError``."""
    try:
        return storage.read_bytes(path)
    except FileNotFoundError:
        raise WorkdirError(f"{label or path}: no such file") from None
    except OSError as e:
        raise WorkdirError(f"cannot read {path}: {e.strerror or e}") from None


def load(path: str) -> dict[str, Any]:
    """The nested dict of numpy arrays ``save`` wrote to ``path``.

    A missing file is a ``WorkdirError``, a damaged one a ``FileDamagedError`` (one line).
    """
    data = read_input(path)
    if not data.startswith(b"PK"):  # np.load would try it as a pickle or a .npy file.
        raise FileDamagedError(f"{path} is damaged (not a .npz file); {_REMEDY}")
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            flat = {name: npz[name] for name in npz.files}
    except Exception as e:  # zipfile, zlib and numpy raise many types for damaged bytes.
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise FileDamagedError(f"{path} is damaged ({reason}); {_REMEDY}") from None
    if not flat:
        raise FileDamagedError(f"{path} is damaged (it holds no arrays); {_REMEDY}")
    return unflatten(flat)
