"""Anchors fitted to the cells: how well a detector's anchors cover a dataset's boxes, and anchor
sizes and aspect ratios chosen from the training boxes so that every class is covered.

Coverage is the *best-possible recall* (BPR): the fraction of ground-truth boxes, at the
model's input scale, that some anchor matches at IoU >= 0.5 when both are centred on the same
point (the shape-only IoU of YOLOv5's autoanchor check; the RPN can only learn to propose a box
that some anchor overlaps well enough to be labelled positive, torchvision's
``rpn_fg_iou_thresh`` 0.7, or the best anchor of a box when none does).
"""
from __future__ import annotations

import dataclasses
import numpy as np

from ..data.boxes import check_boxes
from ..data.sample import SmearDataset
from .models import DetectorConfig, anchor_generator, n_feature_levels

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
        f = input_scale(s.hw, cfg)
        wh = (s.boxes[:, 2:] - s.boxes[:, :2]) * f
        for lab, row in zip(s.labels.tolist(), wh):
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
    """Best-possible recall per class with the anchors of ``before`` and of ``after``.

    Parameters
    ----------
    dataset : the boxes to cover (the training split, or any other).
    before, after : two detector configs (e.g. torchvision's anchors and the fitted ones).

    Returns
    -------
    dict
        ``{"before": {class: BPR}, "after": {class: BPR}, "anchor_sizes": ..., "aspect_ratios":
        ..., "boxes": {class: count}}``.
    """
    shapes = box_shapes(dataset, before)
    return {"before": best_possible_recall(shapes, anchor_shapes(before)),
            "after": best_possible_recall(box_shapes(dataset, after), anchor_shapes(after)),
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
    default, when ``cfg`` sets none), or ``cfg`` as it is (``"default"``: torchvision's or the
    arch's own anchors, or anchors the config already names).

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
    return fit_anchors(dataset, cfg)
