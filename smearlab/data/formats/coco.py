"""COCO object-detection ground truth (one JSON file), read and written with pycocotools.

* ``bbox`` ``[x, y, w, h]`` becomes ``x0, y0, x1, y1``; boxes running a few pixels past the image
  are clipped (``dataset.fixed``), worse ones skipped (see :func:`smearlab.data.boxes.clean_boxes`).
* Category ids map to 0-based labels in the order of ``categories`` sorted by id.
* Segmentations (polygons, compressed or uncompressed RLE) become lazy ``(N, H, W)`` instance
  masks. An image gets masks only when every one of its kept annotations has a segmentation;
  otherwise it keeps its boxes and has no masks.
* ``iscrowd`` flags are kept per box in ``sample.meta["iscrowd"]``, the COCO image id in
  ``sample.meta["coco_id"]``.
"""
from __future__ import annotations

import filecmp
import math
import os
import re
import shutil
from collections import Counter
from functools import partial
from numbers import Real
from pathlib import Path, PurePosixPath
from typing import Sequence

import numpy as np
from PIL import Image
from pycocotools import mask as mask_util
from skimage.measure import find_contours

from ...core.errors import DataError
from ...core.files import atomic_path, write_json
from ..boxes import clean_boxes
from ..imageio import write_image
from ..sample import Sample, SkipLog, SmearDataset
from ._common import (OUTSIDE_ROOT_HINT, check_unique_names, image_geometry, is_absolute_name, json_dataset_name,
                      path_name_problem, read_json, remap_classes, resolve_inside, turned_on_read)

_COPYABLE = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff"}


def load(path: str | Path, *, image_root: str | Path | Sequence[str | Path] | None = None, strict: bool = False,
         name: str | None = None, class_names=None, class_map=None,
         allow_outside_root: bool = False) -> SmearDataset:
    """Load a COCO ground-truth JSON file.

    Parameters
    ----------
    path : the JSON file.
    image_root : folder the ``file_name`` entries are relative to, or a list of folders
        (the first holding the file wins; default: the JSON's folder, then an ``images/``
        folder beside it). A ``file_name`` that is absolute or leads outside it (through
        ``..`` or a link) is refused.
    strict : raise on the first per-record problem instead of counting it as a skip.
    name : dataset name (default: the JSON file's stem).
    class_names : load the dataset in this class list: categories are matched by name or alias
        (case, plural; see :mod:`smearlab.data.classes`), objects of other categories are
        dropped as unknown-class skips. None: the file's categories, sorted by id.
    class_map : ``{category name: name in class_names}`` for other spellings.
    allow_outside_root : accept ``file_name`` entries that lead out of the image root through
        ``..`` or a link (refused by default; absolute names are always refused).

    Every image's header is read: it is read as shown (EXIF orientation applied) and its size
    must match ``width``/``height``; a size that matches only the stored pixels reads it as
    stored (counted in ``fixed``), one that matches neither skips the image.

    Returns
    -------
    SmearDataset
        ``skipped`` counts the per-record problems: image entries without an ``id`` or
        ``file_name`` or with a repeated id (an id given to two different files is one skip:
        its images and annotations are left out, as which file an annotation is on cannot be
        told), an invalid ``file_name`` (NUL byte, unencodable
        character), images missing, unreadable, escaping the root, with a ``width`` or
        ``height`` that is not a positive integer or of another size than the JSON says
        ("image id N", or "images[i]" without an id);
        annotations without an ``image_id``, of an unknown image or category, with a bad bbox
        (not 4 finite numbers) or segmentation (polygon vertices far outside the image,
        invalid RLE) ("annotation id N" or "annotations[i]"); degenerate or far-outside
        boxes. Annotations of a skipped image are dropped without a second report. ``fixed``
        counts the boxes clipped to the image.

    Raises
    ------
    DataError
        for a whole-file problem: unreadable, empty or malformed JSON, not an object, no
        ``images`` or ``categories`` list (or an ``annotations`` that is not a list), bad or
        duplicate category; under ``strict`` at the first per-record problem.
    """
    json_path = Path(path)
    data = _read_json(json_path)
    cat_ids, file_classes = _categories(data["categories"], json_path)
    skipped, fixed = SkipLog(strict=strict), SkipLog(kind="fixed")
    if image_root is None:
        roots = [json_path.parent, json_path.parent / "images"]
    else:
        roots = [Path(r) for r in image_root] if isinstance(image_root, (list, tuple)) else [Path(image_root)]
    images, files = {}, {}
    clashes = _id_clashes(data["images"])
    for i, record in enumerate(data["images"]):
        if not (isinstance(record, dict) and isinstance(record.get("id"), (int, str)) and record["id"] in clashes):
            _add_image(record, i, json_path, roots, images, files, skipped, fixed, allow_outside_root)
    for k, names in clashes.items():  # which file an annotation of the id is on cannot be told
        n = sum(isinstance(a, dict) and a.get("image_id") == k for a in data["annotations"])
        skipped.add(json_path, f"image id {k!r} names {len(names)} files ({', '.join(names)}): its {n} annotations "
                               "cannot be placed; the images are left out", f"image id {k}")
    known = {r.get("id") for r in data["images"]
             if isinstance(r, dict) and isinstance(r.get("id"), (int, str))}
    per_image = {k: [] for k in images}
    for i, ann in enumerate(data["annotations"]):
        rec = _ann_record(ann, i)
        try:
            parsed = _parse_annotation(ann, json_path, rec, images, known, cat_ids)
        except DataError as e:
            skipped.add(e.path, e.problem, e.record)
            continue
        if parsed is not None:
            per_image[ann["image_id"]].append(parsed)
    samples = [_sample(images[k], per_image[k], json_path, skipped, fixed) for k in images]
    stems = Counter(s.image_id for s in samples)
    for s, k in zip(samples, images):  # train/a.png and val/a.png: named by file_name, not both 'a'
        if stems[s.image_id] > 1:
            s.image_id = PurePosixPath(images[k]["record"]["file_name"]).with_suffix("").as_posix()
    again = Counter(s.image_id for s in samples)
    for s, k in zip(samples, images):  # a.png and a.jpg in one folder: the extension tells them apart
        if again[s.image_id] > 1:
            s.image_id = PurePosixPath(images[k]["record"]["file_name"]).as_posix()
    ds = SmearDataset(samples, file_classes, name or json_dataset_name(json_path), root=json_path.parent,
                      format="coco", skipped=skipped, fixed=fixed)
    return remap_classes(ds, class_names, class_map)


