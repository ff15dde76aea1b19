"""Instance-segmentation metrics: the DSB2018 score, mask AP, counts, and the failure cases of a
segmenter. Every function takes the truth first."""
from __future__ import annotations

import logging
from typing import Mapping, Sequence

import numpy as np
from pycocotools import mask as mask_util
from scipy import ndimage as ndi
from skimage.color import rgb2gray

from ..data.derive import as_single_class
from ..data.predictions import check_predictions
from ..data.sample import Sample, SmearDataset, binary_masks
from .detection import box_iou, coco_eval, keep_above_thresholds, mean_defined, threshold_array

log = logging.getLogger(__name__)


#: IoU thresholds of the DSB2018 / RSNA pneumonia score.
DSB_THRESHOLDS = np.arange(0.5, 1.0, 0.05)


def has_instance_masks(dataset) -> bool:
    """Whether mask metrics can score ``dataset``: every sample with objects has instance masks.

    Parameters
    ----------
    dataset : a SmearDataset (or any sequence of Samples).
    """
    return all(s.has_masks or not len(s.boxes) for s in dataset)


def _instances(item, kind: str):
    """``("boxes" | "masks", array, scores or None)`` of one image's instances."""
    scores = None
    if isinstance(item, Sample):
        arr = item.masks if kind == "masks" else item.boxes
        if arr is None and not len(item.boxes):  # an image without objects (a COCO image with none)
            arr = np.zeros((0, 1, 1), bool)
        if arr is None:
            raise ValueError(f"image {item.image_id!r} has no instance masks")
    elif isinstance(item, Mapping):
        arr = item.get("masks") if kind == "masks" else item.get("boxes")
        if arr is None:
            raise ValueError(f"a prediction has no {kind!r}")
        scores = item.get("scores")
    else:
        arr = item
    arr = np.asarray(arr)
    if arr.size == 0:
        kind = "masks" if kind == "masks" or arr.ndim == 3 else "boxes"
        return kind, (np.zeros((0, 1, 1), bool) if kind == "masks" else np.zeros((0, 4))), \
            None if scores is None else np.asarray(scores, np.float64)
    if kind == "auto":
        if arr.ndim == 2 and arr.shape[1] != 4:
            raise ValueError(f"a {arr.shape} array is neither (N, 4) boxes nor (N, H, W) masks: pass "
                             "kind='masks' to read it as a label image (0 background, one id per object)")
        kind = "masks" if arr.ndim == 3 else "boxes"
    if kind == "masks":
        arr = _mask_stack(arr)
    elif arr.ndim != 2 or arr.shape[1] != 4:
        raise ValueError(f"boxes must be an (N, 4) xyxy array, got shape {arr.shape}")
    else:
        arr = arr.astype(np.float64)
    if scores is not None:
        scores = np.asarray(scores, np.float64).reshape(-1)
        if len(scores) != len(arr):  # a missing score left an instance unmatched yet counted
            raise ValueError(f"a prediction has {len(scores)} scores for {len(arr)} {kind}")
    return kind, arr, scores


def _mask_stack(arr: np.ndarray) -> np.ndarray:
    """``(N, H, W)`` bool instance masks from an ``(N, H, W)`` stack or an integer ``(H, W)`` label
    image (0 background, each other value one object, as StarDist and Cellpose write them; also
    ``(N, 1, H, W)``; fractional values are refused: threshold probabilities first). A 2-D
    binary mask is refused: it holds the foreground, not the objects."""
    if arr.ndim == 4 and arr.shape[1] == 1:  # (N, 1, H, W), as torchvision's Mask R-CNN returns them
        arr = arr[:, 0]
    if arr.ndim == 3:
        return binary_masks(arr, "an instance-mask stack")
    if arr.ndim != 2:
        raise ValueError(f"masks must be an (N, H, W) stack or an (H, W) label image, got shape {arr.shape}")
    if arr.dtype == bool or not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"a {arr.dtype} (H, W) mask holds no instances: give an integer label image (one id "
                         "per object, e.g. scipy.ndimage.label of a binary mask) or an (N, H, W) stack")
    if arr.min() < 0:
        raise ValueError("a label image holds negative ids: 0 is the background, each object one positive id")
    ids = np.unique(arr)
    ids = ids[ids != 0]
    if len(ids) == 1 and ndi.label(arr == ids[0], np.ones((3, 3), bool))[1] > 1:  # 0/1 or 0/255: a binary mask read as an integer array
        raise ValueError(f"a label image whose one id {int(ids[0])} covers several separate regions: a binary mask "
                         "(0/1 or 0/255)? Label its objects first (scipy.ndimage.label) or give an (N, H, W) stack")
    return arr[None] == ids[:, None, None]


