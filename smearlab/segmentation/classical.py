"""Classical (non-learned) segmentation baselines on numpy arrays.

Every segmenter returns the prediction form the networks use (see :mod:`smearlab.metrics.detection`)::

    {"boxes": (N, 4) float32 xyxy pixel-edge, "scores": (N,) float32,
     "labels": (N,) int64, "masks": (N, H, W) bool}

so :func:`smearlab.metrics.detection.coco_eval` (``iou_type="segm"``) and
:func:`smearlab.metrics.instances.dsb_score` score them like a network. An image without foreground gives
the empty prediction (shapes ``(0, 4)``, ``(0,)``, ``(0,)``, ``(0, H, W)``), never an error.

Scores
------
Threshold and watershed instances score ``0.5 + 0.5 * contrast``, where ``contrast`` in [0, 1]
is the difference between the instance's mean intensity and the mean background intensity on
the (polarity-corrected, 0..1-scaled) channel that was thresholded: every instance passes the
usual 0.5 score threshold, and high-contrast objects rank first for AP. Blobs score
``r / (r + threshold)`` with ``r`` the scale-normalised filter response at the blob (>= 0.5 for
a blob at the detection threshold). :func:`extract_cell` scores its single instance 1.0.

Functions
---------
:func:`threshold_segment`, :func:`watershed_segment`, :func:`blob_detect`, :func:`extract_cell`,
:func:`central_cell_box`,
:func:`label_image_to_instances`, :func:`instances_to_label_image`, :func:`segment_dataset`;
one name per method for explorers and tables: :data:`METHODS`, :func:`segment`; scoring and
inspection: :func:`as_single_class`, :func:`count_error`, :func:`score_instances`,
:func:`evaluate_method`, :func:`failure_cases`, :func:`overlay`; settings from training
images: :func:`suggest_params`.
"""
from __future__ import annotations

import inspect
import warnings

import numpy as np
from scipy import ndimage as ndi
from skimage import color, feature, filters, morphology
from skimage.feature import peak_local_max
from skimage.filters import threshold_local
from skimage.measure import label as cc
from skimage.morphology import convex_hull_image
from skimage.segmentation import relabel_sequential, watershed
from tqdm.auto import tqdm

from ..core.search import grid_search
from ..data.imageio import LUMA, full_scale
from ..data.predictions import empty_prediction
from ..metrics.instances import dsb_score, has_instance_masks


#: Channels :func:`to_channel` can extract from an RGB image.
CHANNELS = ("auto", "gray", "hematoxylin", "eosin", "saturation", "value", "red", "green", "blue")
#: Channels that measure how much stain a pixel holds: stained objects are bright in them on a
#: bright-field image (in the others, intensities, they are dark).
STAIN_CHANNELS = ("hematoxylin", "eosin", "saturation")


_METHODS = ("otsu", "li", "adaptive")


def as_image_array(image, where: str, *, allow_bool: bool = False) -> np.ndarray:
    """``image`` as an ``(H, W, 3)`` or ``(H, W)`` numeric array, else ValueError.

    Parameters
    ----------
    image : array-like image; an ``(H, W, 4)`` image loses its alpha channel, an ``(H, W, 1)``
        image its channel axis.
    where : names the caller in the error message.
    allow_bool : accept a bool array (a foreground mask).
    """
    img = np.asarray(image)
    if img.dtype == bool and not allow_bool:
        raise ValueError(f"{where}: image must be numeric, got a bool array "
                         "(pass binary masks to watershed_segment)")
    if img.dtype != bool and not (np.issubdtype(img.dtype, np.integer)
                                  or np.issubdtype(img.dtype, np.floating)):
        raise ValueError(f"{where}: image must be a numeric array, got dtype {img.dtype}")
    if img.ndim == 3 and img.shape[2] == 4:
        img = img[..., :3]
    elif img.ndim == 3 and img.shape[2] == 1:
        img = img[..., 0]
    if not (img.ndim == 2 or (img.ndim == 3 and img.shape[2] == 3)):
        raise ValueError(f"{where}: image must have shape (H, W, 3) or (H, W), got {img.shape}")
    if img.shape[0] == 0 or img.shape[1] == 0:
        raise ValueError(f"{where}: image has zero size {img.shape[:2]}")
    if np.issubdtype(img.dtype, np.floating) and not np.all(np.isfinite(img)):
        raise ValueError(f"{where}: image contains NaN or infinite values")
    return img


def _choice(name: str, value, allowed) -> str:
    if value not in allowed:
        raise ValueError(f"unknown {name} {value!r}; expected one of {list(allowed)}")
    return value


def _nonneg(name: str, value, integer: bool = True):
    ok = isinstance(value, (int, np.integer)) if integer else isinstance(value, (int, float, np.number))
    if isinstance(value, bool) or not ok or value < 0:
        kind = "integer" if integer else "number"
        raise ValueError(f"{name} must be a non-negative {kind}, got {value!r}")
    return value


def stretch01(x: np.ndarray) -> np.ndarray:
    """Float64 copy of ``x`` stretched to [0, 1] (a constant image gives zeros).

    Parameters
    ----------
    x : numeric array.
    """
    x = x.astype(np.float64)
    lo, hi = float(x.min()), float(x.max())
    return (x - lo) / (hi - lo) if hi > lo else np.zeros_like(x)


#: Colour: at least 1 % of the pixels (:data:`COLOUR_SHARE`) have channels that differ from their mean by
#: this fraction of the full scale (:func:`is_colour`).
COLOUR_SPREAD = 0.05
COLOUR_SHARE = 0.01
#: A fluorescence background: at least 5 % of the pixels darker than this fraction of the full scale,
#: and colourless (:func:`is_stained_brightfield`).
NEAR_BLACK = 0.10


def _chroma(f: np.ndarray) -> np.ndarray:
    """Per-pixel spread of the channels of a float RGB image (the largest distance of a channel from the
    pixel's mean), after a 3 x 3 mean of each channel: sensor noise, independent in each channel, averages
    out (sd 4 of 255 falls to about 1.3), the colour of anything three pixels wide stays."""
    r, g, b = (ndi.uniform_filter(np.ascontiguousarray(f[..., k], np.float32), 3, mode="nearest") for k in range(3))
    m = (r + g + b) / 3.0
    out = np.abs(r - m)
    np.maximum(out, np.abs(g - m), out=out)
    return np.maximum(out, np.abs(b - m), out=out)


