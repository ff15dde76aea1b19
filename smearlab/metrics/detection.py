"""Detection metrics: COCO mAP (pycocotools), a fast exact AP evaluator, PR curves, confusion
matrices and per-class counting accuracy. Every function takes ``(dataset, predictions)``:
the truth first."""
from __future__ import annotations

import contextlib
import io
import logging
from typing import Sequence

import numpy as np
from pycocotools import mask as mask_util
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from ..data.classes import per_class
from ..data.formats.coco import encode_rle
from ..data.predictions import DEFAULT_SCORE, as_prediction, check_predictions
from ..data.sample import SmearDataset


log = logging.getLogger(__name__)


#: pycocotools' IoU and recall thresholds (same expressions, hence the same floats).
IOU_THRESHOLDS = np.linspace(.5, 0.95, int(np.round((0.95 - .5) / .05)) + 1, endpoint=True)


RECALL_THRESHOLDS = np.linspace(.0, 1.00, int(np.round((1.00 - .0) / .01)) + 1, endpoint=True)


def threshold_array(value, class_names) -> np.ndarray:
    """The ``(K,)`` float32 score thresholds of a float, a per-class sequence or ``{class: threshold}``.

    Parameters
    ----------
    value : a float, ``K`` values in class order, or a ``{class name: threshold}`` dict (classes
        it does not name get :data:`~smearlab.data.predictions.DEFAULT_SCORE`, 0.5, as in
        post-processing); see :func:`smearlab.data.classes.per_class`.
    class_names : the ``K`` class names.
    """
    return per_class(value, class_names, "score_threshold", default=DEFAULT_SCORE).astype(np.float32)


def keep_above_thresholds(predictions: list[dict], thr: np.ndarray) -> list[dict]:
    """The predictions with only their detections of ``score >= thr[label]`` (every array filtered).

    Parameters
    ----------
    predictions : checked prediction dicts (see :func:`~smearlab.data.predictions.check_predictions`).
    thr : ``(K,)`` per-class score thresholds (see :func:`threshold_array`).
    """
    return [{k: v[p["scores"] >= thr[p["labels"]]] for k, v in p.items()} for p in predictions]


def _xywh(boxes: np.ndarray) -> list[list[float]]:
    b = boxes.astype(np.float64)
    return np.column_stack([b[:, :2], b[:, 2:] - b[:, :2]]).tolist()


def coco_gt_dict(dataset: SmearDataset, *, segm: bool = False) -> dict:
    """The COCO ground-truth dict of ``dataset`` (no image files; ``iscrowd`` from the samples'
    ``meta["iscrowd"]`` where a loader kept it, as the COCO loader does, else 0: pycocotools
    then ignores detections of a crowd region as it does on the original file).

    Parameters
    ----------
    dataset : the ground truth; image ids are ``1..n`` in dataset order, category ids ``1..K``.
    segm : add RLE segmentations (and mask areas) from the samples' instance masks.
    """
    images, anns = [], []
    for i, s in enumerate(dataset, start=1):
        h, w = s.hw
        images.append({"id": i, "file_name": s.path.name if s.path else s.image_id,
                       "width": int(w), "height": int(h)})
        masks = s.masks if segm else None
        if segm and masks is None and len(s.boxes):
            raise ValueError(f"segm evaluation needs instance masks; image {s.image_id!r} has none")
        crowd = s.crowd
        for j, (bb, lab) in enumerate(zip(_xywh(s.boxes), s.labels.tolist())):
            a = {"id": len(anns) + 1, "image_id": i, "category_id": lab + 1, "bbox": bb,
                 "area": bb[2] * bb[3], "iscrowd": int(bool(crowd[j]))}
            if segm:
                a["segmentation"] = encode_rle(masks[j])
                a["area"] = int(masks[j].sum())
            anns.append(a)
    cats = [{"id": k + 1, "name": n, "supercategory": ""} for k, n in enumerate(dataset.class_names)]
    return {"images": images, "annotations": anns, "categories": cats}