def _mask_iou(a: np.ndarray, b: np.ndarray, inside: bool = False) -> np.ndarray:
    """``(len(a), len(b))`` IoU of instance masks (via pycocotools RLEs); ``inside``: the share of
    each ``a`` mask that lies in each ``b`` mask instead (pycocotools' IoU with a crowd region)."""
    if not len(a) or not len(b):
        return np.zeros((len(a), len(b)))
    if a.shape[1:] != b.shape[1:]:
        raise ValueError(f"masks of sizes {a.shape[1:]} and {b.shape[1:]} cannot be compared")

    def rle(m):  # (N, H, W) C order read as (W, H, N) Fortran order: transposed masks, same IoUs
        return mask_util.encode(np.ascontiguousarray(m, dtype=bool).view(np.uint8).transpose(2, 1, 0))
    return np.asarray(mask_util.iou(rle(a), rle(b), [int(inside)] * len(b)), float).reshape(len(a), len(b))


#: a prediction lying at least this much inside a crowd region is neither found nor spurious
CROWD_INSIDE = 0.5


def _without_crowd(truth, kind: str, gt: np.ndarray, pred: np.ndarray, scores):
    """COCO's rule for crowd regions (``iscrowd``: a clump outlined as one): nothing to find, and a
    prediction whose mask (or box) lies at least :data:`CROWD_INSIDE` inside one is left out,
    neither right nor wrong. Returns the kept objects' indices, the objects, the kept
    predictions' indices, the predictions and their scores."""
    crowd = truth.crowd if isinstance(truth, Sample) and len(gt) else np.zeros(len(gt), bool)
    keep_gt = np.flatnonzero(~crowd)
    keep_pred = np.arange(len(pred))
    if crowd.any() and len(pred):
        regions = gt[crowd]
        if kind == "masks":
            inside = _mask_iou(pred, regions, inside=True)
        else:
            lo, hi = np.maximum(pred[:, None, :2], regions[None, :, :2]), np.minimum(pred[:, None, 2:], regions[None, :, 2:])
            area = np.prod(np.clip(pred[:, 2:] - pred[:, :2], 0, None), axis=1)
            inside = np.prod(np.clip(hi - lo, 0, None), axis=2) / np.maximum(area, 1e-12)[:, None]
        keep_pred = np.flatnonzero(inside.max(1) < CROWD_INSIDE)
    return (keep_gt, gt[keep_gt], keep_pred, pred[keep_pred],
            None if scores is None else np.asarray(scores)[keep_pred])