def is_colour(image: np.ndarray) -> bool:
    """Whether an RGB image is in colour (a stained bright-field image, or a colour composite):
    on at least 1 % of the pixels its channels, each averaged over 3 x 3 pixels, differ from their
    mean by 5 % of the full scale or more. A 2-D image, or an RGB image with three (nearly) equal
    channels, is grey: per-channel sensor noise on a grey image is not colour (the largest spread of
    single pixels called a grey field with noise of sd 4 of 255 colour, and sent it to the stained
    bright-field path, which took its background for the object).

    Parameters
    ----------
    image : ``(H, W, 3)`` RGB (uint8, or float in [0, 1]) or ``(H, W)`` grey image.
    """
    img = np.asarray(image)
    if img.ndim != 3:
        return False
    if img.size > 4_000_000:
        img = img[::4, ::4]
    if np.array_equal(img[..., 0], img[..., 1]) and np.array_equal(img[..., 0], img[..., 2]):
        return False  # grey stored as RGB
    c = _chroma(img.astype(np.float32) / full_scale(img))
    return bool(np.percentile(c, 100 * (1 - COLOUR_SHARE)) >= COLOUR_SPREAD)


def fluorescence_look(img: np.ndarray, grey: np.ndarray | None = None, *, colour: bool | None = None) -> bool:
    """Whether a colour image has the background end of a fluorescence image: at least 5 % of its
    pixels near-black (grey below :data:`NEAR_BLACK` of the full scale) and those pixels colourless
    (their mean colour grey: a stained object that dark is still coloured), unless its lit side
    (above the grey Otsu threshold) is a pale, light field (median grey above half the scale, median
    HSV saturation below 0.5): a bright-field image with black vignetted corners."""
    img = np.asarray(img)
    if img.ndim != 3 or not (is_colour(img) if colour is None else colour):
        return False
    fs = full_scale(img)
    if grey is None:
        grey = img.astype(np.float32) @ np.asarray(LUMA, np.float32)
    grey = np.asarray(grey, np.float32)
    if img.size > 4_000_000:
        img, grey = img[::4, ::4], grey[::4, ::4]
    g = grey / fs
    lo = float(np.percentile(g, 5))
    if lo >= NEAR_BLACK:
        return False
    f = img.astype(np.float32) / fs
    tint = f[g <= lo].mean(axis=0)  # the mean colour of the darkest pixels (noise averages out)
    if float(np.abs(tint - tint.mean()).max()) >= COLOUR_SPREAD:
        return False  # dark but coloured: stain
    lit = g > filters.threshold_otsu(g) if float(g.max()) > float(g.min()) else np.zeros(g.shape, bool)
    if not lit.any():
        return True
    fl = np.clip(f[lit], 0.0, None)
    mx = fl.max(axis=1)
    sat = np.where(mx > 0, (mx - fl.min(axis=1)) / np.maximum(mx, 1e-12), 0.0)
    pale_light = float(np.median(g[lit])) > 0.5 and float(np.median(sat)) < 0.5
    return not pale_light


def is_stained_brightfield(image: np.ndarray, grey: np.ndarray | None = None, *, colour: bool | None = None) -> bool:
    """Whether an image is a stained bright-field image: in colour (:func:`is_colour`), its median
    grey level above a quarter of the full scale, and not the dark background of a fluorescence
    image. Stains absorb light, so what is stained is darker than the background in the intensity
    channels, whatever share of the field it covers (a smear or tissue field packed with cells
    included); colour composites of fluorescence channels are dark.

    The median alone read a fluorescence field packed with bright nuclei (58 % of it) as bright-field:
    so the background end decides too. At least 5 % of the pixels near-black (below
    :data:`NEAR_BLACK` of the full scale) and colourless is a fluorescence background, unless the lit
    side of the image is a pale, light field (a bright-field image with black vignetted corners).
    On the shared real images (DSB2018, CBC, IML malaria, PBC) the darkest 5 % of every colour image
    lie above 0.16 of the full scale: their decisions are those of the median.

    Parameters
    ----------
    image : ``(H, W, 3)`` RGB (uint8, or float in [0, 1]) or ``(H, W)`` grey image.
    grey : its grey level (BT.601 luma) when already computed, else None.
    colour : :func:`is_colour` of the image when already computed, else None.
    """
    img = np.asarray(image)
    if not (is_colour(img) if colour is None else colour):
        return False
    if grey is None:
        grey = img.astype(np.float32) @ np.asarray(LUMA, np.float32)
    if not float(np.median(grey)) > 0.25 * full_scale(img):
        return False
    return not fluorescence_look(img, grey, colour=True)


_INTENSITY_CHANNELS = ("gray", "value", "red", "green", "blue")


def _side_rule(img: np.ndarray, channel: str) -> str:
    """Which rule picks the objects' side of ``channel``: ``"stained"`` (a stained bright-field image:
    the channel's physics), ``"fluorescence"`` (a colour image with a fluorescence background, an
    intensity channel: the objects are bright) or ``"minority"`` (the minority side of the threshold)."""
    colour = is_colour(img)  # once: each test below starts from it
    if colour and is_stained_brightfield(img, colour=True):
        return "stained"
    if colour and channel in ("auto", *_INTENSITY_CHANNELS) and fluorescence_look(img, colour=True):
        return "fluorescence"
    return "minority"


def objects_dark(image: np.ndarray, channel: str, x: np.ndarray, threshold: float) -> bool:
    """The ``invert="auto"`` decision: whether the objects are the dark side of ``channel``.

    On a stained bright-field image (:func:`is_stained_brightfield`) by the channel's physics:
    dark in an intensity channel (grey, value, red, green, blue), bright in a stain channel
    (:data:`STAIN_CHANNELS`; ``"auto"`` is hematoxylin there). On a colour image with a
    fluorescence background (a near-black, colourless share, see :func:`is_stained_brightfield`)
    the objects are bright in the intensity channels (``"auto"`` is grey there), whatever share of
    the field they cover. On any other image (grey, or a stain channel of a colour fluorescence
    image) the objects are the minority side of ``threshold``.

    Parameters
    ----------
    image : the image the channel was taken from.
    channel : the channel's name (:data:`CHANNELS`).
    x : the stretched channel; threshold : its global threshold.
    """
    img = as_image_array(image, "image")
    return _objects_dark(_side_rule(img, channel), channel, x, threshold)


def _objects_dark(rule: str, channel: str, x: np.ndarray, threshold: float) -> bool:
    if rule == "stained":
        return channel not in ("auto", *STAIN_CHANNELS)
    if rule == "fluorescence":
        return False
    return bool((x > threshold).mean() > 0.5)


