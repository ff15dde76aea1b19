"""Raw detector output, its cache on disk, and the per-class filtering applied to it.

The prediction form
-------------------
Predictions for a dataset are a list aligned with its samples; each item is a dict of numpy
arrays ``{"boxes": (N, 4) float32 xyxy pixels, "scores": (N,) float32, "labels": (N,) int64}``
(labels 0-based into ``class_names``), optionally ``"masks": (N, H, W) bool``.

Predictions carry the class names their labels index: :func:`~smearlab.detection.predict.predict`
and :func:`postprocess` return a :class:`Predictions` list (a plain list whose
``class_names`` attribute is the model's classes), and :class:`RawPredictions` records them
too. Every metric and export maps those labels onto the dataset's classes by name
(:func:`smearlab.data.predictions.check_predictions`), or refuses when the two lists do not match; a
plain list without class names is taken to index the dataset's own classes.

*Raw* predictions are cached before any per-class filtering (a low score floor such as
0.001-0.05, before or after a loose NMS), so that thresholds can be tuned without running the
model again: :func:`postprocess` turns them into final predictions. A score passes a threshold
when ``score >= threshold``; NMS (torchvision) suppresses a box whose IoU with a kept
higher-scoring box is ``> nms_iou``. Output boxes of an image are sorted by decreasing score
(ties in their raw order).
"""
from __future__ import annotations

import hashlib
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ..core.errors import DataError
from ..core.files import atomic_path
from ..data.classes import match_classes, per_class
from ..data.predictions import DEFAULT_SCORE, Predictions, as_prediction, class_names_of


