"""Semantic-segmentation metrics: Dice and IoU per class over a dataset or per image."""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from ..core.errors import DataError
from ..data.sample import IGNORE  # noqa: F401  (the class-map value excluded from metrics and loss)


def whole_cell(mask: np.ndarray) -> np.ndarray:
    """``mask > 0``: any cell part (cytoplasm or nucleus) against background, for whole-cell Dice.

    :data:`IGNORE` pixels stay :data:`IGNORE` (uint8 result: 0, 1 or 255).

    Parameters
    ----------
    mask : ``(H, W)`` semantic mask (0 background, other values cell parts, :data:`IGNORE`).
    """
    m = np.asarray(mask)
    out = (m > 0).astype(np.uint8)
    out[m == IGNORE] = IGNORE
    return out


def _as_list(masks) -> list[np.ndarray]:
    if isinstance(masks, np.ndarray) and masks.ndim == 2:
        return [masks]
    return [np.asarray(m) for m in masks]


def _pairs(truth, prediction) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """``(targets, predictions)`` as lists of arrays, as many of each. Truth that holds only 0 and
    :data:`IGNORE` is refused: it is a binary mask saved as 0/255, whose objects would all be
    ignored (and any prediction would score as perfect background)."""
    preds, targets = _as_list(prediction), _as_list(truth)
    if len(preds) != len(targets):
        raise ValueError(f"{len(preds)} predicted masks but {len(targets)} targets")
    values = np.unique(np.concatenate([np.unique(t) for t in targets])) if targets else np.zeros(0)
    if IGNORE in values and not np.any((values > 0) & (values != IGNORE)):
        raise ValueError(f"the truth holds only 0 and {IGNORE}, and {IGNORE} marks pixels to ignore: a binary mask "
                         "saved as 0/255 must be given as 0/1 (mask > 0)")
    return targets, preds


def _counts(pred: np.ndarray, target: np.ndarray, num_classes: int, where: str = "") -> np.ndarray:
    """``(num_classes, 3)`` TP, FP, FN of one image (target :data:`IGNORE` pixels left out)."""
    if pred.shape != target.shape:
        raise ValueError(f"{where}predicted mask has shape {pred.shape}, target has {target.shape}")
    if pred.ndim != 2:
        raise ValueError(f"{where}masks must be 2-D (H, W), got shape {pred.shape}")
    for name, a in (("prediction", pred), ("target", target)):
        if a.dtype.kind in "fc" and not np.all(np.mod(a, 1) == 0):
            raise ValueError(f"{where}{name} holds fractional values (probabilities?): give class ids, e.g. "
                             "probabilities.argmax(0) or (probability > 0.5)")
    keep = target != IGNORE
    p, t = pred[keep].astype(np.int64), target[keep].astype(np.int64)
    for name, a in (("prediction", p), ("target", t)):
        if a.size and (a.min() < 0 or a.max() >= num_classes):
            raise ValueError(f"{where}{name} has value {int(a.max() if a.max() >= num_classes else a.min())} "
                             f"outside 0..{num_classes - 1}")
    conf = np.bincount(t * num_classes + p, minlength=num_classes ** 2).reshape(num_classes, num_classes)
    tp = np.diag(conf)
    return np.stack([tp, conf.sum(0) - tp, conf.sum(1) - tp], axis=1)


def _scores(c: np.ndarray) -> dict[str, float | None]:
    tp, fp, fn = (int(v) for v in c)
    if tp + fp + fn == 0:
        return {"dice": None, "iou": None}
    return {"dice": 2 * tp / (2 * tp + fp + fn), "iou": tp / (tp + fp + fn)}


