"""Anchors fitted to the cells: how well a detector's anchors cover a dataset's boxes, and anchor
sizes and aspect ratios chosen from the training boxes so that every class is covered.

Coverage is the *best-possible recall* (BPR): the fraction of ground-truth boxes, at the
model's input scale, that some anchor of the built detector matches at IoU >= 0.5 where the
anchors really sit (:func:`grid_recall`: on each feature level's grid, torchvision's rounded
anchor shapes; the RPN can only learn to propose a box that some anchor overlaps well enough to
be labelled positive, torchvision's ``rpn_fg_iou_thresh`` 0.7, or the best anchor of a box when
none does). The shape-only figure, box and anchor centred on one point (YOLOv5's autoanchor
check, :func:`best_possible_recall`), is an upper bound: on the MobileNet detector, whose
coarsest grids have strides of 32 and 64 pixels, it said 1.0 for CBC's platelets where 0.73 of
them have an anchor on the grid.
"""
from __future__ import annotations

import dataclasses
import logging
import math
from typing import Any

import numpy as np

from ..data.boxes import check_boxes
from ..data.sample import SmearDataset
from .models import DetectorConfig, anchor_generator, n_feature_levels

log = logging.getLogger(__name__)

#: IoU at which an anchor covers a box.
COVER_IOU = 0.5


def input_scale(hw: tuple[int, int], cfg: DetectorConfig) -> float:
    """The factor by which the detector's transform resizes an image of ``hw`` (torchvision's
    ``GeneralizedRCNNTransform``: the short side to ``min_size`` unless the long side would pass
    ``max_size``).

    Parameters
    ----------
    hw : ``(height, width)`` of the image.
    cfg : the detector's settings (``min_size``, ``max_size``).
    """
    short, long = min(hw), max(hw)
    return min(cfg.min_size / short, cfg.max_size / long)


def _resized(hw: tuple[int, int], cfg: DetectorConfig) -> tuple[int, int]:
    """The size the detector's transform resizes ``hw`` to: each side times :func:`input_scale`,
    rounded down (torchvision's ``interpolate`` with ``recompute_scale_factor``), so that boxes
    are scaled per axis by new over old size, as its ``resize_boxes`` does."""
    f = input_scale(hw, cfg)
    return int(math.floor(hw[0] * f)), int(math.floor(hw[1] * f))


def box_shapes(dataset: SmearDataset, cfg: DetectorConfig) -> dict[str, np.ndarray]:
    """``{class name: (N, 2) widths and heights}`` of the boxes at the detector's input scale.

    Parameters
    ----------
    dataset : the (training) boxes.
    cfg : the detector's settings (input size).
    """
    check_boxes(dataset)  # a zero-size box would skew the fitted aspect ratios without a word
    shapes: dict[str, list] = {n: [] for n in dataset.class_names}
    for s in dataset:
        if not len(s.boxes):
            continue
        (h, w), (h2, w2) = s.hw, _resized(s.hw, cfg)
        keep = ~s.crowd  # the box of a clump (a COCO crowd region) is no cell's size
        wh = (s.boxes[:, 2:] - s.boxes[:, :2])[keep] * np.array([w2 / w, h2 / h])
        for lab, row in zip(s.labels[keep].tolist(), wh):
            shapes[dataset.class_names[lab]].append(row)
    return {n: np.asarray(v, np.float64).reshape(-1, 2) for n, v in shapes.items()}


def anchor_shapes(cfg: DetectorConfig) -> np.ndarray:
    """``(A, 2)`` widths and heights of every anchor the detector's config makes (all levels).

    Parameters
    ----------
    cfg : the detector's settings (``anchor_sizes``, ``aspect_ratios``, the arch's defaults).
    """
    gen = anchor_generator(cfg)
    out = []
    for sizes, ratios in zip(gen.sizes, gen.aspect_ratios):
        for size in sizes:
            for r in ratios:  # torchvision: h = size * sqrt(r), w = size / sqrt(r)
                out.append((size / np.sqrt(r), size * np.sqrt(r)))
    return np.asarray(out, np.float64)