def dsb_score(gt_instances, pred_instances, *, kind: str = "auto",
              thresholds: Sequence[float] = DSB_THRESHOLDS, per_image: bool = False):
    """The DSB2018 / RSNA pneumonia score: mean over IoU thresholds of TP / (TP + FP + FN).

    The metric of the 2018 Data Science Bowl (nuclei instance masks,
    https://www.kaggle.com/c/data-science-bowl-2018#evaluation) and of the RSNA Pneumonia
    Detection Challenge (boxes, https://www.kaggle.com/c/rsna-pneumonia-detection-challenge#evaluation):
    for each image and each threshold t in 0.5, 0.55, .., 0.95, predictions (by decreasing score
    when scores are given, else in the given order) are matched one-to-one to the unmatched
    ground truth of highest IoU ``> t``; the image scores the mean over t of
    ``TP / (TP + FP + FN)``, and the result is the mean over images. Images with neither ground
    truth nor predictions are skipped (as in RSNA); an image with only one of them scores 0.
    Returns None when every image was skipped. COCO crowd regions of Samples (``iscrowd``, a clump
    outlined as one) are not objects to find, and a prediction lying mostly inside one (at least
    :data:`CROWD_INSIDE` of it) is left out, as pycocotools leaves it out of mask AP.

    Parameters
    ----------
    gt_instances : a SmearDataset / list of Samples, or per image an ``(N, 4)`` xyxy box array
        or an ``(N, H, W)`` mask array (with ``kind="masks"`` also an integer ``(H, W)`` label
        image: 0 background, one id per object).
    pred_instances : per image a prediction dict (``boxes``/``masks`` and ``scores``) or an array,
        in the same forms.
    kind : ``"boxes"``, ``"masks"`` or ``"auto"`` (3-D arrays are masks, ``(N, 4)`` arrays boxes,
        other 2-D arrays are refused as ambiguous; Samples and dicts use boxes under "auto": pass
        ``kind="masks"`` to score a Mask R-CNN's or a classical segmenter's masks against a
        dataset's instance masks). A 2-D binary mask is refused: it does not say which pixels
        make which object (bool or float; an integer one when its single value covers separate
        regions).
    thresholds : the IoU thresholds t (default 0.5, 0.55, .., 0.95: :data:`DSB_THRESHOLDS`).
    per_image : also return the list of per-image scores (None for skipped images).
    """
    if len(gt_instances) != len(pred_instances):
        raise ValueError(f"{len(pred_instances)} predictions for {len(gt_instances)} images")
    ts = np.asarray(thresholds, float)
    scores = []
    for g_item, p_item in zip(gt_instances, pred_instances):
        k = kind
        if k == "auto" and isinstance(g_item, (Sample, Mapping)):
            k = "boxes"
        gk, g, _ = _instances(g_item, k)
        _, p, ps = _instances(p_item, gk if len(g) or gk == "masks" else k)
        _, g, _, p, ps = _without_crowd(g_item, gk, g, p, ps)
        if not len(g) and not len(p):
            scores.append(None)
            continue
        if not len(g) or not len(p):
            scores.append(0.0)
            continue
        ious = _mask_iou(p, g) if gk == "masks" else box_iou(p.astype(np.float32), g.astype(np.float32))
        order = np.argsort(-ps, kind="stable") if ps is not None else np.arange(len(p))
        vals = []
        for t in ts:
            used = np.zeros(len(g), bool)
            tp = 0
            for d in order:
                row = np.where(used, -1.0, ious[d])
                j = int(np.argmax(row))
                if row[j] > t:
                    used[j] = True
                    tp += 1
            vals.append(tp / (len(p) + len(g) - tp))
        scores.append(float(np.mean(vals)))
    mean = mean_defined(scores)
    return (mean, scores) if per_image else mean


def mask_ap(dataset: SmearDataset, predictions, *, max_dets: Sequence[int] = (1, 100, 1000)) -> dict:
    """COCO mask AP (pycocotools ``segm``) of predictions carrying ``masks``.

    :func:`coco_eval` with ``iou_type="segm"``, its keys prefixed: ``mask_mAP``,
    ``mask_mAP50``, ``mask_mAP75`` and ``per_class``. Give the raw, ranked predictions (a low
    score floor), as for box AP.

    Parameters
    ----------
    dataset : the ground truth, samples with instance masks.
    predictions : one prediction dict with ``masks`` per image, aligned with ``dataset``.
    max_dets : pycocotools' ``maxDets`` (see :func:`coco_eval`).
    """
    r = coco_eval(dataset, predictions, iou_type="segm", max_dets=max_dets)
    return {"mask_mAP": r["mAP"], "mask_mAP50": r["mAP50"], "mask_mAP75": r["mAP75"],
            "per_class": r["per_class"]}