def dice_iou(truth, prediction, num_classes: int, ignore_background: bool = False) -> dict[int, dict]:
    """Dice and IoU per class over a set of masks (TP, FP, FN summed over all images).

    Parameters
    ----------
    truth, prediction : one ``(H, W)`` integer mask or a sequence of them (same shapes pairwise).
    num_classes : number of classes (values ``0 .. num_classes - 1``).
    ignore_background : leave class 0 out of the result.

    Returns
    -------
    dict
        ``{class_index: {"dice": float | None, "iou": float | None}}``; None for a class
        absent from both prediction and truth.
    """
    targets, preds = _pairs(truth, prediction)
    total = np.zeros((num_classes, 3), np.int64)
    for i, (p, t) in enumerate(zip(preds, targets)):
        total += _counts(p, t, num_classes, f"image {i}: ")
    return {c: _scores(total[c]) for c in range(int(ignore_background), num_classes)}


def dice_iou_per_image(truth, prediction, num_classes: int, ignore_background: bool = False) -> dict[int, dict]:
    """Like :func:`dice_iou` but the mean of per-image scores (images where a class is empty skipped).

    Parameters
    ----------
    truth, prediction : one ``(H, W)`` integer mask or a sequence of them (same shapes pairwise),
        the truth first.
    num_classes : number of classes (values ``0 .. num_classes - 1``).
    ignore_background : leave class 0 out of the result.
    """
    targets, preds = _pairs(truth, prediction)
    per = [[_scores(c) for c in _counts(p, t, num_classes, f"image {i}: ")]
           for i, (p, t) in enumerate(zip(preds, targets))]
    out = {}
    for c in range(int(ignore_background), num_classes):
        out[c] = {}
        for k in ("dice", "iou"):
            v = [img[c][k] for img in per if img[c][k] is not None]
            out[c][k] = float(np.mean(v)) if v else None
    return out


def _targets(dataset) -> list[np.ndarray]:
    out = []
    for s in dataset:
        if not s.has_semantic:
            raise DataError(s.path or s.image_id, "sample has no semantic mask")
        out.append(np.asarray(s.semantic))
    return out


def semantic_metrics(dataset, predictions: Sequence[np.ndarray], *, ignore_background: bool = False,
                     per_image: bool = False, whole: bool = False) -> dict[str, dict]:
    """Dice and IoU per named class of ``dataset.semantic_names``.

    Parameters
    ----------
    dataset : SmearDataset whose samples carry semantic masks.
    predictions : one ``(H, W)`` mask per sample, in dataset order.
    ignore_background, per_image : see :func:`dice_iou` / :func:`dice_iou_per_image`.
    whole : also report ``"whole_cell"`` (``mask > 0`` on both sides).

    Raises
    ------
    DataError : a prediction whose size differs from its sample's mask (names the sample).
    """
    names = getattr(dataset, "semantic_names", None)
    if not names:
        raise ValueError(f"dataset {getattr(dataset, 'name', '?')!r} has no semantic_names")
    if len(predictions) != len(dataset):
        raise ValueError(f"{len(predictions)} predictions for {len(dataset)} samples")
    targets = _targets(dataset)
    preds = [np.asarray(p) for p in predictions]
    for s, p, t in zip(dataset, preds, targets):
        if p.shape != t.shape:
            raise DataError(s.path or s.image_id, f"predicted mask has shape {p.shape}, "
                            f"ground truth has {t.shape}", record=s.image_id)
    fn = dice_iou_per_image if per_image else dice_iou
    res = fn(targets, preds, len(names), ignore_background)
    out = {names[c]: v for c, v in res.items()}
    if whole:
        out["whole_cell"] = fn([whole_cell(t) for t in targets], [whole_cell(p) for p in preds], 2, True)[1]
    return out


def semantic_of(x) -> np.ndarray:
    """The ``(H, W)`` class map of a Sample (or the array itself).

    Parameters
    ----------
    x : a Sample with a semantic mask (:class:`DataError` when it has none), or an array.
    """
    if hasattr(x, "semantic"):
        if not getattr(x, "has_semantic", x.semantic is not None):
            raise DataError(getattr(x, "path", None) or getattr(x, "image_id", "?"),
                            "sample has no semantic mask (needed to score cell masks)")
        return np.asarray(x.semantic)
    return np.asarray(x)