def _read_json(path: Path) -> dict:
    """The parsed COCO file, with ``images``, ``categories`` and ``annotations`` lists."""
    data = read_json(path, dict, empty="empty file (expected COCO JSON)")
    data.setdefault("annotations", [])
    for key in ("images", "categories", "annotations"):
        if not isinstance(data.get(key), list):
            raise DataError(path, f"'{key}' must be a list" if key in data else f"no '{key}' list")
    return data


def _categories(cats: list, path: Path) -> tuple[dict[int, int], list[str]]:
    """``category id -> 0-based label`` (categories sorted by id) and the class names."""
    for i, c in enumerate(cats):
        if not (isinstance(c, dict) and _is_int(c.get("id")) and isinstance(c.get("name"), str)):
            raise DataError(path, "each category needs an integer 'id' and a string 'name'",
                            f"categories[{i}]")
    ordered = sorted(cats, key=lambda c: c["id"])
    ids = [c["id"] for c in ordered]
    if len(set(ids)) != len(ids):
        raise DataError(path, f"duplicate category ids in {ids}")
    names = [c["name"] for c in ordered]
    check_unique_names(names, path)
    return {cid: k for k, cid in enumerate(ids)}, names


def _id_clashes(records: list) -> dict:
    """``{image id: [file names]}`` of the ids that several ``images`` entries give to different files."""
    named: dict = {}
    for r in records:
        if isinstance(r, dict) and isinstance(r.get("id"), (int, str)) and isinstance(r.get("file_name"), str):
            named.setdefault(r["id"], {}).setdefault(PurePosixPath(r["file_name"]), r["file_name"])
    return {k: list(v.values()) for k, v in named.items() if len(v) > 1}


