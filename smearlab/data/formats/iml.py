"""IML-Malaria JSON: a list of images with ``x, y, w, h`` boxes written as strings.

Schema::

    [{"image_name": "PA171710.JPG",
      "objects": [{"type": "red blood cell", "bbox": {"x": "176", "y": "250", "w": "82", "h": "78"}}]}]

``x, y`` is the top-left corner, so a box is ``[x, y, x + w, y + h]``. The images lie in
``IML_Malaria/`` beside the JSON file. Some boxes run a few pixels past the image edge: the
image size is read from each file's header (not its pixels) so that they are clipped (and
counted in ``fixed``). ``difficult`` is kept as an ordinary class, as in BBBC041.
"""
from __future__ import annotations

from pathlib import Path

from ..sample import SmearDataset
from ._common import BoxCollector, dig, entry_image, entry_objects, find_json, json_dataset_name, number, read_json

IMAGE_FOLDER = "IML_Malaria"
BBOX_KEYS = ("x", "y", "w", "h")


def load(path: str | Path, *, class_names=None, class_map=None, strict: bool = False,
         name: str | None = None, image_root: str | Path | None = None, check_images: bool = True,
         allow_outside_root: bool = False) -> SmearDataset:
    """Load an IML-Malaria annotation file (or the folder holding exactly one).

    Parameters
    ----------
    path : the JSON file (``annotations.json``) or its folder.
    class_names : classes to keep, in this order; None collects all, sorted by name. Names are
        matched by name or alias (case, plural), see :mod:`smearlab.data.classes`.
    class_map : ``{name in the file: name in class_names}`` for other spellings.
    strict : raise at the first skipped record instead of counting it.
    name : dataset name (default: the JSON file's stem).
    image_root : the image folder (default: ``IML_Malaria/`` beside the JSON file).
    check_images : skip entries whose image file is missing (default True). With False such
        an entry is kept with an unknown size, so its boxes are not clipped. An image whose
        header cannot be read is always skipped. Images are read as shown (EXIF orientation
        applied).
    allow_outside_root : accept image names that lead out of ``image_root`` through ``..`` or
        a link (refused by default).

    Returns
    -------
    SmearDataset
        ``Sample.size`` comes from the image header. ``skipped`` counts entries without an
        image name, with an invalid or absolute name or one leaving ``image_root`` (refused),
        a missing or unreadable image, no ``objects`` list or the image name of an earlier
        entry ("entry N", 0-based), objects without a type or with missing or non-numeric bbox values ("entry
        N object M"), unknown classes, degenerate or far-outside boxes; ``fixed`` the boxes
        clipped to the image.

    Raises
    ------
    DataError
        naming the file when it is unreadable, empty, malformed JSON or not a list; naming the
        folder when it does not exist or holds no or several IML JSON files; under ``strict``
        at the first skipped record.
    """
    json_path = find_json(Path(path), "iml")
    root = Path(image_root) if image_root is not None else json_path.parent / IMAGE_FOLDER
    col = BoxCollector(class_names, strict, class_map)
    for i, entry in enumerate(read_json(json_path, list)):
        _add_entry(col, json_path, root, entry, f"entry {i}", check_images, allow_outside_root)
    return col.dataset(name or json_dataset_name(json_path), json_path.parent, "iml")


def _add_entry(col: BoxCollector, json_path: Path, root: Path, entry, rec: str, check_images: bool,
               allow_outside_root: bool) -> None:
    """Add the image of one list entry (size from its header) with its valid objects."""
    image_name = dig(entry, "image_name")
    image = entry_image(col, json_path, root, image_name, "image_name", rec, leading_slash=False,
                        allow_outside_root=allow_outside_root)
    if image is None:
        return
    if not image.is_file() and check_images:
        col.skip(json_path, f"image file not found: {image}", rec)
        return
    geometry = col.geometry(image, None, json_path, rec)
    if geometry is None:
        return
    objects = entry_objects(col, json_path, entry, rec, _parse_object)
    if objects is not None:
        col.add(Path(image_name).stem, image, json_path, objects, size=geometry[0], record=rec,
                orientation=geometry[1])


def _parse_object(col: BoxCollector, json_path: Path, obj, rec: str):
    """``(xyxy, type, record)`` of one object, or None after counting a skip."""
    kind = dig(obj, "type")
    values = [number(dig(obj, "bbox", k)) for k in BBOX_KEYS]
    if not isinstance(kind, str) or not kind:
        col.skip(json_path, "object without a type", rec)
    elif None in values:
        col.skip(json_path, f"missing or non-numeric bbox values: {dig(obj, 'bbox')!r}", rec)
    elif (kept := col.known(kind, json_path, rec)) is not None:
        x, y, w, h = values
        return [x, y, x + w, y + h], kept, rec
    return None