def coco_results(predictions: list[dict], *, segm: bool = False) -> list[dict]:
    """COCO results list (image ids ``1..n``, category ids ``1..K``, bbox xywh, score).

    Parameters
    ----------
    predictions : checked prediction dicts, aligned with the dataset (see :func:`coco_gt_dict`).
    segm : add RLE segmentations from the predictions' ``masks``.
    """
    out = []
    for i, p in enumerate(predictions, start=1):
        rles = None
        if segm:
            if "masks" not in p:
                raise ValueError(f"segm evaluation needs predicted masks; prediction {i - 1} has none")
            if len(p["masks"]):
                rles = mask_util.encode(np.asfortranarray(p["masks"].transpose(1, 2, 0).astype(np.uint8)))
        for j, (bb, lab, sc) in enumerate(zip(_xywh(p["boxes"]), p["labels"].tolist(),
                                              p["scores"].tolist())):
            r = {"image_id": i, "category_id": lab + 1, "bbox": bb, "score": sc}
            if rles is not None:
                r["segmentation"] = {"size": [int(v) for v in rles[j]["size"]],
                                     "counts": rles[j]["counts"].decode("ascii")}
            out.append(r)
    return out


def _coco_gt(dataset, segm=False):
    gt = COCO()
    gt.dataset = coco_gt_dict(dataset, segm=segm)
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
    return gt


def coco_eval(dataset: SmearDataset, predictions, *, iou_type: str = "bbox",
              max_dets: Sequence[int] = (1, 100, 1000)) -> dict:
    """COCO AP with pycocotools (area range "all" only, ``maxDets`` raised for dense smears).

    Parameters
    ----------
    dataset : the ground truth (a SmearDataset).
    predictions : one prediction dict per image, aligned with ``dataset``: the raw, ranked
        detections (a low score floor); see :func:`~smearlab.data.predictions.check_predictions`.
    iou_type : ``"bbox"``, or ``"segm"`` when samples and predictions carry instance masks.
    max_dets : pycocotools' ``maxDets``; the metrics use the largest (COCO's 100 is too few for
        smears with hundreds of cells).

    Returns
    -------
    dict
        ``mAP`` (AP@[.5:.95]), ``mAP50``, ``mAP75``, ``per_class`` ``{name: {"AP", "AP50",
        "AP75"}}`` (None for a class without ground truth), ``max_dets`` and ``iou_type``. A mean
        is None when no class has ground truth.
    """
    if iou_type not in ("bbox", "segm"):
        raise ValueError(f"iou_type must be 'bbox' or 'segm', got {iou_type!r}")
    md = list(max_dets) if not isinstance(max_dets, (int, np.integer)) else [max_dets]
    if not md or any(isinstance(m, bool) or int(m) != m or int(m) < 1 for m in md):
        raise ValueError(f"max_dets must be whole numbers >= 1, got {max_dets!r}")
    preds = check_predictions(dataset, predictions)
    segm = iou_type == "segm"
    gt = _coco_gt(dataset, segm)
    names = dataset.class_names
    results = coco_results(preds, segm=segm)
    k = len(names)
    prec = -np.ones((len(IOU_THRESHOLDS), len(RECALL_THRESHOLDS), k))
    # crowd regions are nothing to find (pycocotools: a class of crowd regions alone has no AP)
    has_gt = np.bincount(np.concatenate([s.labels[~s.crowd] for s in dataset] + [np.zeros(0, np.int64)]),
                         minlength=k) > 0
    if results:
        with contextlib.redirect_stdout(io.StringIO()):
            dt = gt.loadRes(results)
            ev = COCOeval(gt, dt, iou_type)
            ev.params.maxDets = sorted(int(m) for m in md)
            ev.params.areaRng = [[0 ** 2, 1e5 ** 2]]
            ev.params.areaRngLbl = ["all"]
            ev.evaluate()
            ev.accumulate()
        prec = ev.eval["precision"][:, :, :, 0, -1]
    else:
        prec[:, :, has_gt] = 0.0  # nothing predicted: AP 0 where there is something to find

    def ap(p):
        v = p[p > -1]
        return float(v.mean()) if v.size else None

    per_class = {n: {"AP": ap(prec[:, :, c]), "AP50": ap(prec[0, :, c]), "AP75": ap(prec[5, :, c])}
                 for c, n in enumerate(names)}
    return {"mAP": ap(prec), "mAP50": ap(prec[0]), "mAP75": ap(prec[5]), "per_class": per_class,
            "max_dets": sorted(int(m) for m in md), "iou_type": iou_type}