def to_channel(image: np.ndarray, channel: str = "auto") -> np.ndarray:
    """One float channel of ``image`` in [0, 1] (not stretched).

    Parameters
    ----------
    image : ``(H, W, 3)`` RGB (uint8, or float in [0, 1]) or ``(H, W)`` grey image.
    channel : one of :data:`CHANNELS`. ``"auto"`` is ``"hematoxylin"`` (colour deconvolution,
        nuclear stain) for a stained bright-field image (:func:`is_stained_brightfield`) and
        ``"gray"`` otherwise: a grey-looking image, or a colour composite on a dark background
        (fluorescence), whose near-black background the deconvolution's logarithm turned into
        noise above the nuclei (22 objects, or none, for 2). ``"saturation"``/``"value"`` are HSV.
        A 2-D image is returned as is (integers scaled to [0, 1] by
        :func:`~smearlab.data.imageio.full_scale`) whatever ``channel``.

    Returns
    -------
    (H, W) float64 array.
    """
    img = as_image_array(image, "to_channel")
    _choice("channel", channel, CHANNELS)
    # integers from the sensor range that holds them (full_scale: 12-bit data in a 16-bit array is
    # as bright as it is; by the dtype's range it read 16 times too dark, and stain densities
    # computed from it were wrong)
    f = img.astype(np.float64) / full_scale(img)  # floats too: 0..255 floats are 8-bit data
    if f.ndim == 2:
        return f
    if channel == "auto":
        channel = "hematoxylin" if is_stained_brightfield(img) else "gray"
    if channel == "gray":
        return color.rgb2gray(f)
    if channel in ("hematoxylin", "eosin"):
        return color.rgb2hed(np.clip(f, 0, 1))[..., 0 if channel == "hematoxylin" else 1]
    if channel in ("saturation", "value"):
        return color.rgb2hsv(np.clip(f, 0, 1))[..., 1 if channel == "saturation" else 2]
    return f[..., ("red", "green", "blue").index(channel)]


def _threshold(x: np.ndarray, method: str) -> float:
    if method == "li":
        return float(filters.threshold_li(x))
    return float(filters.threshold_otsu(x))


def foreground_mask(image: np.ndarray, method: str = "otsu", channel: str = "auto",
                    invert="auto", *, block_size: int = 51, offset: float = 0.02,
                    min_size: int = 16, opening_radius: int = 1, fill_holes: bool = True):
    """Binary foreground of ``image`` after thresholding and morphology.

    Parameters are those of :func:`threshold_segment`.

    Parameters
    ----------
    image : ``(H, W, 3)`` RGB or ``(H, W)`` grey image.
    method, channel, invert : threshold method, channel (:func:`to_channel`) and foreground side.
    block_size, offset : window side (pixels) and offset of the ``"adaptive"`` threshold.
    min_size, opening_radius, fill_holes : the morphology: smallest component kept (pixels),
        radius of the opening disk (0 for none), hole filling.

    Returns
    -------
    mask : (H, W) bool
    signal : (H, W) float64, the thresholded channel stretched to [0, 1] and flipped so that
        the foreground is bright (used for instance scores and watershed).

    Warns
    -----
    UserWarning, at most one per call (the outputs are not changed):
        * the polarity may be wrong, when ``invert="auto"`` took the minority side of the threshold
          and the foreground fills over 90 % of the image, or the minority side holds over
          :data:`CLOSE_MINORITY` of the pixels, or filling holes added over :data:`FILLED_SHARE` of
          the image: a field packed with objects is read the wrong way round; give ``invert``;
        * the image holds no clear foreground, when Otsu's two sides of the channel differ by less
          than :data:`NOISE_GAP` times the pixel noise (a blank field with sensor noise): the
          objects found may be noise.
    """
    _choice("method", method, _METHODS)
    if invert not in ("auto", True, False):
        raise ValueError(f"invert must be 'auto', True or False, got {invert!r}")
    _nonneg("min_size", min_size)
    _nonneg("opening_radius", opening_radius)
    image = as_image_array(image, "image")
    x = stretch01(to_channel(image, channel))
    if x.max() <= 0:  # constant image: nothing to find
        return np.zeros(x.shape, bool), x
    t_global = _threshold(x, "otsu" if method == "adaptive" else method)
    said = []  # what the warning of this call says
    eta, gap_noise = _separability(x, t_global if method in ("otsu", "adaptive") else None)
    if gap_noise < NOISE_GAP:
        said.append(f"the image holds no clear foreground: Otsu's threshold splits its channel into two sides that "
                    f"differ by only {gap_noise:.1f} times the pixel noise (separability {eta:.2f}), so the "
                    "objects found may be noise")
    decided = False
    if invert == "auto":
        rule = _side_rule(image, channel)
        decided = rule == "minority"  # the minority rule
        invert = _objects_dark(rule, channel, x, t_global)
    share = float((x > t_global).mean())
    share = min(share, 1.0 - share)  # the minority side's share of the pixels
    if invert:
        x = 1.0 - x
        t_global = 1.0 - t_global
    if method == "adaptive":
        bs = int(_nonneg("block_size", block_size))
        bs = max(3, bs | 1)  # odd, >= 3
        mask = x > threshold_local(x, bs, offset=-float(offset))
        mask &= x > min(t_global, float(np.median(x))) + float(offset)  # no speckle in flat background
    else:
        mask = x > t_global
    if opening_radius:
        mask = morphology.opening(mask, morphology.disk(int(opening_radius))).astype(bool)
    filled = 0.0
    if fill_holes:
        before = float(mask.mean())
        mask = ndi.binary_fill_holes(mask)
        filled = float(mask.mean()) - before
    if min_size:
        lab, _ = ndi.label(mask)
        mask &= (np.bincount(lab.ravel()) >= int(min_size))[lab]
    if decided and mask.mean() > 0.9:  # the background taken for the objects, the objects filled in as its hole
        said.append(f"the foreground fills {100 * mask.mean():.0f} % of the image: with invert='auto' the "
                    "objects are the minority side of the threshold, so a field that objects fill is read the "
                    "wrong way round; give invert=True (dark objects) or False")
    elif decided:
        why = None
        if share > CLOSE_MINORITY:
            why = (f"the minority side of the threshold, taken for the objects, holds {100 * share:.0f} % of the "
                   "pixels, close to half")
        elif filled > FILLED_SHARE:
            why = (f"filling holes added {100 * filled:.0f} % of the image (objects read as the background are "
                   "holes in it)")
        if why:
            said.append(f"{why}: with invert='auto' the objects are the minority side of the threshold, so the "
                        "polarity may be wrong (a field packed with objects is read the wrong way round); give "
                        "invert=True (dark objects) or invert=False (bright objects)")
    if said:  # one warning per call
        warnings.warn("; ".join(said), stacklevel=3)
    return mask, x