def _add_image(record, i: int, path: Path, roots: list[Path], images: dict, files: dict,
               skipped: SkipLog, fixed: SkipLog, allow_outside_root: bool) -> None:
    """Resolve one ``images`` entry into ``images[id]`` (``files``: image file -> its id) or
    count it as a skip."""
    rec = f"image id {record['id']}" if isinstance(record, dict) and "id" in record \
        else f"images[{i}]"
    if not (isinstance(record, dict) and isinstance(record.get("id"), (int, str))
            and isinstance(record.get("file_name"), str) and record["file_name"]):
        skipped.add(path, "image entry needs an 'id' and a 'file_name'", rec)
        return
    if record["id"] in images:
        skipped.add(path, "duplicate image id", rec)
        return
    image, problem = _find_image(record["file_name"], roots, allow_outside_root)
    if image is None:
        skipped.add(path, f"{problem}: {record['file_name']}", rec)
        return
    said = (record.get("height"), record.get("width"))
    if not all(v is None or (_is_int(v) and v > 0) for v in said):
        skipped.add(path, f"width and height must be positive integers, got {said[1]!r} x {said[0]!r}",
                    rec)
        return
    geometry = image_geometry(image, None if None in said else said, skipped, fixed, path, rec)
    if geometry is None:
        return
    hw, orientation = geometry
    if said[0] not in (None, hw[0]) or said[1] not in (None, hw[1]):  # one of the two given
        skipped.add(image, f"image is {hw[1]}x{hw[0]} but {path.name} says {said[1]}x{said[0]}", rec)
        return
    if image in files:  # two entries, one file: two samples would split its objects
        skipped.add(path, f"{record['file_name']} is also image id {files[image]}; its annotations under this id "
                          "are left out", rec)
        return
    files[image] = record["id"]
    images[record["id"]] = {"record": record, "path": image, "hw": hw, "orientation": orientation}


def _find_image(file_name: str, roots: list[Path],
                allow_outside_root: bool = False) -> tuple[Path | None, str | None]:
    """The image file for ``file_name`` under the first root holding it, or (None, problem).

    Absolute names, names with ``..`` leading out of a root and links pointing out of it
    are refused (see :func:`~smearlab.data.formats._common.resolve_inside`).
    """
    problem = path_name_problem(file_name)
    if problem is not None:
        return None, f"invalid file_name ({problem})"
    if is_absolute_name(file_name):
        return None, "absolute file_name refused (must be relative to the image root)"
    for root in roots:
        candidate = resolve_inside(root, file_name, leading_slash=False,
                                   allow_outside_root=allow_outside_root)
        if candidate is None:
            return None, f"file_name escapes the image root (refused; {OUTSIDE_ROOT_HINT})"
        if candidate.is_file():
            return candidate, None
    return None, f"image file not found under {' or '.join(str(r) for r in roots)}"


def _ann_record(ann, i: int) -> str:
    return f"annotation id {ann['id']}" if isinstance(ann, dict) and "id" in ann \
        else f"annotations[{i}]"


def _parse_annotation(ann, path: Path, rec: str, images: dict, known: set,
                      cat_ids: dict[int, int]):
    """``(box, label, iscrowd, rle or None, record)`` of one annotation.

    Returns None for an annotation of an image that was already skipped; raises DataError for
    a bad annotation.
    """
    if not (isinstance(ann, dict) and isinstance(ann.get("image_id"), (int, str))):
        raise DataError(path, "annotation needs an 'image_id'", rec)
    if ann["image_id"] not in images:
        if ann["image_id"] in known:
            return None
        raise DataError(path, f"unknown image id {ann['image_id']!r}", rec)
    if not _is_int(ann.get("category_id")) or ann["category_id"] not in cat_ids:
        raise DataError(path, f"unknown category id {ann.get('category_id')!r}", rec)
    bbox = ann.get("bbox")
    if not (isinstance(bbox, list) and len(bbox) == 4 and all(_is_real(v) for v in bbox)):
        raise DataError(path, f"bbox must be 4 numbers [x, y, w, h], got {bbox!r}", rec)
    if not all(_is_finite(v) for v in bbox):
        raise DataError(path, f"bbox must be 4 finite numbers [x, y, w, h], got {bbox!r}", rec)
    x, y, w, h = bbox
    seg = ann.get("segmentation")
    rle = _to_rle(seg, images[ann["image_id"]]["hw"], path, rec) if seg else None
    crowd = ann.get("iscrowd")
    crowd = 0 if crowd is None else crowd  # absent or null: not set
    if crowd not in (0, 1, False, True):  # COCO writes 0 or 1; bool("0") would make a crowd region
        raise DataError(path, f"iscrowd must be 0 or 1, got {crowd!r}", rec)
    return [x, y, x + w, y + h], cat_ids[ann["category_id"]], int(crowd), rle, rec