def _iou_xywh(d: np.ndarray, g: np.ndarray) -> np.ndarray:
    """``(D, G)`` box IoU computed like pycocotools' ``bbIou`` (float64, xywh inputs)."""
    dx1, dy1 = d[:, 0] + d[:, 2], d[:, 1] + d[:, 3]
    gx1, gy1 = g[:, 0] + g[:, 2], g[:, 1] + g[:, 3]
    w = np.minimum(dx1[:, None], gx1[None]) - np.maximum(d[:, None, 0], g[None, :, 0])
    h = np.minimum(dy1[:, None], gy1[None]) - np.maximum(d[:, None, 1], g[None, :, 1])
    inter = np.where((w > 0) & (h > 0), w * h, 0.0)
    union = (d[:, 2] * d[:, 3])[:, None] + (g[:, 2] * g[:, 3])[None] - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(inter > 0, inter / union, 0.0)


def _as_xywh(boxes: np.ndarray) -> np.ndarray:
    b = boxes.astype(np.float64).reshape(-1, 4)
    return np.column_stack([b[:, :2], b[:, 2:] - b[:, :2]])


class _Prepared:
    """Predictions of a dataset ready for repeated evaluation of subsets (see FastEvaluator)."""

    def __init__(self, scores, labels, by_class, cands, has_cand, min_iou):
        self.scores, self.labels = scores, labels
        self.by_class, self.cands, self.has_cand = by_class, cands, has_cand
        self.min_iou = min_iou


