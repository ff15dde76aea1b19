"""Box checks shared by every loader: clip what runs past the image, drop what is degenerate.

Also :func:`mask_box`, the tight box of a mask (for the formats whose objects are masks).
"""
from __future__ import annotations

import numpy as np

from ..core.errors import DataError
from .sample import SkipLog


def clean_boxes(boxes, labels, hw: tuple[int, int] | None, path, skipped: SkipLog, fixed: SkipLog,
                *, max_overrun: float = 8.0, records=None, keep_duplicates: bool = False):
    """Validate boxes from an annotation file.

    Boxes that run past the image edge by at most ``max_overrun`` pixels are clipped and
    counted in ``fixed`` (annotation tools often place the far edge a few pixels out); boxes with
    ``x1 <= x0`` or ``y1 <= y0`` (after clipping), with non-finite values, or lying further
    outside are dropped and counted in ``skipped``, as is a second box of the same class at the
    very same place unless ``keep_duplicates`` (an object annotated twice would be counted twice).

    Parameters
    ----------
    boxes : (N, 4) array-like, xyxy pixels.
    labels : (N,) ints.
    hw : image (height, width), or None when unknown (no clipping then).
    path : the annotation (or image) file, named in the skip and repair records.
    skipped : :class:`~smearlab.data.sample.SkipLog` that records the dropped boxes.
    fixed : :class:`~smearlab.data.sample.SkipLog` that records the clipped boxes (with the
        overrun in pixels as ``amount``).
    max_overrun : how many pixels a box may run past the image edge and still be clipped
        rather than dropped.
    records : optional per-box names for the report (e.g. ``"object 3"``).
    keep_duplicates : keep boxes of one class at the very same place (objects with their own
        masks, which may share a box); False (the default) drops the second and counts it.

    Returns
    -------
    boxes, labels, kept_index
        the kept boxes (float32) and labels, and the indices of the kept input boxes (to
        filter per-box data such as masks or flags alongside).
    """
    given = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)  # named in the records
    with np.errstate(over="ignore"):  # a value past float32's range becomes inf: refused below
        # the boxes are stored as float32: every test runs on the stored values (a 0.00005-wide
        # box at x=1500 has no width in float32, and check_boxes refused it later)
        b = given.astype(np.float32).astype(np.float64)
    lab = np.asarray(labels, dtype=np.int64).reshape(-1)
    if len(lab) != len(b):
        raise DataError(path, f"{len(b)} boxes but {len(lab)} labels")
    keep = np.ones(len(b), bool)
    out = b.copy()
    seen: dict[tuple, int] = {}  # (label, box) -> the position of the box that gave it first
    for i, (x0, y0, x1, y1) in enumerate(b):
        rec = records[i] if records is not None else f"box {i}"
        if not np.all(np.isfinite(b[i])):  # finite once stored as float32 too
            skipped.add(path, f"non-finite box: {given[i].tolist()}", rec)
            keep[i] = False
            continue
        if x1 <= x0 or y1 <= y0:
            skipped.add(path, f"degenerate box (x1<=x0 or y1<=y0): {given[i].tolist()}", rec)
            keep[i] = False
            continue
        if hw is not None:
            h, w = hw
            over = max(-x0, -y0, x1 - w, y1 - h)
            if over > 0:
                if over > max_overrun or x0 >= w or y0 >= h or x1 <= 0 or y1 <= 0:
                    skipped.add(path, f"box outside the {w}x{h} image: {given[i].tolist()}", rec)
                    keep[i] = False
                    continue
                out[i] = [max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)]
                if out[i, 2] <= out[i, 0] or out[i, 3] <= out[i, 1]:
                    skipped.add(path, f"box empty after clipping to the image: {given[i].tolist()}", rec)
                    keep[i] = False
                    continue
                fixed.add(path, f"box clipped to the image: {given[i].tolist()}", rec, amount=float(over))
        first = i if keep_duplicates else seen.setdefault((int(lab[i]), *out[i].tolist()), i)
        if first != i:  # the same object twice would count twice (by position: two records can share a name)
            first = records[first] if records is not None else f"box {first}"
            skipped.add(path, f"duplicate of {first} (same class and box): {given[i].tolist()}", rec)
            keep[i] = False
    idx = np.flatnonzero(keep)
    return out[idx].astype(np.float32), lab[idx], idx


def mask_box(mask: np.ndarray) -> np.ndarray | None:
    """Tight pixel-edge ``x0, y0, x1, y1`` box of a 2-D mask (``x1`` = last column + 1).

    Parameters
    ----------
    mask : ``(H, W)`` bool (or 0/1) array.

    Returns
    -------
    np.ndarray or None
        ``(4,)`` float32, or None for an empty mask.
    """
    mask = np.asarray(mask)
    if mask.ndim != 2:  # an (H, W, 3) mask gave the box of its columns and channels
        raise ValueError(f"mask_box needs a 2-D (H, W) mask, got shape {mask.shape}")
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(mask.any(axis=0))
    return np.array([cols[0], rows[0], cols[-1] + 1, rows[-1] + 1], np.float32)


def check_boxes(dataset) -> None:
    """``ValueError`` naming the image for a box that training or anchor fitting would drop
    without a word (not finite, no width or height) or misread (not on the image at all). The
    loaders count such boxes as skips already (:func:`clean_boxes`); this catches datasets built
    in code (corrections for fine-tuning, boxes from another tool).

    Parameters
    ----------
    dataset : a SmearDataset (or any sequence of Samples, with ``name``).
    """
    for s in dataset:
        if not len(s.boxes):
            continue
        b = np.asarray(s.boxes, np.float64)
        h, w = s.hw
        bad = ~np.isfinite(b).all(1) | (b[:, 2] <= b[:, 0]) | (b[:, 3] <= b[:, 1]) \
            | (b[:, 0] >= w) | (b[:, 1] >= h) | (b[:, 2] <= 0) | (b[:, 3] <= 0)
        if bad.any():
            k = int(np.flatnonzero(bad)[0])
            raise ValueError(f"dataset {getattr(dataset, 'name', '?')!r}, image {s.image_id!r}: box {b[k].tolist()} is "
                             f"not finite, has no width or height, or lies off the {w}x{h} image ({int(bad.sum())} "
                             "such boxes); fix or drop it first")