#: :func:`foreground_mask` warns that the polarity ``invert="auto"`` chose by the minority rule may be
#: wrong when the minority side holds more than this share of the pixels ...
CLOSE_MINORITY = 0.35
#: ... or when filling holes added more than this share of the image (objects read as the
#: background are holes in it). On the shared real images that the minority rule decides (the 21 grey
#: DSB2018 images) the minority side holds at most 30 % and filling adds at most 1.3 %.
FILLED_SHARE = 0.15
#: :func:`foreground_mask` warns that the image holds no clear foreground when the two sides of
#: Otsu's threshold of the thresholded channel differ by less than this many times the pixel noise
#: (its sd from the differences of neighbouring pixels). Pure noise gives 1.0 to 2.3 (1.5 to 1.6 for
#: Gaussian noise; up to 2.3 quantised to a few grey levels); synthetic white-cell crops of 32 px,
#: 3.0 and more in their saturation channel; the shared real images 13 and more (DSB2018, CBC, IML
#: malaria, PBC: 830 images). Otsu's separability (between-class over total variance) alone does not
#: tell noise: pure noise gives about 0.64 (a Gaussian split at its mean; 0.69 to 0.99 once
#: quantised to a few levels), one disc on 0.2 % of a noisy field 0.81, but real fields score as low
#: as 0.48 (the hematoxylin channel of CBC smears, whose few dark objects make a long tail; 162 of the
#: 360 CBC images score below 0.7). The warning gives both.
NOISE_GAP = 3.0


def _separability(x: np.ndarray, t: float | None = None) -> tuple[float, float]:
    """Otsu's separability of ``x`` (between-class variance over total variance, at the Otsu
    threshold ``t``, computed when None) and the gap between the two classes' means in units of
    the pixel noise (its sd estimated from the absolute differences of neighbouring pixels)."""
    if t is None:
        t = float(filters.threshold_otsu(x))
    hi = x > t
    w = float(hi.mean())
    var = float(x.var())
    if not 0.0 < w < 1.0 or var <= 0:
        return 1.0, np.inf
    gap = float(x[hi].mean() - x[~hi].mean())
    eta = w * (1.0 - w) * gap ** 2 / var
    d = [np.abs(np.diff(x, axis=a)).ravel() for a in (0, 1) if x.shape[a] > 1]
    if not d:
        return float(eta), np.inf
    d = np.concatenate(d)
    # the noise sd from the differences of neighbours (sd * sqrt(2)): their median, which edges do not
    # move; their mean where most neighbours are equal (noise quantised to a few grey levels)
    noise = 1.4826 * float(np.median(d)) / np.sqrt(2)
    if noise <= 0:
        noise = np.sqrt(np.pi) / 2 * float(d.mean())
    return float(eta), (gap / noise if noise > 0 else np.inf)


def label_image_to_instances(label_img: np.ndarray, *, scores=None, label: int = 0,
                             signal: np.ndarray | None = None) -> dict:
    """Prediction dict of a label image (0 = background, each positive id one instance).

    Ids need not be consecutive (gaps are fine): instances come out in increasing id order,
    i.e. relabelled sequentially ``1..N`` -> index ``0..N-1``. Any integer dtype works, 16-
    and 32-bit label images included (ids above 255 are common); a bool image is one instance.
    Every pixel holds one id, so instances never overlap.

    Parameters
    ----------
    label_img : (H, W) non-negative integer (or bool) array.
    scores : optional (N,) scores in id order; default 1.0, or contrast-based (see the module
        docstring) when ``signal`` is given.
    label : class index given to every instance.
    signal : optional (H, W) float image in [0, 1], foreground bright, for contrast scores.

    Returns
    -------
    dict with ``boxes``, ``scores``, ``labels``, ``masks``.
    """
    lab = np.asarray(label_img)
    if lab.ndim != 2:
        raise ValueError(f"label image must be 2-D (H, W), got shape {lab.shape}")
    if lab.dtype == bool:
        lab = lab.astype(np.int64)
    if not np.issubdtype(lab.dtype, np.integer):
        raise ValueError(f"label image must have an integer dtype, got {lab.dtype}")
    if lab.size and lab.min() < 0:
        raise ValueError("label image has negative ids")
    h, w = lab.shape
    ids = np.unique(lab)
    ids = ids[ids > 0]
    if not len(ids):
        return empty_prediction((h, w))
    seq = relabel_sequential(lab)[0] if (ids[-1] != len(ids)) else lab
    n = len(ids)
    masks = np.zeros((n, h, w), bool)
    boxes = np.zeros((n, 4), np.float32)
    for i, sl in enumerate(ndi.find_objects(seq, max_label=n)):
        if sl is None:
            continue
        masks[i][sl] = seq[sl] == i + 1
        boxes[i] = [sl[1].start, sl[0].start, sl[1].stop, sl[0].stop]
    if scores is None:
        if signal is not None:
            sig = np.asarray(signal, np.float64)
            if sig.shape != lab.shape:
                raise ValueError(f"signal shape {sig.shape} differs from label image {lab.shape}")
            idx = np.arange(1, n + 1)
            inside = np.asarray(ndi.mean(sig, seq, idx))
            bg = float(sig[seq == 0].mean()) if (seq == 0).any() else 0.0
            scores = 0.5 + 0.5 * np.clip(inside - bg, 0.0, 1.0)
        else:
            scores = np.ones(n)
    scores = np.asarray(scores, np.float32).reshape(-1)
    if len(scores) != n:
        raise ValueError(f"{len(scores)} scores for {n} instances")
    return {"boxes": boxes, "scores": scores, "labels": np.full(n, int(label), np.int64),
            "masks": masks}


def instances_to_label_image(masks, scores=None) -> np.ndarray:
    """``(H, W)`` int32 label image of ``(N, H, W)`` instance masks, instance ``i`` -> id ``i + 1``.

    Overlapping masks
    -----------------
    A pixel covered by several instances goes to the one with the highest score (``scores``,
    or the ``scores`` of a prediction dict); on equal scores, or without scores, to the first
    (lowest index) instance, so predictions sorted by score keep their best instance. An
    instance entirely covered by others, like an empty mask, leaves its id unused: the label
    image then has gaps, which :func:`label_image_to_instances` relabels away. Evaluation
    (:func:`smearlab.metrics.detection.coco_eval`, ``dsb_score``) uses the masks themselves, where
    overlapping instances stay separate.

    Parameters
    ----------
    masks : ``(N, H, W)`` bool (or 0/1) array, or a prediction dict (its ``masks``).
    scores : optional ``(N,)`` scores ranking overlapping instances.
    """
    if isinstance(masks, dict):
        if scores is None:
            scores = masks.get("scores")
        masks = masks.get("masks")
        if masks is None:
            raise ValueError("prediction has no 'masks'")
    m = np.asarray(masks)
    if m.ndim != 3:
        raise ValueError(f"instance masks must have shape (N, H, W), got {m.shape}")
    m = m.astype(bool, copy=False)
    n = len(m)
    if scores is None:
        order = np.arange(n)
    else:
        sc = np.asarray(scores, np.float64).reshape(-1)
        if len(sc) != n:
            raise ValueError(f"{len(sc)} scores for {n} instance masks")
        order = np.argsort(-sc, kind="stable")
    out = np.zeros(m.shape[1:], np.int32)
    for i in order[::-1]:  # lowest priority first: the winners paint last
        out[m[i]] = i + 1
    return out


