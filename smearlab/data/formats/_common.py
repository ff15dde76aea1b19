"""Helpers shared by the format modules, so that each of those holds only its format.

* box formats (``voc``, ``bbbc041``, ``iml``, ``yolo``): :class:`BoxCollector`, :func:`number`,
  :func:`positive_int`;
* JSON formats (``bbbc041``, ``iml``, ``coco``): :func:`read_json`, :func:`find_json`,
  :func:`dig`, and for the list-of-images schemas :func:`entry_image` and :func:`entry_objects`;
* paths written in annotation files: :func:`path_name_problem`, :func:`is_absolute_name`,
  :func:`resolve_inside` (nothing may lead outside the dataset root);
* mask formats (``dsb2018``, ``zheng``): :func:`check_mask_size`;
* writers (``voc``, ``yolo``): :func:`save_samples`, :func:`file_stems`, :func:`save_image_file`.
"""
from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Callable

import numpy as np

from ...io import atomic_path, write_text
from ..boxes import clean_boxes
from ..errors import DataError
from ..imageio import write_image
from ..sample import Sample, SkipLog, SmearDataset
from . import json_kind


# -- collecting the samples of a box format -------------------------------------------------------
class BoxCollector:
    """Gathers the samples of one load: class filter, box cleaning, skips and repairs.

    Parameters
    ----------
    class_names : classes to keep, in this order; objects of other classes are skipped as
        ``unknown class``. None keeps every class met, sorted by name (so that every split of a
        dataset gets the same class indices).
    strict : raise :class:`DataError` at the first problem instead of counting a skip (within
        one image, problems with an object's fields come before problems with its box geometry).
        Repairs (boxes clipped to the image) are still only counted in ``fixed``.
    """

    def __init__(self, class_names=None, strict: bool = False):
        self.class_names = None if class_names is None else list(class_names)
        self.skipped = SkipLog(strict=strict)
        self.fixed = SkipLog(kind="fixed")
        self._seen: set[str] = set()
        self._ids: set[str] = set()
        self._pending: list[tuple] = []

    def skip(self, path, reason: str, record: str | None = None) -> None:
        """Count a refused record (raise under ``strict``)."""
        self.skipped.add(path, reason, record)

    def known(self, name: str, path, record: str) -> bool:
        """Whether objects of class ``name`` are kept; an unknown class is counted as a skip."""
        if self.class_names is None:
            self._seen.add(name)
            return True
        if name in self.class_names:
            return True
        self.skip(path, f"unknown class: {name!r} (known: {', '.join(self.class_names)})", record)
        return False

    def add(self, image_id: str, image_path: Path | None, source, objects, *,
            size: tuple[int, int] | None = None, flags: dict | None = None,
            record: str | None = None) -> None:
        """Add one image.

        Parameters
        ----------
        image_id : unique name of the image; a repeated id is skipped.
        image_path : the image file (read lazily), or None.
        source : the annotation file, for the report.
        objects : list of ``(xyxy, class_name, record)`` whose fields are already checked.
        size : ``(height, width)`` when known: boxes are then clipped or dropped by
            :func:`~smearlab.data.boxes.clean_boxes`.
        flags : per-object lists (aligned with ``objects``) kept in ``Sample.meta`` after cleaning.
        record : the image's record in ``source`` (e.g. ``"entry 3"``), for the report.
        """
        if image_id in self._ids:
            self.skip(source, f"duplicate image: {image_id!r} (first one kept)", record)
            return
        self._ids.add(image_id)
        boxes, _, idx = clean_boxes([o[0] for o in objects], np.arange(len(objects)), size, source,
                                    self.skipped, self.fixed, records=[o[2] for o in objects])
        meta = {k: np.asarray(v, dtype=bool).reshape(-1)[idx] for k, v in (flags or {}).items()}
        names = [objects[i][1] for i in idx]
        self._pending.append((image_id, image_path, boxes, names, size, meta))

    def dataset(self, name: str, root, fmt: str) -> SmearDataset:
        """The collected images as a :class:`SmearDataset` carrying the skip and repair logs."""
        classes = self.class_names if self.class_names is not None else sorted(self._seen)
        index = {n: i for i, n in enumerate(classes)}
        samples = [Sample(image_id=i, path=p, boxes=b, labels=[index[n] for n in names], size=s, meta=m)
                   for i, p, b, names, s, m in self._pending]
        return SmearDataset(samples, classes, name, root=root, format=fmt,
                            skipped=list(self.skipped), fixed=list(self.fixed))