@dataclass
class RawPredictions:
    """Raw (unfiltered) predictions of one model on one dataset, with what they refer to.

    Parameters
    ----------
    predictions : list aligned with the dataset's samples, in the prediction form.
    class_names : classes the labels index.
    score_floor : the lowest score the model was asked to keep (documentation; 0 if unknown).
    image_ids : the samples' ``image_id`` in order, to check that a cache matches a dataset.
    truth_digest : a digest of the dataset's annotations (:func:`truth_digest`): image ids repeat
        between datasets (synthetic sets of another seed, files of one name), annotations hardly.
    meta : further information kept with the predictions (in memory; :meth:`save` writes only
        ``windows``, each image's tile count, and ``tta``, whether they were made with test-time
        augmentation).
    """

    predictions: list
    class_names: list
    score_floor: float = 0.0
    image_ids: list | None = None
    truth_digest: str | None = None
    meta: dict = field(default_factory=dict)

    def __post_init__(self):
        self.predictions = [as_prediction(p, f"prediction {i}") for i, p in enumerate(self.predictions)]
        self.class_names = [str(c) for c in self.class_names]
        self.score_floor = float(self.score_floor)
        k = len(self.class_names)
        for i, p in enumerate(self.predictions):
            if len(p["labels"]) and (p["labels"].min() < 0 or p["labels"].max() >= k):
                raise ValueError(f"prediction {i}: label outside the {k} classes {self.class_names}")
        if self.image_ids is not None:
            self.image_ids = [str(v) for v in self.image_ids]
            if len(self.image_ids) != len(self.predictions):
                raise ValueError(f"{len(self.image_ids)} image ids for {len(self.predictions)} "
                                 f"predictions")

    @classmethod
    def for_dataset(cls, dataset, predictions, score_floor: float = 0.0) -> "RawPredictions":
        """Wrap ``predictions`` of ``dataset`` (checks the length; records the image ids, and the
        class names the predictions carry, else the dataset's).

        Parameters
        ----------
        dataset : the SmearDataset the predictions are for.
        predictions : one prediction dict per sample (a :class:`Predictions` list keeps its classes).
        score_floor : the lowest score the model was asked to keep.
        """
        if len(predictions) != len(dataset):
            raise ValueError(f"{len(predictions)} predictions for {len(dataset)} images")
        names = class_names_of(predictions) or dataset.class_names
        windows = getattr(predictions, "windows", None)  # tiles per image: the cap is per forward pass
        tta = getattr(predictions, "tta", None)  # thresholds tuned on them record it
        meta = {k: v for k, v in (("windows", windows), ("tta", tta)) if v is not None}
        return cls(list(predictions), names, score_floor, [s.image_id for s in dataset], truth_digest(dataset),
                   meta=meta)

    def __len__(self) -> int:
        return len(self.predictions)

    def __getitem__(self, i):
        return self.predictions[i]

    @property
    def num_boxes(self) -> int:
        return int(sum(len(p["scores"]) for p in self.predictions))

    def check(self, dataset) -> None:
        """``ValueError`` unless these predictions belong to ``dataset`` (length, classes, ids).

        Parameters
        ----------
        dataset : the SmearDataset the predictions should be for.
        """
        if len(self) != len(dataset):
            raise ValueError(f"{len(self)} cached predictions for a dataset of {len(dataset)} images")
        if list(dataset.class_names) != self.class_names:  # same classes in another order or spelling
            match_classes(self.class_names, dataset.class_names, require="both",
                          what=f"the predictions' classes and the classes of {dataset.name!r}")
        if self.image_ids is not None:
            ids = [s.image_id for s in dataset]
            bad = next((i for i, (a, b) in enumerate(zip(ids, self.image_ids)) if a != b), None)
            if bad is not None:
                raise ValueError(f"prediction {bad} is for image {self.image_ids[bad]!r}, the "
                                 f"dataset's image {bad} is {ids[bad]!r}")
        if self.truth_digest is not None and truth_digest(dataset) != self.truth_digest:
            raise ValueError(f"these predictions were made for other images than those of {dataset.name!r}: the "
                             "image ids agree but the annotations differ (another dataset, or its annotations "
                             "changed since); predict it again")

    # -- cache --------------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Write an ``.npz`` cache atomically (boxes of all images concatenated, plus counts).

        Parameters
        ----------
        path : the ``.npz`` file (parent folders are created).

        Returns
        -------
        Path
            ``path``.
        """
        path = Path(path)
        preds = self.predictions
        arrays = {
            "boxes": np.concatenate([p["boxes"] for p in preds]) if preds else np.zeros((0, 4), np.float32),
            "scores": np.concatenate([p["scores"] for p in preds]) if preds else np.zeros(0, np.float32),
            "labels": np.concatenate([p["labels"] for p in preds]) if preds else np.zeros(0, np.int64),
            "counts": np.array([len(p["scores"]) for p in preds], np.int64),
            "class_names": np.array(self.class_names, dtype=str),
            "score_floor": np.float64(self.score_floor),
            "format_version": np.int64(1),
        }
        if self.image_ids is not None:
            arrays["image_ids"] = np.array(self.image_ids, dtype=str)
        if self.truth_digest is not None:
            arrays["truth_digest"] = np.array(self.truth_digest)
        if self.meta.get("windows") is not None:  # tiles per image: the cap on boxes is per forward pass
            arrays["windows"] = np.asarray(self.meta["windows"], np.int64)
        if self.meta.get("tta") is not None:
            arrays["tta"] = np.bool_(self.meta["tta"])
        for i, p in enumerate(preds):
            if "masks" in p:
                arrays[f"masks_{i}"] = p["masks"]
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            np.savez_compressed(f, **arrays)
        return path

    @classmethod
    def load(cls, path: str | Path) -> "RawPredictions":
        """Read a cache written by :meth:`save`.

        Parameters
        ----------
        path : the ``.npz`` file.

        Raises
        ------
        DataError
            naming the file when it is missing, not an npz archive, lacks an array, or holds
            arrays of inconsistent shapes (e.g. counts not summing to the number of boxes).
        """
        path = Path(path)
        try:
            with np.load(path, allow_pickle=False) as z:
                data = {k: z[k] for k in z.files}
        except FileNotFoundError:
            raise DataError(path, "prediction cache not found") from None
        except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError) as e:
            raise DataError(path, f"not a readable prediction cache (.npz): {e}") from None
        need = ("boxes", "scores", "labels", "counts", "class_names")
        missing = [k for k in need if k not in data]
        if missing:
            raise DataError(path, f"prediction cache lacks {', '.join(missing)}")
        boxes, scores, labels, counts = (data[k] for k in ("boxes", "scores", "labels", "counts"))
        if boxes.ndim != 2 or boxes.shape[1] != 4:
            raise DataError(path, f"boxes have shape {boxes.shape}, expected (M, 4)")
        m = len(boxes)
        if scores.shape != (m,) or labels.shape != (m,):
            raise DataError(path, f"{m} boxes but scores {scores.shape} and labels {labels.shape}")
        if counts.ndim != 1 or (counts < 0).any() or int(counts.sum()) != m:
            raise DataError(path, f"per-image counts sum to {int(counts.sum()) if counts.ndim == 1 else '?'}"
                                  f", not to the {m} boxes")
        k = len(data["class_names"])
        if m and (labels.min() < 0 or labels.max() >= k):
            raise DataError(path, f"labels outside the {k} classes")
        if not (np.isfinite(boxes).all() and np.isfinite(scores).all()):
            raise DataError(path, "boxes or scores are not all finite")
        ids = data.get("image_ids")
        if ids is not None and len(ids) != len(counts):
            raise DataError(path, f"{len(ids)} image ids for {len(counts)} images")
        ends = np.cumsum(counts)
        preds = []
        for i, (a, b) in enumerate(zip(ends - counts, ends)):
            p = {"boxes": boxes[a:b], "scores": scores[a:b], "labels": labels[a:b]}
            if f"masks_{i}" in data:
                masks = data[f"masks_{i}"]
                if masks.ndim != 3 or len(masks) != b - a:
                    raise DataError(path, f"masks of image {i} have shape {masks.shape} for {b - a} boxes")
                p["masks"] = masks
            preds.append(p)
        digest = data.get("truth_digest")
        windows = data.get("windows")
        if windows is not None and (windows.shape != counts.shape or (windows < 1).any()):
            raise DataError(path, f"tile counts of shape {windows.shape} for {len(counts)} images")
        meta = {} if windows is None else {"windows": windows.tolist()}
        if "tta" in data:
            meta["tta"] = bool(data["tta"])
        return cls(preds, data["class_names"].tolist(), float(data.get("score_floor", 0.0)),
                   None if ids is None else ids.tolist(), None if digest is None else str(digest), meta=meta)


def truth_digest(dataset) -> str:
    """A short digest of a dataset's annotations (every image's id, boxes and labels), which tells
    a cache of predictions made for other images although their ids agree.

    Parameters
    ----------
    dataset : the SmearDataset.
    """
    h = hashlib.sha256()
    for s in dataset:
        h.update(str(s.image_id).encode())
        h.update(np.ascontiguousarray(s.boxes, np.float32).tobytes())
        h.update(np.ascontiguousarray(s.labels, np.int64).tobytes())
    return h.hexdigest()[:16]


# -- filtering ----------------------------------------------------------------------------------
def _raw_parts(raw, class_names):
    carried = raw.class_names if isinstance(raw, RawPredictions) else class_names_of(raw)
    if class_names is not None and carried is not None and [str(c) for c in class_names] != [str(c) for c in carried]:
        # another list would read every label in another class's name and threshold
        raise ValueError(f"class_names {list(class_names)} differ from the classes {list(carried)} the predictions "
                         "carry; leave class_names out")
    if isinstance(raw, RawPredictions):
        return raw.predictions, list(raw.class_names)
    preds = [as_prediction(p, f"prediction {i}") for i, p in enumerate(raw)]
    class_names = class_names if class_names is not None else carried
    if class_names is None:
        raise ValueError("class_names is needed when raw predictions are a plain list")
    for i, p in enumerate(preds):  # a label -1 read the last class's threshold
        bad = (p["labels"] < 0) | (p["labels"] >= len(class_names))
        if bad.any():
            raise ValueError(f"prediction {i}: label {int(p['labels'][bad][0])} is outside the {len(class_names)} "
                             f"classes {list(class_names)} (labels are 0-based)")
    return preds, list(class_names)


def _nms(boxes: np.ndarray, scores: np.ndarray, groups: np.ndarray | None, iou: float) -> np.ndarray:
    """torchvision NMS (per group when ``groups`` is given, by offsetting each group's boxes
    apart as ``batched_nms`` does) without the Python wrappers' per-call overhead."""

    b = boxes.astype(np.float32, copy=True)
    if groups is not None:
        b -= b.min()
        b += (groups * (float(b.max()) + 1.0)).astype(np.float32)[:, None]
    return torch.ops.torchvision.nms(torch.from_numpy(b), torch.from_numpy(scores), iou).numpy()


