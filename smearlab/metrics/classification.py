"""Classification metrics: per-class precision, recall, F1 and the confusion matrix."""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

from ..data.classes import match_classes


def classification_report(y_true, y_pred, class_names: Sequence[str]) -> dict[str, Any]:
    """Per-class precision, recall, F1 and support, macro and weighted means, and the confusion matrix.

    Computed with :func:`sklearn.metrics.precision_recall_fscore_support` (``zero_division=0``).
    Macro and weighted means run over the classes present in ``y_true`` (a class with no test
    example would otherwise count as F1 = 0); predictions of an absent class still count as
    errors of the true class.

    Parameters
    ----------
    y_true : true class indices, ``0 .. K - 1`` (the truth first).
    y_pred : predicted class indices, aligned with ``y_true``, or the
        :class:`~smearlab.classification.predict.ClassPredictions` of ``predict_classes``, whose
        labels are mapped by name from the model's class order onto ``class_names``.
    class_names : the ``K`` class names the indices refer to.

    Returns
    -------
    dict
        ``per_class`` ``{name: {precision, recall, f1, support}}`` (None where undefined: precision
        of a class never predicted, recall of a class not in the truth, F1 of a class in neither;
        the macro and weighted means, over the classes in the truth, count an undefined precision
        as 0, as scikit-learn's ``zero_division=0``), ``macro`` and ``weighted``
        ``{precision, recall, f1}``, ``accuracy``, ``confusion`` (``K x K`` list, rows true,
        columns predicted, all classes), ``class_names``, ``n``. With no examples every score
        is None (undefined, not 0).
    """
    pred_names = getattr(y_pred, "class_names", None)
    y_pred = getattr(y_pred, "labels", y_pred)
    yt, yp = _labels(y_true, "y_true"), _labels(y_pred, "y_pred")
    if pred_names is not None and list(pred_names) != [str(c) for c in class_names]:
        # the model's class order: read in the truth's order, a perfect model scored 0
        mapping = match_classes(pred_names, class_names, what="the predictions' and the truth's classes")
        if len(yp) and (yp.min() < 0 or yp.max() >= len(pred_names)):
            raise ValueError(f"y_pred holds a label outside 0..{len(pred_names) - 1} ({list(pred_names)})")
        mapped = mapping.labels(yp)
        if (mapped < 0).any():
            unknown = sorted({str(pred_names[v]) for v in yp[mapped < 0].tolist()})
            raise ValueError(f"predicted classes {unknown} are not among the truth's classes {list(class_names)}")
        yp = mapped
    k = len(class_names)
    if len(yt) != len(yp):
        raise ValueError(f"{len(yt)} true labels but {len(yp)} predictions")
    for what, a in (("y_true", yt), ("y_pred", yp)):
        if len(a) and (a.min() < 0 or a.max() >= k):
            raise ValueError(f"{what} holds a label outside 0..{k - 1} ({list(class_names)})")
    all_labels = list(range(k))
    if not len(yt):  # undefined, not 0 % (which a table shows as a measured failure)
        none = {"precision": None, "recall": None, "f1": None}
        return {"class_names": list(class_names), "n": 0,
                "per_class": {c: {**none, "support": 0} for c in class_names}, "accuracy": None,
                "confusion": [[0] * k for _ in range(k)], "macro": dict(none), "weighted": dict(none)}
    p, r, f, s = precision_recall_fscore_support(yt, yp, labels=all_labels, zero_division=0)
    present = [c for c in all_labels if s[c] > 0]
    predicted = np.bincount(yp, minlength=k)

    def undefined_or(v, defined):  # 0/0 is no measurement: None, not a failure of 0 (a class absent from a small test split)
        return float(v) if defined else None
    out = {"class_names": list(class_names), "n": int(len(yt)),
           "per_class": {class_names[c]: {"precision": undefined_or(p[c], predicted[c] > 0),
                                          "recall": undefined_or(r[c], s[c] > 0),
                                          "f1": undefined_or(f[c], s[c] > 0 or predicted[c] > 0),
                                          "support": int(s[c])} for c in all_labels},
           "accuracy": float((yt == yp).mean()),
           "confusion": confusion_matrix(yt, yp, labels=all_labels).tolist()}
    for avg in ("macro", "weighted"):
        if present:
            mp, mr, mf, _ = precision_recall_fscore_support(yt, yp, labels=present, average=avg, zero_division=0)
        else:
            mp = mr = mf = 0.0
        out[avg] = {"precision": float(mp), "recall": float(mr), "f1": float(mf)}
    return out


def _labels(values, what: str) -> np.ndarray:
    """Class indices as int64; ValueError for fractions, NaN or non-numbers (never rounded)."""
    a = np.asarray(values)
    if a.ndim > 1 and not (a.ndim == 2 and a.shape[1] == 1):  # one-hot rows would become N x K labels of 0/1
        raise ValueError(f"{what} must be one class index per item, shape (N,), got shape {a.shape} "
                         "(one-hot or probabilities: pass .argmax(1))")
    a = a.reshape(-1)
    if a.dtype == bool or not (np.issubdtype(a.dtype, np.integer) or np.issubdtype(a.dtype, np.floating)):
        if a.size:
            raise ValueError(f"{what} must hold class indices (whole numbers), got dtype {a.dtype}")
        return a.astype(np.int64)
    if np.issubdtype(a.dtype, np.floating) and not np.all(np.isfinite(a) & (a == np.round(a))):
        raise ValueError(f"{what} must hold class indices (whole numbers), got {a[~(np.isfinite(a) & (a == np.round(a)))][:3].tolist()}")
    return a.astype(np.int64)