def _to_rle(seg, hw: tuple[int, int], path: Path, rec: str) -> dict:
    """A compressed RLE from a polygon list or an (un)compressed RLE, checked against ``hw``.

    Polygon vertices must lie within one image size of the image (``-w <= x <= 2w``, same
    for ``y``): pycocotools rasterises in C and crashes the interpreter on huge coordinates.
    """
    h, w = hw
    if isinstance(seg, list):
        if not all(isinstance(p, list) and len(p) >= 6 and len(p) % 2 == 0
                   and all(_is_real(v) and _is_finite(v) for v in p) for p in seg):
            raise DataError(path, "polygon segmentation must be lists of at least 3 x, y pairs", rec)
        if not all(-w <= x <= 2 * w and -h <= y <= 2 * h for p in seg for x, y in zip(p[::2], p[1::2])):
            raise DataError(path, f"polygon vertex far outside the {w}x{h} image", rec)
        return mask_util.merge(mask_util.frPyObjects(seg, h, w))
    if not (isinstance(seg, dict) and "counts" in seg and isinstance(seg.get("size"), list)):
        raise DataError(path, "segmentation must be polygons or an RLE {'size', 'counts'}", rec)
    if seg["size"] != [h, w]:
        raise DataError(path, f"segmentation size {seg['size']} (h, w) differs from the image "
                              f"size [{h}, {w}]", rec)
    counts = seg["counts"]
    if isinstance(counts, list):
        if not (all(_is_int(c) and c >= 0 for c in counts) and sum(counts) == h * w):
            raise DataError(path, f"uncompressed RLE counts must be non-negative integers "
                                  f"summing to {h}*{w}", rec)
        return mask_util.frPyObjects(seg, h, w)
    if isinstance(counts, str) and not counts.isascii():
        raise DataError(path, "invalid compressed RLE counts (not ASCII)", rec)
    rle = {"size": [h, w], "counts": counts.encode("ascii") if isinstance(counts, str) else counts}
    # decoded once here: pycocotools reads past the end of some malformed strings, so their area
    # alone can come out in range; decoding checks that the runs cover the image exactly
    try:
        valid = isinstance(rle["counts"], bytes) and 0 <= mask_util.area(rle) <= h * w \
            and mask_util.decode(rle).shape == (h, w)
    except ValueError:
        valid = False
    if not valid:
        raise DataError(path, "invalid compressed RLE counts", rec)
    return rle


def _sample(image: dict, anns: list, path: Path, skipped: SkipLog, fixed: SkipLog) -> Sample:
    """The sample of one image with its kept annotations."""
    record = image["record"]
    boxes, labels, crowd, rles, recs = (list(c) for c in zip(*anns)) if anns else ([],) * 5
    boxes, labels, kept = clean_boxes(boxes, labels, image["hw"], path, skipped, fixed, records=recs,
                                      keep_duplicates=any(r is not None for r in rles))  # masks tell them apart
    rles = [rles[i] for i in kept]
    masks = partial(_decode, tuple(rles), image["hw"], path) \
        if rles and all(r is not None for r in rles) else None
    return Sample(PurePosixPath(record["file_name"]).stem, image["path"], boxes=boxes,
                  labels=labels, size=image["hw"], _masks=masks, orientation=image["orientation"],
                  meta={"coco_id": record["id"], "iscrowd": np.array(crowd, np.int64)[kept]})


def _decode(rles: tuple, hw: tuple[int, int], path: Path) -> np.ndarray:
    """``(N, H, W)`` bool masks from compressed RLEs."""
    try:
        return mask_util.decode(list(rles)).transpose(2, 0, 1).astype(bool)
    except ValueError as e:
        raise DataError(path, f"cannot decode a segmentation of a {hw[1]}x{hw[0]} image ({e})") \
            from None


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_real(v) -> bool:
    return isinstance(v, Real) and not isinstance(v, bool)


