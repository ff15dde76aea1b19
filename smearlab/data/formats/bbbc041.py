"""BBBC041 (Broad P. vivax) JSON: a list of images, each with its cell boxes.

Schema::

    [{"image": {"pathname": "/images/<name>.png", "shape": {"r", "c", "channels"}, "checksum"},
      "objects": [{"bounding_box": {"minimum": {"r", "c"}, "maximum": {"r", "c"}},
                   "category": "red blood cell"}]}]

``r`` is the row (y) and ``c`` the column (x), so a box is ``[min.c, min.r, max.c, max.r]``.
The category ``difficult`` (cells the annotators could not stage) is kept as an ordinary class;
pass ``class_names`` without it to drop those objects (counted as unknown-class skips).
"""
from __future__ import annotations

from pathlib import Path

from ..sample import SmearDataset
from ._common import (BoxCollector, dig, entry_image, entry_objects, find_json, json_dataset_name, number,
                      positive_int, read_json)

CORNERS = (("minimum", "c"), ("minimum", "r"), ("maximum", "c"), ("maximum", "r"))


# -- reading --------------------------------------------------------------------------------------
def load(path: str | Path, *, class_names=None, class_map=None, strict: bool = False,
         name: str | None = None, image_root: str | Path | None = None, check_images: bool = True,
         allow_outside_root: bool = False) -> SmearDataset:
    """Load a BBBC041 JSON file (or the folder holding exactly one).

    Parameters
    ----------
    path : the JSON file (e.g. ``malaria/training.json``) or its folder.
    class_names : classes to keep, in this order; None collects all, sorted by name. Names are
        matched by name or alias (case, plural), see :mod:`smearlab.data.classes`.
    class_map : ``{name in the file: name in class_names}`` for other spellings.
    strict : raise at the first skipped record instead of counting it.
    name : dataset name (default: the JSON file's stem).
    image_root : folder the ``pathname`` values are relative to (default: the JSON's folder).
    check_images : skip entries whose image file is missing (default True; the images are
        read lazily either way). An image that is there has its header read: it is read as
        shown (EXIF orientation applied) and must match ``shape`` (a ``shape`` that matches
        only the stored pixels reads it as stored, counted in ``fixed``); boxes are clipped
        against the image as read. A missing image keeps the size ``shape`` gives.
    allow_outside_root : accept pathnames that lead out of ``image_root`` through ``..`` or
        a link (refused by default).

    Returns
    -------
    SmearDataset
        ``Sample.size`` comes from ``shape``. ``skipped`` counts entries without a pathname,
        with an invalid pathname (NUL byte, unencodable character) or one leaving
        ``image_root`` through ``..`` or a link (refused; a leading ``/`` means
        ``image_root``), a missing image, no ``objects`` list or the image name of an
        earlier entry ("entry N", 0-based), objects with a missing category or non-numeric
        corners ("entry N object M"), unknown classes, degenerate or far-outside boxes;
        ``fixed`` the boxes clipped to the image.

    Raises
    ------
    DataError
        naming the file when it is unreadable, empty, malformed JSON or not a list; naming the
        folder when it does not exist or holds no or several BBBC041 JSON files; under
        ``strict`` at the first skipped record.
    """
    json_path = find_json(Path(path), "bbbc041")
    root = Path(image_root) if image_root is not None else json_path.parent
    col = BoxCollector(class_names, strict, class_map)
    for i, entry in enumerate(read_json(json_path, list)):
        _add_entry(col, json_path, root, entry, f"entry {i}", check_images, allow_outside_root)
    return col.dataset(name or json_dataset_name(json_path), root, "bbbc041")


def _add_entry(col: BoxCollector, json_path: Path, root: Path, entry, rec: str, check_images: bool,
               allow_outside_root: bool) -> None:
    """Add the image of one list entry with its valid objects."""
    pathname = dig(entry, "image", "pathname")
    image = entry_image(col, json_path, root, pathname, "image.pathname", rec,
                        allow_outside_root=allow_outside_root)
    if image is None:
        return
    if check_images and not image.is_file():
        col.skip(json_path, f"image file not found: {image}", rec)
        return
    objects = entry_objects(col, json_path, entry, rec, _parse_object)
    if objects is not None:
        col.add(Path(pathname).stem, image, json_path, objects,
                size=_shape(dig(entry, "image", "shape")), record=rec)


def _parse_object(col: BoxCollector, json_path: Path, obj, rec: str):
    """``(xyxy, category, record)`` of one object, or None after counting a skip."""
    category = dig(obj, "category")
    coords = [number(dig(obj, "bounding_box", end, axis)) for end, axis in CORNERS]
    if not isinstance(category, str) or not category:
        col.skip(json_path, "object without a category", rec)
    elif None in coords:
        col.skip(json_path, f"missing or non-numeric bounding_box corners: {dig(obj, 'bounding_box')!r}", rec)
    elif (kept := col.known(category, json_path, rec)) is not None:
        return coords, kept, rec
    return None


def _shape(shape) -> tuple[int, int] | None:
    """``(height, width)`` from ``{"r", "c"}``, or None when absent or not positive finite numbers."""
    r, c = positive_int(dig(shape, "r")), positive_int(dig(shape, "c"))
    return None if r is None or c is None else (r, c)
