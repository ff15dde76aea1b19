"""Batched (and tiled) inference in the agreed prediction form.

A prediction is one dict per image, aligned with the input::

    {"boxes": (N, 4) float32 x0 y0 x1 y1 pixels, "scores": (N,) float32,
     "labels": (N,) int64 0-based indices into class_names}

(torchvision's labels minus one; background never appears). A Mask R-CNN
(:func:`~smearlab.detection.models.is_mask_model`) also gives ``"masks": (N, H, W) bool`` at the
input image's size: torchvision's mask probabilities, pasted into the image, ``> mask_threshold``.

Tiled inference (``tile=512``) cuts large fields into overlapping tiles, predicts each, shifts
the boxes back and merges the pieces of objects cut by tile edges (:func:`merge_tiles`), then
runs a class-wise NMS over the whole image. Each tile's masks are pasted into the full canvas;
the mask of a merged object is the union of its pieces' masks.

Memory: masks are full-image bool arrays, one byte per pixel per detection (300 detections of
a 1280x960 field take 370 MB); lower ``detections_per_img`` or raise the score floor on large
fields.
"""
from __future__ import annotations

import contextlib
import itertools
import logging
import math
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn
from torchvision.ops import batched_nms
from tqdm.auto import tqdm

from ..core.device import resolve_device
from ..data.predictions import Predictions, empty_prediction
from ..data.sample import Sample, SmearDataset
from ..data.torchdata import LUMA, DetectionDataset
from ..preprocess import as_preprocess
from .models import auto_tile, is_mask_model, smaller_than_training, unwrap
from .postprocess import fuse_boxes, per_image_caps
from .scale import PROBE_FACTORS, check_zoom, choose_factor
from .tune import Thresholds

log = logging.getLogger(__name__)

Prediction = dict  # {"boxes", "scores", "labels"} numpy arrays


# ---------------------------------------------------------------------------------------------
# inputs
# ---------------------------------------------------------------------------------------------
def _model_channels(model) -> int | None:
    cfg = getattr(model, "detector_config", None)
    if cfg is not None:
        return int(cfg.in_channels)
    tr = getattr(model, "transform", None)
    if tr is not None and hasattr(tr, "image_mean"):
        return len(tr.image_mean)
    return None


def _to_tensor(img, channels: int | None) -> torch.Tensor:
    """Any image form -> (C, H, W) float tensor with the model's C: arrays ``(H, W)`` or
    ``(H, W, 1 | 3)``, uint8 or floats in [0, 1] (anything else is refused: 16-bit or 0..255
    floats reached the model unscaled, RGBA as four channels, a channel-first array as a
    3-pixel-wide image); tensors ``(C, H, W)``, uint8 (scaled to [0, 1]) or floats taken as the
    model's input."""
    if isinstance(img, np.ndarray):
        a = img
        if a.ndim == 2:
            a = a[..., None]
        if a.ndim != 3 or a.shape[2] not in (1, 3):
            raise ValueError(f"an image array must be (H, W) or (H, W, 3), got shape {img.shape} (RGBA: drop the "
                             "alpha channel; a channel-first array: transpose it, or give a (C, H, W) tensor)")
        if a.dtype != np.uint8 and not np.issubdtype(a.dtype, np.floating):
            raise ValueError(f"an image array must be uint8 or floats in [0, 1], got dtype {a.dtype}; convert "
                             "16-bit images with smearlab.data.imageio.to_rgb8 (the loaders do it on read)")
        if a.dtype != np.uint8 and a.size and not (float(np.nanmin(a)) >= -1e-3 and float(np.nanmax(a)) <= 1.0 + 1e-3
                                                   and not np.isnan(a).any()):
            raise ValueError(f"image values lie in [{np.nanmin(a):.4g}, {np.nanmax(a):.4g}]"
                             f"{' with NaN' if np.isnan(a).any() else ''}; float arrays must be in [0, 1] "
                             "(0..255 floats: divide by 255 or give uint8)")
        t = torch.from_numpy(np.ascontiguousarray(a)).permute(2, 0, 1)
        t = t.float().div_(255.0) if a.dtype == np.uint8 else t.float()
    elif isinstance(img, torch.Tensor):
        t = img
        if t.ndim == 2:
            t = t[None]
        if t.dtype == torch.uint8:
            t = t.float().div_(255.0)
        elif not torch.is_floating_point(t):
            raise ValueError(f"an image tensor must be uint8 or floats in [0, 1], got dtype {t.dtype}")
    else:
        raise TypeError(f"cannot predict on a {type(img).__name__}; give images as arrays or tensors")
    if t.ndim != 3:
        raise ValueError(f"an image must be (C, H, W) or (H, W, C), got shape {tuple(t.shape)}")
    if channels == 1 and t.shape[0] == 3:
        t = (t * torch.tensor(LUMA, dtype=t.dtype, device=t.device).view(3, 1, 1)).sum(0, keepdim=True)
    elif channels == 3 and t.shape[0] == 1:
        t = t.expand(3, -1, -1)
    return t