def number(value) -> float | None:
    """``value`` as a float (numbers or numeric strings), None when it is missing or not numeric.

    An integer too large for a float becomes ``inf`` (so that box checks report it as
    non-finite) rather than raising ``OverflowError``.
    """
    if isinstance(value, bool) or value is None:
        return None
    try:
        return float(value)
    except OverflowError:
        return math.inf if value > 0 else -math.inf
    except (TypeError, ValueError):
        return None


def positive_int(value) -> int | None:
    """``value`` (number or numeric string) as a positive int, None when it is not a finite
    number of at least 1 (sizes such as VOC ``<width>`` or BBBC041 ``shape.r``)."""
    v = number(value)
    if v is None or not math.isfinite(v) or v < 1:
        return None
    return int(v)


# -- JSON annotation files ------------------------------------------------------------------------
def read_json(path: Path, expect: type, *, empty: str = "empty annotation file"):
    """The parsed top level of a JSON annotation file, which must be an ``expect`` (list or dict).

    ``empty`` is the problem reported for a file holding only white space.

    Raises
    ------
    DataError
        naming the file when it cannot be read, is empty, is not valid JSON or its top level is
        not an ``expect``.
    """
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(path, f"cannot read the file: {e}") from None
    if not text.strip():
        raise DataError(path, empty)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(path, f"malformed JSON at line {e.lineno} column {e.colno}: {e.msg}") from None
    except RecursionError:
        raise DataError(path, "JSON nested too deeply to be annotations") from None
    if not isinstance(data, expect):
        kind = "list" if expect is list else "object"
        raise DataError(path, f"expected a JSON {kind} at the top level, got {type(data).__name__}")
    return data


def find_json(path: Path, kind: str) -> Path:
    """``path`` itself, or the single JSON file of format ``kind`` in the folder ``path``.

    Raises
    ------
    DataError
        when ``path`` does not exist, or the folder holds no or several ``kind`` JSON files.
    """
    if path.is_file():
        return path
    if not path.is_dir():
        raise DataError(path, "path does not exist")
    found = [p for p in sorted(path.glob("*.json")) if json_kind(p) == kind]
    if len(found) != 1:
        raise DataError(path, f"expected one {kind} JSON file in this folder, found "
                              f"{len(found)}{': ' + ', '.join(p.name for p in found) if found else ''}; "
                              "pass the file")
    return found[0]


def resolve_inside(root: Path, name: str, *, leading_slash: bool = True) -> Path | None:
    """``root/name`` resolved (symlinks included), or None when it lies outside ``root``.

    With ``leading_slash`` a leading ``/`` means ``root`` (as BBBC041 writes
    ``/images/x.png``), so only ``..`` components or links can leave it; without it an
    absolute ``name`` (``/etc/passwd``, ``C:\\x``) is outside. ``name`` must have passed
    :func:`path_name_problem`.
    """
    if leading_slash:
        name = name.lstrip("/\\")
    elif is_absolute_name(name):
        return None
    try:
        base = root.resolve()
        target = (base / name).resolve()
    except (OSError, RuntimeError):  # a link loop (RuntimeError before Python 3.13)
        return None
    return target if target.is_relative_to(base) else None


def is_absolute_name(name: str) -> bool:
    """Whether a path written in an annotation file is absolute, in POSIX or Windows form
    (``/x``, ``\\x``, ``C:\\x``, ``C:x``, ``\\\\server\\share``)."""
    return PurePosixPath(name).is_absolute() or name.startswith("\\") \
        or bool(PureWindowsPath(name).drive)


def path_name_problem(name) -> str | None:
    """Why ``name`` cannot be a file name from an annotation file, or None when it can.

    Refused: non-strings, empty names, NUL bytes and characters the file system encoding
    cannot represent (lone surrogates from ``\\udXXX`` JSON escapes).
    """
    if not isinstance(name, str) or not name.strip():
        return "missing or empty"
    if "\0" in name:
        return "contains a NUL byte"
    try:
        os.fsencode(name)
    except UnicodeError:
        return "holds characters that cannot be a file name"
    return None


