"""Scale-aware prediction: smears from another microscope or camera show the cells at another
magnification, and a detector trained at one scale misses cells much smaller or larger than any
it has seen. Red cells are a ruler in every blood smear (about 7.5 um across): the median size of
the cells a detector finds, against the median size of the same class in its training images,
says how much to resize an image before predicting.

A detector shown cells at another scale also names them wrongly (red cells at half size look
like platelets, at twice the size like white cells), so one look at the training magnification can
be fooled. ``scale="auto"`` therefore looks at the image at a few zooms
(:data:`PROBE_FACTORS`), starts from the one where the detector is most confident (the sum of
the scores of its confident detections, :func:`confidence`), and settles where the size of the
reference cells found at a look (:func:`estimate_zoom`) asks for that look's own factor
(:func:`choose_factor`). It costs about six passes of the model per image instead of one.

The training scale is stored in the model folder (``DetectorConfig.object_sizes``: the median
side ``sqrt(w * h)`` of each class's boxes at the model's input scale, measured on the training
set); :func:`smearlab.detection.predict.predict` with ``scale="auto"`` uses it, or a scale the
user gives: the factor the image is resized by, the ratio of the new and the training pixel
sizes (``scale=2``: the image's pixels are twice as large as in training, so its cells look half
their training size and are enlarged twice; ``scale=0.5`` the other way).
"""
from __future__ import annotations

import numpy as np

from ..data.derive import remap_dataset
from ..data.sample import SmearDataset
from .anchors import box_shapes, input_scale
from .models import DetectorConfig

#: Zoom factors beyond these are not applied (a wrong estimate must not make an image huge).
ZOOM_RANGE = (0.33, 3.0)
#: Zoom factors a user may give (``scale=`` a number, or a pixel size): beyond them the cells are
#: too small or too large for the model to find anything, which would read as zero counts.
GIVEN_ZOOM_RANGE = (0.1, 10.0)
#: Estimates within this ratio of 1 leave the image at the training magnification.
TOLERANCE = 1.12
#: Detections that count for the estimate.
MIN_SCORE, MIN_OBJECTS = 0.5, 5
#: Resize factors (of the training magnification) ``scale="auto"`` looks at the image with.
PROBE_FACTORS = (0.5, 0.71, 1.0, 1.41, 2.0)


def check_zoom(scale, what: str = "scale") -> None:
    """Refuse (``ValueError``) a given zoom that is not a finite number within
    :data:`GIVEN_ZOOM_RANGE`; ``None`` and ``"auto"`` pass.

    Parameters
    ----------
    scale : the zoom factor (or None / "auto").
    what : names the setting in the message (e.g. ``"pixel_size / the model's pixel_size_um"``).
    """
    if scale is None or scale == "auto":
        return
    try:
        z = float(scale)
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be 'auto', None or a number, got {scale!r}") from None
    lo, hi = GIVEN_ZOOM_RANGE
    if not lo <= z <= hi:  # NaN and infinities fail too
        raise ValueError(f"{what} {scale!r} is outside {lo}..{hi}: at such a zoom the cells are too small or too "
                         "large for the model to find (the counts would read zero); check the value")


def object_sizes(dataset: SmearDataset, cfg: DetectorConfig) -> dict[str, dict[str, float]]:
    """The training scale: per class, the median side ``sqrt(w * h)`` of its boxes at the model's
    input scale and how many boxes it comes from, keyed by the model's class names
    (``cfg.class_names``: the dataset's classes are matched to them by name or alias, so that a
    dataset's ``"red blood cell"`` is the model's ``"RBC"``, which :func:`estimate_zoom` looks up).

    Parameters
    ----------
    dataset : the training boxes.
    cfg : the detector's settings (its input size and classes).

    Raises
    ------
    ValueError
        when the dataset holds objects of a class the model lacks.
    """
    dataset = remap_dataset(dataset, list(cfg.class_names), "training")
    out = {}
    for name, wh in box_shapes(dataset, cfg).items():
        if len(wh):
            out[name] = {"size": float(np.median(np.sqrt(wh[:, 0] * wh[:, 1]))), "count": int(len(wh))}
    return out


def check_object_sizes(cfg: DetectorConfig) -> None:
    """Refuse (``ValueError``) a training scale that names none of the model's classes: with
    ``scale="auto"`` no reference class would ever be found and every image would silently stay
    as it is (object sizes keyed by a dataset's ``"red blood cell"`` for a model's ``"RBC"``).

    Parameters
    ----------
    cfg : the detector's settings (``object_sizes``, ``class_names``).
    """
    sizes = cfg.object_sizes or {}
    if not any(name in sizes for name in cfg.class_names):
        raise ValueError(f"scale='auto' needs the training scale (object_sizes) of at least one of the model's "
                         f"classes {list(cfg.class_names)}; it names {sorted(sizes) or 'none'}: measure it with "
                         "object_sizes(training set, cfg), which keys it by the model's class names")