def segmentation_metrics(dataset: SmearDataset, predictions, score_threshold=None, *, ranked=None) -> dict:
    """The instance-segmentation headline numbers of issue #5 for one set of predictions.

    Parameters
    ----------
    dataset : samples with instance masks (e.g. DSB2018).
    predictions : per image a prediction dict with ``masks`` (a network's raw output or a
        segmenter's final instances).
    score_threshold : the final predictions (DSB metric, counts) are those with
        ``score >= score_threshold`` (a float, per class, or ``{class: threshold}``); None: every
        prediction is final (what a segmenter returns: the learned segmenter's score is the mean
        interior probability, 0.27 for a perfectly found small nucleus, so a default of 0.5 scored
        a perfect prediction 0); a detector's raw output needs its threshold. The mask AP uses
        every prediction (ranked by score).
    ranked : the predictions the mask AP ranks instead (None: ``predictions``), e.g. a detector's
        raw output when ``predictions`` went through its tuned thresholds and NMS.

    Returns
    -------
    dict
        ``dsb_metric`` (:func:`dsb_score` on masks, mean over images), ``mask_mAP50``,
        ``mask_mAP``, ``count_mae`` (mean over images of ``|predicted - true|`` objects, all
        classes together), ``count_error`` (mean over images of ``|predicted - true| /
        max(true, 1)``), ``objects_true``, ``objects_predicted`` and ``images``. COCO crowd
        regions are no true objects, and predictions lying mostly inside one are not counted
        (as the DSB metric leaves them out).
    """
    preds = check_predictions(dataset, predictions)
    final = preds if score_threshold is None else keep_above_thresholds(
        preds, threshold_array(score_threshold, dataset.class_names))
    ap = mask_ap(dataset, preds if ranked is None else check_predictions(dataset, ranked))
    true = np.array([_objects(s) for s in dataset], np.int64)
    pred = np.array([_counted(s, p) for s, p in zip(dataset, final)], np.int64)
    err = np.abs(pred - true)
    return {"dsb_metric": dsb_score(dataset, final, kind="masks"),
            "mask_mAP50": ap["mask_mAP50"], "mask_mAP": ap["mask_mAP"],
            "count_mae": float(err.mean()) if len(err) else None,
            "count_error": float((err / np.maximum(true, 1)).mean()) if len(err) else None,
            "objects_true": int(true.sum()), "objects_predicted": int(pred.sum()), "images": len(dataset)}


def count_error(dataset, predictions, score_threshold: float | None = 0.5) -> float | None:
    """Mean over images of ``|predicted - true| / max(true, 1)`` object counts (all classes together).

    Predictions count when ``score >= score_threshold`` (every classical instance scores >= 0.5;
    the learned segmenter's score is the mean interior probability, often below it: pass None
    for final predictions). 0 is a perfect count; 0.1 means counts 10 % off on average. None for
    an empty dataset.

    Parameters
    ----------
    dataset : the ground truth (its boxes are counted; COCO crowd regions, and the predictions
        lying mostly inside them, are left out).
    predictions : one prediction dict (with ``scores``) per image, aligned with ``dataset``.
    score_threshold : smallest score of a counted prediction; None counts every prediction.
    """
    if len(predictions) != len(dataset):
        raise ValueError(f"{len(predictions)} predictions for {len(dataset)} images")
    errs = []
    for s, p in zip(dataset, predictions):
        if score_threshold is not None:
            keep = np.asarray(p["scores"]) >= score_threshold
            p = {**({"boxes": np.asarray(p["boxes"]).reshape(-1, 4)[keep]} if "boxes" in p else {}),
                 **({"masks": _instances(p, "masks")[1][keep]} if p.get("masks") is not None else {}),
                 "scores": np.asarray(p["scores"])[keep]}
        errs.append(abs(_counted(s, p) - _objects(s)) / max(_objects(s), 1))
    return float(np.mean(errs)) if errs else None


def _objects(sample: Sample) -> int:
    """The objects of ``sample`` a count should find: its boxes but the COCO crowd regions (a clump
    outlined as one is no cell), as the dataset's summary and ``smearlab predict``'s count error
    leave them out."""
    return int(len(sample.boxes) - np.count_nonzero(sample.crowd))


