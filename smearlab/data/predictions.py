"""The one prediction form every task returns, and its check against a dataset.

Predictions for a dataset are a list aligned with its samples; each item is a dict of numpy
arrays ``{"boxes": (N, 4) float32 xyxy pixels, "scores": (N,) float32, "labels": (N,) int64}``
(labels 0-based into the class names), optionally ``"masks": (N, H, W) bool``. A
:class:`Predictions` list carries the class names its labels index, so that scoring it on a
dataset whose classes are in another order maps labels by name (:func:`check_predictions`)."""
from __future__ import annotations

import logging
from typing import Mapping, Sequence

import numpy as np

from .classes import match_classes
from .sample import SmearDataset, binary_masks

log = logging.getLogger('smearlab.data.predictions')


def as_prediction(p: Mapping, where="prediction") -> dict:
    """One prediction dict with the agreed dtypes and shapes (``ValueError`` when inconsistent, a
    box or score is not finite, or a box is inverted).

    Parameters
    ----------
    p : mapping with ``boxes`` (an (N, 4) array of x0, y0, x1, y1: a (4, N) stack, a flat list or
        None is refused), ``scores``, ``labels`` (integer class indices) (missing ones are empty)
        and optionally ``masks``.
    where : names the prediction in the error message (e.g. ``"prediction 3"``).

    Returns
    -------
    dict
        ``boxes`` (N, 4) float32, ``scores`` (N,) float32, ``labels`` (N,) int64 and, when given,
        ``masks`` (N, H, W) bool.
    """
    raw = p.get("boxes", np.zeros((0, 4)))
    if raw is None:
        raise ValueError(f"{where}: boxes is None; give an (N, 4) array of x0, y0, x1, y1 (np.zeros((0, 4)) for "
                         "an image without objects)")
    try:
        boxes = np.asarray(raw, np.float32)
    except (TypeError, ValueError):
        raise ValueError(f"{where}: boxes must be numbers, an (N, 4) array of x0, y0, x1, y1, got {raw!r:.80}") from None
    if boxes.size == 0:
        boxes = boxes.reshape(0, 4)
    elif boxes.ndim != 2 or boxes.shape[1] != 4:  # a (4, N) stack or a flat list read as rows gave other boxes
        raise ValueError(f"{where}: boxes must be an (N, 4) array of x0, y0, x1, y1, one row per box; got shape "
                         f"{boxes.shape}")
    scores = np.asarray(p.get("scores", np.zeros(0)), np.float32).reshape(-1)
    given = np.asarray(p.get("labels", np.zeros(0))).reshape(-1)
    if len(given) and given.dtype.kind not in "biuf":
        raise ValueError(f"{where}: labels must be class indices (integers), got {given.dtype} values such as "
                         f"{given[:3].tolist()} (map class names to indices first)")
    if given.dtype.kind == "f" and len(given):
        bad = ~np.isfinite(given)
        bad[~bad] = given[~bad] != np.round(given[~bad])
        if bad.any():
            raise ValueError(f"{where}: labels must be whole class indices, got {given[bad][:3].tolist()}")
    labels = given.astype(np.int64)
    if not len(boxes) == len(scores) == len(labels):
        raise ValueError(f"{where}: {len(boxes)} boxes, {len(scores)} scores and {len(labels)} "
                         f"labels differ in number")
    if not (np.isfinite(boxes).all() and np.isfinite(scores).all()):
        bad = int((~np.isfinite(boxes).all(1) | ~np.isfinite(scores)).sum())
        raise ValueError(f"{where}: {bad} of {len(boxes)} predictions have a NaN or infinite box or score "
                         "(pycocotools scores a NaN box as a perfect match)")
    if len(boxes) and ((boxes[:, 2] < boxes[:, 0]) | (boxes[:, 3] < boxes[:, 1])).any():
        raise ValueError(f"{where}: a box has x1 < x0 or y1 < y0 (boxes are x0, y0, x1, y1 in pixels)")
    out = {"boxes": boxes, "scores": scores, "labels": labels}
    if p.get("masks") is not None:
        masks = binary_masks(p["masks"], where)
        if masks.ndim != 3 or len(masks) != len(boxes):
            raise ValueError(f"{where}: masks of shape {masks.shape} for {len(boxes)} boxes")
        out["masks"] = masks
    return out


#: The score threshold of a class that a per-class ``{class: threshold}`` dict does not name,
#: wherever predictions are filtered (post-processing, counts, metrics).
DEFAULT_SCORE = 0.5