def per_image_caps(raw, max_dets: int | None, n: int) -> list:
    """Each image's cap on boxes: ``max_dets`` per forward pass, so an image whose prediction was
    merged from k tiles (``windows``, as :func:`smearlab.detection.predict.predict` records them on
    its result, kept in :class:`RawPredictions` ``meta``) may keep k times as many; a flat cap cut a
    tiled 1600 px field's count to 300.

    Parameters
    ----------
    raw : the raw predictions (a :class:`RawPredictions` or a prediction list).
    max_dets : the cap per forward pass (None: no cap).
    n : the number of images.
    """
    if max_dets is None:
        return [None] * n
    windows = raw.meta.get("windows") if isinstance(raw, RawPredictions) else getattr(raw, "windows", None)
    if windows is None or len(windows) != n:
        return [int(max_dets)] * n
    return [int(max_dets) * max(1, int(k)) for k in windows]


def select(raw, score_thresholds=DEFAULT_SCORE, nms_iou=0.5, class_agnostic: bool = False,
           max_dets: int | None = 300, *, class_names: Sequence[str] | None = None) -> list[np.ndarray]:
    """Which raw boxes survive: per image, indices into the raw arrays, by decreasing score.

    Same parameters as :func:`postprocess`, which indexes the raw arrays with these. The fast
    evaluator and the threshold tuner work on the indices so that IoUs against the ground truth
    are computed once for the raw boxes.

    Parameters
    ----------
    raw : :class:`RawPredictions` (or a plain list of prediction dicts with ``class_names``).
    score_thresholds, nms_iou, class_agnostic, max_dets : as in :func:`postprocess`.
    class_names : the classes the labels index (default: those ``raw`` carries).
    """
    preds, names = _raw_parts(raw, class_names)
    thr = per_class(score_thresholds, names, "score_thresholds", default=DEFAULT_SCORE)
    nms_k = per_class(nms_iou, names, "nms_iou", default=1.0)
    uniform = nms_k is not None and np.all(nms_k == nms_k[0])
    if class_agnostic and nms_k is not None and not uniform:
        raise ValueError("class-agnostic NMS takes one nms_iou, not one per class")
    if nms_k is not None and np.all(nms_k >= 1.0):
        nms_k = None  # nothing has IoU > 1: no suppression
    out = []
    for p, cap in zip(preds, per_image_caps(raw, max_dets, len(preds))):
        scores, labels = p["scores"], p["labels"]
        idx = np.flatnonzero(scores >= thr.astype(np.float32)[labels]) if len(scores) else \
            np.zeros(0, np.int64)
        if nms_k is not None and len(idx) > 1:
            b, sc, lab = p["boxes"][idx], scores[idx], labels[idx]
            if class_agnostic or uniform:
                kept = _nms(b, sc, None if class_agnostic else lab, float(nms_k[0]))
            else:
                parts = []
                for c in np.unique(lab):
                    sel = np.flatnonzero(lab == c)
                    parts.append(sel if nms_k[c] >= 1.0 or len(sel) < 2
                                 else sel[_nms(b[sel], sc[sel], None, float(nms_k[c]))])
                kept = np.concatenate(parts)
            idx = idx[np.sort(kept)]
        idx = idx[np.argsort(-scores[idx], kind="stable")]
        out.append(idx if cap is None else idx[:cap])
    return out