class FastEvaluator:
    """Exact pycocotools AP at chosen IoU thresholds, in numpy, for interactive use.

    Reproduces COCOeval (bbox, ``useCats``, area range "all", ``maxDets`` = ``max_dets``,
    ``iscrowd`` ignored): per image and class, detections sorted by score (stable) and capped at
    ``max_dets``, each matched greedily to the unmatched ground-truth box of highest IoU
    ``>= t`` (ties to the later box); precision interpolated at the 101 recall thresholds.
    IoUs are computed once per set of predictions (:meth:`prepare`); evaluating a filtered subset
    of those (:meth:`evaluate_subset`, the threshold tuner) only masks detections.

    Parameters
    ----------
    dataset : the ground truth (a SmearDataset).
    max_dets : most detections per image and class that count (pycocotools' largest ``maxDets``).
    """

    def __init__(self, dataset: SmearDataset, max_dets: int = 1000):
        self.dataset = dataset
        self.class_names = list(dataset.class_names)
        if isinstance(max_dets, bool) or int(max_dets) != max_dets or int(max_dets) < 1:
            raise ValueError(f"max_dets must be a whole number >= 1, got {max_dets!r}")
        self.max_dets = int(max_dets)
        self.gt_xywh = [_as_xywh(s.boxes) for s in dataset]
        self.gt_labels = [s.labels.copy() for s in dataset]
        k = len(self.class_names)
        self.gt_counts = np.array([np.bincount(l, minlength=k) for l in self.gt_labels],
                                  np.int64).reshape(len(dataset), k)
        self.n_gt = self.gt_counts.sum(0)
        _warn_crowd(dataset, "FastEvaluator")

    # preparing predictions ----------------------------------------------------------------------
    def prepare(self, predictions, min_iou: float = 0.5) -> _Prepared:
        """IoUs of ``predictions`` against the ground truth, kept where ``>= min_iou``.

        Parameters
        ----------
        predictions : one prediction dict per image of the dataset.
        min_iou : smallest IoU threshold the prepared predictions will be evaluated at.
        """
        preds = check_predictions(self.dataset, predictions)
        k = len(self.class_names)
        scores, labels, by_class, cands, has_cand = [], [], [], [], []
        for p, g, gl in zip(preds, self.gt_xywh, self.gt_labels):
            sc = p["scores"].astype(np.float64)
            lab = p["labels"]
            order = np.argsort(-sc, kind="stable")
            by_class.append([order[lab[order] == c] for c in range(k)])
            c_list = [None] * len(sc)
            hc = np.zeros(len(sc), bool)
            if len(sc) and len(g):
                iou = _iou_xywh(_as_xywh(p["boxes"]), g)
                iou[lab[:, None] != gl[None, :]] = 0.0
                dd, gg = np.nonzero(iou >= min_iou)
                if len(dd):
                    vals = iou[dd, gg]
                    o = np.lexsort((-gg, -vals, dd))  # per det: IoU descending, ties to later gt
                    dd, gg, vals = dd[o].tolist(), gg[o].tolist(), vals[o].tolist()
                    for d, gi, v in zip(dd, gg, vals):
                        if c_list[d] is None:
                            c_list[d] = []
                            hc[d] = True
                        c_list[d].append((v, gi))
            scores.append(sc)
            labels.append(lab)
            cands.append(c_list)
            has_cand.append(hc)
        return _Prepared(scores, labels, by_class, cands, has_cand, float(min_iou))

    # evaluating ---------------------------------------------------------------------------------
    def evaluate(self, predictions, iou: float = 0.5, *, full: bool = False) -> dict:
        """Metrics of ``predictions`` (see :meth:`evaluate_subset` for the result).

        Parameters
        ----------
        predictions : one prediction dict per image of the dataset.
        iou : IoU threshold of precision, recall and F1 (AP50 is always at 0.5).
        full : also compute AP@[.5:.95] (``mAP`` and per-class ``AP``).
        """
        prep = self.prepare(predictions, min_iou=min(iou, 0.5))
        return self.evaluate_subset(prep, None, iou=iou, full=full)

    def evaluate_subset(self, prep: _Prepared, keep: Sequence[np.ndarray] | None = None,
                        iou: float = 0.5, *, full: bool = False) -> dict:
        """Metrics of the detections ``keep`` (per image, indices into the prepared arrays).

        Parameters
        ----------
        prep : the predictions prepared by :meth:`prepare`.
        keep : per image an array of indices of the detections to evaluate, or None for all.
        iou : IoU threshold of precision, recall and F1 (at least ``prep``'s ``min_iou``).
        full : also compute AP@[.5:.95] (``mAP`` and per-class ``AP``).

        Returns
        -------
        dict
            ``mAP50`` (mean over classes with ground truth), ``mAP`` (AP@[.5:.95], only with
            ``full=True``), ``per_class`` ``{name: {"AP50", ["AP",] "precision", "recall", "f1",
            "tp", "fp", "fn"}}`` with P/R/F1 at IoU ``iou`` (None where undefined: no
            prediction, no ground truth), ``counts`` in the form of :func:`count_metrics`, of every detection ``keep`` selects (no
            score threshold is applied here: pass the detections above it) and ``iou``.
        """
        r = self._run(prep, keep, iou, full)
        names = self.class_names
        per_class = {}
        for c, n in enumerate(names):
            tp, npred, ngt = int(r["tp"][c]), int(r["n_pred"][c]), int(self.n_gt[c])
            pc = {"AP50": r["ap"][0][c]}
            if full:
                v = [r["ap"][t][c] for t in range(len(IOU_THRESHOLDS))]
                pc["AP"] = None if v[0] is None else float(np.mean(v))
            pc.update(precision=tp / npred if npred else None, recall=tp / ngt if ngt else None,
                      f1=2 * tp / (npred + ngt) if npred + ngt else None,
                      tp=tp, fp=npred - tp, fn=ngt - tp)
            per_class[n] = pc
        out = {"mAP50": mean_defined([pc["AP50"] for pc in per_class.values()])}
        if full:
            out["mAP"] = mean_defined([pc["AP"] for pc in per_class.values()])
        out.update(per_class=per_class, counts=_count_summary(self.gt_counts, r["pred_counts"], names),
                   iou=float(iou))
        return out

    def _run(self, prep: _Prepared, keep, iou: float, full: bool, *, curves: bool = False) -> dict:
        """Matching and accumulation. ``ts``: thresholds evaluated; index 0 is 0.5 (AP50)."""
        if not 0 < float(iou) <= 1:
            raise ValueError(f"iou must be in (0, 1], got {iou!r}")
        if iou < prep.min_iou:
            raise ValueError(f"predictions were prepared for IoU >= {prep.min_iou}, not {iou}")
        ts = list(IOU_THRESHOLDS) if full else [IOU_THRESHOLDS[0]]
        if not any(t == iou for t in ts):
            ts.append(float(iou))
        ti = ts.index(iou) if iou in ts else len(ts) - 1
        n, k, nt = len(self.dataset), len(self.class_names), len(ts)
        masks = self.keep_masks(prep, keep)
        pred_counts = np.zeros((n, k), np.int64)
        ap = [[None] * k for _ in range(nt)]
        tp_at = np.zeros(k, np.int64)
        n_pred = np.zeros(k, np.int64)
        pr_curves = {}
        for c in range(k):
            sc, tps, img, pred_counts[:, c] = self.class_matches(prep, masks, c, ts, cap=False)
            n_pred[c] = int(pred_counts[:, c].sum())  # every kept detection (the cap is AP's alone)
            tp_at[c] = int(tps[ti].sum())  # so are the true positives: P, R and F1 count them all
            if len(img):  # AP takes each image's max_dets best (greedy matching by score: the same matches)
                starts = np.r_[0, np.flatnonzero(np.diff(img)) + 1]
                rank = np.arange(len(img)) - np.repeat(starts, np.diff(np.r_[starts, len(img)]))
                sc, tps = sc[rank < self.max_dets], tps[:, rank < self.max_dets]
            npig = int(self.n_gt[c])
            if npig == 0:
                continue
            o = np.argsort(-sc, kind="mergesort")
            tps = tps[:, o]
            for t_i in range(nt):
                q = _interp_precision(tps[t_i], npig)
                ap[t_i][c] = float(q.mean())
                if curves and t_i == ti:
                    pr_curves[self.class_names[c]] = (RECALL_THRESHOLDS.copy(), q)
        return {"ap": ap, "tp": tp_at, "n_pred": n_pred, "pred_counts": pred_counts,
                "curves": pr_curves, "ts": ts}

    def class_matches(self, prep: _Prepared, masks, c: int, ts: Sequence[float], *, cap: bool = True):
        """Greedy matching of class ``c``'s kept detections at each IoU threshold in ``ts``.

        Parameters
        ----------
        prep : the predictions prepared by :meth:`prepare`.
        masks : per image a bool array over the prepared detections (None keeps all).
        c : the class index.
        ts : the IoU thresholds.
        cap : keep each image's ``max_dets`` best detections only (COCO AP's rule); False for
            precision, recall, F1 and counts, which count every detection.

        Returns
        -------
        tuple
            ``(scores, tp, image, counts)``: the kept detections' scores and image indices
            (images in order, each by decreasing score, capped at ``max_dets`` with ``cap``),
            ``tp`` of shape ``(len(ts), n)`` and the per-image number of kept detections (before
            the cap).
        """
        n, nt = len(self.dataset), len(ts)
        counts = np.zeros(n, np.int64)
        sc_parts, tp_parts, im_parts = [], [], []
        for i in range(n):
            idx = prep.by_class[i][c]
            if masks is not None and len(idx):
                idx = idx[masks[i][idx]]
            counts[i] = len(idx)
            if not len(idx):
                continue
            if cap:
                idx = idx[:self.max_dets]
            tp = np.zeros((nt, len(idx)), bool)
            hc = prep.has_cand[i][idx]
            if hc.any():
                cl = prep.cands[i]
                pos = np.flatnonzero(hc).tolist()
                cand = [cl[j] for j in idx[pos].tolist()]
                for t_i, t in enumerate(ts):
                    t = min(t, 1 - 1e-10)
                    used = set()
                    row = tp[t_i]
                    for p_, cs in zip(pos, cand):
                        for v, g in cs:
                            if v < t:
                                break
                            if g not in used:
                                used.add(g)
                                row[p_] = True
                                break
            sc_parts.append(prep.scores[i][idx])
            tp_parts.append(tp)
            im_parts.append(np.full(len(idx), i, np.int64))
        if not sc_parts:
            return np.zeros(0), np.zeros((nt, 0), bool), np.zeros(0, np.int64), counts
        return (np.concatenate(sc_parts), np.concatenate(tp_parts, axis=1),
                np.concatenate(im_parts), counts)

    @staticmethod
    def keep_masks(prep: _Prepared, keep) -> list[np.ndarray] | None:
        """Per-image bool masks over the prepared detections from index arrays (None: all).

        Parameters
        ----------
        prep : the predictions prepared by :meth:`prepare`.
        keep : per image an array of indices of the kept detections, or None.
        """
        if keep is None:
            return None
        masks = []
        for s, kp in zip(prep.scores, keep):
            m = np.zeros(len(s), bool)
            m[kp] = True
            masks.append(m)
        return masks

    def pr_curves(self, predictions, iou: float = 0.5) -> dict:
        """``{class: (recall, precision)}`` at IoU ``iou`` (see the module-level :func:`pr_curves`).

        Parameters
        ----------
        predictions : one prediction dict per image of the dataset.
        iou : IoU threshold of the matching.
        """
        prep = self.prepare(predictions, min_iou=min(iou, 0.5))
        return self._run(prep, None, iou, False, curves=True)["curves"]