def labels_to_prediction(lab: np.ndarray, signal: np.ndarray | None, label: int, min_size: int = 0) -> dict:
    """Prediction dict of a label image without its instances smaller than ``min_size`` pixels.

    Parameters
    ----------
    lab : ``(H, W)`` integer label image (0 background).
    signal : optional ``(H, W)`` float image in [0, 1], foreground bright, for contrast scores
        (see :func:`label_image_to_instances`).
    label : class index of every instance.
    min_size : drop instances smaller than this many pixels (0: keep all).
    """
    if min_size:
        sizes = np.bincount(lab.ravel())
        small = np.flatnonzero(sizes < min_size)
        small = small[small > 0]
        if len(small):
            lab = np.where(np.isin(lab, small), 0, lab)
    return label_image_to_instances(lab, signal=signal, label=label)


def threshold_segment(image: np.ndarray, method: str = "otsu", channel: str = "auto",
                      invert="auto", min_size: int = 16, opening_radius: int = 1,
                      fill_holes: bool = True, *, block_size: int = 51, offset: float = 0.02,
                      connectivity: int = 1, label: int = 0) -> dict:
    """Instances as the connected components of a thresholded, cleaned foreground.

    Parameters
    ----------
    image : ``(H, W, 3)`` RGB or ``(H, W)`` grey image (uint8, other integers, or floats).
    method : ``"otsu"`` or ``"li"`` (global, skimage.filters) or ``"adaptive"``
        (``threshold_local`` over ``block_size`` windows, minus ``offset``, restricted to pixels
        above ``min(global Otsu, median) + offset`` so flat background does not speckle).
    channel : see :func:`to_channel` (``"auto"``: grey, or hematoxylin for colour images).
    invert : ``"auto"`` decides the foreground side by :func:`objects_dark` (on a stained
        bright-field image by the channel: dark in intensities, bright in stain densities; on a
        colour fluorescence image the bright side of an intensity channel; on other fluorescence
        and grey images the minority side of the global threshold, with a warning when that is
        close, see :func:`foreground_mask`); True segments the dark side, False the bright side.
    min_size : drop components smaller than this many pixels.
    opening_radius : radius of the binary opening (disk) that removes specks; 0 for none.
    fill_holes : fill holes inside objects.
    block_size : window side in pixels of ``"adaptive"`` (made odd, at least 3).
    offset : offset of ``"adaptive"`` on the [0, 1] stretched channel.
    connectivity : 1 (4-connected) or 2 (8-connected) components.
    label : class index of every instance.

    Returns
    -------
    dict
        the prediction form (module docstring); scores are contrast-based.

    Raises
    ------
    ValueError
        on a bad shape or dtype or unknown option.
    """
    img = as_image_array(image, "threshold_segment")
    if connectivity not in (1, 2):
        raise ValueError(f"connectivity must be 1 or 2, got {connectivity!r}")
    mask, sig = foreground_mask(img, method, channel, invert, block_size=block_size, offset=offset,
                                min_size=min_size, opening_radius=opening_radius,
                                fill_holes=fill_holes)
    return labels_to_prediction(cc(mask, connectivity=connectivity), sig, label)


def watershed_segment(image: np.ndarray, min_distance: int = 5, footprint=None,
                      method: str = "otsu", channel: str = "auto", invert="auto",
                      min_size: int = 16, opening_radius: int = 1, fill_holes: bool = True, *,
                      smooth: float = 1.0, compactness: float = 0.0, block_size: int = 51,
                      offset: float = 0.02, label: int = 0) -> dict:
    """Distance-transform watershed that splits touching objects.

    The foreground (``image`` itself when it is a bool mask, else :func:`foreground_mask` with
    ``method``/``channel``/``invert``/morphology options) is turned into a Euclidean distance
    map (Gaussian-smoothed by ``smooth`` pixels to avoid spurious peaks);
    ``skimage.feature.peak_local_max`` (``min_distance`` / ``footprint``, one region per
    connected component at least) gives the markers and ``skimage.segmentation.watershed`` of
    the negated distance, restricted to the foreground, the instances.

    Parameters
    ----------
    image : ``(H, W, 3)``/``(H, W)`` image, or an ``(H, W)`` bool foreground mask.
    min_distance : minimum separation of markers (pixels); larger merges more.
    footprint : optional boolean footprint for peak_local_max (overrides ``min_distance``).
    smooth : sigma of the Gaussian applied to the distance map (0 for none).
    compactness : watershed compactness (0 = classical watershed).
    min_size : drop instances (and foreground components) smaller than this many pixels.
    method, channel, invert, opening_radius, fill_holes, block_size, offset : the foreground
        options, as in :func:`threshold_segment` (not used for a mask input).
    label : class index of every instance.

    Returns
    -------
    dict
        the prediction form; contrast scores for images, 1.0 for a mask input.
    """
    img = as_image_array(image, "watershed_segment", allow_bool=True)
    _nonneg("min_distance", min_distance)
    _nonneg("smooth", smooth, integer=False)
    if img.dtype == bool:
        if img.ndim != 2:
            raise ValueError(f"watershed_segment: a mask must be 2-D (H, W), got {img.shape}")
        mask, sig = img, None
    else:
        mask, sig = foreground_mask(img, method, channel, invert, block_size=block_size,
                                    offset=offset, min_size=min_size,
                                    opening_radius=opening_radius, fill_holes=fill_holes)
    if not mask.any():
        return empty_prediction(mask.shape)
    comps = cc(mask, connectivity=1)
    dist = ndi.distance_transform_edt(mask)
    if smooth:
        dist = ndi.gaussian_filter(dist, float(smooth)) * mask
    kw = {"footprint": np.asarray(footprint, bool)} if footprint is not None else \
        {"min_distance": max(1, int(min_distance))}
    peaks = peak_local_max(dist, labels=comps, exclude_border=False, **kw)
    markers = np.zeros(mask.shape, np.int32)
    markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
    # components without a peak (plateaus) keep one marker of their own
    missing = np.setdiff1d(np.unique(comps[comps > 0]), np.unique(comps[markers > 0]))
    if len(missing):
        for k, c in enumerate(missing, start=len(peaks) + 1):
            ys, xs = np.nonzero(comps == c)
            j = int(np.argmax(dist[ys, xs]))
            markers[ys[j], xs[j]] = k
    lab = watershed(-dist, markers, mask=mask, compactness=float(compactness))
    return labels_to_prediction(lab, sig, label, min_size=int(min_size))