def _is_finite(v) -> bool:
    """A real number that is finite as a float (an int too large for a float is not)."""
    try:
        return math.isfinite(v)
    except OverflowError:
        return False


# -- writing ---------------------------------------------------------------------------------
def coco_categories(class_names: Sequence[str]) -> list[dict]:
    """COCO ``categories``: ids ``1..K`` in ``class_names`` order (every COCO file smearlab writes).

    Parameters
    ----------
    class_names : the classes, in label order.
    """
    return [{"id": k + 1, "name": str(n), "supercategory": ""} for k, n in enumerate(class_names)]


def coco_annotation(ann_id: int, image_id: int, label: int, box, *, area=None, segmentation=None, **extra) -> dict:
    """One COCO annotation (every COCO file smearlab writes builds them here).

    Parameters
    ----------
    ann_id, image_id : the annotation's and its image's ids (from 1).
    label : the 0-based class index (``category_id`` is ``label + 1``, see :func:`coco_categories`).
    box : ``(x0, y0, x1, y1)`` in pixels (written as COCO's ``[x, y, width, height]``).
    area : the object's area (None: the box's).
    segmentation : RLE or polygons, or None for a box only.
    **extra : further keys (``score``, ``attributes`` ...).
    """
    x0, y0, x1, y1 = box
    ann = {"id": int(ann_id), "image_id": int(image_id), "category_id": int(label) + 1,
           "bbox": [x0, y0, x1 - x0, y1 - y0], "area": (x1 - x0) * (y1 - y0) if area is None else area, "iscrowd": 0}
    if segmentation is not None:
        ann["segmentation"] = segmentation
    ann.update(extra)
    return ann


def save(dataset: SmearDataset, path: str | Path, *, masks: str = "rle") -> Path:
    """Write ``dataset`` as a COCO ground-truth JSON, its images into ``images/`` beside it.

    Image files are copied when they are a common format (otherwise written as PNG); names are
    made unique. Categories get ids ``1..K`` in ``class_names`` order; every box becomes an
    annotation (``iscrowd`` from :attr:`~smearlab.data.sample.Sample.crowd`), plus a segmentation when the sample has instance masks:
    compressed RLE (``masks="rle"``, exact) or polygons traced with
    :func:`skimage.measure.find_contours` (``masks="polygon"``, approximate; holes are lost).
    Images are written first and the JSON last, each atomically. A file already in ``images/``
    is never overwritten unless it is this image's own file or holds the very same image (a
    second save of the dataset): another one (say the ``train.json`` split saved into the folder
    before this ``val.json``) keeps its name and this image takes a new one, so that every split
    saved into one folder stays loadable.

    Parameters
    ----------
    dataset : the SmearDataset to write.
    path : the JSON file; the images go into ``images/`` in its folder.
    masks : ``"rle"`` or ``"polygon"``, the segmentation form of instance masks.

    Returns
    -------
    Path
        the JSON file.
    """
    if masks not in ("rle", "polygon"):
        raise ValueError(f"masks must be 'rle' or 'polygon', got {masks!r}")
    json_path = Path(path)
    images, annotations, used = [], [], set()
    wanted = [_wanted_name(s) for s in dataset]
    reserved = {n.lower() for n in wanted}  # a renamed file never takes the name of another image's file
    folder = json_path.parent / "images"
    on_disk = {n.lower(): n for n in os.listdir(folder)} if folder.is_dir() else {}
    for image_id, (s, name) in enumerate(zip(dataset, wanted), start=1):
        file_name = _write_image(s, name, folder, used, reserved, on_disk)
        h, w = s.hw
        images.append({"id": image_id, "file_name": file_name, "width": int(w), "height": int(h)})
        annotations += _annotations(s, image_id, len(annotations) + 1, masks)
    write_json(json_path, {"images": images, "annotations": annotations,
                           "categories": coco_categories(dataset.class_names)})
    return json_path


def copied_as_is(sample: Sample) -> bool:
    """Whether the sample's image file is copied as it is (else written as PNG)."""
    src = sample.path
    return src is not None and src.suffix.lower() in _COPYABLE and src.is_file() and not turned_on_read(sample)