def _items(data, check: Callable[[Sample], None] | None = None) -> tuple[int, Callable[[int], Any]]:
    """(length, i -> image) for a dataset, a DetectionDataset, a list of samples/arrays/tensors;
    ``check`` is called on each sample as it is read (e.g. refusing one already preprocessed)."""

    if isinstance(data, (np.ndarray, torch.Tensor)) and data.ndim in (2, 3):
        data = [data]
    if isinstance(data, DetectionDataset):
        return len(data), lambda i: data[i][0]

    def get(i):
        x = data[i]
        if isinstance(x, Sample):
            if check is not None:
                check(x)
            lazy = x.path is not None and x._image is None
            img = x.image
            if lazy:
                x.release()
            return img
        if isinstance(x, (tuple, list)):  # (image, target) datasets
            return x[0]
        return x
    return len(data), get


# ---------------------------------------------------------------------------------------------
# tiles
# ---------------------------------------------------------------------------------------------
def tile_windows(height: int, width: int, tile: int, overlap: float = 0.2) -> list[tuple[int, int, int, int]]:
    """Windows ``(x0, y0, x1, y1)`` of at most ``tile`` pixels covering the image, evenly spaced
    with at least ``overlap`` (fraction of ``tile``) between neighbours.

    Parameters
    ----------
    height, width : image size in pixels.
    tile : tile side in pixels (> 0); a smaller image side gives one tile of that side.
    overlap : least fraction of ``tile`` shared by neighbouring tiles, in [0, 1).
    """
    if tile <= 0:
        raise ValueError(f"tile must be a positive size, got {tile}")
    if not 0 <= overlap < 1:
        raise ValueError(f"overlap must be a fraction in [0, 1), got {overlap}")
    if overlap > 0 and tile < 2:
        raise ValueError(f"a tile of {tile} pixel cannot overlap its neighbour: give tiles of 2 pixels or more")

    def starts(n):
        if n <= tile:
            return [0], n
        step = tile * (1 - overlap)
        if overlap > 0:  # at least one shared pixel (a fraction of a pixel rounded to none cut cells in two)
            step = min(step, tile - 1)
        k = math.ceil((n - tile) / step) + 1
        return sorted({int(round(v)) for v in np.linspace(0, n - tile, k)}), tile

    xs, tw = starts(width)
    ys, th = starts(height)
    return [(x, y, x + tw, y + th) for y in ys for x in xs]