BLOB_THRESHOLDS = {"log": 0.1, "dog": 0.1, "doh": 0.01}


def blob_detect(image: np.ndarray, method: str = "log", min_sigma: float = 2.0,
                max_sigma: float = 20.0, threshold: float | None = None, *, num_sigma: int = 10,
                overlap: float = 0.5, channel: str = "auto", invert="auto",
                label: int = 0) -> dict:
    """Blob detection (``skimage.feature.blob_log`` / ``blob_dog`` / ``blob_doh``) as disc instances.

    The channel (:func:`to_channel`) is stretched to [0, 1] and, with ``invert="auto"``, flipped
    when the objects are dark in it (:func:`objects_dark`: by the channel on a stained bright-field
    image, else the minority side of its Otsu threshold is bright; blob_log/dog find bright blobs).
    The radius is ``sigma * sqrt(2)`` for LoG/DoG and ``sigma`` for DoH; the box is the disc's
    pixel-edge extent and the mask the disc (pixel centres within the radius, at least the
    centre pixel), both clipped to the image.

    Parameters
    ----------
    image : ``(H, W, 3)`` RGB or ``(H, W)`` grey image.
    method : ``"log"``, ``"dog"`` or ``"doh"``. ``"doh"`` finds blobs but its radii (scikit-image's
        ``radius = sigma``) are too large at nuclear sizes: discs of radius 5, 8 and 12 px came out
        at 11, 14 and 17 (mask IoU 0.2 to 0.5, so DSB and mask AP near 0); prefer ``"log"``
        (radii within 0.5 px) when the masks or boxes are scored.
    min_sigma, max_sigma, threshold, num_sigma, overlap : passed to skimage (``num_sigma`` is
        not used by ``"dog"``). ``threshold=None`` is :data:`BLOB_THRESHOLDS` of the method
        (0.1 for LoG and DoG, 0.01 for DoH, skimage's DoH default).
    channel : see :func:`to_channel`.
    invert : ``"auto"`` (see above), True (find dark blobs) or False (find bright blobs).
    label : class index of every instance.

    Returns
    -------
    dict
        the prediction form; scores ``r / (r + threshold)`` with ``r`` the scale-normalised
        response at the blob (LoG ``-sigma^2 * LoG`` for log/dog, ``sigma^4 * det(Hessian)``
        for doh, clipped at 0).
    """
    img = as_image_array(image, "blob_detect")
    _choice("method", method, ("log", "dog", "doh"))
    if invert not in ("auto", True, False):
        raise ValueError(f"invert must be 'auto', True or False, got {invert!r}")
    if threshold is None:
        threshold = BLOB_THRESHOLDS[method]
    for n, v in (("min_sigma", min_sigma), ("max_sigma", max_sigma), ("threshold", threshold)):
        _nonneg(n, v, integer=False)
    if min_sigma <= 0 or max_sigma < min_sigma:
        raise ValueError(f"need 0 < min_sigma <= max_sigma, got {min_sigma}, {max_sigma}")
    x = stretch01(to_channel(img, channel))
    h, w = x.shape
    if x.max() <= 0:
        return empty_prediction((h, w))
    if invert == "auto":
        invert = objects_dark(img, channel, x, filters.threshold_otsu(x))
    if invert:
        x = 1.0 - x
    if method == "log":
        blobs = feature.blob_log(x, min_sigma=min_sigma, max_sigma=max_sigma, num_sigma=num_sigma,
                                 threshold=threshold, overlap=overlap)
    elif method == "dog":
        blobs = feature.blob_dog(x, min_sigma=min_sigma, max_sigma=max_sigma,
                                 threshold=threshold, overlap=overlap)
    else:
        blobs = feature.blob_doh(x, min_sigma=min_sigma, max_sigma=max_sigma, num_sigma=num_sigma,
                                 threshold=threshold, overlap=overlap)
    if not len(blobs):
        return empty_prediction((h, w))
    blobs = blobs[:, :3]
    resp = np.zeros(len(blobs))
    for s in np.unique(blobs[:, 2]):
        sel = blobs[:, 2] == s
        if method == "doh":
            r_img = feature.hessian_matrix_det(x, sigma=float(s)) * float(s) ** 4
        else:
            r_img = -ndi.gaussian_laplace(x, float(s)) * float(s) ** 2
        yy = np.clip(np.rint(blobs[sel, 0]).astype(int), 0, h - 1)
        xx = np.clip(np.rint(blobs[sel, 1]).astype(int), 0, w - 1)
        resp[sel] = r_img[yy, xx]
    resp = np.clip(resp, 0, None)
    scores = resp / (resp + float(threshold)) if threshold > 0 else np.ones(len(blobs))
    radii = blobs[:, 2] * (1.0 if method == "doh" else np.sqrt(2.0))
    n = len(blobs)
    masks = np.zeros((n, h, w), bool)
    boxes = np.zeros((n, 4), np.float32)
    for i, ((cy, cx, _), r) in enumerate(zip(blobs, radii)):
        y0, y1 = max(0, int(np.floor(cy - r))), min(h, int(np.ceil(cy + r)) + 1)
        x0, x1 = max(0, int(np.floor(cx - r))), min(w, int(np.ceil(cx + r)) + 1)
        yy, xx = np.mgrid[y0:y1, x0:x1]
        disc = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
        iy, ix = int(np.clip(round(cy), 0, h - 1)), int(np.clip(round(cx), 0, w - 1))
        masks[i, y0:y1, x0:x1] = disc
        masks[i, iy, ix] = True
        boxes[i] = [max(0.0, cx + 0.5 - r), max(0.0, cy + 0.5 - r),
                    min(float(w), cx + 0.5 + r), min(float(h), cy + 0.5 + r)]
    return {"boxes": boxes, "scores": np.asarray(scores, np.float32),
            "labels": np.full(n, int(label), np.int64), "masks": masks}


