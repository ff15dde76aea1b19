"""Exports of instance predictions: label PNGs, COCO JSON (CVAT-importable), one JSON per image.

Every export takes a dataset (for file names, image sizes and class names) and predictions in
the prediction form (:mod:`smearlab.metrics.detection`): per image ``{"boxes", "scores", "labels"}`` and,
for masks, ``"masks"`` ``(N, H, W)`` bool. Instances are written in *score order*: the
highest-scoring instance of an image is instance 1, and the label PNG, the per-image JSON and
the COCO annotations of an image share that order. Filter the raw predictions first
(:func:`smearlab.detection.postprocess.postprocess`, a score threshold) or pass
``score_threshold``.

* :func:`write_label_png`: an ``(H, W)`` PNG, 0 background, instance ``k`` has value ``k``
  (1..N). uint8 for up to 255 instances, uint16 beyond (up to 65535). Where masks overlap the
  higher-scoring instance wins, so a fully covered instance leaves its id unused.
* :func:`export_coco`: COCO JSON with ``categories`` (ids 1..K), ``images`` (``file_name``,
  ``width``, ``height``) and ``annotations`` (``segmentation``, ``bbox`` xywh, ``area``,
  ``iscrowd`` 0, ``score``). Segmentations are polygons traced with
  :func:`skimage.measure.find_contours` (``"polygon"``), compressed RLE (``"rle"``, exact,
  pycocotools) or polygons except for masks with holes, which polygons cannot carry
  (``"auto"``, the default). CVAT imports it as "COCO 1.0" (polygons as polygons, RLE as masks)
  after the images are uploaded under the same file names; :func:`smearlab.data.load` reads it
  back.
* :func:`export_image_jsons`: ``<output name>.json`` per image with the class, score, box and
  polygon vertices of every instance (schema in :func:`image_record`). Output names keep the
  images' relative sub-paths (:func:`output_names`), so two ``a.png`` never overwrite each other.

Coordinates are pixel-edge ``x, y`` (pixel ``(row r, column c)`` covers ``[c, c + 1) x
[r, r + 1)``), as the boxes. Every file is written atomically.
"""
from __future__ import annotations

import csv
import io
import logging
import os
import re
import shutil
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError
from scipy import ndimage as ndi
from skimage.measure import approximate_polygon, find_contours

from .core.errors import DataError
from .core.files import atomic_path, write_json, write_text
from .data.formats.coco import copied_as_is, coco_annotation, coco_categories, encode_rle, save
from .data.imageio import write_image
from .data.predictions import as_prediction, check_predictions
from .data.sample import SmearDataset
from .metrics.detection import coco_results, count_matrix
from .segmentation.classical import instances_to_label_image


log = logging.getLogger("smearlab.export")


__all__ = ["SEGMENTATIONS", "output_names", "sort_by_score", "label_image", "write_label_png", "read_label_png",
           "write_label_pngs", "mask_polygons", "coco_dict", "export_coco", "image_record",
           "export_image_jsons", "export_predictions"]


#: Segmentation encodings of :func:`export_coco`.
SEGMENTATIONS = ("auto", "polygon", "rle")


def _checked(dataset, predictions) -> list[dict]:
    """Predictions with the agreed dtypes, one per sample (ValueError otherwise)."""
    preds = check_predictions(dataset, predictions)
    for i, (s, p) in enumerate(zip(dataset, preds)):
        if "masks" in p and tuple(p["masks"].shape[1:]) != tuple(s.hw):
            raise ValueError(f"prediction {i}: masks of size {p['masks'].shape[1:]} for image "
                             f"{s.image_id!r} of size {tuple(s.hw)}")
    return preds


