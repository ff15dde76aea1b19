"""Files smearlab writes and reads: atomic writes (every output appears whole or not at all),
local torch files, nested dicts flattened for tables."""
from __future__ import annotations

import contextlib
import json
import math
import os
import secrets
import stat
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np
import torch

from .errors import DataError


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds.

    Parameters
    ----------
    path : the final file path; its parent folder is created if needed.

    Yields
    ------
    Path
        the temporary file (same folder, same suffix) to write to; it is removed if the block
        raises. Its name holds at most 32 characters of the final name's stem (a name near the
        file system's limit still has room for it). Over an existing file it takes that file's
        permissions (else the usual ones the umask gives); a symbolic link is written through,
        to the file it points to.
    """
    path = Path(path)
    if path.is_symlink():  # the link stays a link: its target is replaced
        path = Path(os.path.realpath(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        tmp = path.parent / f".{path.stem[:32]}.tmp-{secrets.token_hex(4)}{path.suffix}"
        try:  # created as open() creates files (the umask applies; no umask change, which other threads see)
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            break
        except FileExistsError:
            continue
    try:
        yield tmp
        if path.is_file():  # a private file stays private; set after the write (a read-only one stays writable over)
            os.chmod(tmp, stat.S_IMODE(path.stat().st_mode))
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_text(path: str | Path, text: str) -> None:
    """Write text atomically.

    Parameters
    ----------
    path : the file to write (parent folders are created).
    text : its content, written as UTF-8.
    """
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: str | Path, obj: Any) -> None:
    """Write JSON atomically, indented, with numpy scalars converted and NaN or infinite numbers
    written as ``null`` (JSON has neither: R's jsonlite and JavaScript refused the file).

    Parameters
    ----------
    path : the file to write (parent folders are created).
    obj : a JSON-ready object; numpy scalars and arrays and ``Path`` objects are converted.
    """
    write_text(path, json_text(obj))


def json_text(obj: Any) -> str:
    """The text :func:`write_json` writes (TypeError for what JSON cannot hold, before any file is touched).

    Parameters
    ----------
    obj : a JSON-ready object; numpy scalars and arrays and ``Path`` objects are converted (dict
        keys too: ``{label: count}`` from ``np.unique`` crashed); NaN and infinities become
        ``null``.
    """
    return json.dumps(_plain_keys(obj), indent=2, default=_json_default, allow_nan=False) + "\n"


def same_json(a: Any, b: Any) -> bool:
    """Whether two values read back alike from the JSON :func:`write_json` writes: tuples as lists,
    keys in any order, NaN and infinities as null, other objects as their text.

    Parameters
    ----------
    a, b : the two values (e.g. a setting given now and the one a file recorded).
    """
    def text(v):
        return json.dumps(_plain_keys(json.loads(json.dumps(v, default=str))), sort_keys=True)
    return text(a) == text(b)


def _plain_keys(o):
    """``o`` with numpy-scalar and ``Path`` dict keys as Python ones (json refuses them as keys),
    numpy arrays and scalars as lists and numbers, and NaN or infinite numbers as None."""
    if isinstance(o, dict):
        return {(k.item() if isinstance(k, np.generic) else str(k) if isinstance(k, Path) else k): _plain_keys(v)
                for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_plain_keys(v) for v in o]
    if isinstance(o, np.ndarray):
        return _plain_keys(o.tolist())
    if isinstance(o, np.generic):
        o = o.item()
    if isinstance(o, float) and not math.isfinite(o):
        return None
    return o


def _json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def read_torch_file(path: str | Path, what: str) -> Any:
    """``torch.load`` of a local checkpoint (tensors and plain containers only).

    Raises :class:`~smearlab.core.errors.DataError` naming the file when it does not exist or
    cannot be read (``what`` names the kind of file in the message, e.g. "U-Net checkpoint").

    Parameters
    ----------
    path : the local file to read (loaded onto the CPU).
    what : the kind of file, for the error message (e.g. ``"model weights"``).

    Returns
    -------
    the loaded object.
    """

    p = Path(path)
    if not p.is_file():
        raise DataError(p, f"{what} does not exist")
    try:
        return torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file is the same user problem
        raise DataError(p, f"cannot read {what} (corrupt or not a torch file): {type(e).__name__}: {e}") from None


def flatten_dict(d: Mapping, prefix: str = "") -> dict[str, Any]:
    """Nested mappings as one level with dotted keys: ``{"a": {"b": 1}}`` -> ``{"a.b": 1}``.

    Parameters
    ----------
    d : the (nested) mapping.
    prefix : prepended to every key of the result (used for the recursion).

    Returns
    -------
    dict
        one level, non-mapping values under their dotted keys.
    """
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, Mapping):
            out.update(flatten_dict(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out