def _counted(sample, prediction) -> int:
    """The predictions of one image a count compares with :func:`_objects`: those lying mostly
    inside a crowd region are left out, as :func:`dsb_score` leaves them out (the truth does not
    say how many cells a clump holds): by their masks when both sides have masks, as the DSB
    metric judges them (a cell beside an L-shaped clump lies inside the clump's box, not in the
    clump), else by their boxes."""
    if not isinstance(sample, Sample) or not np.count_nonzero(sample.crowd):
        return len(prediction["scores"])
    if sample.has_masks and prediction.get("masks") is not None:
        _, gt, _ = _instances(sample, "masks")
        _, masks, _ = _instances(prediction, "masks")
        return len(_without_crowd(sample, "masks", gt, masks, None)[3])
    if "boxes" not in prediction:  # every prediction was counted, those inside a clump too
        raise ValueError(f"image {sample.image_id!r} holds crowd regions: its predictions need masks or boxes to "
                         "tell which lie inside them")
    boxes = np.asarray(prediction["boxes"], np.float64).reshape(-1, 4)
    return len(_without_crowd(sample, "boxes", np.asarray(sample.boxes, np.float64), boxes, None)[3])


def score_instances(dataset, predictions) -> dict:
    """``{"dsb_metric", "mask_mAP50", "count_error"}`` of instance predictions against
    ``dataset``'s masks, class-agnostic: the keys of :func:`segmentation_metrics`.

    ``dsb_metric``: :func:`dsb_score` on masks; ``mask_mAP50``: mask AP at IoU 0.5
    (:func:`smearlab.metrics.detection.coco_eval`, ``iou_type="segm"``), class-agnostic (the
    dataset is seen through :func:`~smearlab.data.derive.as_single_class`, the predictions'
    labels set to 0); ``count_error``: :func:`count_error` of every prediction (they are final:
    the DSB metric scores them all too). ``dsb_metric`` and ``mask_mAP50`` are None when the
    dataset has no instance masks; ``mask_mAP50`` is None too when every object of several
    images has the same score (a watershed's output: ranked by the images' order, the same
    predictions scored 0.12 or 0.31).

    Parameters
    ----------
    dataset : the ground truth, samples with instance masks.
    predictions : one prediction dict (``boxes``, ``scores``, ``masks``) per image, aligned with
        ``dataset``; labels are ignored.
    """
    one = as_single_class(dataset)
    preds = [dict(p, labels=np.zeros(len(p["boxes"]), np.int64)) for p in predictions]
    out = {"dsb_metric": None, "mask_mAP50": None, "count_error": count_error(one, preds, score_threshold=None)}
    if len(one) and has_instance_masks(one):
        out["dsb_metric"] = dsb_score(one, preds, kind="masks")
        scores = np.concatenate([np.asarray(p["scores"], np.float64).reshape(-1) for p in preds] or [np.zeros(0)])
        images = sum(len(p["scores"]) > 0 for p in preds)
        if images > 1 and np.ptp(scores) == 0:  # nothing to rank: AP would follow the order of the images
            log.info("mask AP not scored: every object has the same score (%s), so its ranking would be the "
                     "images' order", scores[0])
        else:
            out["mask_mAP50"] = coco_eval(one, preds, iou_type="segm")["mAP50"]
    return out


def _contrast(g: np.ndarray, mask: np.ndarray, ring: int = 3) -> float:
    """``|mean inside - mean of a ring around|`` of the grey image ``g`` (0..1 scale)."""
    around = ndi.binary_dilation(mask, iterations=ring) & ~mask
    if not mask.any() or not around.any():
        return 0.0
    return float(abs(g[mask].mean() - g[around].mean()))