def sort_by_score(prediction: dict, score_threshold: float | None = None) -> dict:
    """The prediction with instances sorted by decreasing score (stable), keeping only those
    with ``score >= score_threshold`` when one is given.

    Parameters
    ----------
    prediction : a prediction dict (see :func:`~smearlab.data.predictions.as_prediction`).
    score_threshold : smallest score kept, or None to keep every instance.
    """
    p = as_prediction(prediction)
    idx = np.argsort(-p["scores"], kind="stable")
    if score_threshold is not None:
        idx = idx[p["scores"][idx] >= float(score_threshold)]
    return {k: v[idx] for k, v in p.items()}


def _masks_of(prediction: dict, where: str) -> np.ndarray:
    m = prediction.get("masks")
    if m is None:
        raise ValueError(f"{where}: the prediction has no 'masks' (a box-only model?); label images "
                         "need instance masks")
    m = np.asarray(m)
    if m.ndim != 3:
        raise ValueError(f"{where}: masks must be (N, H, W), got shape {m.shape}")
    return m.astype(bool, copy=False)


def label_image(prediction: dict, *, score_threshold: float | None = None) -> np.ndarray:
    """``(H, W)`` label image of a prediction: 0 background, instance ``k`` (in score order) ``k``.

    uint8 for up to 255 instances, uint16 for up to 65535 (``ValueError`` beyond: PNG has no
    deeper grey). Where masks overlap, the higher-scoring instance wins.

    Parameters
    ----------
    prediction : a prediction dict with ``masks`` ``(N, H, W)``.
    score_threshold : smallest score kept, or None to keep every instance.
    """
    p = sort_by_score(prediction, score_threshold)
    masks = _masks_of(p, "label_image")
    n = len(masks)
    if n > 65535:
        raise ValueError(f"label_image: {n} instances do not fit a 16-bit label image (at most 65535)")
    # sorted by score, so where masks overlap the first (higher-scoring) instance wins
    return instances_to_label_image(masks).astype(np.uint8 if n <= 255 else np.uint16)


def write_label_png(path: str | Path, prediction: dict, *, score_threshold: float | None = None) -> Path:
    """Write :func:`label_image` of ``prediction`` as a PNG (8- or 16-bit grey), atomically.

    Parameters
    ----------
    path : the PNG file (parent folders are created).
    prediction : a prediction dict with ``masks``.
    score_threshold : smallest score kept, or None to keep every instance.

    Returns
    -------
    Path
        ``path``.
    """
    path = Path(path)
    lab = label_image(prediction, score_threshold=score_threshold)
    with atomic_path(path) as tmp:
        Image.fromarray(lab).save(tmp, format="PNG")
    return path


def read_label_png(path: str | Path) -> np.ndarray:
    """An ``(H, W)`` label image written by :func:`write_label_png` (uint8 or uint16).

    Parameters
    ----------
    path : the PNG file.

    Raises
    ------
    DataError
        when the file is missing, unreadable, or not a single-channel image.
    """
    path = Path(path)
    try:
        with Image.open(path) as im:
            arr = np.asarray(im)
    except FileNotFoundError:
        raise DataError(path, "label image not found") from None
    except (OSError, UnidentifiedImageError) as e:
        raise DataError(path, f"cannot read label image: {e}") from None
    if arr.ndim != 2 or not np.issubdtype(arr.dtype, np.integer):
        raise DataError(path, f"a label image must be single-channel integers, got shape {arr.shape} "
                              f"{arr.dtype}")
    if arr.dtype.itemsize > 2 and 0 <= arr.min(initial=0) and arr.max(initial=0) <= 65535:
        arr = arr.astype(np.uint16)  # some Pillow versions open 16-bit PNGs as 32-bit integers
    return arr


def write_label_pngs(dataset, predictions, folder: str | Path, *,
                     score_threshold: float | None = None) -> list[Path]:
    """One ``<output name>.png`` label image per sample in ``folder`` (see :func:`write_label_png`
    and :func:`output_names`: sub-folders of the images are kept, so names never clash).

    Parameters
    ----------
    dataset : the SmearDataset the predictions are for (its image paths give the file names).
    predictions : one prediction dict per sample, aligned with ``dataset``, each with ``masks``
        of its image's size.
    folder : the output folder.
    score_threshold : smallest score kept, or None to keep every instance.

    Returns
    -------
    list of Path
        the files written, in dataset order.
    """
    preds = _checked(dataset, predictions)
    return _label_pngs(dataset, preds, Path(folder), score_threshold, [True] * len(preds))


