"""BBBC041 (Broad P. vivax) JSON: a list of images, each with its cell boxes.

Schema::

    [{"image": {"pathname": "/images/<name>.png", "shape": {"r", "c", "channels"}, "checksum"},
      "objects": [{"bounding_box": {"minimum": {"r", "c"}, "maximum": {"r", "c"}},
                   "category": "red blood cell"}]}]

``r`` is the row (y) and ``c`` the column (x), so a box is ``[min.c, min.r, max.c, max.r]``.
The category ``difficult`` (cells the annotators could not stage) is kept as an ordinary class;
pass ``class_names`` without it to drop those objects (counted as unknown-class skips).

This module also holds the JSON helpers shared with :mod:`~smearlab.data.formats.iml`:
:func:`find_json`, :func:`read_json_list`, :func:`resolve_inside` and :func:`dig`.
"""
from __future__ import annotations

import json
from pathlib import Path

from ..errors import DataError
from ..sample import SmearDataset
from . import _json_kind
from .voc import BoxCollector, number

CORNERS = (("minimum", "c"), ("minimum", "r"), ("maximum", "c"), ("maximum", "r"))


# -- helpers shared by the JSON formats -----------------------------------------------------------
def find_json(path: Path, kind: str) -> Path:
    """``path`` itself, or the single JSON file of format ``kind`` in the folder ``path``."""
    if path.is_file():
        return path
    if not path.is_dir():
        raise DataError(path, "path does not exist")
    found = [p for p in sorted(path.glob("*.json")) if _json_kind(p) == kind]
    if len(found) != 1:
        raise DataError(path, f"expected one {kind} JSON file in this folder, found "
                              f"{len(found)}{': ' + ', '.join(p.name for p in found) if found else ''}; "
                              "pass the file")
    return found[0]


def read_json_list(path: Path) -> list:
    """The top-level JSON list of an annotation file.

    Raises
    ------
    DataError
        naming the file when it cannot be read, is empty, is not valid JSON or not a list.
    """
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(path, f"cannot read the file: {e}") from None
    if not text.strip():
        raise DataError(path, "empty annotation file")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(path, f"malformed JSON: {e}") from None
    if not isinstance(data, list):
        raise DataError(path, f"expected a JSON list of images at the top level, got {type(data).__name__}")
    return data


def resolve_inside(root: Path, name: str) -> Path | None:
    """``root/name`` resolved (symlinks included), or None when it lies outside ``root``.

    A leading ``/`` means ``root`` (as BBBC041 writes ``/images/x.png``), so only ``..``
    components or links can leave it.
    """
    base = root.resolve()
    target = (base / name.lstrip("/\\")).resolve()
    return target if target.is_relative_to(base) else None


def dig(obj, *keys):
    """``obj[k0][k1]...`` through nested dicts, or None when a level is missing or not a dict."""
    for k in keys:
        if not isinstance(obj, dict) or k not in obj:
            return None
        obj = obj[k]
    return obj


# -- reading --------------------------------------------------------------------------------------
def load(path: str | Path, *, class_names=None, strict: bool = False, name: str | None = None,
         image_root: str | Path | None = None, check_images: bool = True) -> SmearDataset:
    """Load a BBBC041 JSON file (or the folder holding exactly one).

    Parameters
    ----------
    path : the JSON file (e.g. ``malaria/training.json``) or its folder.
    class_names : classes to keep, in this order; None collects all, sorted by name.
    strict : raise at the first skipped record instead of counting it.
    name : dataset name (default: the JSON file's stem).
    image_root : folder the ``pathname`` values are relative to (default: the JSON's folder).
    check_images : skip entries whose image file is missing (default True; the images are
        read lazily either way).

    Returns
    -------
    SmearDataset
        ``Sample.size`` comes from ``shape``. ``skipped`` counts entries without a pathname,
        with a pathname leaving ``image_root`` (refused) or a missing image ("entry N",
        0-based), objects with a missing category or non-numeric corners ("entry N object M"),
        unknown classes, degenerate or far-outside boxes; ``fixed`` the boxes clipped to the image.

    Raises
    ------
    DataError
        naming the file when it is unreadable, empty, malformed JSON or not a list; under
        ``strict`` at the first skipped record.
    """
    json_path = find_json(Path(path), "bbbc041")
    root = Path(image_root) if image_root is not None else json_path.parent
    col = BoxCollector(class_names, strict)
    for i, entry in enumerate(read_json_list(json_path)):
        _add_entry(col, json_path, root, entry, f"entry {i}", check_images)
    return col.dataset(name or json_path.stem, root, "bbbc041")


def _add_entry(col: BoxCollector, json_path: Path, root: Path, entry, rec: str, check_images: bool) -> None:
    """Add the image of one list entry with its valid objects."""
    pathname = dig(entry, "image", "pathname")
    if not isinstance(pathname, str) or not pathname.strip():
        col.skip(json_path, "entry without image.pathname", rec)
        return
    image = resolve_inside(root, pathname)
    if image is None:
        col.skip(json_path, f"image path escapes the image root {root}: {pathname!r} (refused)", rec)
        return
    if check_images and not image.is_file():
        col.skip(json_path, f"image file not found: {image}", rec)
        return
    objects = dig(entry, "objects")
    if not isinstance(objects, list):
        col.skip(json_path, "entry without an objects list", rec)
        return
    parsed = [_parse_object(col, json_path, obj, f"{rec} object {j}") for j, obj in enumerate(objects)]
    col.add(Path(pathname).stem, image, json_path, [p for p in parsed if p is not None],
            size=_shape(dig(entry, "image", "shape")), record=rec)


def _parse_object(col: BoxCollector, json_path: Path, obj, rec: str):
    """``(xyxy, category, record)`` of one object, or None after counting a skip."""
    category = dig(obj, "category")
    coords = [number(dig(obj, "bounding_box", end, axis)) for end, axis in CORNERS]
    if not isinstance(category, str) or not category:
        col.skip(json_path, "object without a category", rec)
    elif None in coords:
        col.skip(json_path, f"missing or non-numeric bounding_box corners: {dig(obj, 'bounding_box')!r}", rec)
    elif col.known(category, json_path, rec):
        return coords, category, rec
    return None


def _shape(shape) -> tuple[int, int] | None:
    """``(height, width)`` from ``{"r", "c"}``, or None when absent or not positive numbers."""
    r, c = number(dig(shape, "r")), number(dig(shape, "c"))
    if r is None or c is None or r <= 0 or c <= 0:
        return None
    return int(r), int(c)