def merge_tiles(boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray, tile_index: np.ndarray,
                windows: Sequence[tuple[int, int, int, int]], image_hw: tuple[int, int], *,
                merge_iou: float = 0.5, contain: float = 0.8, edge_margin: float = 3.0,
                nms_iou: float = 0.5, masks: Sequence[np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """Merge per-tile detections (already in image coordinates) into one prediction.

    A box is *cut* when it touches an edge of its tile that is not an image edge. A cut box and a
    box of the same class from another tile are one object when, clipped to the region the two
    tiles share, they overlap (IoU > ``merge_iou``, or one covers ``contain`` of the other); each
    box is joined to its best partner per other tile. A sliver (a cut box at most
    ``2 * edge_margin`` across its cut edge) is one object with a box of another tile that holds
    it across the cut within ``edge_margin`` and along it (``contain``): a piece a pixel or two
    wide missed the overlap tests by a pixel of localisation and was counted as a second cell.
    Joined boxes become their union box with the highest score. A class-wise NMS (``nms_iou``)
    then removes the remaining duplicates.

    ``masks``: optional tile-local instance masks, one 2-D bool array per detection with the
    size of its tile window (tile coordinates, as a model predicts them on the tile). The result
    then holds ``"masks"`` ``(M, H, W)`` bool: each kept object's pieces pasted into the image
    and joined (union).

    Parameters
    ----------
    boxes : ``(N, 4)`` ``x0, y0, x1, y1`` detections of all tiles, in image pixels.
    scores : ``(N,)`` their scores.
    labels : ``(N,)`` their 0-based labels.
    tile_index : ``(N,)`` index into ``windows`` of the tile each detection comes from.
    windows : the tile windows ``(x0, y0, x1, y1)`` in image pixels (see :func:`tile_windows`).
    image_hw : ``(height, width)`` of the image.
    merge_iou : IoU above which a cut box and a box of another tile are one object.
    contain : fraction of a box covered by the other above which the two are one object.
    edge_margin : distance in pixels within which a box touches a tile edge.
    nms_iou : IoU of the final class-wise NMS.
    masks : optional tile-local instance masks (see above).

    Returns
    -------
    dict
        one prediction dict (``masks`` too when given).
    """

    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    scores = np.asarray(scores, np.float32).reshape(-1)
    labels = np.asarray(labels, np.int64).reshape(-1)
    tile_index = np.asarray(tile_index, np.int64).reshape(-1)
    n = len(boxes)
    if masks is not None and len(masks) != n:
        raise ValueError(f"merge_tiles: {len(masks)} masks for {n} boxes")
    if n == 0:
        return empty_prediction(image_hw if masks is not None else None)
    h, w = image_hw
    wins = np.asarray(windows, np.float32).reshape(-1, 4)
    win = wins[tile_index]  # (n, 4)
    interior = np.stack([win[:, 0] > 0, win[:, 1] > 0, win[:, 2] < w, win[:, 3] < h], 1)
    touch = np.stack([boxes[:, 0] - win[:, 0] <= edge_margin, boxes[:, 1] - win[:, 1] <= edge_margin,
                      win[:, 2] - boxes[:, 2] <= edge_margin, win[:, 3] - boxes[:, 3] <= edge_margin], 1)
    cut_edges = interior & touch
    cut = cut_edges.any(1)
    cut_axis = np.stack([cut_edges[:, 0] | cut_edges[:, 2], cut_edges[:, 1] | cut_edges[:, 3]], 1)  # x, y
    sliver = cut_axis & (np.stack([boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]], 1) <= 2 * edge_margin)

    parent = np.arange(n)

    def find(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i in np.flatnonzero(cut):
        cand = np.flatnonzero((tile_index != tile_index[i]) & (labels == labels[i]))
        if len(cand) == 0:
            continue
        common = np.concatenate([np.maximum(win[cand, :2], win[i, :2]), np.minimum(win[cand, 2:], win[i, 2:])], 1)
        ok = (common[:, 2] > common[:, 0]) & (common[:, 3] > common[:, 1])
        # two tiles whose shared region a third tile holds whole (tiles i and i + 2 of a row, which
        # may share a strip a few pixels wide) are joined through that tile: compared over the
        # strip, a piece of one cell matched its neighbour and fused the two
        inside = ((wins[None, :, 0] <= common[:, None, 0]) & (wins[None, :, 1] <= common[:, None, 1])
                  & (wins[None, :, 2] >= common[:, None, 2]) & (wins[None, :, 3] >= common[:, None, 3]))
        inside[:, tile_index[i]] = False
        inside[np.arange(len(cand)), tile_index[cand]] = False
        ok &= ~inside.any(1)
        cand, common = cand[ok], common[ok]
        if len(cand) == 0:
            continue
        a = np.concatenate([np.maximum(boxes[i, :2], common[:, :2]), np.minimum(boxes[i, 2:], common[:, 2:])], 1)
        b = np.concatenate([np.maximum(boxes[cand, :2], common[:, :2]), np.minimum(boxes[cand, 2:], common[:, 2:])], 1)
        area = lambda r: np.clip(r[:, 2] - r[:, 0], 0, None) * np.clip(r[:, 3] - r[:, 1], 0, None)  # noqa: E731
        ia = np.clip(np.minimum(a[:, 2], b[:, 2]) - np.maximum(a[:, 0], b[:, 0]), 0, None) * \
            np.clip(np.minimum(a[:, 3], b[:, 3]) - np.maximum(a[:, 1], b[:, 1]), 0, None)
        aa, ab = area(a), area(b)
        iou = ia / np.maximum(aa + ab - ia, 1e-9)
        cov = ia / np.maximum(np.minimum(aa, ab), 1e-9)
        # the rows (columns) of a piece lie within those of the object's other box, whole boxes
        # compared: in the corner a diagonal neighbour's sliver shares with this box, covering
        # alone would fuse two cells (a cut disc's chord is shorter than its diameter, so
        # containment, not equal extents)
        within = []
        for axis in (0, 1):
            inter = np.minimum(boxes[i, axis + 2], boxes[cand, axis + 2]) - np.maximum(boxes[i, axis], boxes[cand, axis])
            shorter = np.minimum(boxes[i, axis + 2] - boxes[i, axis], boxes[cand, axis + 2] - boxes[cand, axis])
            within.append(np.clip(inter, 0, None) / np.maximum(shorter, 1e-9) >= contain)
        along = within[0] & within[1]
        good = (iou > merge_iou) | ((cov > contain) & (np.minimum(aa, ab) > 0) & along)
        for axis in np.flatnonzero(sliver[i]):  # a piece a few pixels wide, held across the cut by the other box
            held = ((boxes[i, axis] >= boxes[cand, axis] - edge_margin)
                    & (boxes[i, axis + 2] <= boxes[cand, axis + 2] + edge_margin))
            good |= held & within[1 - axis]
        score = np.where(good, iou + cov + 1e-6, -1.0)  # a held sliver may not overlap its partner at all
        for t in np.unique(tile_index[cand]):  # best partner in each other tile
            sel = np.flatnonzero(tile_index[cand] == t)
            k = sel[np.argmax(score[sel])]
            if score[k] > 0:
                ri, rj = find(i), find(cand[k])
                if ri != rj:
                    parent[max(ri, rj)] = min(ri, rj)

    roots = np.array([find(i) for i in range(n)])
    uniq, inv = np.unique(roots, return_inverse=True)
    m = len(uniq)
    mb = np.empty((m, 4), np.float32)
    mb[:, :2], mb[:, 2:] = np.inf, -np.inf
    np.minimum.at(mb[:, 0], inv, boxes[:, 0])
    np.minimum.at(mb[:, 1], inv, boxes[:, 1])
    np.maximum.at(mb[:, 2], inv, boxes[:, 2])
    np.maximum.at(mb[:, 3], inv, boxes[:, 3])
    ms = np.full(m, -np.inf, np.float32)
    np.maximum.at(ms, inv, scores)
    ml = labels[uniq]
    keep = batched_nms(torch.from_numpy(mb), torch.from_numpy(ms), torch.from_numpy(ml), nms_iou).numpy()
    out = {"boxes": mb[keep], "scores": ms[keep], "labels": ml[keep]}
    if masks is not None:
        out["masks"] = _paste_groups(masks, inv, keep, tile_index, windows, (h, w))
    return out


def _paste_groups(masks: Sequence[np.ndarray], group: np.ndarray, keep: np.ndarray, tile_index: np.ndarray,
                  windows: Sequence[tuple[int, int, int, int]], image_hw: tuple[int, int]) -> np.ndarray:
    """``(len(keep), H, W)`` bool: for each kept group, the union of its members' tile masks
    pasted at their windows."""
    h, w = image_hw
    out = np.zeros((len(keep), h, w), bool)
    order = np.argsort(group, kind="stable")
    starts = np.searchsorted(group[order], keep)
    ends = np.searchsorted(group[order], keep, side="right")
    for k, (a, b) in enumerate(zip(starts, ends)):
        for i in order[a:b]:
            x0, y0, x1, y1 = (int(v) for v in windows[tile_index[i]])
            m = np.asarray(masks[i], bool)
            if m.shape != (y1 - y0, x1 - x0):
                raise ValueError(f"merge_tiles: mask {i} has shape {m.shape}, its tile window "
                                 f"{(x0, y0, x1, y1)} is {(y1 - y0, x1 - x0)}")
            out[k, y0:y1, x0:x1] |= m
    return out


# ---------------------------------------------------------------------------------------------
# prediction
# ---------------------------------------------------------------------------------------------
@contextlib.contextmanager
def _score_floor(model, floor):
    """Temporarily set the detector's inference score threshold."""
    if floor is None:
        yield
        return
    m = unwrap(model) if isinstance(model, nn.Module) else model
    obj, attr = None, None
    if hasattr(m, "roi_heads") and hasattr(m.roi_heads, "score_thresh"):
        obj, attr = m.roi_heads, "score_thresh"
    elif hasattr(m, "score_thresh"):
        obj, attr = m, "score_thresh"
    if obj is None:
        yield
        return
    old = getattr(obj, attr)
    setattr(obj, attr, float(floor))
    try:
        yield
    finally:
        setattr(obj, attr, old)


def _to_numpy(out: dict, mask_threshold: float = 0.5) -> dict[str, np.ndarray]:
    """numpy prediction of one torchvision output: 0-based labels, sorted by score; mask
    probabilities ``(N, 1, H, W)`` become ``(N, H, W)`` bool (``> mask_threshold``)."""
    boxes = out["boxes"].detach().float().cpu().numpy().astype(np.float32).reshape(-1, 4)
    scores = out["scores"].detach().float().cpu().numpy().astype(np.float32).reshape(-1)
    labels = out["labels"].detach().cpu().numpy().astype(np.int64).reshape(-1) - 1
    keep = labels >= 0  # background (RetinaNet may emit it) is never an object
    order = np.argsort(-scores[keep], kind="stable")
    res = {"boxes": boxes[keep][order], "scores": scores[keep][order], "labels": labels[keep][order]}
    if "masks" in out:
        m = out["masks"].detach()
        m = (m.reshape(len(boxes), *m.shape[-2:]) > mask_threshold).cpu().numpy()
        res["masks"] = m[keep][order]
    return res


@contextlib.contextmanager
def _whole_image_scale(model, hw: tuple[int, int], windows):
    """Resize tiles by the factor the model's transform would apply to the whole image.

    A torchvision detector rescales every input so that its short side meets ``min_size``; a
    640 px tile of a 1280x960 field would otherwise be enlarged far more than the field was
    in training, and the cells would look bigger than any the model has seen. Tiles of one
    chunk share a size (``tile_windows``); mixed sizes keep the model's own resizing.
    """
    tr = getattr(unwrap(model) if isinstance(model, nn.Module) else model, "transform", None)
    sizes = {(x1 - x0, y1 - y0) for x0, y0, x1, y1 in windows}
    if tr is None or not hasattr(tr, "fixed_size") or len(sizes) != 1:
        yield
        return
    f = min(float(tr.min_size[-1]) / min(hw), float(tr.max_size) / max(hw))
    (tw, th), = sizes
    old = tr.fixed_size
    tr.fixed_size = (max(1, round(tw * f)), max(1, round(th * f)))
    try:
        yield
    finally:
        tr.fixed_size = old


#: the longest side, in pixels, an image given a ``scale`` may reach at the model's input (a whole
#: field at the training magnification: larger ones are predicted tiled)
MAX_SCALED_SIDE = 4096


def _input_factor(tr, hw: tuple[int, int], factor: float, train_hw=None) -> float:
    """The resize :func:`_rescaled` applies: ``factor`` times the one the transform ``tr`` gave the
    training images (``train_hw``; without it, this image of ``hw``)."""
    base = tuple(int(v) for v in train_hw) if train_hw else hw
    return min(float(tr.min_size[-1]) / min(base), float(tr.max_size) / max(base)) * float(factor)


def _scaled_side(model, hw: tuple[int, int], factor: float, train_hw=None) -> int:
    """The long side :func:`_rescaled` gives an image of ``hw`` at ``factor`` (0 without a transform)."""
    tr = getattr(unwrap(model) if isinstance(model, nn.Module) else model, "transform", None)
    if tr is None or not hasattr(tr, "min_size"):
        return 0
    return int(round(max(hw) * _input_factor(tr, hw, factor, train_hw)))


@contextlib.contextmanager
def _rescaled(model, hw: tuple[int, int], factor: float, train_hw=None):
    """The model's input resized by ``factor`` times the magnification the model saw its training
    images at (``train_hw``: their size; None, for a model that does not record it: the scale its
    transform gives this image). Relative to each image's own resize, a field larger than the
    training images was shrunk first: the model's own pixel size gave a third of the magnification
    on a field three times as wide."""
    tr = getattr(unwrap(model) if isinstance(model, nn.Module) else model, "transform", None)
    if tr is None or not hasattr(tr, "fixed_size"):
        raise ValueError("scale needs a torchvision detector (its transform sets the input size)")
    f = _input_factor(tr, hw, factor, train_hw)
    old = tr.fixed_size
    tr.fixed_size = (max(1, round(hw[1] * f)), max(1, round(hw[0] * f)))
    try:
        yield
    finally:
        tr.fixed_size = old


def predict(model, data, *, batch_size: int = 4, device: "str | torch.device | None" = None,
            amp: bool | None = None, score_floor: float | None = None, tile: int | None = None,
            overlap: float = 0.2, progress: bool = True, merge_iou: float = 0.5,
            nms_iou: float | None = None, edge_margin: float = 3.0, preprocess: Any = "model",
            thresholds: Any = None, mask_threshold: float = 0.5, scale: "float | str | None" = None,
            tile_resize: str = "image", tta: bool = False, tta_iou: float = 0.6,
            tta_skip: float = 0.05) -> Predictions:
    """Predict every image of ``data``; one prediction dict per image, in order.

    The result is a :class:`~smearlab.detection.postprocess.Predictions` list carrying the
    model's class names (``detector_config.class_names``), so that scoring it on a dataset whose
    classes are in another order maps labels by name instead of by position.

    Parameters
    ----------
    model : a torchvision detector (or any callable ``model(list_of_CHW_tensors) -> list of
        {"boxes", "scores", "labels" (1-based)}``, plus ``"masks"`` ``(N, 1, H, W)``
        probabilities for instance masks, as torchvision's Mask R-CNN gives them).
    data : a SmearDataset, a DetectionDataset, a list of Samples, of ``(H, W, 3)`` uint8
        arrays or of ``(C, H, W)`` float tensors, or one image.
    batch_size : images (or tiles) per forward pass; consecutive images of one size only (a batch
        is padded to its largest image, which would make a prediction depend on its neighbours).
    device : None: the model's own device; ``"auto"``, ``"cpu"``, ``"cuda"``: move the model.
    amp : mixed precision (None: on CUDA only).
    score_floor : keep detections down to this score (None: the model's own threshold).
    tile : tile size in pixels for large fields (None: whole images).
    overlap : the fraction of a tile shared with its neighbour (see :func:`tile_windows`), above 0.
    merge_iou, nms_iou, edge_margin : tune :func:`merge_tiles` (tiled prediction only); ``nms_iou``
        None: the model's own NMS IoU (``box_nms_thresh``; 0.5 for a model without one), so that
        a tiled field keeps the overlapping cells the same model keeps on a whole image.
    progress : tqdm progress bar.
    preprocess : ``"model"`` applies the pipeline saved with the model (``preprocess.json``, as
        in training); a ``Preprocess`` or its dict applies that one; None applies nothing.
    thresholds : None returns raw detections (for caching and COCO AP); ``"model"`` applies the
        tuned ``thresholds.json`` saved with the model; a ``Thresholds`` or its dict applies that.
    tile_resize : with ``tile``: ``"image"`` resizes every tile by the factor the model would apply
        to the whole image (a model trained on whole images); ``"tile"`` lets the model resize each
        tile as it resized its training tiles (a model trained on tiles of this size, e.g.
        :func:`smearlab.data.derive.box_tiles`); ``"training"`` resizes every tile by the factor
        the model applied to its training images (``detector_config.train_image_size``: a large
        field cut into tiles is seen at the training magnification, as :func:`smearlab.batch.predict`
        tiles automatically).
    scale : None: every image at the model's own input scale. ``"auto"``: scale-aware, each image
        resized so that its cells look the size they had in training, judged from passes at a
        few zooms (from the most confident one, the factor at which the reference class's median
        size matches ``detector_config.object_sizes``; see :mod:`smearlab.detection.scale`;
        images where nothing is found confidently stay as they are).
        A number: resize every image by it, relative to the magnification the model saw its
        training images at (``detector_config.train_image_size``; ``0.5`` for pixels half as
        large as in training: 1 predicts a field at the training magnification, whole; a field
        whose input would pass :data:`MAX_SCALED_SIDE` pixels is refused: tile it instead).
        ``"auto"`` leaves out the looks beyond that size. Not with ``tile``. With a scale the returned predictions'
        ``zooms`` attribute lists the factor each image was predicted at (the one ``"auto"``
        chose: a factor far from what the images should need is the first thing to check).
    tta : test-time augmentation: predict each image as it is and flipped left-right, upside down
        and both, map the boxes back and fuse the four views by weighted box fusion
        (:func:`~smearlab.detection.postprocess.fuse_boxes`): better-placed boxes for four times the
        compute (``batch_size`` counts views: at least the four views of one image, or tile, go
        through at once). With ``tile`` each tile is fused before the tiles are merged; with
        ``scale="auto"`` the zoom is judged without flips and the image then predicted with them.
        Box detectors only (a Mask R-CNN's masks are not fused). Fused scores are lower than plain
        ones where the views disagree, so thresholds must be tuned on predictions made the same
        way: thresholds tuned without ``tta`` (``Thresholds.tta``) are refused, and the other
        way round.
    tta_iou : the overlap above which boxes of different views are fused (with ``tta``).
    tta_skip : boxes of a view scoring below this take no part in the fusion (with ``tta``). The
        defaults were chosen on the CBC validation split (``benchmarks/detection_cbc_tta.py``; every
        IoU from 0.5 to 0.7 scored within 0.002 mAP of them).
    mask_threshold : a Mask R-CNN's pixel belongs to an instance when its mask probability is
        ``> mask_threshold`` (torchvision's and Detectron's 0.5 by default). Predictions of a
        mask model hold ``"masks"`` ``(N, H, W)`` bool at each input image's size (with
        ``tile``, pasted from the tiles; see :func:`merge_tiles`).
    """
    if not 0.0 <= float(mask_threshold) < 1.0:
        raise ValueError(f"mask_threshold must be in [0, 1), got {mask_threshold}")
    if tile_resize not in ("image", "tile", "training"):
        raise ValueError(f"tile_resize must be 'image', 'tile' or 'training', got {tile_resize!r}")

    if tile and not 0.0 < float(overlap) < 1.0:  # tiles edge to edge: a cell on a seam is two cells
        raise ValueError(f"overlap must be a fraction in (0, 1) when tiling, got {overlap}: without overlap the "
                         "pieces of an object cut by a seam cannot be joined")
    if scale is not None and tile:
        raise ValueError("scale and tile cannot be combined: tile a field at the model's scale, or rescale it")
    check_zoom(scale)
    if tta and not 0.0 < float(tta_iou) < 1.0:
        raise ValueError(f"tta_iou must be in (0, 1), got {tta_iou}")
    if tta and not 0.0 <= float(tta_skip) < 1.0:
        raise ValueError(f"tta_skip must be in [0, 1), got {tta_skip}")
    is_module = isinstance(model, nn.Module)
    if device is None:
        dev = next(iter(model.parameters())).device if is_module and any(True for _ in model.parameters()) \
            else torch.device("cpu")
    else:
        dev = resolve_device(device)
        if is_module:
            model.to(dev)
    use_amp = (dev.type == "cuda") if amp is None else bool(amp and dev.type == "cuda")
    channels = _model_channels(unwrap(model) if is_module else model)
    if tta and is_module and is_mask_model(unwrap(model)):
        raise ValueError("tta fuses boxes only; a Mask R-CNN's masks cannot be fused: predict without tta")
    pre = _resolve_extra(model, preprocess, "preprocess_spec", "preprocess")
    pre = None if pre is None else as_preprocess(pre)
    # Preprocess.apply marks what it made: a second pass would process it twice (in any container)
    n, get = _items(data, None if pre is None else pre.check_raw)
    if pre is not None:
        raw_get = get

        def get(i):
            img = raw_get(i)
            if not isinstance(img, np.ndarray):
                raise TypeError("preprocessing needs numpy RGB images (or samples), not tensors")
            return pre(img)
    was_training = model.training if is_module else False
    if is_module:
        model.eval()

    bar = None
    if progress:
        bar = tqdm(total=n, desc="predict", unit="img")

    cfg = getattr(unwrap(model) if is_module else model, "detector_config", None)
    net = unwrap(model) if is_module else model
    heads = getattr(net, "roi_heads", None)  # torchvision's cap of one forward pass (RetinaNet: on the model)
    model_cap = getattr(heads if heads is not None else net, "detections_per_img", None)
    capped = {"passes": 0, "images": 0}  # how often a cap cut detections (said once, at the end)

    def forward(batch: list[torch.Tensor]) -> list[dict]:
        outs = []
        # torchvision pads a batch to its largest image, which changes the others' predictions:
        # only images of one size go through together, so a result does not depend on its batch
        for _, same in itertools.groupby(batch, key=lambda b: tuple(b.shape)):
            with torch.autocast(device_type=dev.type, enabled=use_amp):
                outs.extend(model([b.to(dev, non_blocking=True) for b in same]))
        return [_to_numpy(o, mask_threshold) for o in outs]

    def note(outs: list[dict]) -> list[dict]:  # kept passes only (not the zoom probes set aside)
        if isinstance(model_cap, int):
            capped["passes"] += sum(len(o["boxes"]) >= model_cap for o in outs)
        return outs

    train_hw = getattr(cfg, "train_image_size", None) if cfg is not None else None
    own_nms = getattr(getattr(net, "roi_heads", None), "nms_thresh", None) or getattr(net, "nms_thresh", None)
    merge_nms = float(nms_iou) if nms_iou is not None else float(own_nms) if own_nms else 0.5
    if tile and tile_resize == "training" and not train_hw:
        raise ValueError("tile_resize='training' needs the model's train_image_size (detector_config), which this "
                         "model does not record")
    max_dets = cfg.detections_per_img if cfg is not None else 300

    def run(batch: list[torch.Tensor]) -> list[dict]:
        """One prediction per image of ``batch``: the model's, or with ``tta`` its four views fused."""
        if not tta:
            return note(forward(batch))
        outs = note(forward([img.flip(dims) if dims else img for img in batch for dims in FLIPS]))
        k = len(FLIPS)
        return [fuse_boxes([unflip_boxes(o, dims, tuple(img.shape[-2:]))
                            for o, dims in zip(outs[i * k:(i + 1) * k], FLIPS)], tta_iou, max_dets, tta_skip)
                for i, img in enumerate(batch)]

    step = max(1, batch_size // len(FLIPS)) if tta else batch_size  # images (or tiles) per run()

    results: list[dict] = []
    zooms: list[float] = []  # with scale: the factor each image was predicted at
    windows: list[int] = []  # per image, the forward passes (tiles) its prediction was merged from
    try:
        with torch.inference_mode(), _score_floor(model, score_floor):
            if scale is not None:
                if scale == "auto" and (cfg is None or not cfg.object_sizes):
                    raise ValueError("scale='auto' needs the model's training scale (detector_config.object_sizes, "
                                     "saved by training since it was added); give a number instead")
                for i in range(n):
                    img = _to_tensor(get(i), channels)
                    hw = tuple(img.shape[-2:])
                    probes: dict[float, dict] = {}
                    if scale == "auto":
                        for pf in PROBE_FACTORS:
                            if _scaled_side(model, hw, pf, train_hw) > MAX_SCALED_SIDE:
                                continue  # a look the field is too large for (tile it: scale=None)
                            with _rescaled(model, hw, pf, train_hw):
                                probes[pf] = forward([img])[0]
                        f = choose_factor(probes, hw, cfg) if probes else 1.0
                    else:
                        f = float(scale)
                    side = _scaled_side(model, hw, f, train_hw)
                    if side > MAX_SCALED_SIDE:  # at the training magnification a large field is huge
                        raise ValueError(f"image {i} ({hw[1]}x{hw[0]}) at zoom {f:g} of the training magnification "
                                         f"would be {side} px on its long side (at most {MAX_SCALED_SIDE}): predict "
                                         "it tiled (tile='auto' in smearlab predict, without a scale), or resize it")
                    zooms.append(f)
                    if f in probes and not tta:
                        results.append(note([probes[f]])[0])
                    else:
                        with _rescaled(model, hw, f, train_hw):
                            results.append(run([img])[0])
                    windows.append(1)
                    if bar is not None:
                        bar.update(1)
            elif not tile:
                for s in range(0, n, step):
                    idx = range(s, min(n, s + step))
                    results.extend(run([_to_tensor(get(i), channels) for i in idx]))
                    windows.extend(1 for _ in idx)
                    if bar is not None:
                        bar.update(len(idx))
            else:
                for i in range(n):
                    img = _to_tensor(get(i), channels)
                    h, w = img.shape[-2:]
                    wins = tile_windows(h, w, int(tile), overlap)
                    parts, tix = [], []
                    for s in range(0, len(wins), step):
                        chunk = wins[s:s + step]
                        resize = _whole_image_scale(model, (h, w), chunk) if tile_resize == "image" \
                            else _whole_image_scale(model, tuple(train_hw), chunk) if tile_resize == "training" \
                            else contextlib.nullcontext()
                        with resize:
                            outs = run([img[:, y0:y1, x0:x1] for x0, y0, x1, y1 in chunk])
                        for k, (o, (x0, y0, _, _)) in enumerate(zip(outs, chunk)):
                            o["boxes"] = o["boxes"] + np.array([x0, y0, x0, y0], np.float32)
                            parts.append(o)
                            tix.append(np.full(len(o["boxes"]), s + k))
                    windows.append(len(wins))
                    with_masks = bool(parts) and all("masks" in p for p in parts)
                    if len(wins) == 1:  # the window is the whole image
                        results.append(parts[0])
                    else:
                        tile_masks = [m for p in parts for m in p["masks"]] if with_masks else None
                        merged = merge_tiles(np.concatenate([p["boxes"] for p in parts]),
                                             np.concatenate([p["scores"] for p in parts]),
                                             np.concatenate([p["labels"] for p in parts]),
                                             np.concatenate(tix), wins, (h, w), merge_iou=merge_iou,
                                             nms_iou=merge_nms, edge_margin=edge_margin, masks=tile_masks)
                        order = np.argsort(-merged["scores"], kind="stable")
                        results.append({k: v[order] for k, v in merged.items()})
                    if bar is not None:
                        bar.update(1)
    finally:
        if bar is not None:
            bar.close()
        if is_module and was_training:
            model.train()
    # per image, the tiles (forward passes) its prediction was merged from: the cap is per pass
    results = Predictions(results, list(cfg.class_names) if cfg is not None else None, windows=windows, tta=tta)
    th = _resolve_extra(model, thresholds, "thresholds", "thresholds")
    if th is not None:
        th = th if isinstance(th, Thresholds) else Thresholds(**th)
        th.check_tta(tta)
        caps = per_image_caps(results, th.max_dets, len(results))
        results = th.apply(results)
        capped["images"] = sum(cap is not None and len(r["boxes"]) >= cap for r, cap in zip(results, caps))
    if capped["passes"] or capped["images"]:
        log.warning("a detection cap was reached: %d forward pass(es) returned the model's most boxes "
                    "(detections_per_img %s) and %d of %d image(s) hold the thresholds' most (max_dets %s per pass); "
                    "counts there may be short: raise detector_config.detections_per_img or max_dets, or tile the "
                    "field", capped["passes"], model_cap, capped["images"], n,
                    th.max_dets if th is not None else None)
    if scale is not None:
        results.zooms = zooms
    return results



def predict_fields(model, images, *, batch_size: int = 4, thresholds: Any = None, tta: bool = False,
                   device: "str | torch.device | None" = None) -> Predictions:
    """:func:`predict` as ``smearlab predict`` does it: each image more than 1.5 times the size of
    the training images (:func:`~smearlab.detection.models.auto_tile`) cut into tiles of the
    training image size at the training magnification, an image smaller than the training images
    on both sides predicted whole at the training magnification (``scale=1``), the others whole.
    Whatever compares models or counts should see them this way: on a field larger than the
    training images the whole-image resize shrinks the cells (a count error of 0.90 where
    ``smearlab predict`` gave 0.83), and on a smaller one it enlarged them (a crop of a quarter
    of a training field showed its cells twice their training size).

    Parameters
    ----------
    model : a detector with ``detector_config`` (``train_image_size``; a model without it is
        never tiled).
    images : images, Samples or a SmearDataset, in order.
    batch_size, thresholds, tta, device : as :func:`predict`.
    """
    items = list(images)
    cfg = getattr(unwrap(model) if isinstance(model, nn.Module) else model, "detector_config", None)
    def hw(x) -> tuple[int, int]:  # a tensor is (C, H, W): its shape[:2] read 3 x H, and a field was not tiled
        if getattr(x, "hw", None):
            return tuple(x.hw)
        return tuple(x.shape[-2:]) if isinstance(x, torch.Tensor) else tuple(np.asarray(x).shape[:2])
    def plan(x) -> "int | str | None":  # a tile size, "small" (whole at the training magnification) or None
        if cfg is None:
            return None
        t = auto_tile(cfg, hw(x))
        if t is None and smaller_than_training(cfg, hw(x)):
            return "small"
        return t

    tiles = [plan(x) for x in items]
    got: dict[int, tuple[dict, int]] = {}
    names = None
    for t in dict.fromkeys(tiles):  # one call per tile size (None: whole images, batched)
        idx = [i for i, v in enumerate(tiles) if v == t]
        tile = t if isinstance(t, int) else None
        part = predict(model, [items[i] for i in idx], batch_size=batch_size, thresholds=thresholds, tile=tile,
                       tile_resize="training" if tile else "image", scale=1.0 if t == "small" else None,
                       progress=False, tta=tta, device=device)
        names = part.class_names
        got.update({i: (p, w) for i, p, w in zip(idx, part, part.windows or [1] * len(part))})
    return Predictions([got[i][0] for i in range(len(items))], names, windows=[got[i][1] for i in range(len(items))],
                       tta=tta)


#: The views of test-time augmentation: the image dimensions each one flips (none, left-right,
#: upside down, both).
FLIPS = ((), (-1,), (-2,), (-2, -1))


def unflip_boxes(prediction: dict, dims: tuple[int, ...], hw: tuple[int, int]) -> dict:
    """A prediction made on an image flipped along ``dims`` (-1 left-right, -2 upside down),
    with its boxes mapped back onto the unflipped image of size ``hw``."""
    b = np.asarray(prediction["boxes"], np.float32).copy()
    h, w = hw
    if -1 in dims:
        b[:, [0, 2]] = w - b[:, [2, 0]]
    if -2 in dims:
        b[:, [1, 3]] = h - b[:, [3, 1]]
    return {**prediction, "boxes": b}


def _resolve_extra(model, value, attribute: str, what: str):
    """``"model"`` -> what was saved with the model (or None); anything else as given."""
    if isinstance(value, str):
        if value != "model":
            raise ValueError(f"{what} must be 'model', None or a {what} object, got {value!r}")
        m = unwrap(model) if isinstance(model, nn.Module) else model
        return getattr(m, attribute, None)
    return value
