"""QuPath GeoJSON: one file per image, ``<image stem>.geojson``, holding its objects.

Files in sub-folders match images in the same sub-folders of the image folder
(``qupath/rbc/a.geojson`` is ``images/rbc/a.png``), and a file named with the image's extension
(``a.png.geojson``, as ``smearlab predict`` names two images of one stem) matches that image.

QuPath exports the objects of an image as GeoJSON (a ``FeatureCollection``, or a bare list of
``Feature`` objects); ``smearlab predict`` writes the same into ``qupath/``, so corrected
objects come back through this loader. Each feature's class is
``properties.classification.name`` (QuPath's form; a plain string is accepted too); its
geometry is a ``Polygon`` or ``MultiPolygon`` in image pixels, read as the box of its outline
(instance masks are not read). Coordinates are pixel edges, as the outlines are written.
Objects whose QuPath type (``properties.objectType``; ``object_type`` before QuPath 0.4, the
feature ``id`` in 0.2) is root, tile or TMA core are not cells: they are counted skips.
Annotations, detections and cells are read.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ...core.errors import DataError
from ..imageio import is_image_file
from ..sample import SmearDataset
from ._common import BoxCollector, Root, dataset_name

SUFFIXES = (".geojson",)
#: QuPath object types that are not cells (``objectType``, the older ``object_type``, v0.2 ``id``).
NOT_CELLS = {"root", "tile", "tmaCore", "tma_core", "PathRootObject", "PathTileObject", "TMACoreObject"}


def is_geojson(path: Path) -> bool:
    """Whether ``path`` is named like a GeoJSON file.

    Parameters
    ----------
    path : a file path.
    """
    return path.suffix.lower() in SUFFIXES


def load(path: str | Path, *, images: str | Path | None = None, class_names=None, class_map=None,
         strict: bool = False, name: str | None = None, allow_outside_root: bool = False) -> SmearDataset:
    """Load a folder of QuPath GeoJSON files (or one file) with their images.

    Parameters
    ----------
    path : a folder of ``*.geojson`` files, or one such file.
    images : the folder holding the images (matched by file stem, case-insensitively); None:
        ``path`` itself when it holds images, else its parent folder.
    class_names : classes to keep, in this order; None collects all, sorted by name. Names are
        matched by name or alias (see :mod:`smearlab.data.classes`).
    class_map : ``{name in the files: name in class_names}`` for other spellings.
    strict : raise at the first skipped record instead of counting it.
    name : dataset name (default: the folder name).
    allow_outside_root : follow links that lead out of the folders (refused by default).

    Returns
    -------
    SmearDataset
        one sample per GeoJSON file whose image was found, with ``skipped``: unreadable or
        malformed files, files without a matching image, a second file for one image
        (``a.png.geojson`` beside ``a.geojson``: the first by name is kept), features of a
        QuPath type that is not a cell (root, tile, TMA core), without a class or with a
        geometry other than a polygon (``"feature N"``, 0-based), unknown classes, degenerate or
        far-outside boxes; and ``fixed``: boxes clipped to the image.

    Raises
    ------
    DataError
        when ``path`` holds no GeoJSON file, or under ``strict`` at the first skipped record.
    """
    path = Path(path)
    if path.is_file():
        files, folder = [path], path.parent
    elif path.is_dir():
        folder = path
        files = sorted(p for p in path.rglob("*") if p.is_file() and is_geojson(p))
    else:
        raise DataError(path, "path does not exist")
    if not files:
        raise DataError(path, "no .geojson files here")
    if images is None:
        images = folder if any(is_image_file(p) for p in folder.iterdir()) else folder.parent
    images = Path(images)
    if not images.is_dir():
        raise DataError(images, "the image folder does not exist")
    index = _image_index(images)
    col = BoxCollector(class_names, strict, class_map)
    inside = Root(folder, allow_outside_root)
    inside_images = Root(images, allow_outside_root)
    claimed: dict[Path, Path] = {}  # image -> the GeoJSON file read for it
    for f in files:
        if not inside.inside(f, col.skipped):
            continue
        try:
            features = _features(f)
        except DataError as e:
            col.skip(f, e.problem)
            continue
        key = f.relative_to(folder).with_suffix("").as_posix()
        image = index.get(key.lower())
        if image is None:
            col.skip(f, f"image file not found: {key}.* in {images}")
            continue
        if not inside_images.inside(image, col.skipped):
            continue
        first = claimed.setdefault(image.resolve(), f)
        if first != f:  # one image, two samples, its objects split between them: refused
            col.skip(f, f"a second annotation file of one image: {first.relative_to(folder).as_posix()} and "
                        f"{f.relative_to(folder).as_posix()} both name {image.name} (the first kept; merge the two files)")
            continue
        objects = []
        for k, feat in enumerate(features):
            parsed = _object(col, f, feat, f"feature {k}")
            if parsed is not None:
                objects.append(parsed)
        col.add(key, image, f, objects)
    return col.dataset(name or dataset_name(folder), folder, "qupath")


def _image_index(images: Path) -> dict[str, Path]:
    """Images below ``images`` by relative path with and without extension (lower case); a stem
    two images share (``a.png``, ``a.jpg``) is matched with its extension only."""
    found = sorted(p for p in images.rglob("*") if p.is_file() and is_image_file(p))
    index: dict[str, Path] = {}
    stems: dict[str, list[Path]] = {}
    for p in found:
        rel = p.relative_to(images)
        index[rel.as_posix().lower()] = p
        stems.setdefault(rel.with_suffix("").as_posix().lower(), []).append(p)
    index.update({k: v[0] for k, v in stems.items() if len(v) == 1 and k not in index})
    return index


def _features(f: Path) -> list:
    """The features of one GeoJSON file."""
    try:
        data = json.loads(f.read_text(encoding="utf-8-sig"))
    except OSError as e:
        raise DataError(f, f"cannot read the file: {e}") from None
    except ValueError as e:
        raise DataError(f, f"malformed JSON: {e}") from None
    if isinstance(data, dict) and data.get("type") == "FeatureCollection":
        data = data.get("features")
    elif isinstance(data, dict) and data.get("type") == "Feature":
        data = [data]
    if not isinstance(data, list):
        raise DataError(f, "not GeoJSON objects: expected a FeatureCollection or a list of Features")
    return data


def _object(col: BoxCollector, f: Path, feat, record: str):
    """``(xyxy, class name, record)`` of one feature, or None after counting a skip."""
    props = (feat.get("properties") or {}) if isinstance(feat, dict) else None
    otype = props.get("objectType", props.get("object_type", feat.get("id"))) if isinstance(props, dict) else None
    if isinstance(otype, str) and otype in NOT_CELLS:  # before the geometry: a root object has none
        col.skip(f, f"not a cell: QuPath object type {otype!r} (root, tile and TMA core objects are not read)",
                 record)
        return None
    if not isinstance(feat, dict) or not isinstance(feat.get("geometry"), dict):
        col.skip(f, "not a GeoJSON Feature with a geometry", record)
        return None
    cls = props.get("classification") if isinstance(props, dict) else None
    cls = cls.get("name") if isinstance(cls, dict) else cls
    if not isinstance(cls, str) or not cls.strip():
        col.skip(f, "feature without a classification (class name)", record)
        return None
    geom = feat["geometry"]
    kind, coords = geom.get("type"), geom.get("coordinates")
    if kind not in ("Polygon", "MultiPolygon"):
        col.skip(f, f"geometry {kind!r} is not a Polygon or MultiPolygon", record)
        return None
    try:  # GeoJSON: a Polygon is a list of rings, a MultiPolygon a list of Polygons; the outer ring first
        rings = [coords[0]] if kind == "Polygon" else [p[0] for p in coords]
        pts = np.asarray([pt[:2] for ring in rings for pt in ring], np.float64).reshape(-1, 2)
    except (TypeError, ValueError, IndexError, KeyError):
        col.skip(f, f"{kind} coordinates are not lists of [x, y] numbers", record)
        return None
    if not len(pts) or not np.isfinite(pts).all():
        col.skip(f, "polygon without finite coordinates", record)
        return None
    name = col.known(cls.strip(), f, record)
    if name is None:
        return None
    return [*pts.min(0).tolist(), *pts.max(0).tolist()], name, record
