"""Per-class score thresholds (and the NMS IoU) tuned on a validation set's raw predictions.

:func:`auto_tune` picks, for each class, the score threshold that maximises F1 at IoU 0.5 or
the per-image counting accuracy (see :func:`smearlab.metrics.detection.count_metrics`), and the NMS IoU
that maximises the mean over classes. The result, a :class:`Thresholds`, is saved as
``thresholds.json`` next to a model and applied to raw predictions with
:meth:`Thresholds.apply`.

Tuning is exact and cheap: per NMS value, the raw boxes are filtered once at the lowest score
in the grid and matched once to the ground truth (pycocotools' greedy matching, by score);
since greedy matching and greedy NMS both run in score order, the boxes kept at a higher
threshold are a prefix of those and keep their matches, so every threshold is scored from the
one matching.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from ..core.errors import DataError
from ..core.files import write_json
from ..data.classes import match_classes
from ..metrics.detection import FastEvaluator
from .postprocess import DEFAULT_SCORE, RawPredictions, postprocess, select

OBJECTIVES = ("f1", "count")


@dataclass
class Thresholds:
    """What turns raw predictions into final ones.

    Parameters
    ----------
    score : ``{class name: score threshold}`` (a box is kept when ``score >= threshold``).
    nms_iou : NMS IoU (None: no extra NMS).
    class_agnostic : NMS across classes.
    max_dets : cap of boxes per image and forward pass (an image predicted in k tiles keeps k
        times as many; :func:`~smearlab.detection.postprocess.per_image_caps`).
    objective : what the thresholds were tuned for ("f1", "count"), "tuner" (moved by hand in
        the threshold tuner from tuned ones: tied to their kind of predictions) or "manual".
    metrics : the tuning figures (per class the chosen threshold and objective values).
    tta : whether they were tuned on predictions made with test-time augmentation
        (``predict(..., tta=True)``), whose scores are lower where the views disagree; ``predict``
        refuses tuned thresholds made the other way.
    """

    score: dict
    nms_iou: float | None = 0.5
    class_agnostic: bool = False
    max_dets: int | None = 300
    objective: str = "manual"
    metrics: dict = field(default_factory=dict)
    tta: bool = False

    def check_tta(self, tta: bool) -> None:
        """Refuse (``ValueError``) tuned thresholds for predictions made the other way: with
        ``tta`` when they were tuned without it, or the other way round. Thresholds set by hand
        (``objective="manual"``) apply either way."""
        if self.objective != "manual" and bool(self.tta) != bool(tta):
            made = "with" if self.tta else "without"
            raise ValueError(f"these thresholds were tuned on predictions made {made} tta ({made} test-time "
                             f"augmentation); predict with tta={bool(self.tta)}, or tune thresholds on predictions "
                             f"made with tta={bool(tta)}")

    def apply(self, raw, *, class_names: Sequence[str] | None = None) -> list[dict]:
        """Final predictions from raw ones (:func:`~smearlab.detection.postprocess.postprocess`).

        Parameters
        ----------
        raw : :class:`~smearlab.detection.postprocess.RawPredictions` or a list of prediction dicts.
        class_names : the classes the labels index (default: those ``raw`` carries).
        """
        return postprocess(raw, self.score, self.nms_iou, self.class_agnostic, self.max_dets,
                           class_names=class_names)

    def keep(self, raw) -> list[np.ndarray]:
        """Which raw boxes :meth:`apply` keeps: per image, indices into the raw arrays, by
        decreasing score (:func:`~smearlab.detection.postprocess.select`), to take the same boxes from
        something made from them (e.g. masks cut for every raw box).

        Parameters
        ----------
        raw : :class:`~smearlab.detection.postprocess.RawPredictions` or a list of prediction dicts.
        """
        return select(raw, self.score, self.nms_iou, self.class_agnostic, self.max_dets)

    def to_dict(self) -> dict:
        """Plain JSON-ready dict (what :meth:`save` writes and ``save_model`` stores)."""
        return asdict(self)

    def save(self, path: str | Path) -> Path:
        """Write ``thresholds.json`` atomically.

        Parameters
        ----------
        path : the JSON file (parent folders are created).

        Returns
        -------
        Path
            ``path``.
        """
        write_json(path, self.to_dict())
        return Path(path)

    @classmethod
    def load(cls, path: str | Path) -> "Thresholds":
        """Read a file written by :meth:`save`; ``DataError`` naming the file when it is bad.

        Parameters
        ----------
        path : the JSON file.
        """
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise DataError(path, "thresholds file not found") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise DataError(path, f"not a readable thresholds JSON: {e}") from None
        return cls.from_dict(data, path)

    @classmethod
    def from_dict(cls, data, path: str | Path, class_names: Sequence[str] | None = None) -> "Thresholds":
        """The thresholds of a ``thresholds.json``'s content, each value checked; ``DataError``
        naming ``path`` when one is unusable.

        Parameters
        ----------
        data : the parsed JSON.
        path : the file it came from (named in the error).
        class_names : the model's classes: a score threshold for any other class is refused.
        """
        if not isinstance(data, dict) or not isinstance(data.get("score"), dict):
            raise DataError(path, "expected an object with a 'score' {class: threshold} object")
        for name, v in data["score"].items():
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 <= v <= 1.0:
                raise DataError(path, f"score threshold of {name!r} must be a number from 0 to 1, got {v!r}")
        if class_names is not None and set(data["score"]) - {str(c) for c in class_names}:
            raise DataError(path, f"score thresholds for {sorted(set(data['score']) - set(map(str, class_names)))}, "
                                  f"which are not classes of the model {list(class_names)}")
        nms = data.get("nms_iou")
        if nms is not None and (isinstance(nms, bool) or not isinstance(nms, (int, float)) or not 0.0 <= nms <= 1.0):
            raise DataError(path, f"nms_iou must be a number from 0 to 1 or null, got {nms!r}")
        dets = data.get("max_dets")
        if dets is not None and (isinstance(dets, bool) or not isinstance(dets, int) or dets < 1):
            raise DataError(path, f"max_dets must be a whole number >= 1 or null, got {dets!r}")
        for flag in ("class_agnostic", "tta"):  # the string "false" would count as true
            if flag in data and not isinstance(data[flag], bool):
                raise DataError(path, f"{flag} must be true or false, got {data[flag]!r}")
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in data.items() if k in known})


def _f1(tp: np.ndarray, npred: np.ndarray, ngt: int) -> np.ndarray:
    den = npred + ngt
    return np.where(den > 0, 2 * tp / np.maximum(den, 1), 1.0)


def _pick(values: np.ndarray) -> int:
    """Index of the best value; the middle of a plateau of equal best values."""
    best = np.flatnonzero(values >= values.max() - 1e-12)
    return int(best[len(best) // 2])


def auto_tune(dataset_val, raw_val, objective: str = "f1",
              nms_grid: Sequence[float | None] = (0.3, 0.4, 0.5, 0.6, 0.7, None),
              score_grid: Sequence[float] = np.linspace(0.05, 0.95, 19), *,
              class_agnostic: bool = False, max_dets: int | None = 300, iou: float = 0.5,
              evaluator=None, tta: bool | None = None) -> Thresholds:
    """Per-class score thresholds and an NMS IoU that maximise ``objective`` on validation data.

    Parameters
    ----------
    dataset_val : the validation SmearDataset.
    raw_val : its :class:`RawPredictions` (or a plain list of prediction dicts).
    objective : ``"f1"`` (per-class F1 at IoU ``iou``, greedy matching by score) or ``"count"``
        (per-class mean per-image count accuracy ``max(0, 1 - |pred - true| / max(true, 1))``).
        A class without validation objects scores F1 1 when nothing is predicted.
    nms_grid : NMS IoUs to try, each in [0, 1] (None = no extra NMS); the best mean over classes
        wins (the first in the grid on a tie).
    score_grid : thresholds to try for every class; on a plateau the middle one is taken.
    class_agnostic : refused: with NMS across classes one class's threshold changes which boxes
        of the others survive, so per-class thresholds cannot be tuned one class at a time (the
        reported and chosen figures were wrong); tune with per-class NMS, or set
        ``class_agnostic`` on the result and check it on validation.
    max_dets : stored in the result for :meth:`Thresholds.apply` (tuning does not cap).
    iou : IoU threshold of the matching for ``"f1"``, in (0, 1] (at 0 boxes of other classes
        would match).
    evaluator : a :class:`~smearlab.metrics.detection.FastEvaluator` of ``dataset_val`` to reuse
        (None: a new one).
    tta : whether ``raw_val`` was predicted with test-time augmentation, recorded in the result
        (``Thresholds.tta``: ``predict`` refuses thresholds tuned one way and used the other). None:
        what the predictions record (``predict`` records it), else False.

    Returns
    -------
    Thresholds
        with ``metrics``: ``per_class`` ``{class: {"threshold", "<objective>",
        "<objective>_at_0.5"}}``, ``mean`` and ``mean_at_0.5`` (the same NMS with every
        threshold 0.5), and ``by_nms`` (the mean objective per NMS value tried).
    """
    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
    if class_agnostic:
        raise ValueError("auto_tune tunes each class's threshold by itself, which class-agnostic NMS makes wrong "
                         "(a threshold of one class changes which boxes of another survive); tune with "
                         "class_agnostic=False")
    # at IoU 0 every pair matched, boxes of different classes too (F1 up to 2); NMS IoUs outside
    # [0, 1] were tuned and saved, and Thresholds.load then refused the file
    if isinstance(iou, bool) or not isinstance(iou, (int, float, np.integer, np.floating)) or not 0 < iou <= 1:
        raise ValueError(f"iou must be a matching IoU in (0, 1], got {iou!r}")
    nms_grid = list(nms_grid)
    if not nms_grid:
        raise ValueError("nms_grid is empty: give the NMS IoUs to try (None for no extra NMS)")
    bad = [v for v in nms_grid if v is not None and (isinstance(v, bool) or not isinstance(
        v, (int, float, np.integer, np.floating)) or not 0 <= v <= 1)]
    if bad:
        raise ValueError(f"nms_grid values must be NMS IoUs in [0, 1] (or None), got {bad}")
    if not isinstance(raw_val, RawPredictions):
        raw_val = RawPredictions.for_dataset(dataset_val, raw_val)
    raw_val.check(dataset_val)
    made = raw_val.meta.get("tta")
    if tta is not None and made is not None and bool(tta) != bool(made):
        raise ValueError(f"tta={bool(tta)} given for predictions made with tta={bool(made)}")
    tta = bool(made) if tta is None and made is not None else bool(tta)
    names = list(dataset_val.class_names)
    grid = np.unique(np.round(np.asarray(score_grid, float), 6))
    if not len(grid):
        raise ValueError("score_grid is empty")
    if not np.all(np.isfinite(grid)) or grid.min() < 0 or grid.max() > 1:
        raise ValueError(f"score_grid values must be scores in [0, 1], got {grid.min():g}..{grid.max():g}")
    floor = float(raw_val.score_floor)
    if grid.min() < floor:  # boxes below the floor were never kept: a threshold there was never seen
        grid = grid[grid >= floor]
        if not len(grid):
            raise ValueError(f"every score_grid value lies below the predictions' score floor {floor:g}: "
                             "predict with a lower score_floor or tune higher thresholds")
    grid_all = np.unique(np.append(grid, DEFAULT_SCORE))
    g32 = grid_all.astype(np.float32).astype(np.float64)
    ev = evaluator or FastEvaluator(dataset_val)
    prep = ev.prepare(raw_val, min_iou=min(iou, 0.5))
    n = len(dataset_val)
    best = None
    by_nms = {}
    for nms in nms_grid:
        keep = select(raw_val, float(grid_all[0]), nms, class_agnostic, None)
        masks = ev.keep_masks(prep, keep)
        table = np.zeros((len(names), len(grid_all)))
        for c in range(len(names)):
            sc, tp, img, _ = ev.class_matches(prep, masks, c, [iou], cap=False)  # every kept box counts
            above = sc[None, :] >= g32[:, None]  # (T, n)
            if objective == "f1":
                table[c] = _f1(above @ tp[0].astype(float), above.sum(1), int(ev.n_gt[c]))
            else:
                true = ev.gt_counts[:, c]
                pred = np.stack([np.bincount(img[a], minlength=n) for a in above]).reshape(-1, n)
                table[c] = np.clip(1 - np.abs(pred - true) / np.maximum(true, 1), 0, None).mean(1)
        in_grid = np.isin(grid_all, grid)
        choice = [int(np.flatnonzero(in_grid)[_pick(row[in_grid])]) for row in table]
        mean = float(np.mean([table[c, j] for c, j in enumerate(choice)]))
        by_nms[str(nms)] = mean
        if best is None or mean > best[0] + 1e-12:
            best = (mean, nms, table, choice)
    mean, nms, table, choice = best
    d = int(np.flatnonzero(grid_all == DEFAULT_SCORE)[0])
    # thresholds apply to the model's output: keyed by the model's class names (the dataset's
    # classes may be listed in another order or spelling; check() matched them by name)
    if raw_val.class_names != names:
        lut = match_classes(raw_val.class_names, names, require="both").lut
        names = [raw_val.class_names[int(np.flatnonzero(lut == c)[0])] for c in range(len(names))]
    per_class = {n_: {"threshold": float(grid_all[j]), objective: float(table[c, j]),
                      f"{objective}_at_0.5": float(table[c, d])}
                 for c, (n_, j) in enumerate(zip(names, choice))}
    metrics = {"per_class": per_class, "mean": mean, "mean_at_0.5": float(table[:, d].mean()),
               "by_nms": by_nms, "iou": iou, "images": n}
    return Thresholds({n_: per_class[n_]["threshold"] for n_ in names},
                      None if nms is None else float(nms), class_agnostic, max_dets, objective,
                      metrics, tta)