def _label_pngs(dataset, preds, folder: Path, score_threshold: float | None, wanted: list[bool]) -> list[Path]:
    """:func:`write_label_pngs` of the samples ``wanted`` marks; every one is checked (masks, at
    most 65535 instances) before any file is written."""
    jobs = []
    for s, name, p, want in zip(dataset, output_names(dataset), preds, wanted):
        if not want:
            continue
        where = f"image {s.image_id!r}"
        _masks_of(p, where)
        n = len(p["scores"]) if score_threshold is None else int((p["scores"] >= float(score_threshold)).sum())
        if n > 65535:
            raise ValueError(f"{where}: {n} instances do not fit a 16-bit label image (at most 65535); "
                             "nothing was written")
        jobs.append((folder / f"{name}.png", p))
    return [write_label_png(path, p, score_threshold=score_threshold) for path, p in jobs]


def mask_polygons(mask: np.ndarray, *, tolerance: float = 0.0) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Outlines of a binary mask: ``(outer, holes)``, each a list of ``(K, 2)`` x, y vertex arrays.

    Outlines are traced with :func:`skimage.measure.find_contours` at level 0.5 on the padded mask
    (they run through the middle of the boundary pixels' edges, pixel-edge coordinates, closed:
    the last vertex repeats the first) and simplified with
    :func:`skimage.measure.approximate_polygon` when ``tolerance > 0`` (pixels). ``outer`` holds
    one outline per connected part, ``holes`` one per hole; a part lying inside another's hole
    (a speck in a ring's pale centre) is a part of its own, so a pixel is in the mask when more
    outer outlines than hole outlines hold it. Outlines of fewer than 3 distinct vertices are
    dropped; where simplification would leave fewer (a small part), the traced outline is kept.

    Parameters
    ----------
    mask : ``(H, W)`` bool (or 0/1) mask.
    tolerance : polygon simplification in pixels (0: every contour vertex).
    """
    m = np.asarray(mask)
    if m.ndim != 2:
        raise ValueError(f"mask_polygons: mask must be 2-D (H, W), got shape {m.shape}")
    m = m.astype(bool, copy=False)
    filled = ndi.binary_fill_holes(m)

    def trace(b: np.ndarray) -> list[np.ndarray]:
        out = []
        if not b.any():
            return out
        for c in find_contours(np.pad(b.astype(np.uint8), 1), 0.5):
            if tolerance > 0:
                simple = approximate_polygon(c, tolerance)
                if len(np.unique(np.round(simple, 3), axis=0)) >= 3:  # else the small part would vanish
                    c = simple
            if len(np.unique(np.round(c, 3), axis=0)) >= 3:
                out.append(np.round(c[:, ::-1] - 0.5, 2))  # (row, col) padded -> pixel-edge (x, y)
        return out

    hole_area = ndi.binary_fill_holes(filled & ~m)  # each hole whole, the parts inside it included
    outer, holes = trace(filled), trace(hole_area)
    inside = m & hole_area
    if inside.any():  # parts in holes (they were traced as holes of the hole: the speck was lost)
        more_outer, more_holes = mask_polygons(inside, tolerance=tolerance)
        outer, holes = outer + more_outer, holes + more_holes
    return outer, holes


def _has_holes(mask: np.ndarray) -> bool:
    return bool((ndi.binary_fill_holes(mask) & ~mask).any())


def _relative_files(dataset) -> list[str]:
    """Each sample's image path relative to the folder all the dataset's image files share
    (``rbc/a.png``), posix style; ``<image_id>.png`` for a sample without a file."""
    paths = [getattr(s, "path", None) for s in dataset]
    files = [os.path.abspath(p) for p in paths if p is not None]
    base = os.path.commonpath([os.path.dirname(f) for f in files]) if files else ""
    out = []
    for s, p in zip(dataset, paths):
        if p is None:  # a name below the output folder: no '..', '.' or empty parts
            parts = [c if c not in (".", "..") else "_" for c in re.sub(r"[^\w./-]", "_", str(s.image_id)).split("/")
                     if c]
            out.append("/".join(parts or ["image"]) + ".png")
        else:
            out.append(Path(os.path.relpath(os.path.abspath(p), base)).as_posix())
    return out


def output_names(dataset) -> list[str]:
    """One unique name per sample for the files an export writes (``labels/<name>.png``,
    ``json/<name>.json``), traceable to its image: the image's path relative to the folder all
    the dataset's images share, without its extension (``rbc/a`` for ``.../rbc/a.png``, so
    ``a.png`` in two class folders gives ``rbc/a`` and ``wbc/a``). Images that would still
    share a name (``a.png`` and ``a.jpg`` in one folder) keep their extension (``a.png``,
    ``a.jpg``); samples without a file use their image id.

    Parameters
    ----------
    dataset : the SmearDataset (or sequence of Samples) being exported.

    Returns
    -------
    list of str
        posix-style names without extension (except as above), one per sample, in dataset order.
    """
    return names_without_extension(_relative_files(dataset))


def names_without_extension(files: Sequence[str]) -> list[str]:
    """Unique output names for relative image paths: without the extension (``rbc/a`` for
    ``rbc/a.png``), with it where two would collide (``a.png``, ``a.jpg``), and a ``_K``
    suffix on repeats; case-insensitive (see :func:`output_names`).

    Parameters
    ----------
    files : posix-style image paths relative to a common folder.
    """
    files = list(files)
    stems = [f.rsplit(".", 1)[0] if "." in Path(f).name else f for f in files]
    seen: dict[str, int] = {}
    for st in stems:
        seen[st.lower()] = seen.get(st.lower(), 0) + 1
    names = [f if seen[st.lower()] > 1 else st for f, st in zip(files, stems)]
    return _unique(names)


def _unique(names: list[str]) -> list[str]:
    """``names`` with a ``_K`` suffix on repeats (the same file listed twice), case-insensitively;
    a suffixed name is never one the list holds ("a.png" twice beside "a_1.png": the second
    "a.png" became "a_1.png", and the real "a_1.png" got its predictions)."""
    given = {n.lower() for n in names}
    used: set[str] = set()
    out = []
    for name in names:
        stem, ext = os.path.splitext(name)
        k, cand = 1, name
        while cand.lower() in used or (cand != name and cand.lower() in given):
            cand, k = f"{stem}_{k}{ext}", k + 1
        used.add(cand.lower())
        out.append(cand)
    return out


def file_names(dataset) -> list[str]:
    """A unique ``file_name`` per sample: the image's path relative to the folder the dataset's
    images share (sub-folders kept, so two ``a.png`` in two class folders stay apart).

    Parameters
    ----------
    dataset : the SmearDataset whose samples are named.
    """
    return _unique(_relative_files(dataset))


def _segmentation(mask: np.ndarray, mode: str, tolerance: float):
    """COCO segmentation of one mask (polygons, or RLE where polygons cannot represent it)."""
    if mode == "rle" or (mode == "auto" and _has_holes(mask)):
        return encode_rle(mask)
    outer, _ = mask_polygons(mask, tolerance=tolerance)
    if not outer:  # a mask too thin to outline: keep it exact
        return encode_rle(mask)
    return [c.ravel().tolist() for c in outer]


def coco_dict(dataset, predictions, *, segmentation: str = "auto", score_threshold: float | None = None,
              tolerance: float = 0.0) -> dict:
    """The COCO dict of the predictions (see :func:`export_coco`; nothing is written).

    Parameters
    ----------
    dataset : the SmearDataset the predictions are for (file names, sizes, class names).
    predictions : one prediction dict per sample, aligned with ``dataset``.
    segmentation : ``"auto"``, ``"polygon"`` or ``"rle"`` (see :func:`export_coco`).
    score_threshold : keep instances with ``score >= score_threshold`` (None: all).
    tolerance : polygon simplification in pixels (0: every contour vertex).
    """
    if segmentation not in SEGMENTATIONS:
        raise ValueError(f"segmentation must be one of {list(SEGMENTATIONS)}, got {segmentation!r}")
    preds = _checked(dataset, predictions)
    images, anns = [], []
    empty = 0
    for image_id, (s, name, p) in enumerate(zip(dataset, file_names(dataset), preds), start=1):
        h, w = s.hw
        images.append({"id": image_id, "file_name": name, "width": int(w), "height": int(h)})
        p = sort_by_score(p, score_threshold)
        masks = p.get("masks")
        for k, (box, lab, sc) in enumerate(zip(p["boxes"].tolist(), p["labels"].tolist(), p["scores"].tolist())):
            seg = area = None
            if masks is not None:
                if not masks[k].any():
                    empty += 1
                    continue
                seg, area = _segmentation(masks[k], segmentation, tolerance), int(masks[k].sum())
            anns.append(coco_annotation(len(anns) + 1, image_id, lab, box, area=area, segmentation=seg,
                                        score=float(sc), attributes={"instance": k + 1}))
    if empty:
        log.warning("coco export: %d instances with an empty mask were left out", empty)
    return {"info": {"description": "smearlab predictions"}, "licenses": [],
            "categories": coco_categories(dataset.class_names), "images": images, "annotations": anns}


def coco_from_records(records: Sequence[dict], class_names: Sequence[str]) -> tuple[dict, list[dict]]:
    """COCO (images, categories, annotations; what CVAT imports as "COCO 1.0") and the COCO results
    list from per-image records (:func:`image_record`, as ``smearlab predict`` keeps them); image
    ids 1..n in the order given, category ids 1..K. An instance whose mask is empty is left out of
    the annotations (as :func:`export_coco` does), said once; the results list keeps its box.

    Parameters
    ----------
    records : per-image records (:func:`image_record`).
    class_names : the categories, in label order.
    """
    label = {c: k for k, c in enumerate(class_names)}
    for r in records:
        unknown = next((o["class"] for o in r["objects"] if o["class"] not in label), None)
        if unknown is not None:
            raise ValueError(f"image {r['image']!r}: class {unknown!r} is not one of {list(class_names)}")
    images, anns, results = [], [], []
    empty = 0
    for i, r in enumerate(records, start=1):
        images.append({"id": i, "file_name": r["image"], "width": r["width"], "height": r["height"]})
        for o in r["objects"]:
            results.append({"image_id": i, "category_id": label[o["class"]] + 1,
                            "bbox": coco_annotation(0, i, label[o["class"]], o["bbox"])["bbox"], "score": o["score"]})
            if o["area"] == 0 and isinstance(o["area"], int) and not o.get("polygons"):  # an empty mask (a mask's
                # area is a pixel count; a box-only object's, its box's area as a float)
                empty += 1  # as a box-only object it would take the masks of its whole image when read back
                continue
            seg = [[v for pt in ring for v in pt] for ring in o.get("polygons", []) if len(ring) >= 3]
            holes = [[v for pt in ring for v in pt] for ring in o.get("holes", []) if len(ring) >= 3]
            if seg and holes:  # polygons cannot hold a hole: the exact mask as RLE, as export_coco writes it
                seg = encode_rle(_fill_outlines(seg, holes, r["height"], r["width"]))
            ann = coco_annotation(len(anns) + 1, i, label[o["class"]], o["bbox"], area=o["area"],
                                  segmentation=seg or None,  # a box only: no key (pycocotools fails on [])
                                  attributes={"score": o["score"]})
            anns.append(ann)
    if empty:
        log.warning("coco export: %d instances with an empty mask were left out of the annotations (the "
                    "results list and the counts keep them)", empty)
    return {"images": images, "annotations": anns, "categories": coco_categories(class_names)}, results


def _fill_outlines(outer: list[list[float]], holes: list[list[float]], h: int, w: int) -> np.ndarray:
    """The mask of :func:`mask_polygons`' outlines (flat ``[x0, y0, ...]`` lists): the pixels that
    more outer outlines than hole outlines hold (a part inside another's hole stays)."""
    depth = sum(_fill([r], h, w).astype(np.int32) for r in outer)
    return depth - sum(_fill([r], h, w).astype(np.int32) for r in holes) > 0


def _fill(rings: list[list[float]], h: int, w: int) -> np.ndarray:
    """The pixels inside flat ``[x0, y0, x1, y1, ...]`` outlines (pixel-edge coordinates), as
    pycocotools fills COCO polygons (the outlines :func:`mask_polygons` writes give back their mask)."""
    from pycocotools import mask as mask_util
    return mask_util.decode(mask_util.merge(mask_util.frPyObjects(rings, int(h), int(w)))).astype(bool)


def export_coco(dataset, predictions, path: str | Path, *, segmentation: str = "auto",
                score_threshold: float | None = None, tolerance: float = 0.0,
                copy_images: bool = False) -> Path:
    """Write the predictions as a COCO JSON (instance segmentation), importable into CVAT.

    Parameters
    ----------
    dataset : the SmearDataset the predictions are for (file names, sizes, class names).
    predictions : one prediction per sample; with ``masks`` the annotations carry a
        ``segmentation`` (instances whose mask is empty are left out, with a warning), without
        them only boxes.
    path : the JSON file.
    segmentation : ``"auto"`` (polygons; RLE for masks with holes), ``"polygon"`` (holes are
        filled) or ``"rle"`` (exact).
    score_threshold : keep instances with ``score >= score_threshold`` (None: all).
    tolerance : polygon simplification in pixels (0: every contour vertex).
    copy_images : also put the images into ``images/`` beside the JSON (copied when they are a
        common format, else written as PNG), where :func:`smearlab.data.load` finds them.

    Returns
    -------
    Path
        the JSON file. Image ``file_name`` entries are the images' paths relative to the folder
        the dataset's images share (``rbc/a.png``; a bare file name when they share one
        folder), else ``<image_id>.png``; CVAT matches them against the uploaded files.
    """
    path = Path(path)
    data = coco_dict(dataset, predictions, segmentation=segmentation, score_threshold=score_threshold,
                     tolerance=tolerance)
    if copy_images:
        folder = path.parent / "images"
        # copied as is when a common format read as stored on disk (coco.save's test: a file whose
        # EXIF tag turns it, read unturned, would come back another way up than its boxes); else
        # written as PNG from the pixels and named so (x.dcm.png), or no reader would open it.
        # Names are made unique after the .png is added (x.gif.png beside a real x.gif.png).
        copied = [copied_as_is(s) for s in dataset]
        names = _unique([f if c or Path(f).suffix.lower() == ".png" else f + ".png"
                         for f, c in zip(_relative_files(dataset), copied)])
        for s, rec, name, c in zip(dataset, data["images"], names, copied):
            rec["file_name"] = name
            dst = folder / name
            if c:
                if os.path.abspath(dst) != os.path.abspath(s.path):
                    with atomic_path(dst) as tmp:
                        shutil.copyfile(s.path, tmp)
            else:
                write_image(dst, s.image)
    write_json(path, data)
    return path


def image_record(sample, prediction: dict, class_names: Sequence[str], *, file_name: str | None = None,
                 score_threshold: float | None = None, tolerance: float = 0.0) -> dict:
    """The per-image JSON of one prediction.

    Schema::

        {"image": file name, "image_id": str, "width": int, "height": int,
         "objects": [{"id": 1.., "class": name, "label": 0-based index, "score": float,
                      "bbox": [x0, y0, x1, y1], "area": mask pixels (box area without masks),
                      "polygons": [[[x, y], ...], ...],   # outer outline of each part
                      "holes": [[[x, y], ...], ...]}]}     # inner outlines

    ``id`` is the instance's value in the label PNG (score order); ``polygons`` and ``holes``
    are empty lists for a box-only prediction or an empty mask.

    Parameters
    ----------
    sample : the Sample the prediction is for (its size, id and file name).
    prediction : its prediction dict (``masks`` optional).
    class_names : the names the prediction's labels index.
    file_name : the ``"image"`` entry (None: the sample's file name, else ``<image_id>.png``).
    score_threshold : keep instances with ``score >= score_threshold`` (None: all).
    tolerance : polygon simplification in pixels (0: every contour vertex).
    """
    p = sort_by_score(prediction, score_threshold)
    h, w = sample.hw
    masks = p.get("masks")
    objects = []
    for k, (box, lab, sc) in enumerate(zip(p["boxes"].tolist(), p["labels"].tolist(), p["scores"].tolist())):
        lab = int(lab)
        if not 0 <= lab < len(class_names):
            raise ValueError(f"image {sample.image_id!r}: label {lab} outside the classes {list(class_names)}")
        o = {"id": k + 1, "class": class_names[lab], "label": lab, "score": float(sc),
             "bbox": [float(v) for v in box], "area": float((box[2] - box[0]) * (box[3] - box[1])),
             "polygons": [], "holes": []}
        if masks is not None:
            outer, holes = mask_polygons(masks[k], tolerance=tolerance)
            o["area"] = int(masks[k].sum())
            o["polygons"] = [c.tolist() for c in outer]
            o["holes"] = [c.tolist() for c in holes]
        objects.append(o)
    name = file_name or (sample.path.name if getattr(sample, "path", None) is not None else f"{sample.image_id}.png")
    return {"image": name, "image_id": str(sample.image_id), "width": int(w), "height": int(h),
            "objects": objects}


def export_image_jsons(dataset, predictions, folder: str | Path, *, score_threshold: float | None = None,
                       tolerance: float = 0.0) -> list[Path]:
    """Write :func:`image_record` of every sample as ``folder/<output name>.json`` (see
    :func:`output_names`); the paths.

    Parameters
    ----------
    dataset : the SmearDataset the predictions are for.
    predictions : one prediction dict per sample, aligned with ``dataset``.
    folder : the output folder.
    score_threshold : keep instances with ``score >= score_threshold`` (None: all).
    tolerance : polygon simplification in pixels (0: every contour vertex).
    """
    preds = _checked(dataset, predictions)
    out = []
    for s, name, stem, p in zip(dataset, file_names(dataset), output_names(dataset), preds):
        path = Path(folder) / f"{stem}.json"
        write_json(path, image_record(s, p, dataset.class_names, file_name=name,
                                      score_threshold=score_threshold, tolerance=tolerance))
        out.append(path)
    return out


def export_predictions(dataset, predictions, out_dir: str | Path, *, score_threshold: float | None = None,
                       segmentation: str = "auto", tolerance: float = 0.0, copy_images: bool = False) -> dict:
    """All three exports into ``out_dir``: ``labels/*.png`` (for the images whose predictions
    have masks; a warning names those without when only some have), ``coco.json`` and
    ``json/*.json``. Returns ``{"labels": [...], "coco": path, "json": [...]}``.

    Parameters
    ----------
    dataset : the SmearDataset the predictions are for.
    predictions : one prediction dict per sample, aligned with ``dataset``.
    out_dir : the output folder.
    score_threshold : keep instances with ``score >= score_threshold`` (None: all).
    segmentation, tolerance, copy_images : see :func:`export_coco`.
    """
    out_dir = Path(out_dir)
    preds = _checked(dataset, predictions)
    with_masks = ["masks" in p for p in preds]
    if any(with_masks) and not all(with_masks):
        none = [str(s.image_id) for s, m in zip(dataset, with_masks) if not m]
        log.warning("export: %d of %d images have predictions without masks and get no label PNG "
                    "(%s%s)", len(none), len(preds), ", ".join(none[:5]), ", ..." if len(none) > 5 else "")
    return {
        "labels": _label_pngs(dataset, preds, out_dir / "labels", score_threshold, with_masks),
        "coco": export_coco(dataset, preds, out_dir / "coco.json", segmentation=segmentation,
                            score_threshold=score_threshold, tolerance=tolerance, copy_images=copy_images),
        "json": export_image_jsons(dataset, preds, out_dir / "json", score_threshold=score_threshold,
                                   tolerance=tolerance),
    }


def export_coco_results(dataset: SmearDataset, predictions, path: str | Path) -> Path:
    """Write a COCO results JSON (``image_id`` 1..n in dataset order, ``category_id`` 1..K,
    ``bbox`` xywh, ``score``; plus RLE ``segmentation`` when predictions carry masks), atomically.
    It pairs with :func:`export_coco_gt`.

    Parameters
    ----------
    dataset : the SmearDataset the predictions are for (the ground truth; class names).
    predictions : one prediction dict per sample, aligned with ``dataset``.
    path : the JSON file.

    Returns
    -------
    Path
        ``path``.
    """
    preds = check_predictions(dataset, predictions)
    segm = bool(preds) and all("masks" in p for p in preds)
    write_json(path, coco_results(preds, segm=segm))
    return Path(path)


def export_coco_gt(dataset: SmearDataset, path: str | Path, **kw) -> Path:
    """Write the ground truth as COCO (:func:`smearlab.data.formats.coco.save`: JSON plus
    ``images/``); image ids 1..n match :func:`export_coco_results`.

    Parameters
    ----------
    dataset : the SmearDataset (ground truth) to write.
    path : the JSON file; the images go into ``images/`` beside it.
    **kw : options of :func:`smearlab.data.formats.coco.save` (``masks="rle"`` or ``"polygon"``).

    Returns
    -------
    Path
        the JSON file.
    """
    return save(dataset, path, **kw)


def export_counts_csv(dataset: SmearDataset, predictions, path: str | Path, thresholds=None) -> Path:
    """Per-image counts as CSV: ``image_id, file``, then ``<class>_true, <class>_pred`` per class
    (every prediction given, or those with ``score >= thresholds``), atomically.

    Parameters
    ----------
    dataset : the ground truth (a SmearDataset).
    predictions : one prediction dict per sample, aligned with ``dataset``: final ones (e.g.
        :meth:`~smearlab.detection.tune.Thresholds.apply`'s), or raw ones with ``thresholds``.
    path : the CSV file.
    thresholds : None: count every prediction given (filtering final predictions again at 0.5
        under-counted every class tuned below it); or a score threshold: a float, a per-class
        sequence or ``{class: threshold}`` (classes it does not name: 0.5).

    Returns
    -------
    Path
        ``path``.
    """
    # None: no filter at all (scores are finite; a negative one counts too)
    true, pred = count_matrix(dataset, predictions, -np.inf if thresholds is None else thresholds)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["image_id", "file"] + [f"{n}_{kind}" for n in dataset.class_names
                                       for kind in ("true", "pred")])
    files = file_names(dataset)  # a path below the images' common folder: rbc/a.png and wbc/a.png stay apart
    for s, f, t, p in zip(dataset, files, true, pred):
        w.writerow([s.image_id, f if s.path else ""]
                   + [v for pair in zip(t.tolist(), p.tolist()) for v in pair])
    write_text(path, buf.getvalue())
    return Path(path)