def dig(obj, *keys):
    """``obj[k0][k1]...`` through nested dicts, or None when a level is missing or not a dict."""
    for k in keys:
        if not isinstance(obj, dict) or k not in obj:
            return None
        obj = obj[k]
    return obj


def entry_image(col: BoxCollector, json_path: Path, root: Path, name, field: str, rec: str, *,
                leading_slash: bool = True) -> Path | None:
    """The image file named ``name`` (the entry's ``field``) inside ``root``.

    Returns None after counting a skip when ``name`` is not a non-empty string, is not a
    possible file name (NUL byte, unencodable character), is absolute (unless
    ``leading_slash``: then a leading ``/`` means ``root``, see :func:`resolve_inside`) or
    leads outside ``root`` through ``..`` or a link (refused). Whether the file exists is
    left to the caller.
    """
    problem = path_name_problem(name)
    if problem == "missing or empty":
        col.skip(json_path, f"entry without {field}", rec)
        return None
    if problem is not None:
        col.skip(json_path, f"invalid {field} {name!r}: {problem}", rec)
        return None
    if not leading_slash and is_absolute_name(name):
        col.skip(json_path, f"absolute {field} refused (must be relative to {root}): {name!r}", rec)
        return None
    image = resolve_inside(root, name, leading_slash=leading_slash)
    if image is None:
        col.skip(json_path, f"image path escapes the image root {root}: {name!r} (refused)", rec)
    return image


def entry_objects(col: BoxCollector, json_path: Path, entry, rec: str, parse: Callable) -> list | None:
    """The parsed ``objects`` list of one entry, or None after counting a skip when it has none.

    ``parse(col, json_path, obj, record)`` returns ``(xyxy, class_name, record)`` or None after
    counting a skip; objects are named ``"<rec> object M"`` (0-based).
    """
    objects = dig(entry, "objects")
    if not isinstance(objects, list):
        col.skip(json_path, "entry without an objects list", rec)
        return None
    parsed = [parse(col, json_path, obj, f"{rec} object {j}") for j, obj in enumerate(objects)]
    return [p for p in parsed if p is not None]


# -- masks ----------------------------------------------------------------------------------------
def check_mask_size(path: Path, mask: np.ndarray, hw: tuple[int, int]) -> None:
    """Raise :class:`DataError` naming ``path`` when ``mask`` is not of the image size ``hw``."""
    if mask.shape != hw:
        raise DataError(path, f"mask size {mask.shape[1]}x{mask.shape[0]} differs from the image size "
                              f"{hw[1]}x{hw[0]}")


# -- writing --------------------------------------------------------------------------------------
def save_samples(dataset: SmearDataset, image_dir: Path, annotation_dir: Path, suffix: str,
                 annotation: Callable[[Sample, Path], str]) -> None:
    """Write each sample's image into ``image_dir`` and its annotation file into ``annotation_dir``.

    Files are named by :func:`file_stems` (checked for clashes before anything is written); the
    annotation of a sample is ``annotation(sample, image_file)`` written as ``<stem><suffix>``.
    Every file is written atomically, the image first.
    """
    for sample, stem in zip(dataset, file_stems(dataset)):
        image = save_image_file(sample, image_dir, stem)
        write_text(annotation_dir / f"{stem}{suffix}", annotation(sample, image))


def file_stems(dataset: SmearDataset) -> list[str]:
    """One file name stem per sample (its id, path separators replaced), refusing duplicates."""
    stems = [s.image_id.replace("/", "_").replace("\\", "_") for s in dataset]
    if len(set(stems)) != len(stems):
        dup = next(s for s in stems if stems.count(s) > 1)
        raise DataError(dataset.name, f"two images would be written as {dup!r}; image ids must be unique")
    return stems


def save_image_file(sample: Sample, folder: Path, stem: str) -> Path:
    """Write the image of ``sample`` as ``folder/stem.*``: a copy of its file, else a PNG."""
    if sample.path is not None and sample.path.is_file():
        dest = folder / f"{stem}{sample.path.suffix}"
        with atomic_path(dest) as tmp:
            shutil.copyfile(sample.path, tmp)
        return dest
    dest = folder / f"{stem}.png"
    write_image(dest, sample.image)
    return dest