def _interp_precision(tp: np.ndarray, npig: int) -> np.ndarray:
    """pycocotools' 101-point interpolated precision from score-sorted TP flags."""
    q = np.zeros(len(RECALL_THRESHOLDS))
    nd = len(tp)
    if not nd:
        return q
    tp_sum = np.cumsum(tp).astype(float)
    fp_sum = np.cumsum(~tp).astype(float)
    rc = tp_sum / npig
    pr = tp_sum / (fp_sum + tp_sum + np.spacing(1))
    pr = np.maximum.accumulate(pr[::-1])[::-1]
    inds = np.searchsorted(rc, RECALL_THRESHOLDS, side="left")
    ok = inds < nd
    q[ok] = pr[inds[ok]]
    return q


def mean_defined(values) -> float | None:
    """Mean of the values that are not None, or None when none is left.

    Parameters
    ----------
    values : iterable of numbers or None.
    """
    v = [x for x in values if x is not None]
    return float(np.mean(v)) if v else None


def pr_curves(dataset: SmearDataset, predictions, iou: float = 0.5) -> dict:
    """``{class: (recall, precision)}``: pycocotools' 101-point interpolated precision at IoU
    ``iou`` (recall = the 101 recall thresholds 0, 0.01, .., 1; precision 0 beyond the highest
    recall reached). Classes without ground truth are left out.

    Parameters
    ----------
    dataset : the ground truth (a SmearDataset).
    predictions : one prediction dict per image, aligned with ``dataset`` (raw, ranked detections).
    iou : IoU threshold of the matching.
    """
    return FastEvaluator(dataset).pr_curves(predictions, iou)


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``(len(a), len(b))`` IoU of two sets of ``x0, y0, x1, y1`` boxes, computed as pycocotools does.

    Parameters
    ----------
    a, b : ``(N, 4)`` and ``(M, 4)`` boxes in pixels (e.g. predictions, then ground truth).
    """
    return _iou_xywh(_as_xywh(a), _as_xywh(b))


def confusion_matrix(dataset: SmearDataset, predictions, iou: float = 0.5,
                     score_threshold=0.5) -> np.ndarray:
    """``(K+1, K+1)`` counts, rows = true class, columns = predicted class, index K = background.

    Predictions with ``score >= score_threshold`` (a float or per class) are matched per image
    in two passes: first same-class pairs, greedily by score to the unmatched box of highest
    IoU ``>= iou`` (the diagonal, as in AP matching); then the remaining boxes across classes,
    greedily by decreasing IoU ``>= iou`` (class confusions). Unmatched ground truth counts in
    column K (missed, FN), unmatched predictions in row K (spurious, FP); ``[K, K]`` is 0.

    Parameters
    ----------
    dataset : the ground truth (a SmearDataset).
    predictions : one prediction dict per image, aligned with ``dataset``.
    iou : smallest IoU of a match.
    score_threshold : a float, a per-class sequence or ``{class: threshold}`` (unnamed classes 0.5).
    """
    if not 0 < float(iou) <= 1:
        raise ValueError(f"iou must be in (0, 1], got {iou!r}")
    preds = check_predictions(dataset, predictions)
    _warn_crowd(dataset, "confusion_matrix")
    names = dataset.class_names
    k = len(names)
    preds = keep_above_thresholds(preds, threshold_array(score_threshold, names))
    m = np.zeros((k + 1, k + 1), np.int64)
    for s, p in zip(dataset, preds):
        gl, pl = s.labels, p["labels"]
        ious = box_iou(p["boxes"], s.boxes) if len(pl) and len(gl) else np.zeros((len(pl), len(gl)))
        g_used = np.zeros(len(gl), bool)
        p_used = np.zeros(len(pl), bool)
        for d in np.argsort(-p["scores"], kind="stable"):
            cand = np.flatnonzero((gl == pl[d]) & ~g_used & (ious[d] >= iou))
            if len(cand):
                g = cand[_last_max(ious[d, cand])]
                g_used[g] = p_used[d] = True
                m[gl[g], pl[d]] += 1
        if (~g_used).any() and (~p_used).any():
            dd, gg = np.nonzero((ious >= iou) & ~p_used[:, None] & ~g_used[None])
            for j in np.argsort(-ious[dd, gg], kind="stable"):
                d, g = dd[j], gg[j]
                if not (p_used[d] or g_used[g]):
                    p_used[d] = g_used[g] = True
                    m[gl[g], pl[d]] += 1
        np.add.at(m, (gl[~g_used], k), 1)
        np.add.at(m, (k, pl[~p_used]), 1)
    return m


def _count_summary(true: np.ndarray, pred: np.ndarray, names) -> dict:
    err = np.abs(pred - true)
    acc = np.clip(1 - err / np.maximum(true, 1), 0, None)
    return {n: {"mae": float(err[:, c].mean()) if len(err) else None,
                "accuracy": float(acc[:, c].mean()) if len(acc) else None,
                "true": int(true[:, c].sum()), "predicted": int(pred[:, c].sum())}
            for c, n in enumerate(names)}


def crowd_regions(dataset: SmearDataset) -> int:
    """How many boxes of ``dataset`` are COCO crowd regions (``meta["iscrowd"]`` 1).

    Parameters
    ----------
    dataset : the ground truth (a SmearDataset).
    """
    return int(sum(np.count_nonzero(s.crowd) for s in dataset))


def _warn_crowd(dataset: SmearDataset, what: str) -> None:
    said = dataset.__dict__.setdefault("_crowd_said", set())  # once per dataset and caller, not every call
    if what in said:
        return
    n = crowd_regions(dataset)
    if n:
        said.add(what)
        log.warning("%s: %s holds %d crowd region(s) (iscrowd 1), counted here as single objects; "
                    "coco_eval (pycocotools) ignores detections on them instead",
                    dataset.name, what, n)


def count_matrix(dataset: SmearDataset, predictions, score_threshold=0.5) -> tuple[np.ndarray, np.ndarray]:
    """``(true, predicted)`` object counts, each ``(n_images, K)``.

    Parameters
    ----------
    dataset : the ground truth (a SmearDataset).
    predictions : one prediction dict per image, aligned with ``dataset``.
    score_threshold : predictions count when ``score >= score_threshold`` (a float, a per-class
        sequence or ``{class: threshold}``).
    """
    preds = keep_above_thresholds(check_predictions(dataset, predictions), threshold_array(score_threshold, dataset.class_names))
    k = len(dataset.class_names)
    _warn_crowd(dataset, "count_matrix")
    true = np.array([np.bincount(s.labels, minlength=k) for s in dataset], np.int64).reshape(-1, k)
    pred = np.array([np.bincount(p["labels"], minlength=k) for p in preds], np.int64).reshape(-1, k)
    return true, pred


def count_metrics(dataset: SmearDataset, predictions, score_threshold=0.5) -> dict:
    """Per-class counting quality of the predictions with ``score >= score_threshold``.

    ``score_threshold`` is a float, a per-class sequence or ``{class: threshold}``.

    Parameters
    ----------
    dataset : the ground truth (a SmearDataset).
    predictions : one prediction dict per image, aligned with ``dataset``.
    score_threshold : a float, a per-class sequence or ``{class: threshold}`` (unnamed classes 0.5).

    Returns
    -------
    dict
        ``{class: {"mae", "accuracy", "true", "predicted"}}``: ``mae`` the mean over images of
        ``|predicted - true|``; ``accuracy`` the mean over images of the per-image count accuracy
        ``max(0, 1 - |predicted - true| / max(true, 1))`` (1 for an exact count; an image
        without objects of the class scores ``1 - predicted``, clipped at 0), the per-image
        count accuracy reported by blood-count papers; ``true`` and ``predicted`` the totals.
    """
    true, pred = count_matrix(dataset, predictions, score_threshold)
    return _count_summary(true, pred, dataset.class_names)


def simulate_predictions(dataset: SmearDataset, seed: int = 0, *, drop: float = 0.1,
                         wrong_label: float = 0.05, jitter: float = 0.06, duplicates: int = 2,
                         spurious: int = 10, score_floor: float = 0.01) -> list[dict]:
    """Plausible raw predictions made from the ground truth (seeded), for demos and tests.

    Each object is found (probability ``1 - drop``) by a box jittered by ``jitter`` of its
    size with a high score (Beta(6, 2)); its label is wrong with probability ``wrong_label``.
    Each object also gets 0..``duplicates`` looser duplicates with middling scores (Beta(2, 4))
    and each image ~``spurious`` random boxes with low scores (Beta(1, 6)). Scores below
    ``score_floor`` are dropped.

    Parameters
    ----------
    dataset : the ground truth to imitate.
    seed : seed of every random draw.
    drop : probability that an object is missed.
    wrong_label : probability that a found object gets a random class.
    jitter : standard deviation of the box corner noise, as a fraction of the box width / height.
    duplicates : most looser duplicates per object (0..``duplicates``, uniform).
    spurious : mean number (Poisson) of random boxes per image.
    score_floor : predictions scoring below this are dropped.

    Returns
    -------
    list of dict
        one prediction dict per image (boxes clipped to the image, order shuffled).
    """
    rng = np.random.default_rng(seed)
    k = len(dataset.class_names)
    out = []
    for s in dataset:
        h, w = s.hw
        gb, gl = s.boxes.astype(np.float64), s.labels
        boxes, scores, labels = [], [], []
        if len(gb):
            wh = gb[:, 2:] - gb[:, :2]
            found = rng.random(len(gb)) >= drop
            b = gb + rng.normal(0, jitter, gb.shape) * np.tile(wh, 2)
            lab = np.where(rng.random(len(gb)) < wrong_label, rng.integers(0, k, len(gb)), gl)
            boxes.append(b[found]); labels.append(lab[found])
            scores.append(rng.beta(6, 2, int(found.sum())))
            nd = rng.integers(0, duplicates + 1, len(gb))
            rep = np.repeat(np.arange(len(gb)), nd)
            b = gb[rep] + rng.normal(0, 3 * jitter, (len(rep), 4)) * np.tile(wh[rep], 2)
            boxes.append(b); labels.append(gl[rep]); scores.append(rng.beta(2, 4, len(rep)))
            size = np.median(wh, axis=0)
        else:
            size = np.array([w, h]) / 8
        ns = int(rng.poisson(spurious))
        c = rng.uniform([0, 0], [w, h], (ns, 2))
        half = size * rng.uniform(0.3, 0.7, (ns, 2))
        boxes.append(np.column_stack([c - half, c + half]))
        labels.append(rng.integers(0, k, ns))
        scores.append(rng.beta(1, 6, ns))
        b = np.concatenate(boxes)
        b[:, 0::2] = np.clip(b[:, 0::2], 0, w)
        b[:, 1::2] = np.clip(b[:, 1::2], 0, h)
        sc, lab = np.concatenate(scores), np.concatenate(labels)
        ok = (sc >= score_floor) & (b[:, 2] > b[:, 0] + 1) & (b[:, 3] > b[:, 1] + 1)
        perm = rng.permutation(int(ok.sum()))
        out.append({"boxes": b[ok][perm].astype(np.float32), "scores": sc[ok][perm].astype(np.float32),
                    "labels": lab[ok][perm].astype(np.int64)})
    return out


def match_image(sample, prediction: dict, iou: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """Greedy same-class matching by score (as COCO does) for one image.

    Returns ``(pred_tp, gt_found)``: which predictions are true positives and which ground-truth
    boxes were found. Unmatched predictions are spurious; unfound ground truth is missed.

    Parameters
    ----------
    sample : the ground truth (a Sample with ``boxes`` and ``labels``).
    prediction : the image's prediction dict.
    iou : smallest IoU of a match.
    """
    prediction = as_prediction(prediction)
    if not 0 < float(iou) <= 1:
        raise ValueError(f"iou must be in (0, 1], got {iou!r}")
    order = np.argsort(-prediction["scores"], kind="stable")
    pred_tp = np.zeros(len(prediction["boxes"]), bool)
    gt_found = np.zeros(len(sample.boxes), bool)
    if not len(order) or not len(sample.boxes):
        return pred_tp, gt_found
    ious = box_iou(prediction["boxes"], sample.boxes)
    for p in order:
        cand = (~gt_found) & (sample.labels == prediction["labels"][p]) & (ious[p] >= iou)
        if cand.any():
            g = _last_max(np.where(cand, ious[p], -1))
            gt_found[g] = pred_tp[p] = True
    return pred_tp, gt_found


def _last_max(values: np.ndarray) -> int:
    """Index of the largest value, the last one on a tie (as pycocotools matches: a detection at
    equal IoU with two boxes takes the later one)."""
    return len(values) - 1 - int(np.argmax(values[::-1]))


def worst_images(dataset: SmearDataset, predictions, n: int = 4, iou: float = 0.5) -> list[int]:
    """Indices of the ``n`` images with the most missed plus spurious boxes (worst first).

    Parameters
    ----------
    dataset : the ground truth (a SmearDataset).
    predictions : one prediction dict per image (typically the final, thresholded ones).
    n : number of images returned.
    iou : smallest IoU of a match (see :func:`match_image`).
    """
    predictions = check_predictions(dataset, predictions)  # labels mapped onto the dataset's classes by name
    _warn_crowd(dataset, "worst_images")
    errors = []
    for i, (s, p) in enumerate(zip(dataset, predictions)):
        tp, found = match_image(s, p, iou)
        errors.append(int((~tp).sum() + (~found).sum()))
    return [int(i) for i in np.argsort(errors, kind="stable")[::-1][:n]]