def failure_cases(dataset, predictions, iou: float = 0.5) -> list[dict]:
    """Every missed and spurious instance, with the likely reason, worst images first.

    Ground truth and predictions are matched one-to-one by mask IoU > ``iou`` (highest score
    first, as in :func:`smearlab.metrics.instances.dsb_score`; COCO crowd regions and the
    predictions lying inside them left out as there). Then

    * a missed object whose mask touches another object (within 2 px) is ``"touching"``;
    * else a missed object whose contrast with its surroundings (grey level difference to a
      3-px ring) is below half the median contrast of all objects of the dataset is ``"faint"``;
    * else it is ``"missed"``;
    * a spurious prediction overlapping no object at all (IoU < 0.1 with each) is ``"debris"``
      (stain debris, dirt, background texture); one overlapping an object is ``"split/merge"``
      (a fragment or a merge of several cells).

    Parameters
    ----------
    dataset : the ground truth, samples with instance masks.
    predictions : one prediction dict (``boxes``, ``scores``, ``masks``) per image, aligned with
        ``dataset`` (the final predictions: every one counts).
    iou : a match's mask IoU is above this (as the DSB metric's thresholds: two equal cells merged into one
        prediction have IoU 0.5 with each, and neither is found at 0.5).

    Returns
    -------
    list of dict
        ``{"image": index, "image_id", "kind", "index": object or prediction index,
        "box": xyxy, "contrast" (missed only)}``, sorted by the number of failures of the image
        (worst first), then by image index.
    """
    if len(predictions) != len(dataset):
        raise ValueError(f"{len(predictions)} predictions for {len(dataset)} images")
    truth = []  # per image its (N, H, W) masks; an image without objects has none to hold
    for s in dataset:
        if not s.has_masks and len(s.boxes):
            raise ValueError(f"image {s.image_id!r} has no instance masks")
        truth.append(np.asarray(s.masks, bool) if s.has_masks else np.zeros((0, *s.image.shape[:2]), bool))
    contrasts = []  # per image, per object
    for s, gt in zip(dataset, truth):
        g = rgb2gray(s.image) if len(gt) else None
        contrasts.append([_contrast(g, m) for m in gt])
    flat = [c for s, row in zip(dataset, contrasts) for c, crowd in zip(row, s.crowd if row else []) if not crowd]
    faint_below = 0.5 * float(np.median(flat)) if flat else 0.0
    out = []
    for i, (s, p, gt) in enumerate(zip(dataset, predictions, truth)):
        # read as dsb_score reads them: probability maps and scores of another length are refused
        # (every value above 0 made a mask of the whole image; a missing score, a perfect object "missed")
        _, pm, scores = _instances(p, "masks")
        if not len(pm):
            pm = np.zeros((0, *gt.shape[1:]), bool)
        objects, gt, shown, pm, scores = _without_crowd(s, "masks", gt, pm, scores)
        ious = _mask_iou(pm, gt) if len(pm) and len(gt) else np.zeros((len(pm), len(gt)))
        used = np.zeros(len(gt), bool)
        tp = np.zeros(len(pm), bool)
        for d in np.argsort(-(scores if scores is not None else np.ones(len(pm))), kind="stable"):
            row = np.where(used, -1.0, ious[d]) if len(gt) else np.zeros(0)
            if len(row) and row.max() > iou:
                used[int(row.argmax())] = tp[d] = True
        for j in np.flatnonzero(~used):
            others = np.delete(gt, j, axis=0).any(0)
            touching = bool((ndi.binary_dilation(gt[j], iterations=2) & others).any())
            c = contrasts[i][objects[j]]
            kind = "touching" if touching else "faint" if c < faint_below else "missed"
            out.append({"image": i, "image_id": s.image_id, "kind": kind, "index": int(objects[j]),
                        "box": [float(v) for v in s.boxes[objects[j]]], "contrast": c})
        for d in np.flatnonzero(~tp):
            kind = "debris" if not len(gt) or ious[d].max() < 0.1 else "split/merge"
            out.append({"image": i, "image_id": s.image_id, "kind": kind, "index": int(shown[d]),
                        "box": [float(v) for v in p["boxes"][shown[d]]]})
    per_image = np.bincount([f["image"] for f in out], minlength=len(dataset))
    return sorted(out, key=lambda f: (-per_image[f["image"]], f["image"]))