def fuse_boxes(views: Sequence[dict], iou: float = 0.55, max_dets: int | None = 300, skip: float = 0.0) -> dict:
    """Weighted box fusion of one image's predictions from several views of it.

    The predictions of the same image seen several ways (flips, for test-time augmentation),
    mapped back to the image's coordinates, are fused class by class (Solovyev, Wang and Gabruseva,
    "Weighted boxes fusion", Image and Vision Computing 107, 2021): boxes are taken by decreasing
    score; each joins the cluster whose fused box it overlaps most, when that IoU is ``> iou``, or
    opens a new one. A cluster's box is the score-weighted mean of its members' corners; its score is
    their summed score over ``max(members, views)``, so that a box only one view of ``n`` found
    keeps ``1/n`` of its score. Unlike NMS, every view's box moves the result, which is what
    sharpens localisation.

    Parameters
    ----------
    views : prediction dicts (``boxes``, ``scores``, ``labels``) of one image, one per view.
    iou : the overlap above which a box joins a cluster.
    max_dets : keep at most this many fused boxes (highest scores), None for no cap.
    skip : boxes scoring below this take no part (the paper's ``skip_box_thr``): low-scoring
        boxes that join a confident cluster pull its mean score down.

    Returns
    -------
    dict
        one prediction dict, boxes sorted by decreasing score.
    """
    if not views:
        raise ValueError("fuse_boxes needs the predictions of at least one view")
    if any("masks" in v for v in views):
        raise ValueError("fuse_boxes fuses boxes only; predictions with masks cannot be fused")
    if not 0.0 < float(iou) < 1.0:
        raise ValueError(f"iou must be in (0, 1), got {iou}")
    n = len(views)
    boxes = np.concatenate([np.asarray(v["boxes"], np.float32).reshape(-1, 4) for v in views])
    scores = np.concatenate([np.asarray(v["scores"], np.float32).reshape(-1) for v in views])
    labels = np.concatenate([np.asarray(v["labels"], np.int64).reshape(-1) for v in views])
    kept = scores >= skip
    boxes, scores, labels = boxes[kept], scores[kept], labels[kept]
    out_b, out_s, out_l = [], [], []
    for c in np.unique(labels):
        sel = np.flatnonzero(labels == c)
        sel = sel[np.argsort(-scores[sel], kind="stable")]
        wsum = np.zeros((len(sel), 4), np.float64)  # score-weighted corner sums, one row per cluster
        usum = np.zeros((len(sel), 4), np.float64)  # plain corner sums (clusters whose scores are all 0)
        ssum = np.zeros(len(sel), np.float64)
        count = np.zeros(len(sel), np.int64)
        fused = np.zeros((len(sel), 4), np.float64)
        k = 0
        for i in sel:
            b, s = boxes[i].astype(np.float64), float(scores[i])
            j = -1
            if k:
                f = fused[:k]
                ix = np.clip(np.minimum(f[:, 2], b[2]) - np.maximum(f[:, 0], b[0]), 0, None)
                iy = np.clip(np.minimum(f[:, 3], b[3]) - np.maximum(f[:, 1], b[1]), 0, None)
                inter = ix * iy
                union = (f[:, 2] - f[:, 0]) * (f[:, 3] - f[:, 1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
                o = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
                best = int(np.argmax(o))
                if o[best] > iou:
                    j = best
            if j < 0:
                j, k = k, k + 1
            wsum[j] += s * b
            usum[j] += b
            ssum[j] += s
            count[j] += 1
            fused[j] = wsum[j] / ssum[j] if ssum[j] > 0 else usum[j] / count[j]
        out_b.append(fused[:k])
        out_s.append(ssum[:k] / np.maximum(count[:k], n))
        out_l.append(np.full(k, c, np.int64))
    if not out_b:
        return {"boxes": np.zeros((0, 4), np.float32), "scores": np.zeros(0, np.float32),
                "labels": np.zeros(0, np.int64)}
    b, s, lab = np.concatenate(out_b), np.concatenate(out_s), np.concatenate(out_l)
    order = np.argsort(-s, kind="stable")[:max_dets]
    return {"boxes": b[order].astype(np.float32), "scores": s[order].astype(np.float32), "labels": lab[order]}


def take(prediction: dict, idx: np.ndarray) -> dict:
    """The prediction restricted to the boxes ``idx`` (every array indexed alike).

    Parameters
    ----------
    prediction : a prediction dict.
    idx : indices (or a bool mask) of the boxes kept.
    """
    return {k: v[idx] for k, v in prediction.items()}


def postprocess(raw, score_thresholds=DEFAULT_SCORE, nms_iou=0.5, class_agnostic: bool = False,
                max_dets: int | None = 300, *, class_names: Sequence[str] | None = None) -> list[dict]:
    """Final predictions from raw ones: per-class score thresholds, then NMS, then a cap.

    Parameters
    ----------
    raw : :class:`RawPredictions` (or a plain list of prediction dicts with ``class_names``).
    score_thresholds : one float, a per-class sequence, or ``{class name: threshold}``
        (classes not named get :data:`DEFAULT_SCORE`; an unknown name raises ``ValueError``).
        A box is kept when ``score >= threshold``.
    nms_iou : IoU above which a lower-scoring box of the same class is suppressed: a float,
        per class (sequence or dict; unnamed classes get no NMS), or None for no extra NMS.
    class_agnostic : suppress across classes (one ``nms_iou`` only).
    max_dets : keep at most this many boxes per image and forward pass (highest scores; an image
        predicted in k tiles keeps k times as many, see :func:`per_image_caps`), None for no cap.
    class_names : the classes the labels index (default: those ``raw`` carries; needed for a
        plain list without them).

    Returns
    -------
    Predictions
        one prediction dict per image, boxes sorted by decreasing score, with the class names.
    """
    preds, names = _raw_parts(raw, class_names)
    keep = select(raw, score_thresholds, nms_iou, class_agnostic, max_dets, class_names=names)
    windows = raw.meta.get("windows") if isinstance(raw, RawPredictions) else getattr(raw, "windows", None)
    return Predictions([take(p, k) for p, k in zip(preds, keep)], names, windows=windows,
                       zooms=getattr(raw, "zooms", None))


class Selector:
    """:func:`select` for one raw cache, with NMS results cached (what the tuner calls per change).

    With per-class NMS, thresholding a class only removes its lowest-scoring boxes, which
    cannot change whether a higher-scoring box survives greedy NMS; so NMS is run once per NMS
    setting on every raw box, and each change of thresholds only masks that result. The output
    equals :func:`select`'s. Class-agnostic NMS with thresholds that differ between classes does
    not commute with thresholding and calls :func:`select` directly.

    Parameters
    ----------
    raw : :class:`RawPredictions` (or a plain list of prediction dicts with ``class_names``).
    class_names : the classes the labels index (default: those ``raw`` carries).
    cache_size : how many NMS settings to keep results for (the oldest is dropped first).
    """

    def __init__(self, raw, class_names: Sequence[str] | None = None, cache_size: int = 16):
        self.preds, self.class_names = _raw_parts(raw, class_names)
        windows = getattr(raw, "windows", None)
        self.raw = raw if isinstance(raw, RawPredictions) else RawPredictions(
            self.preds, self.class_names, meta={"windows": windows} if windows is not None else {})
        self.cache_size = cache_size
        self._cache: dict = {}

    def __call__(self, score_thresholds=DEFAULT_SCORE, nms_iou=0.5, class_agnostic: bool = False,
                 max_dets: int | None = 300) -> list[np.ndarray]:
        names = self.class_names
        thr = per_class(score_thresholds, names, "score_thresholds", default=DEFAULT_SCORE)
        nms_k = per_class(nms_iou, names, "nms_iou", default=1.0)
        if nms_k is not None and np.all(nms_k >= 1.0):
            nms_k = None
        if class_agnostic and nms_k is not None and not np.all(thr == thr[0]):
            return select(self.raw, thr, nms_k, class_agnostic, max_dets)
        key = (None if nms_k is None else tuple(nms_k.tolist()), bool(class_agnostic and nms_k is not None))
        base = self._cache.get(key)
        if base is None:
            base = select(self.raw, -np.inf, nms_k, key[1], None)
            if len(self._cache) >= self.cache_size:
                self._cache.pop(next(iter(self._cache)))
            self._cache[key] = base
        thr32 = thr.astype(np.float32)
        out = []
        for p, b, cap in zip(self.preds, base, per_image_caps(self.raw, max_dets, len(self.preds))):
            k = b[p["scores"][b] >= thr32[p["labels"][b]]]
            out.append(k if cap is None else k[:cap])
        return out