def extract_cell(image: np.ndarray, dilation_radius: int = 3, min_distance: int = 15,
                 min_size: int = 32, *, hull: bool = True, grow: int = 8,
                 channel: str = "saturation", label: int = 0):
    """The cell nearest the centre of a single-cell crop (PBC-style), by colour and watershed.

    Steps: HSV saturation (``channel``) -> Otsu threshold (stained cells are saturated, the
    background and pale red cells less so; :func:`objects_dark` picks the side) -> hole filling and
    dilation by ``dilation_radius`` -> distance transform -> ``peak_local_max`` peaks
    (``min_distance``) -> connected components of the peaks as markers -> watershed of the
    negated distance inside the mask -> the region containing the image centre (else the one
    whose pixels come closest to it) -> optionally its convex hull (``hull``) dilated by
    ``grow`` pixels.

    Saturation mostly finds the stained nucleus (and granules): pale cytoplasm is about as
    saturated as the background and red cells. The hull and ``grow`` steps approximate the
    whole cell from the nucleus; on the synthetic 96 px crops (``make_wbc_crops``) the mean
    IoU with the cell mask is about 0.65 (lobed neutrophil nuclei are the weakest, ~0.4-0.6).
    Set ``hull=False, grow=0`` for the nucleus-level region.

    Parameters
    ----------
    image : ``(H, W, 3)`` RGB image (a grey ``(H, W)`` image is accepted, ``channel`` ignored).
    dilation_radius : disk radius of the dilation (0 for none).
    min_distance : minimum separation of watershed markers.
    min_size : ignore foreground components smaller than this many pixels.
    hull : replace the region by its convex hull.
    grow : dilate the (hulled) region by this many pixels (disk), clipped to the image.
    channel : the channel thresholded (see :func:`to_channel`).
    label : class index of the instance.

    Returns
    -------
    prediction : dict
        the prediction form with one instance (score 1.0), or empty when nothing is found.
    crop : ndarray or None
        ``image[y0:y1, x0:x1]`` of the instance's box (a copy), or None when nothing is found.
    """
    img = as_image_array(image, "extract_cell")
    _nonneg("dilation_radius", dilation_radius)
    _nonneg("min_distance", min_distance)
    _nonneg("min_size", min_size)
    _nonneg("grow", grow)
    mask, _ = foreground_mask(img, "otsu", channel if img.ndim == 3 else "gray", "auto",
                              min_size=min_size, opening_radius=1, fill_holes=True)
    h, w = mask.shape
    if not mask.any():
        return empty_prediction((h, w)), None
    if dilation_radius:
        mask = ndi.binary_dilation(mask, structure=morphology.disk(int(dilation_radius)))
        mask = ndi.binary_fill_holes(mask)
    dist = ndi.distance_transform_edt(mask)
    comps = cc(mask)
    peaks = peak_local_max(dist, min_distance=max(1, int(min_distance)), labels=comps,
                           exclude_border=False)
    pk = np.zeros(mask.shape, bool)
    pk[tuple(peaks.T)] = True
    markers = cc(ndi.binary_dilation(pk, structure=morphology.disk(1)) & mask)
    missing = np.setdiff1d(np.unique(comps[comps > 0]), np.unique(comps[markers > 0]))
    markers = np.where(np.isin(comps, missing), comps + markers.max(), markers)
    regions = watershed(-dist, markers, mask=mask)
    cy, cx = (h - 1) / 2.0, (w - 1) / 2.0
    rid = int(regions[int(round(cy)), int(round(cx))])
    if rid == 0:
        # the region pixel nearest the centre (index of the nearest non-background pixel)
        _, (iy, ix) = ndi.distance_transform_edt(regions == 0, return_indices=True)
        yc, xc = int(round(cy)), int(round(cx))
        rid = int(regions[iy[yc, xc], ix[yc, xc]])
    m = regions == rid
    if hull:
        m = convex_hull_image(m) | m
    if grow:
        m = ndi.binary_dilation(m, structure=morphology.disk(int(grow)))
    pred = label_image_to_instances(m.astype(np.int32), scores=[1.0], label=label)
    x0, y0, x1, y1 = pred["boxes"][0].astype(int)
    return pred, np.array(img[y0:y1, x0:x1])