def _wanted_name(sample: Sample) -> str:
    """The file name the sample's image would take in ``images/``, before clashes."""
    if copied_as_is(sample):
        return sample.path.name
    return re.sub(r"[^\w.-]", "_", sample.image_id) + ".png"


def _write_image(sample: Sample, name: str, folder: Path, used: set, reserved: set,
                 on_disk: dict | None = None) -> str:
    """Copy (or write as PNG) the sample's image into ``folder`` as ``name`` or, when taken, a
    name no other image wants; its ``file_name`` for the JSON. A name of ``on_disk`` (the files
    in ``folder`` before the save, by lower-cased name) is taken unless its file is the sample's
    own or holds the same image: another split saved there keeps its pixels."""
    on_disk = on_disk or {}
    wanted = name
    while True:
        name = _unique_name(wanted, used, reserved)
        if name.lower() not in on_disk or (on_disk[name.lower()] == name and _same_image(sample, folder / name)):
            break
    if copied_as_is(sample):
        if os.path.abspath(folder / name) != os.path.abspath(sample.path) and name.lower() not in on_disk:
            with atomic_path(folder / name) as tmp:
                shutil.copyfile(sample.path, tmp)
    elif name.lower() not in on_disk:
        write_image(folder / name, sample.image)
    return f"images/{name}"


def _same_image(sample: Sample, target: Path) -> bool:
    """Whether the file ``target`` is the sample's own image file, a byte copy of it, or (for an
    image written as PNG) holds its very pixels."""
    try:
        if copied_as_is(sample):
            return os.path.samefile(target, sample.path) or filecmp.cmp(target, sample.path, shallow=False)
        with Image.open(target) as im:
            return np.array_equal(np.asarray(im), sample.image)
    except (OSError, ValueError, Image.DecompressionBombError):
        return False


def _unique_name(name: str, used: set, reserved: set = frozenset()) -> str:
    """``name``, or ``stem_K.ext`` when it is already taken (case-insensitively); a new name is
    never one of ``reserved`` (the names other images' files have: ``a_1.png`` for the second
    ``a.png`` made the id ``a_1`` mean another image)."""
    stem, ext = os.path.splitext(name)
    k, out = 1, name
    while out.lower() in used:
        out, k = f"{stem}_{k}{ext}", k + 1
        while out.lower() in reserved:
            out, k = f"{stem}_{k}{ext}", k + 1
    used.add(out.lower())
    return out


def _annotations(sample: Sample, image_id: int, first_id: int, mode: str) -> list[dict]:
    """The COCO annotations of one sample's boxes (with segmentations when it has masks)."""
    masks = sample.masks if sample.has_masks else None
    crowd = sample.crowd.astype(int).tolist()  # crowd regions stay crowd regions (pycocotools ignores them)
    out = []
    for j, (box, label) in enumerate(zip(sample.boxes.tolist(), sample.labels.tolist())):
        if masks is None:
            out.append(coco_annotation(first_id + j, image_id, label, box, iscrowd=crowd[j]))
        else:
            seg = encode_rle(masks[j]) if mode == "rle" else (_polygons(masks[j]) or encode_rle(masks[j]))  # no
            # outline to trace (an empty mask): RLE, as "segmentation": [] lost the image's masks
            out.append(coco_annotation(first_id + j, image_id, label, box, area=int(masks[j].sum()), segmentation=seg,
                                       iscrowd=crowd[j]))
    return out


def encode_rle(mask: np.ndarray) -> dict:
    """Compressed RLE with ``counts`` as a str (JSON-safe).

    Parameters
    ----------
    mask : ``(H, W)`` bool (or 0/1) mask.

    Returns
    -------
    dict
        ``{"size": [H, W], "counts": str}``.
    """
    rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


def _polygons(mask: np.ndarray) -> list[list[float]]:
    """Outer and inner outlines of a mask as COCO polygons in pixel-edge coordinates."""
    polys = []
    for contour in find_contours(np.pad(mask.astype(np.uint8), 1), 0.5):
        if len(contour) >= 3:
            xy = contour[:, ::-1] - 0.5  # (row, col) of the padded array -> pixel-edge (x, y)
            polys.append(np.round(xy, 2).ravel().tolist())
    return polys