class Predictions(list):
    """A list of per-image prediction dicts that knows which classes its labels index.

    Parameters
    ----------
    items : the prediction dicts, one per image.
    class_names : the classes the labels index (a model's classes), or None when unknown.
    windows : per image, the forward passes (tiles) its prediction was merged from, where
        ``predict`` tiled (the detection cap is per pass); None when unknown.
    zooms : per image, the factor it was predicted at (``predict(scale=...)``), or None.
    tta : whether they were made with test-time augmentation (``predict(tta=...)``: its fused
        scores are lower where the views disagree, so thresholds tuned on them record it), or
        None when unknown.

    A slice keeps the class names, windows, zooms and tta of its images; ``+`` joins predictions of
    the same classes (a plain list would lose them: its labels would then be read in a dataset's
    class order), and refuses to join non-empty predictions without class names to ones with.
    Pickling and ``copy``/``deepcopy`` keep the class names, windows, zooms and tta.
    """

    def __init__(self, items=(), class_names: Sequence[str] | None = None, *, windows=None, zooms=None,
                 tta: bool | None = None):
        if isinstance(class_names, (str, bytes)):  # "RBC" made the classes R, B and C
            raise TypeError(f"class_names must be a list of class names, got the string {class_names!r}")
        super().__init__(items)
        self.class_names = None if class_names is None else [str(c) for c in class_names]
        self.windows = None if windows is None else list(windows)
        self.zooms = None if zooms is None else list(zooms)
        self.tta = None if tta is None else bool(tta)

    def __getitem__(self, i):
        item = super().__getitem__(i)
        if not isinstance(i, slice):
            return item
        return Predictions(item, self.class_names, windows=None if self.windows is None else self.windows[i],
                           zooms=None if self.zooms is None else self.zooms[i], tta=getattr(self, "tta", None))

    def __add__(self, other):
        names = class_names_of(other)
        if names is not None and self.class_names is not None and names != self.class_names:
            raise ValueError(f"cannot join predictions of the classes {self.class_names} and {names}")
        if names is None and self.class_names is not None and len(other):
            raise ValueError("cannot join Predictions with a plain list: whose classes would its labels index? "
                             "make it Predictions(list, class_names) first")
        if self.class_names is None and names is not None and len(self):  # the mirror case: a's labels
            # would be read as indices into b's classes
            raise ValueError(f"cannot join Predictions without class names with Predictions of the classes {names}: "
                             "whose classes would the first ones' labels index? give them class_names first")

        def joined(attr):
            a, b = getattr(self, attr, None), getattr(other, attr, None)
            return None if a is None or b is None else list(a) + list(b)
        a, b = getattr(self, "tta", None), getattr(other, "tta", None)
        return Predictions(list(self) + list(other), self.class_names or names, windows=joined("windows"),
                           zooms=joined("zooms"), tta=a if a == b else None)

    def __radd__(self, other):
        # ``[] + p`` and ``sum([p, q], [])``: Python asks a list subclass first, so the join is
        # checked and keeps the class names instead of giving a plain list
        if not isinstance(other, list):
            return NotImplemented
        if not len(other):
            return self.copy()
        names = class_names_of(other)
        if names is None and self.class_names is not None:
            raise ValueError("cannot join a plain list with Predictions: whose classes would its labels index? "
                             "make it Predictions(list, class_names) first")
        return Predictions(other, names) + self

    # the list operations that would give a plain list, or join another classes' labels unchecked
    # (a copy lost its class names and its labels were read in the dataset's order)
    def __iadd__(self, other):
        return self + other

    def append(self, item) -> None:
        """Add one image's prediction; its windows, zoom and tta are unknown, so the per-image lists
        (which would no longer line up with the images) and ``tta`` are dropped."""
        super().append(item)
        self._forget(added=True)

    def _forget(self, added: bool = False) -> None:
        """Drop the per-image lists, and ``tta`` too when a prediction made who knows how was ``added``."""
        self.windows = self.zooms = None
        if added:
            self.tta = None

    # the other list operations that move images: the per-image lists would no longer line up
    def insert(self, i, item) -> None:
        super().insert(i, item)
        self._forget(added=True)

    def pop(self, i=-1):
        self._forget()
        return super().pop(i)

    def remove(self, item) -> None:
        super().remove(item)
        self._forget()

    def __delitem__(self, i) -> None:
        super().__delitem__(i)
        self._forget()

    def __setitem__(self, i, item) -> None:
        super().__setitem__(i, item)
        self.tta = None  # the new prediction may be made otherwise
        if isinstance(i, slice):  # one image's prediction replaced keeps its windows; a slice may not
            self._forget()

    def sort(self, *a, **kw) -> None:
        super().sort(*a, **kw)
        self._forget()

    def reverse(self) -> None:
        super().reverse()
        self._forget()

    def clear(self) -> None:
        super().clear()
        self._forget()

    def extend(self, other):
        raise TypeError("Predictions.extend would join labels of other classes unchecked: use p = p + other")

    def __reduce__(self):
        # pickle (and copy/deepcopy) rebuild a list subclass through extend, which is refused, and
        # would lose the windows and zooms: rebuild through __init__, then restore every attribute
        return (Predictions, (list(self), self.class_names), dict(self.__dict__))

    def copy(self) -> "Predictions":
        return Predictions(list(self), self.class_names, windows=self.windows, zooms=self.zooms,
                           tta=getattr(self, "tta", None))

    def __repr__(self) -> str:
        return f"Predictions({len(self)} images, classes={self.class_names})"