def central_cell_box(image: np.ndarray, *, closing: float = 0.04, channel: str = "saturation",
                     min_size: int = 32, max_side: float = 0.95) -> np.ndarray | None:
    """The box of the cell of interest of a single-cell image (the cell at the centre), or None.

    Steps: ``channel`` (HSV saturation: the stained nucleus and granules) -> Otsu threshold
    (:func:`objects_dark` picks the side) -> closing with a disk of ``closing`` times the image's
    longer side, so that the lobes of a segmented nucleus and its granules join into one
    region -> hole filling -> the connected region holding the image centre, else the one
    nearest to it. Unlike :func:`extract_cell` nothing is split by a watershed: a lobed
    neutrophil nucleus stays one cell.

    The box is that of the stained part (mostly the nucleus); the whole cell with its pale
    cytoplasm is about 1.2-1.6 times larger, which a crop's margin covers: on the Zheng white
    cells a square window with a margin of 0.3 of the box side holds at least 90 % of the
    labelled whole-cell box in 93 % (Dataset 1) and 84 % (Dataset 2) of the first 100 images of
    each (benchmarks/domain_adaptation.py records the figure on all of them).

    Parameters
    ----------
    image : ``(H, W, 3)`` RGB image (a grey ``(H, W)`` image is accepted, ``channel`` ignored).
    closing : radius of the closing disk as a fraction of the image's longer side.
    channel : the channel thresholded (see :func:`to_channel`).
    min_size : ignore foreground components smaller than this many pixels.
    max_side : a region whose box spans more than this fraction of the image's width or
        height is not a cell (the threshold took the background): None.

    Returns
    -------
    np.ndarray or None
        ``(4,)`` float32 ``(x0, y0, x1, y1)`` in pixels, or None when no cell is found.
    """
    img = as_image_array(image, "central_cell_box")
    _nonneg("min_size", min_size)
    if not 0 <= float(closing) < 0.5:
        raise ValueError(f"closing must be a fraction of the image side in [0, 0.5), got {closing!r}")
    mask, _ = foreground_mask(img, "otsu", channel if img.ndim == 3 else "gray", "auto",
                              min_size=min_size, opening_radius=1, fill_holes=True)
    h, w = mask.shape
    r = int(round(float(closing) * max(h, w)))
    if r >= 1 and mask.any():
        mask = ndi.binary_fill_holes(ndi.binary_closing(mask, structure=morphology.disk(r)))
    lab, n = ndi.label(mask)
    if n == 0:
        return None
    k = lab[h // 2, w // 2]
    if k == 0:
        _, (iy, ix) = ndi.distance_transform_edt(lab == 0, return_indices=True)
        k = lab[iy[h // 2, w // 2], ix[h // 2, w // 2]]
    ys, xs = np.nonzero(lab == k)
    box = np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], np.float32)
    if (box[2] - box[0]) > max_side * w or (box[3] - box[1]) > max_side * h:
        return None
    return box


def segment_dataset(dataset, fn="threshold", *, progress: bool = False, **kw) -> list[dict]:
    """Run a segmenter on every sample's image: one prediction per sample, in order.

    Parameters
    ----------
    dataset : a SmearDataset or any sequence of Samples (or of images).
    fn : a function ``image -> prediction`` (or ``-> (prediction, ...)`` like
        :func:`extract_cell`, whose first element is kept), or a name: ``"threshold"``,
        ``"watershed"``, ``"blob"``, ``"extract_cell"``.
    progress : show a tqdm progress bar.
    **kw : passed to ``fn``.

    Returns
    -------
    list of prediction dicts, ready for :func:`smearlab.metrics.detection.coco_eval` / ``dsb_score``.
    """
    if isinstance(fn, str):
        names = {"threshold": threshold_segment, "watershed": watershed_segment,
                 "blob": blob_detect, "extract_cell": extract_cell}
        fn = names.get(fn) or _choice("segmenter", fn, list(names))
    if not callable(fn):
        raise ValueError(f"fn must be callable or a segmenter name, got {fn!r}")
    it = dataset
    if progress:
        it = tqdm(dataset, desc=getattr(fn, "__name__", "segment"), unit="img")
    out = []
    for s in it:
        img = s.image if hasattr(s, "image") else s
        p = fn(img, **kw)
        out.append(p[0] if isinstance(p, tuple) else p)
    return out


METHODS = {
    "threshold": (threshold_segment, {}),
    "watershed": (watershed_segment, {}),
    "log": (blob_detect, {"method": "log"}),
    "dog": (blob_detect, {"method": "dog"}),
    "doh": (blob_detect, {"method": "doh"}),
    "extract_cell": (extract_cell, {}),
}


def _accepted(fn) -> set[str]:
    return set(inspect.signature(fn).parameters) - {"image"}


def segment(image: np.ndarray, method: str = "threshold", params: dict | None = None, **kw) -> dict:
    """Run the classical method named ``method`` (a key of :data:`METHODS`) on one image.

    Parameters
    ----------
    image : as for the segmenters.
    method : ``"threshold"``, ``"watershed"``, ``"log"``, ``"dog"``, ``"doh"``, ``"extract_cell"``.
    params : a shared settings dict (e.g. an explorer's sliders): only the keys the method
        takes are used (``min_distance`` goes to watershed and extract_cell, ``min_sigma`` to
        the blob detectors, ``method`` to threshold/watershed as the threshold method...).
    **kw : keyword arguments for the method itself; unlike ``params`` an unknown one is an error.

    Returns
    -------
    dict
        the prediction form (for ``extract_cell`` the prediction, without the crop).
    """
    _choice("method", method, list(METHODS))
    fn, fixed = METHODS[method]
    ok = _accepted(fn)
    args = {k: v for k, v in (params or {}).items() if k in ok and k not in fixed}
    bad = sorted(set(kw) - ok)
    if bad:
        raise ValueError(f"{method} does not take {bad}; it takes {sorted(ok - set(fixed))}")
    args.update(kw)
    args.update(fixed)
    out = fn(image, **args)
    return out[0] if isinstance(out, tuple) else out


def suggest_params(train, channels=("gray", "green", "saturation", "hematoxylin"), max_images: int = 4) -> dict:
    """Settings for every classical method, chosen on training images (never on the test images).

    * ``min_sigma`` / ``max_sigma`` (blobs): from the radii of the ground-truth objects
      (``sqrt(area / pi)`` of the masks, else half the box side): ``sigma = r / sqrt(2)`` from
      half the 10th percentile to 1.25 x the 90th percentile radius;
    * ``min_distance`` (watershed markers, extract_cell): the median radius, at least 2;
    * ``min_size``: a quarter of the 5th-percentile object area, at least 4 pixels;
    * ``channel``: of ``channels``, the one whose Otsu :func:`threshold_segment` scores the best
      DSB score on the first ``max_images`` training images (the lowest count error when they
      have no instance masks).

    Parameters
    ----------
    train : the training SmearDataset (or sequence of Samples) with boxes or instance masks.
    channels : candidate channels (see :data:`CHANNELS`).
    max_images : how many training images the channels are scored on.

    Returns
    -------
    dict
        for :func:`segment` (``params``) and the explorer, plus ``"channel_scores"``.
    """
    areas = []
    for s in train:
        if s.has_masks and len(s.boxes):
            areas += np.asarray(s.masks, bool).sum(axis=(1, 2)).tolist()
        else:
            wh = (s.boxes[:, 2:] - s.boxes[:, :2]).mean(axis=1)
            areas += (np.pi * (wh / 2) ** 2).tolist()
    areas = np.asarray([a for a in areas if a > 0], float)
    if not len(areas):
        raise ValueError(f"dataset {getattr(train, 'name', '?')!r} has no objects to learn sizes from")
    r = np.sqrt(areas / np.pi)
    r10, r50, r90 = np.percentile(r, [10, 50, 90])
    out = {"min_sigma": round(float(max(0.5, 0.5 * r10 / np.sqrt(2))), 2),
           "max_sigma": round(float(max(1.0, 1.25 * r90 / np.sqrt(2))), 2),
           "min_distance": int(max(2, round(r50))),
           "min_size": int(max(4, round(0.25 * np.percentile(areas, 5))))}
    sample = [s for s in train][:max_images]
    with_masks = has_instance_masks(sample)
    for ch in channels:
        _choice("channel", ch, CHANNELS)

    def evaluate(c: dict) -> float:  # the DSB score where masks exist, else minus the count error
        preds = [threshold_segment(s.image, channel=c["channel"], min_size=out["min_size"]) for s in sample]
        if with_masks:
            return float(dsb_score(sample, preds, kind="masks") or 0.0)
        return -float(np.mean([abs(len(p["boxes"]) - len(s.boxes)) / max(len(s.boxes), 1)
                               for s, p in zip(sample, preds)]))

    found = grid_search({"channel": list(channels)}, evaluate)
    out["channel"] = found.params["channel"]
    out["channel_scores"] = {row["params"]["channel"]: row["score"] for row in found.table}
    return out