def estimate_zoom(prediction: dict, hw: tuple[int, int], cfg: DetectorConfig) -> float | None:
    """How much larger the image's cells look to the model than in training (>1: larger), from
    one prediction at the training magnification; None when too few reference cells were found.

    The reference is the class with the most confident detections (score >= 0.5) among the
    classes of ``cfg.object_sizes``; at least 5 of them are needed.

    Parameters
    ----------
    prediction : the image's prediction (original pixels), 0-based labels into ``cfg.class_names``.
    hw : the image's ``(height, width)``.
    cfg : the detector's settings, with ``object_sizes`` (refused when they name none of its
        classes, :func:`check_object_sizes`).
    """
    check_object_sizes(cfg)
    sizes = cfg.object_sizes
    scores, labels, boxes = prediction["scores"], prediction["labels"], prediction["boxes"]
    best, best_n = None, 0
    for k, name in enumerate(cfg.class_names):
        if name not in sizes:
            continue
        sel = (labels == k) & (scores >= MIN_SCORE)
        if sel.sum() > best_n:
            best, best_n = (name, sel), int(sel.sum())
    if best is None or best_n < MIN_OBJECTS:
        return None
    name, sel = best
    wh = boxes[sel, 2:] - boxes[sel, :2]
    # at factor 1 the model sees the image at its training magnification (predict's scale)
    base = tuple(int(v) for v in cfg.train_image_size) if cfg.train_image_size else hw
    seen = float(np.median(np.sqrt(wh[:, 0] * wh[:, 1]))) * input_scale(base, cfg)
    return seen / sizes[name]["size"]


def zoom_to_apply(zoom: float | None) -> float:
    """The resize factor for an image whose cells look ``zoom`` times their training size: 1/zoom,
    clipped to :data:`ZOOM_RANGE`, and 1 when the estimate is missing or within :data:`TOLERANCE`.

    Parameters
    ----------
    zoom : :func:`estimate_zoom`'s estimate.
    """
    if zoom is None or not np.isfinite(zoom) or zoom <= 0:
        return 1.0
    if 1 / TOLERANCE <= zoom <= TOLERANCE:
        return 1.0
    return float(np.clip(1.0 / zoom, *ZOOM_RANGE))


def confidence(prediction: dict) -> float:
    """How sure a detector is of what it sees: the sum of the scores of its detections with
    ``score >= MIN_SCORE`` (highest at the scale it was trained at).

    Parameters
    ----------
    prediction : one image's prediction.
    """
    scores = np.asarray(prediction["scores"], float)
    return float(scores[scores >= MIN_SCORE].sum())


def choose_factor(probes: dict[float, dict], hw: tuple[int, int], cfg: DetectorConfig) -> float:
    """The resize factor for an image from its predictions at :data:`PROBE_FACTORS`.

    A detector's boxes lean toward the sizes it was trained on: shown red cells 1.25 times their
    training size, it draws them about 1.12 times, so the size found at one look understates
    how far off the image is. The right factor is the one at which the reference cells come out
    at their training size, i.e. where the factor a look's cells ask for (:func:`estimate_zoom`)
    agrees with the look's own factor. The most confident look (:func:`confidence`) is the start;
    from it the looks are followed in the direction its cells ask for, and the factor is
    interpolated (in log scale) between the two neighbouring looks where that request changes
    sign. Without such a crossing the last look's own request stands when it is within sqrt(2)
    of that look (else the look's factor). The result goes through :func:`zoom_to_apply`'s
    tolerance and range. When the most confident look holds fewer than :data:`MIN_OBJECTS`
    confident reference cells, their size cannot be measured and the image stays as it is (1.0).

    Parameters
    ----------
    probes : ``{factor: prediction}`` (original pixels).
    hw : the image's ``(height, width)``.
    cfg : the detector's settings, with ``object_sizes`` (refused when they name none of its
        classes, :func:`check_object_sizes`).
    """
    check_object_sizes(cfg)
    factors = sorted(probes)
    best = max(factors, key=lambda f: (confidence(probes[f]), -abs(np.log(f))))
    if confidence(probes[best]) == 0:
        return 1.0

    def request(f: float) -> float | None:  # log of the factor f's cells ask for, minus log f
        z = estimate_zoom(probes[f], hw, cfg)
        return None if z is None or not np.isfinite(z) or z <= 0 else float(-np.log(z) - np.log(f))

    i, g = factors.index(best), request(best)
    if g is None:  # too few reference cells at the most confident look to measure their size:
        return 1.0  # confidence alone (score noise on a sparse field) must not zoom the image
    step = 1 if g > 0 else -1
    while g != 0 and 0 <= i + step < len(factors):
        g_next = request(factors[i + step])
        if g_next is None:
            break
        if np.sign(g_next) != np.sign(g):
            a, b = np.log(factors[i]), np.log(factors[i + step])
            return _applied(float(np.exp(a + g / (g - g_next) * (b - a))))
        i, g = i + step, g_next
    if abs(g) <= np.log(np.sqrt(2)) + 1e-9:
        return _applied(float(factors[i] * np.exp(g)))
    return float(factors[i])


def _applied(factor: float) -> float:
    """``factor`` as :func:`zoom_to_apply` would apply it (1 within the tolerance, clipped)."""
    return zoom_to_apply(1.0 / factor)