def binary_dice_iou(truth: np.ndarray, prediction: np.ndarray) -> tuple[float | None, float | None]:
    """``(Dice, IoU)`` of two binary masks; ``(None, None)`` when both are empty.

    Parameters
    ----------
    truth : ``(H, W)`` ground-truth mask: every non-zero pixel is foreground (bool, 0/1, 0/255).
    prediction : ``(H, W)`` predicted mask, read the same way.
    """
    truth, prediction = np.asarray(truth), np.asarray(prediction)
    for name, a in (("prediction", prediction), ("truth", truth)):
        if a.dtype.kind in "fc" and not np.all(np.mod(a, 1) == 0):  # any non-zero would be foreground
            raise ValueError(f"the {name} holds fractional values (probabilities?): give a mask, e.g. "
                             "probability > 0.5")
    truth, prediction = truth != 0, prediction != 0  # 0/1, 0/255 and label masks alike
    if truth.shape != prediction.shape:
        raise ValueError(f"predicted mask has shape {prediction.shape}, truth has {truth.shape}")
    tp = int(np.count_nonzero(prediction & truth))
    fp = int(np.count_nonzero(prediction & ~truth))
    fn = int(np.count_nonzero(~prediction & truth))
    if tp + fp + fn == 0:
        return None, None
    return 2 * tp / (2 * tp + fp + fn), tp / (tp + fp + fn)


def cell_mask_scores(truth, masks: Sequence[np.ndarray], *, nucleus_value: int = 2,
                     per_image: bool = False) -> dict[str, Any]:
    """Dice and IoU of predicted cell masks (Grad-CAM's, the classical extractor's) against the
    whole cell and the nucleus.

    Parameters
    ----------
    truth : a SmearDataset / Samples with semantic masks, or ``(H, W)`` semantic arrays:
        0 background, 1 cytoplasm, 2 nucleus (Zheng and the synthetic white-cell crops).
        The whole cell is ``semantic > 0``, the nucleus ``semantic == nucleus_value``.
    masks : one ``(H, W)`` bool mask per image (e.g. ``cam_masks(...).masks``).
    nucleus_value : the class-map value of the nucleus.
    per_image : also return the per-image lists.

    Returns
    -------
    dict
        ``cell_dice``, ``cell_iou``, ``nucleus_dice``, ``nucleus_iou``: means of per-image scores
        (images where both masks are empty are skipped; None when none is left), ``n`` images;
        with ``per_image`` also ``per_image: {key: [score or None, ...]}``.
    """
    masks = list(masks)
    truth = list(truth)
    if len(masks) != len(truth):
        raise ValueError(f"{len(masks)} masks for {len(truth)} ground-truth images")
    per = {k: [] for k in ("cell_dice", "cell_iou", "nucleus_dice", "nucleus_iou")}
    for i, (m, t) in enumerate(zip(masks, truth)):
        sem = semantic_of(t)
        where = getattr(t, "image_id", f"image {i}")
        m = np.asarray(m)
        if m.dtype.kind in "fc" and not np.all(np.mod(m, 1) == 0):
            raise ValueError(f"{where}: the mask holds fractional values (a CAM or probabilities?): give a "
                             "bool mask, e.g. cam > threshold")
        m = m.astype(bool)
        if m.shape != sem.shape:
            raise ValueError(f"{where}: mask has shape {m.shape}, ground truth {sem.shape}")
        valid = sem != IGNORE  # ignored pixels (padding) are neither cell nor background
        for part, gt in (("cell", (sem > 0) & valid), ("nucleus", sem == nucleus_value)):
            d, j = binary_dice_iou(gt[valid], m[valid])
            per[f"{part}_dice"].append(d)
            per[f"{part}_iou"].append(j)
    out: dict[str, Any] = {}
    for k, v in per.items():
        vals = [x for x in v if x is not None]
        out[k] = float(np.mean(vals)) if vals else None
    out["n"] = len(masks)
    if per_image:
        out["per_image"] = per
    return out