def class_names_of(predictions) -> list[str] | None:
    """The class names predictions carry (:class:`Predictions`, or the raw prediction cache
    :class:`~smearlab.detection.postprocess.RawPredictions`), or None.

    Parameters
    ----------
    predictions : a list of prediction dicts, possibly carrying ``class_names``.
    """
    names = getattr(predictions, "class_names", None)
    return None if names is None else [str(c) for c in names]


def empty_prediction(hw: tuple[int, int] | None = None) -> dict[str, np.ndarray]:
    """The prediction of an image without objects; with ``hw`` it also holds ``(0, H, W)`` masks.

    Parameters
    ----------
    hw : ``(height, width)`` of the image in pixels, or None for no ``masks`` entry.
    """
    out = {"boxes": np.zeros((0, 4), np.float32), "scores": np.zeros((0,), np.float32),
           "labels": np.zeros((0,), np.int64)}
    if hw is not None:
        out["masks"] = np.zeros((0, int(hw[0]), int(hw[1])), bool)
    return out


def check_predictions(dataset: SmearDataset, predictions) -> list[dict]:
    """The predictions with the agreed dtypes and labels indexing ``dataset.class_names``.

    Predictions that carry class names (``Predictions`` from ``predict``/``postprocess``,
    ``RawPredictions``) are mapped onto the dataset's classes by name (same name, or an alias
    such as ``Platelet``/``Platelets``; see :mod:`smearlab.data.classes`): a model trained on
    ``[Platelets, RBC, WBC]`` is scored correctly on a dataset listing ``[WBC, RBC, Platelets]``.
    Plain lists are taken to index the dataset's classes.

    Parameters
    ----------
    dataset : the SmearDataset the predictions are for (ground truth).
    predictions : one prediction dict per image, aligned with ``dataset``; a :class:`Predictions`
        (or anything with ``class_names``) is mapped by class name.

    Returns
    -------
    list of dict
        the checked predictions (see :func:`as_prediction`), labels indexing ``dataset.class_names``.

    Raises
    ------
    ValueError
        on a length mismatch, a label outside the class list or masks whose size is not the
        image's;
        :class:`~smearlab.data.classes.ClassMismatchError` (a ValueError) when the two class
        lists cannot be matched one to one, showing both.
    """
    names = class_names_of(predictions)
    if len(predictions) != len(dataset):
        raise ValueError(f"{len(predictions)} predictions for {len(dataset)} images of {dataset.name!r}")
    lut = None
    if names is not None and names != list(dataset.class_names):
        mapping = match_classes(names, dataset.class_names, require="both",
                                what=f"the predictions' classes and the classes of dataset {dataset.name!r}"
                                     " (load the dataset with class_names= the model's classes, and class_map="
                                     " for other spellings)")
        log.info("predictions mapped onto the classes of %r by name: %s", dataset.name, mapping.describe())
        lut = mapping.lut
    own = names if names is not None else list(dataset.class_names)
    k = len(own)
    out = []
    for i, (p, sample) in enumerate(zip(predictions, dataset)):
        p = as_prediction(p, f"prediction {i}")
        if len(p["labels"]) and (p["labels"].min() < 0 or p["labels"].max() >= k):
            raise ValueError(f"prediction {i}: label outside the {k} classes {own}")
        if "masks" in p and len(p["masks"]) and p["masks"].shape[1:] != tuple(sample.hw):
            raise ValueError(f"prediction {i} (image {sample.image_id!r}): masks of size {p['masks'].shape[1:]} "
                             f"for an image of {tuple(sample.hw)} (height, width)")
        if lut is not None:
            p["labels"] = lut[p["labels"]]
        out.append(p)
    return out