def shape_iou(wh: np.ndarray, anchors: np.ndarray) -> np.ndarray:
    """``(N, A)`` IoU of boxes and anchors of the given widths and heights, centred together.

    Parameters
    ----------
    wh : ``(N, 2)`` box widths and heights.
    anchors : ``(A, 2)`` anchor widths and heights.
    """
    inter = np.minimum(wh[:, None, 0], anchors[None, :, 0]) * np.minimum(wh[:, None, 1], anchors[None, :, 1])
    union = (wh[:, 0] * wh[:, 1])[:, None] + (anchors[:, 0] * anchors[:, 1])[None] - inter
    return inter / np.maximum(union, 1e-9)


def best_possible_recall(shapes: dict[str, np.ndarray], anchors: np.ndarray,
                         iou: float = COVER_IOU) -> dict[str, float | None]:
    """Per class, the fraction of boxes that some anchor covers at ``iou`` (None: no box).

    Parameters
    ----------
    shapes : :func:`box_shapes`.
    anchors : :func:`anchor_shapes`.
    iou : the IoU an anchor must reach.
    """
    return {n: (float((shape_iou(wh, anchors).max(1) >= iou).mean()) if len(wh) else None)
            for n, wh in shapes.items()}


def grid_recall(dataset: SmearDataset, cfg: DetectorConfig, iou: float = COVER_IOU) -> dict[str, float | None]:
    """Per class, the fraction of boxes (at the model's input scale) that some anchor of the
    detector ``cfg`` builds matches at ``iou`` on the grid where the anchors sit: each feature
    level's anchors (torchvision's rounded cell anchors) centred on multiples of its stride,
    measured from the backbone's output for the image's padded input; for each box the grid
    points around its centre are tried (None: a class without boxes).

    Parameters
    ----------
    dataset : the boxes.
    cfg : the detector's settings (a fresh detector is built from them, without weights).
    iou : the IoU an anchor must reach.
    """
    cells = [a.numpy().astype(np.float64) for a in anchor_generator(cfg).cell_anchors]  # (A, 4) per level
    div = int((cfg.extra or {}).get("size_divisible", 32))  # torchvision's transform pads to a multiple of it
    strides: dict[tuple[int, int], list[tuple[float, float, int, int]]] = {}
    found: dict[str, list[bool]] = {n: [] for n in dataset.class_names}
    for s in dataset:
        if not len(s.boxes):
            continue
        h, w = _resized(s.hw, cfg)  # as the model's transform resizes (a box a pixel off near IoU 0.5 flipped)
        padded = (-(-h // div) * div, -(-w // div) * div)
        if padded not in strides:
            strides[padded] = _level_grids(cfg, padded)
            if len(strides[padded]) != len(cells):  # zip would drop levels and understate coverage
                raise ValueError(f"{cfg.arch}: {len(strides[padded])} feature levels but {len(cells)} anchor sets")
        b = s.boxes[~s.crowd].astype(np.float64) * np.array([w / s.hw[1], h / s.hw[0]] * 2)
        if not len(b):
            continue
        cx, cy = (b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2
        best = np.zeros(len(b))
        for (sy, sx, fh, fw), cell in zip(strides[padded], cells):
            for kx in (np.floor(cx / sx), np.floor(cx / sx) + 1):
                for ky in (np.floor(cy / sy), np.floor(cy / sy) + 1):
                    px, py = np.clip(kx, 0, fw - 1) * sx, np.clip(ky, 0, fh - 1) * sy
                    a = cell[None] + np.stack([px, py, px, py], 1)[:, None]          # (N, A, 4)
                    iw = np.clip(np.minimum(a[..., 2], b[:, None, 2]) - np.maximum(a[..., 0], b[:, None, 0]), 0, None)
                    ih = np.clip(np.minimum(a[..., 3], b[:, None, 3]) - np.maximum(a[..., 1], b[:, None, 1]), 0, None)
                    inter = iw * ih
                    union = ((a[..., 2] - a[..., 0]) * (a[..., 3] - a[..., 1])
                             + ((b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]))[:, None] - inter)
                    best = np.maximum(best, (inter / np.maximum(union, 1e-9)).max(1))
        for lab, ok in zip(s.labels[~s.crowd].tolist(), (best >= iou).tolist()):
            found[dataset.class_names[lab]].append(ok)
    return {n: (float(np.mean(v)) if v else None) for n, v in found.items()}


_BACKBONES: dict[tuple, Any] = {}
_GRIDS: dict[tuple, list[tuple[int, int, int, int]]] = {}


def _level_grids(cfg: DetectorConfig, padded: tuple[int, int]) -> list[tuple[int, int, int, int]]:
    """Per feature level ``(stride y, stride x, rows, columns)`` of the arch's backbone on a padded
    input, measured once per arch and size (one backbone without weights per arch, on zeros)."""
    arch = (cfg.arch, cfg.in_channels, cfg.fine_level, repr(sorted((cfg.extra or {}).items())))
    key = (*arch, tuple(padded))
    if key not in _GRIDS:
        import torch

        if arch not in _BACKBONES:
            from .models import build_detector
            _BACKBONES[arch] = build_detector(dataclasses.replace(
                cfg, weights_path=None, backbone_weights=None, anchor_sizes=None, aspect_ratios=None)).eval().backbone
        with torch.no_grad():
            feats = _BACKBONES[arch](torch.zeros(1, cfg.in_channels, *padded))
        # the tiny models' stride-4 level ("fine") feeds the box head only: the RPN's anchors skip it
        _GRIDS[key] = [(padded[0] // fm.shape[-2], padded[1] // fm.shape[-1], fm.shape[-2], fm.shape[-1])
                       for name, fm in feats.items() if name != "fine"]
    return _GRIDS[key]


def fit_anchors(dataset: SmearDataset, cfg: DetectorConfig, *, ratios: int = 3, seed: int = 0) -> DetectorConfig:
    """``cfg`` with anchor sizes and aspect ratios fitted to the boxes of ``dataset``.

    The sizes (one per feature level, smallest on the finest level) are the centres of a
    k-means of ``log sqrt(w * h)`` over every box with each class weighted equally, so that a
    rare small class (platelets) gets its own size; the aspect ratios (``h / w``) are the 10th,
    50th and 90th percentiles of the boxes' ratios (the same for every level, as torchvision
    takes them). Fitting is done on the training boxes only.

    Parameters
    ----------
    dataset : the training boxes.
    cfg : the detector's settings; its arch decides the number of feature levels.
    ratios : how many aspect ratios (1 or 3).
    seed : seeds the k-means.

    Returns
    -------
    DetectorConfig
        a copy with ``anchor_sizes`` and ``aspect_ratios`` set (``cfg`` is not changed).
    """
    shapes = box_shapes(dataset, cfg)
    groups = [wh for wh in shapes.values() if len(wh)]
    if not groups:
        raise ValueError(f"{dataset.name}: no boxes to fit anchors to")
    levels = n_feature_levels(cfg.arch)
    log_sizes = np.concatenate([0.5 * np.log(np.maximum(wh[:, 0] * wh[:, 1], 1.0)) for wh in groups])
    weights = np.concatenate([np.full(len(wh), 1.0 / len(wh)) for wh in groups])
    centres = _weighted_kmeans_1d(log_sizes, weights, levels, seed)
    sizes = tuple((max(4, int(round(float(np.exp(c))))),) for c in sorted(centres))
    if cfg.arch == "fasterrcnn_mobilenet":  # one level set shared by every level
        sizes = (tuple(s[0] for s in sizes),) * levels
    all_wh = np.concatenate(groups)
    r = all_wh[:, 1] / np.maximum(all_wh[:, 0], 1e-6)
    qs = (0.5,) if ratios == 1 else (0.1, 0.5, 0.9)
    aspect = tuple(sorted({round(float(np.quantile(r, q)), 2) for q in qs}))
    return dataclasses.replace(cfg, anchor_sizes=sizes, aspect_ratios=aspect)


def anchor_report(dataset: SmearDataset, before: DetectorConfig, after: DetectorConfig) -> dict:
    """Best-possible recall per class with the anchors of ``before`` and of ``after``, on the grid
    (:func:`grid_recall`) and shape-only (:func:`best_possible_recall`, an upper bound).

    Parameters
    ----------
    dataset : the boxes to cover (the training split, or any other).
    before, after : two detector configs (e.g. torchvision's anchors and the fitted ones).

    Returns
    -------
    dict
        ``{"before": {class: BPR}, "after": {class: BPR}, "before_shape", "after_shape" (the
        shape-only figures), "anchor_sizes": ..., "aspect_ratios": ..., "boxes": {class: count}}``.
    """
    shapes = box_shapes(dataset, before)
    return {"before": grid_recall(dataset, before), "after": grid_recall(dataset, after),
            "before_shape": best_possible_recall(shapes, anchor_shapes(before)),
            "after_shape": best_possible_recall(box_shapes(dataset, after), anchor_shapes(after)),
            "anchor_sizes": [list(s) for s in after.anchor_sizes] if after.anchor_sizes else None,
            "aspect_ratios": list(after.aspect_ratios) if after.aspect_ratios else None,
            "boxes": {n: int(len(v)) for n, v in shapes.items()}}


def _weighted_kmeans_1d(x: np.ndarray, w: np.ndarray, k: int, seed: int, iters: int = 100) -> np.ndarray:
    """Centres of a weighted 1-D k-means (initialised at weighted quantiles)."""
    order = np.argsort(x)
    cw = np.cumsum(w[order]) / w.sum()
    centres = np.array([x[order][np.searchsorted(cw, (i + 0.5) / k)] for i in range(k)], np.float64)
    for _ in range(iters):
        assign = np.argmin(np.abs(x[:, None] - centres[None]), axis=1)
        new = np.array([np.average(x[assign == j], weights=w[assign == j]) if (assign == j).any() else centres[j]
                        for j in range(k)])
        if np.allclose(new, centres):
            break
        centres = new
    return centres


def fitted_by_default(cfg: DetectorConfig, dataset: SmearDataset, anchors: str = "fit") -> DetectorConfig:
    """The config a training run uses: anchors fitted to ``dataset`` (``anchors="fit"``, the
    default, when ``cfg`` sets none) where they cover its boxes better than the arch's own (the
    mean over classes of :func:`grid_recall`; on a tie the arch's stay: on the MobileNet and
    ResNet detectors, whose own anchors already reach every CBC class, fitting lowered the
    coverage and cut RetinaNet's nine anchors per place to three), or ``cfg`` as it is
    (``"default"``: torchvision's or the arch's own anchors, or anchors the config already names).

    Parameters
    ----------
    cfg : the detector's settings.
    dataset : the training boxes.
    anchors : ``"fit"`` or ``"default"``.
    """
    if anchors not in ("fit", "default"):
        raise ValueError(f"anchors must be 'fit' or 'default', got {anchors!r}")
    if anchors == "default" or cfg.anchor_sizes is not None or cfg.aspect_ratios is not None:
        return cfg
    fitted = fit_anchors(dataset, cfg)

    def mean_cover(c: DetectorConfig) -> float:
        v = [x for x in grid_recall(dataset, c).values() if x is not None]
        return float(np.mean(v)) if v else 0.0
    own, new = mean_cover(cfg), mean_cover(fitted)
    if new > own:
        return fitted
    log.info("anchors fitted to %s cover its boxes no better than the %s's own (%.3f against %.3f): the arch's "
             "anchors kept", dataset.name, cfg.arch, new, own)
    return cfg
