"""Image preprocessing: grey, sharpening, contrast, gamma, stain normalisation, a saved pipeline.

Every function takes and returns an ``(H, W, 3)`` uint8 RGB image (``grayscale`` with
``keep_channels=False`` returns ``(H, W)``). Bad input raises :class:`~smearlab.core.errors.DataError`
(a ``ValueError``) naming the function and the problem.

Stain normalisation maps an image's colours onto a reference domain:

* :class:`ReinhardNormalizer`: LAB mean / std matching (Reinhard et al. 2001).
* :class:`MacenkoNormalizer`: two stain vectors from optical density (Macenko et al. 2009).

Both hold only their fitted numbers (:meth:`to_dict`), so a :class:`Preprocess` pipeline saves
as a small JSON file and gives byte-identical output after :meth:`Preprocess.load`.
:func:`stain_distance` measures how far apart two domains' colours are.
"""
from __future__ import annotations

import copy
import inspect
import json
import logging
import warnings
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
from scipy import ndimage
from scipy.stats import wasserstein_distance
from skimage import exposure, filters
from skimage.color import lab2rgb, rgb2lab

from .core.errors import DataError
from .core.files import write_json
from .data.imageio import LUMA

log = logging.getLogger("smearlab.preprocess")

_SHARPEN = np.array([[0, -1, 0], [-1, 5, -1], [0, -1, 0]], np.float64)


# ---------------------------------------------------------------------------------------------
# checks and conversions
# ---------------------------------------------------------------------------------------------
def _check_rgb(image, where: str) -> np.ndarray:
    """``image`` as an ``(H, W, 3)`` uint8 array, or :class:`DataError` naming ``where``."""
    img = np.asarray(image)
    if img.dtype != np.uint8:
        raise DataError(where, f"image must be uint8 RGB, got dtype {img.dtype} "
                               "(convert floats in [0, 1] with skimage.util.img_as_ubyte)")
    if img.ndim != 3 or img.shape[2] != 3:
        raise DataError(where, f"image must have shape (H, W, 3), got {img.shape}")
    if img.shape[0] == 0 or img.shape[1] == 0:
        raise DataError(where, f"image has zero size {img.shape[:2]}")
    return img


def _to_uint8(x: np.ndarray) -> np.ndarray:
    """Round and clip a float image in 0..255 to uint8."""
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def _lab(image: np.ndarray) -> np.ndarray:
    """CIE LAB (D65) of a uint8 RGB image, float64 (L in 0..100)."""
    return rgb2lab(image.astype(np.float64) / 255.0)


def _rgb(lab: np.ndarray) -> np.ndarray:
    """uint8 RGB of a LAB image (out-of-gamut colours clipped, without a warning)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Conversion from CIE-LAB", category=UserWarning)
        return _to_uint8(lab2rgb(lab) * 255.0)


def _images(images, where: str) -> list[np.ndarray]:
    """One image or a sequence of images, as a non-empty list of checked RGB arrays."""
    if isinstance(images, np.ndarray) and images.ndim in (2, 3):  # one image (a grey one refused as such,
        images = [images]  # not row by row)
    out = [_check_rgb(im, f"{where}[{i}]") for i, im in enumerate(images)]
    if not out:
        raise ValueError(f"{where}: no images given")
    return out


def _pixels(images: Sequence[np.ndarray]) -> np.ndarray:
    """All pixels of the images, pooled, ``(N, 3)`` uint8."""
    return np.concatenate([im.reshape(-1, 3) for im in images])


# ---------------------------------------------------------------------------------------------
# simple filters
# ---------------------------------------------------------------------------------------------
def grayscale(image: np.ndarray, keep_channels: bool = True) -> np.ndarray:
    """BT.601 luma (PIL "L" weights, :data:`LUMA`).

    Parameters
    ----------
    image : (H, W, 3) uint8 RGB.
    keep_channels : return three equal channels (H, W, 3), so that a pipeline keeps its shape;
        else (H, W).
    """
    img = _check_rgb(image, "grayscale")
    y = _to_uint8(img.astype(np.float32) @ np.asarray(LUMA, np.float32))
    return np.repeat(y[..., None], 3, axis=2) if keep_channels else y


def sharpen(image: np.ndarray) -> np.ndarray:
    """The classic 3x3 sharpening kernel ``[[0,-1,0],[-1,5,-1],[0,-1,0]]`` (edges: nearest).

    Parameters
    ----------
    image : ``(H, W, 3)`` uint8 RGB.
    """
    img = _check_rgb(image, "sharpen").astype(np.float64)
    out = np.stack([ndimage.convolve(img[..., c], _SHARPEN, mode="nearest") for c in range(3)], -1)
    return _to_uint8(out)


def unsharp_mask(image: np.ndarray, radius: float = 1.0, amount: float = 1.0) -> np.ndarray:
    """Gaussian unsharp mask (:func:`skimage.filters.unsharp_mask`), per channel.

    Parameters
    ----------
    image : ``(H, W, 3)`` uint8 RGB.
    radius : Gaussian sigma in pixels.
    amount : strength; 0 is the identity.
    """
    img = _check_rgb(image, "unsharp_mask")
    radius = _number("unsharp_mask", "radius", radius, low=0, low_open=True)
    amount = _number("unsharp_mask", "amount", amount, low=0)
    # channel_axis=2, not -1: skimage mis-slices a negative axis (scikit-image issue #7264)
    out = filters.unsharp_mask(img, radius=radius, amount=amount, channel_axis=2,
                               preserve_range=True)
    return _to_uint8(out)


def clahe(image: np.ndarray, clip_limit: float = 0.01, kernel_size=None) -> np.ndarray:
    """Contrast-limited adaptive histogram equalisation of the LAB lightness only.

    :func:`skimage.exposure.equalize_adapthist` on L, within the field's own lightness range; a
    and b (the colour) are kept. (skimage stretches its input and output to the full range: a
    background-only field of 230 ± 1 grey levels came out as black-and-white speckle.)

    Parameters
    ----------
    image : ``(H, W, 3)`` uint8 RGB.
    clip_limit : in (0, 1]; higher gives more contrast.
    kernel_size : tile size in pixels (default: 1/8 of the image size).
    """
    img = _check_rgb(image, "clahe")
    clip_limit = _number("clahe", "clip_limit", clip_limit, low=0, high=1, low_open=True)
    if kernel_size is not None:
        sizes = kernel_size if isinstance(kernel_size, (list, tuple)) else [kernel_size]
        for k in sizes:
            _number("clahe", "kernel_size", k, low=2)
    lab = _lab(img)
    if float(np.ptp(lab[..., 0])) < 1e-3:  # a flat field has no contrast to equalise (it came out white)
        return img.copy()
    light = np.clip(lab[..., 0] / 100.0, 0.0, 1.0)
    lo, hi = float(light.min()), float(light.max())
    lab[..., 0] = 100.0 * (lo + (hi - lo) * exposure.equalize_adapthist(light, kernel_size=kernel_size,
                                                                       clip_limit=clip_limit))
    return _rgb(lab)


def gamma(image: np.ndarray, g: float = 1.0) -> np.ndarray:
    """Gamma correction ``out = in ** g`` (:func:`skimage.exposure.adjust_gamma`); g < 1 brightens.

    Parameters
    ----------
    image : ``(H, W, 3)`` uint8 RGB.
    g : the exponent, a positive number (1 is the identity).
    """
    img = _check_rgb(image, "gamma")
    g = _number("gamma", "g", g, low=0, low_open=True)
    return exposure.adjust_gamma(img, g)


# ---------------------------------------------------------------------------------------------
# stain normalisation
# ---------------------------------------------------------------------------------------------
class ReinhardNormalizer:
    """Colour transfer by matching each LAB channel's mean and standard deviation.

    Reinhard E., Ashikhmin M., Gooch B., Shirley P. (2001), "Color transfer between images",
    IEEE Computer Graphics and Applications 21(5):34-41. As in most stain-normalisation code,
    CIE LAB is used instead of the paper's l-alpha-beta space.

    :meth:`fit` takes one reference image or a list (statistics of the pooled pixels).

    Parameters
    ----------
    mean, std : fitted reference LAB mean and standard deviation (3 values each), or None for an
        unfitted normaliser.
    """

    name = "reinhard"

    def __init__(self, mean=None, std=None):
        self.mean = None if mean is None else np.asarray(mean, np.float64).reshape(3)
        self.std = None if std is None else np.asarray(std, np.float64).reshape(3)
        for name, v in (("mean", self.mean), ("std", self.std)):
            if v is not None and not np.all(np.isfinite(v)):
                raise ValueError(f"ReinhardNormalizer: {name} must be 3 finite numbers, got {v.tolist()}")
        if self.std is not None and (self.std < 0).any():
            raise ValueError(f"ReinhardNormalizer: std must not be negative, got {self.std.tolist()}")
        if (self.mean is None) != (self.std is None):
            raise ValueError("ReinhardNormalizer: give both mean and std, or neither")

    def fit(self, reference) -> "ReinhardNormalizer":
        """Learn the reference LAB mean and std from one image or a list of images.

        Parameters
        ----------
        reference : one ``(H, W, 3)`` uint8 RGB image or a list of them.

        Returns
        -------
        ReinhardNormalizer
            ``self``.
        """
        lab = _lab(_pixels(_images(reference, "ReinhardNormalizer.fit"))[:, None])[:, 0]
        mean, std = lab.mean(0), lab.std(0)
        if std[0] < 1.0:  # lightness spread under 1 % of its range: a blank field
            raise ValueError(f"ReinhardNormalizer.fit: the reference has no contrast (lightness std {std[0]:.2f} of "
                             "100): every image would come out one flat colour; fit on images with stained cells")
        self.mean, self.std = mean, std
        return self

    def transform(self, image: np.ndarray) -> np.ndarray:
        """The image with the reference's LAB mean and std.

        Parameters
        ----------
        image : ``(H, W, 3)`` uint8 RGB.
        """
        img = _check_rgb(image, "ReinhardNormalizer.transform")
        if self.mean is None:
            raise ValueError("ReinhardNormalizer is not fitted: call fit(reference) first")
        lab = _lab(img)
        mu, sd = lab.reshape(-1, 3).mean(0), lab.reshape(-1, 3).std(0)
        # a channel spread below FLAT_LAB (a grey image's a and b: rounding noise of about 5e-4)
        # is shifted only: scaled up to the reference's spread it became a false-colour gradient
        scale = np.divide(self.std, sd, out=np.ones(3), where=sd >= FLAT_LAB)
        return _rgb((lab - mu) * scale + self.mean)

    def to_dict(self) -> dict[str, Any]:
        """The fitted numbers (JSON-ready)."""
        return {"mean": _list(self.mean), "std": _list(self.std)}

    @classmethod
    def from_dict(cls, d: dict) -> "ReinhardNormalizer":
        """A normaliser from :meth:`to_dict` (an empty dict gives an unfitted one).

        Parameters
        ----------
        d : ``{"mean", "std"}`` (either may be missing).
        """
        _known_keys(cls.name, d, {"mean", "std"})
        return cls(d.get("mean"), d.get("std"))

    @property
    def fitted(self) -> bool:
        return self.mean is not None


#: a LAB channel whose standard deviation is below this (one unit; about 2.3 is the least visible
#: colour difference) holds no structure to stretch: Reinhard normalisation only shifts it
FLAT_LAB = 1.0


class MacenkoNormalizer:
    """Stain normalisation with two stain vectors found in optical-density space.

    Macenko M. et al. (2009), "A method for normalizing histology slides for quantitative
    analysis", IEEE ISBI 2009, pp. 1107-1110. Steps: optical density ``OD = -log((I+1)/Io)``;
    keep pixels with OD >= ``beta`` in every channel; project them on the plane of the two
    largest eigenvectors of their covariance; the stain vectors are the directions at the
    ``alpha`` and ``100 - alpha`` percentiles of the angle (the one absorbing more red first);
    concentrations by least squares; each stain's 99th-percentile concentration is scaled to
    the reference's and the image rebuilt with the reference stain vectors and ``Io``.

    Blood smears differ from H&E tissue in the background: plasma is bright but often tinted
    (yellow in Zheng dataset 1), so with a fixed white ``Io`` the tint passes the OD threshold
    and is taken for a stain. ``io="auto"`` (the default) estimates ``Io`` per channel and per
    image from its brightest 5 % pixels (the background; an image without background gets too
    low an ``Io``); the reference's OD is pooled over its images each with its own ``Io``, and
    images are rebuilt with the reference's median ``Io``, so the background tint is
    transferred too. ``io=240`` is the paper's fixed value.

    Parameters
    ----------
    io : "auto" or the transmitted light intensity (a number, or one per RGB channel).
    alpha : angle percentile (robust extremes).
    beta : OD threshold for "stained" pixels.
    match_concentrations : "per_stain" (the paper: each stain's 99th-percentile concentration
        set to the reference's) or "none" (keep the image's concentrations, swap only stain
        vectors and ``Io``). The percentile depends on what an image shows: on Zheng, whose
        dataset 1 is WBC crops with near-black nuclei and dataset 2 fields full of red
        cells, "per_stain" over-darkens the red cells and "none" works far better (see
        ``benchmarks/stain_normalisation.py``).
    min_pixels : fewest stained pixels needed to estimate stain vectors.
    stains : fitted ``(3, 2)`` reference stain vectors, or None (unfitted).
    max_conc : fitted reference 99th-percentile concentration of each stain (2 values), or None.
    io_ref : fitted reference ``Io`` per RGB channel (3 values), or None.

    Notes
    -----
    :meth:`fit` raises ``ValueError`` when the reference has fewer than ``min_pixels`` stained
    pixels (e.g. a blank white field). :meth:`transform` of such an image (background only)
    does not fail: it is unmixed with the reference stain vectors and concentration scale,
    so that its background still takes the reference's illumination.
    """

    name = "macenko"
    _MATCH = ("per_stain", "none")

    def __init__(self, io="auto", alpha: float = 1.0, beta: float = 0.15,
                 match_concentrations: str = "per_stain", min_pixels: int = 100,
                 stains=None, max_conc=None, io_ref=None):
        if not (isinstance(io, str) and io == "auto"):
            io = np.broadcast_to(np.asarray(io, np.float64), (3,)).tolist()
            if not all(np.isfinite(io)) or min(io) <= 0:
                raise ValueError(f"MacenkoNormalizer: io must be 'auto' or positive, got {io!r}")
        if match_concentrations not in self._MATCH:
            raise ValueError(f"MacenkoNormalizer: match_concentrations must be one of "
                             f"{self._MATCH}, got {match_concentrations!r}")
        if not 0 <= alpha < 50:
            raise ValueError(f"MacenkoNormalizer: alpha must be in [0, 50), got {alpha!r}")
        self.io, self.alpha, self.beta = io, float(alpha), float(beta)
        if isinstance(min_pixels, bool) or not isinstance(min_pixels, (int, np.integer)) or min_pixels < 3:
            raise ValueError(f"MacenkoNormalizer: min_pixels must be a whole number >= 3, got {min_pixels!r}")
        self.match_concentrations, self.min_pixels = match_concentrations, int(min_pixels)
        self.stains = None if stains is None else np.asarray(stains, np.float64).reshape(3, 2)
        self.max_conc = None if max_conc is None else np.asarray(max_conc, np.float64).reshape(2)
        self.io_ref = None if io_ref is None else np.asarray(io_ref, np.float64).reshape(3)
        # a saved reference (preprocess.json) is checked as Reinhard's is: NaN or a negative value
        # gave every image wrong colours without a word
        for what, v in (("stains", self.stains), ("max_conc", self.max_conc), ("io_ref", self.io_ref)):
            if v is not None and (not np.all(np.isfinite(v)) or (what != "stains" and np.any(v <= 0))):
                raise ValueError(f"MacenkoNormalizer: the reference {what} must be finite"
                                 f"{'' if what == 'stains' else ' and positive'}, got {v.tolist()}")

    # -- the method ------------------------------------------------------------------------
    def _illumination(self, pixels: np.ndarray) -> np.ndarray:
        """Io per channel: the fixed value, or 1 + the median colour of the brightest 5 %."""
        if self.io != "auto":
            return np.asarray(self.io, np.float64)
        s = pixels.astype(np.int32).sum(1)
        return np.median(pixels[s >= np.percentile(s, 95)], 0).astype(np.float64) + 1.0

    @staticmethod
    def _od(pixels: np.ndarray, io: np.ndarray) -> np.ndarray:
        return -np.log((pixels.astype(np.float64) + 1.0) / io)

    def _stain_vectors(self, od: np.ndarray, where: str) -> np.ndarray:
        """(3, 2) unit stain vectors, or ValueError when too few pixels are stained."""
        od_hat = od[np.all(od >= self.beta, axis=1)]
        if len(od_hat) < self.min_pixels:
            raise ValueError(
                f"{where}: only {len(od_hat)} pixels have optical density >= beta={self.beta} in "
                f"every channel (need {self.min_pixels}); the image looks blank (background "
                "only) - fit on images with stained cells")
        _, vecs = np.linalg.eigh(np.cov(od_hat.T))
        plane = vecs[:, 1:3]
        proj = od_hat @ plane
        phi = np.arctan2(proj[:, 1], proj[:, 0])
        lo, hi = np.percentile(phi, [self.alpha, 100 - self.alpha])
        v1 = plane @ np.array([np.cos(lo), np.sin(lo)])
        v2 = plane @ np.array([np.cos(hi), np.sin(hi)])
        v1, v2 = (v1 if v1.sum() >= 0 else -v1), (v2 if v2.sum() >= 0 else -v2)
        he = np.stack([v1, v2], 1) if v1[0] >= v2[0] else np.stack([v2, v1], 1)
        he = he / np.linalg.norm(he, axis=0)
        if float(he[:, 0] @ he[:, 1]) > 0.999:  # one colour only: no two stains to tell apart
            raise ValueError(f"{where}: the stained pixels show one colour only (the two stain vectors coincide); "
                             "fit on images with both stains")
        return he

    @staticmethod
    def _concentrations(od: np.ndarray, stains: np.ndarray) -> np.ndarray:
        return np.linalg.lstsq(stains, od.T, rcond=None)[0]  # (2, N)

    def fit(self, reference) -> "MacenkoNormalizer":
        """Learn stain vectors, 99th-percentile concentrations and Io from the pooled images.

        Parameters
        ----------
        reference : one ``(H, W, 3)`` uint8 RGB image or a list of them.

        Returns
        -------
        MacenkoNormalizer
            ``self``.
        """
        images = _images(reference, "MacenkoNormalizer.fit")
        px = [im.reshape(-1, 3) for im in images]
        ios = [self._illumination(p) for p in px]
        od = np.concatenate([self._od(p, io) for p, io in zip(px, ios)])
        stains = self._stain_vectors(od, "MacenkoNormalizer.fit")
        conc = self._concentrations(od, stains)
        self.stains, self.max_conc = stains, np.percentile(conc, 99, axis=1)
        self.io_ref = np.median(ios, axis=0)
        return self

    def transform(self, image: np.ndarray) -> np.ndarray:
        """The image rebuilt with the reference stain vectors (and concentration scale) and Io.

        Parameters
        ----------
        image : ``(H, W, 3)`` uint8 RGB.
        """
        img = _check_rgb(image, "MacenkoNormalizer.transform")
        if self.stains is None:
            raise ValueError("MacenkoNormalizer is not fitted: call fit(reference) first")
        px = img.reshape(-1, 3)
        od = self._od(px, self._illumination(px))
        try:
            conc = self._concentrations(od, self._stain_vectors(od, "transform"))
            max_c = np.percentile(conc, 99, axis=1)
        except ValueError:  # background only: unmix with the reference itself (documented)
            log.debug("Macenko: too few stained pixels, using the reference stain vectors")
            conc, max_c = self._concentrations(od, self.stains), self.max_conc
        if self.match_concentrations == "per_stain":
            conc = conc * np.divide(self.max_conc, max_c, out=np.ones(2), where=max_c > 1e-6)[:, None]
        out = self.io_ref * np.exp(-(self.stains @ conc)).T - 1.0  # the inverse of _od (which adds 1)
        return _to_uint8(out).reshape(img.shape)

    # -- persistence -----------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Options and fitted numbers (JSON-ready)."""
        return {"io": self.io, "alpha": self.alpha, "beta": self.beta,
                "match_concentrations": self.match_concentrations, "min_pixels": self.min_pixels,
                "stains": _list(self.stains), "max_conc": _list(self.max_conc),
                "io_ref": _list(self.io_ref)}

    @classmethod
    def from_dict(cls, d: dict) -> "MacenkoNormalizer":
        """A normaliser from :meth:`to_dict` (options only give an unfitted one).

        Parameters
        ----------
        d : the keys of :meth:`to_dict` (constructor arguments; missing ones take their defaults).
        """
        _known_keys(cls.name, d, {"io", "alpha", "beta", "match_concentrations", "min_pixels",
                                  "stains", "max_conc", "io_ref"})
        return cls(**d)

    @property
    def fitted(self) -> bool:
        return self.stains is not None


def _list(a):
    return None if a is None else np.asarray(a, np.float64).tolist()


def _number(where: str, name: str, value, *, low: float, high: float = np.inf, low_open: bool = False) -> float:
    """``value`` as a float within ``low .. high`` (``low`` excluded with ``low_open``), else
    ValueError naming the step and the parameter: a string, NaN or an out-of-range value would
    otherwise fail on the first image, or give maximal contrast without a word."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(f"{where}: {name} must be a number, got {value!r}")
    v = float(value)
    if not (v > low if low_open else v >= low) or not v <= high:  # NaN fails too
        bound = f"{'above' if low_open else 'at least'} {low:g}" + ("" if high == np.inf else f" and at most {high:g}")
        raise ValueError(f"{where}: {name} must be {bound}, got {value!r}")
    return v


#: A small image every step of a pipeline is tried on when the pipeline is built.
_PROBE = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)


def _known_keys(name: str, d: dict, known: set) -> None:
    extra = set(d) - known
    if extra:
        raise ValueError(f"{name}: unknown parameter(s) {sorted(extra)}; expected {sorted(known)}")


# ---------------------------------------------------------------------------------------------
# domain colour distance
# ---------------------------------------------------------------------------------------------
def stain_distance(images_a, images_b, max_pixels: int = 100_000, seed: int = 0) -> dict[str, float]:
    """How far apart two domains' colours are, on a seeded pixel subsample of each.

    Parameters
    ----------
    images_a, images_b : sequences (or iterables) of (H, W, 3) uint8 RGB images.
    max_pixels : pixels drawn per domain (spread evenly over its images).
    seed : seed of the pixel subsample.

    Returns
    -------
    dict with ``lab_mean_delta_e`` (CIE76 Delta E between the domains' mean LAB colours),
    ``hist_emd`` (mean over L, a, b of the 1-D Wasserstein distance between the pixel
    distributions), ``emd_l``, ``emd_a``, ``emd_b`` and the pixel counts used.
    """
    rng = np.random.default_rng(seed)
    lab_a = _sample_lab(images_a, max_pixels, rng, "stain_distance(images_a)")
    lab_b = _sample_lab(images_b, max_pixels, rng, "stain_distance(images_b)")
    emd = [float(wasserstein_distance(lab_a[:, c], lab_b[:, c])) for c in range(3)]
    return {"lab_mean_delta_e": float(np.linalg.norm(lab_a.mean(0) - lab_b.mean(0))),
            "hist_emd": float(np.mean(emd)), "emd_l": emd[0], "emd_a": emd[1], "emd_b": emd[2],
            "pixels_a": len(lab_a), "pixels_b": len(lab_b)}


def _sample_lab(images, max_pixels: int, rng, where: str) -> np.ndarray:
    images = _images(list(images) if not isinstance(images, np.ndarray) else images, where)
    per = max(1, -(-max_pixels // len(images)))
    parts = []
    for im in images:
        px = im.reshape(-1, 3)
        parts.append(px if len(px) <= per else px[rng.choice(len(px), per, replace=False)])
    return _lab(np.concatenate(parts)[:, None])[:, 0]


# ---------------------------------------------------------------------------------------------
# the pipeline
# ---------------------------------------------------------------------------------------------
_FUNCTIONS = {"grayscale": grayscale, "sharpen": sharpen, "unsharp_mask": unsharp_mask,
              "clahe": clahe, "gamma": gamma}
_NORMALIZERS = {"reinhard": ReinhardNormalizer, "macenko": MacenkoNormalizer}
#: Step names a :class:`Preprocess` knows.
STEPS = sorted([*_FUNCTIONS, *_NORMALIZERS])


class Preprocess:
    """An ordered list of named steps, applied to images or samples and saved as JSON.

    Parameters
    ----------
    steps : ``(name, params)`` pairs or bare names, e.g.
        ``[("clahe", {"clip_limit": 0.02}), ("reinhard", {"mean": [...], "std": [...]})]``.
        Normaliser steps hold their fitted numbers; :meth:`fit` fills them from reference
        images. An empty pipeline is the identity.

    Examples
    --------
    >>> pre = Preprocess.fit([("clahe", {}), "macenko"], reference_images)  # doctest: +SKIP
    >>> pre.save("preprocess.json"); out = Preprocess.load("preprocess.json")(image)  # doctest: +SKIP
    """

    def __init__(self, steps: Iterable = ()):
        self.steps: list[tuple[str, dict]] = []
        for step in steps:
            name, params = (step, {}) if isinstance(step, str) else step
            if name not in STEPS:
                raise ValueError(f"unknown preprocessing step {name!r}; known steps: {STEPS}")
            params = dict(params or {})
            if name in _NORMALIZERS:  # validates the keys and values now
                params = _NORMALIZERS[name].from_dict(params).to_dict()
                params = {k: v for k, v in params.items() if v is not None}
            else:
                try:
                    inspect.signature(_FUNCTIONS[name]).bind(None, **params)
                    _FUNCTIONS[name](_PROBE, **params)  # the values too, now rather than on the first image
                except (TypeError, ValueError) as e:
                    raise ValueError(f"step {name!r}: bad parameters {params}: {e}") from None
            self.steps.append((name, params))
        self._ops = [self._op(n, p) for n, p in self.steps]

    @staticmethod
    def _op(name: str, params: dict):
        if name in _NORMALIZERS:
            return _NORMALIZERS[name].from_dict(params)
        return lambda im, f=_FUNCTIONS[name]: f(im, **params)

    def __call__(self, image: np.ndarray) -> np.ndarray:
        """The image after every step."""
        out = _check_rgb(image, "Preprocess")
        for (name, _), op in zip(self.steps, self._ops):
            if name in _NORMALIZERS:
                if not op.fitted:
                    raise ValueError(f"step {name!r} is not fitted: build the pipeline with "
                                     "Preprocess.fit(steps, reference_images)")
                out = op.transform(out)
            else:
                out = op(out)
            out = _check_rgb(out, f"Preprocess step {name!r}")
        return out

    def apply(self, sample):
        """A new :class:`~smearlab.data.sample.Sample` with the processed image, same annotations.

        The copy has ``path=None`` (so that ``release()`` cannot re-read the raw file over the
        processed image); the original path is kept in ``meta["source_path"]`` and the step
        names in ``meta["preprocess"]`` (a tuple: the image's, never filtered with the boxes).

        Parameters
        ----------
        sample : the Sample whose image is processed (left unchanged).

        Raises
        ------
        ValueError
            when the sample was already preprocessed (``meta["preprocess"]``): a second pass would
            process its image twice (a model trained on such images sees them processed once
            when it predicts).
        """
        self.check_raw(sample)
        image = self(sample.image)
        new = copy.copy(sample)
        # a tuple: a list as long as the boxes was cut with them by a crop (two steps and a box
        # dropped read as one step; the last one dropped, as none, and check_raw let it through)
        new.meta = {**sample.meta, "preprocess": tuple(n for n, _ in self.steps)}
        if sample.path is not None:
            new.meta["source_path"] = str(sample.path)
        new.path = None
        new.image = image
        return new

    @staticmethod
    def check_raw(sample) -> None:
        """Refuse (``ValueError``) a sample :meth:`apply` already processed (``meta["preprocess"]``):
        a pipeline on top would process its image twice, whatever its steps.

        Parameters
        ----------
        sample : a :class:`~smearlab.data.sample.Sample`.
        """
        if sample.meta.get("preprocess"):
            raise ValueError(f"{sample.image_id} was already preprocessed with the steps {sample.meta['preprocess']} "
                             "(meta['preprocess']): give the raw image, or no pipeline (preprocess=None)")

    def with_fixed_tiles(self, hw: tuple[int, int]) -> "Preprocess":
        """The pipeline with every CLAHE step's tile size fixed in pixels: 1/8 of ``hw`` (the
        default's size on an image of that size) where the step left it to each image. A model
        carries its pipeline this way, so that a larger field at prediction is equalised at the
        scale of the training images (per image, a 4x larger field got 4x larger tiles: the same
        cells came out 12 grey levels apart on average).

        Parameters
        ----------
        hw : ``(height, width)`` of the training images.
        """
        tiles = [max(2, int(hw[0]) // 8), max(2, int(hw[1]) // 8)]
        return type(self)([(n, {**p, "kernel_size": tiles} if n == "clahe" and p.get("kernel_size") is None else p)
                           for n, p in self.steps])

    @classmethod
    def fit(cls, steps: Iterable, reference_images) -> "Preprocess":
        """A pipeline whose normaliser steps are fitted on ``reference_images``.

        Each normaliser is fitted on the references as processed by the steps before it.

        Parameters
        ----------
        steps : the steps, as for the constructor.
        reference_images : one ``(H, W, 3)`` uint8 RGB image or a list of them.
        """
        refs = _images(reference_images, "Preprocess.fit")
        fitted = []
        todo = cls(steps).steps
        for i, (name, params) in enumerate(todo):
            if name in _NORMALIZERS:
                params = _NORMALIZERS[name].from_dict(params).fit(refs).to_dict()
            fitted.append((name, params))
            if i < len(todo) - 1:
                refs = [cls([(name, params)])(r) for r in refs]
        return cls(fitted)

    def to_dict(self) -> dict[str, Any]:
        """The pipeline as a JSON-ready dict: ``smearlab_preprocess`` (1) and ``steps``, a list of
        ``{"name", "params"}``."""
        return {"smearlab_preprocess": 1,
                "steps": [{"name": n, "params": copy.deepcopy(p)} for n, p in self.steps]}

    @classmethod
    def from_dict(cls, d: dict) -> "Preprocess":
        """A pipeline from :meth:`to_dict` (``ValueError`` when ``d`` has no ``steps``).

        Parameters
        ----------
        d : ``{"steps": [{"name": ..., "params": {...}}, ...]}``.
        """
        if not isinstance(d, dict) or "steps" not in d:
            raise ValueError("not a smearlab preprocessing pipeline (no 'steps')")
        if d.get("smearlab_preprocess", 1) != 1:
            raise ValueError(f"preprocessing format {d['smearlab_preprocess']!r} is not one this version reads (1)")
        if not isinstance(d["steps"], list) or not all(isinstance(s, dict) and "name" in s for s in d["steps"]):
            raise ValueError("'steps' must be a list of {'name': ..., 'params': {...}}")
        return cls([(s["name"], s.get("params", {})) for s in d["steps"]])

    def save(self, path: str | Path) -> Path:
        """Write the pipeline as JSON (atomically).

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
    def load(cls, path: str | Path) -> "Preprocess":
        """A pipeline saved by :meth:`save`.

        Parameters
        ----------
        path : the JSON file; :class:`DataError` naming it when it is unreadable or not a pipeline.
        """
        try:
            d = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as e:
            raise DataError(path, f"cannot read preprocessing pipeline: {e}") from e
        try:
            return cls.from_dict(d)
        except (KeyError, TypeError, ValueError) as e:
            raise DataError(path, str(e)) from e

    def __len__(self) -> int:
        return len(self.steps)

    def __repr__(self) -> str:
        return f"Preprocess({[n for n, _ in self.steps]})"


# ---------------------------------------------------------------------------------------------
# comparisons for notebooks and reports
# ---------------------------------------------------------------------------------------------
#: Pipelines compared by :func:`compare_pipelines` by default (normalisers fitted on domain A).
COMPARED = {
    "none": [],
    "grayscale": ["grayscale"],
    "clahe": [("clahe", {"clip_limit": 0.02})],
    "reinhard": ["reinhard"],
    "macenko": ["macenko"],
    "macenko (no concentration matching)": [("macenko", {"match_concentrations": "none"})],
    "clahe + reinhard": [("clahe", {"clip_limit": 0.02}), "reinhard"],
}


def compare_pipelines(images_a, images_b, pipelines: dict | None = None, seed: int = 0,
                      max_pixels: int = 100_000) -> dict[str, dict[str, float]]:
    """How far domain B's colours stay from domain A's after each preprocessing choice.

    Every pipeline is fitted on ``images_a`` (the reference domain) and applied to both domains;
    the result maps a pipeline name to :func:`stain_distance` between the processed domains.

    Parameters
    ----------
    images_a : the reference domain's ``(H, W, 3)`` uint8 RGB images.
    images_b : the other domain's images.
    pipelines : ``{name: steps}`` (default :data:`COMPARED`).
    seed, max_pixels : see :func:`stain_distance`.
    """
    out = {}
    for name, steps in (pipelines or COMPARED).items():
        pre = Preprocess.fit(steps, images_a)
        out[name] = stain_distance([pre(im) for im in images_a], [pre(im) for im in images_b],
                                   max_pixels=max_pixels, seed=seed)
    return out


def explorer_methods(reference_images) -> dict:
    """``{name: f(image, strength)}`` for :class:`smearlab.viz.widgets.PreprocessExplorer`.

    The strength (0..2) scales each method's main parameter; normalisers (and sharpen,
    grayscale) blend the original and the processed image, strength 1 being the whole change and
    the most they take (their function's ``max_strength``).

    Parameters
    ----------
    reference_images : images the Reinhard and Macenko normalisers are fitted on.
    """
    reinhard = ReinhardNormalizer().fit(reference_images)
    macenko = MacenkoNormalizer().fit(reference_images)

    def blend(a, b, k):
        return _to_uint8(a.astype(np.float32) * (1 - k) + b.astype(np.float32) * k)

    methods = {
        "unsharp mask": lambda im, k: unsharp_mask(im, radius=2.0, amount=k),
        "sharpen (3x3)": lambda im, k: blend(im, sharpen(im), min(k, 1.0)),
        "CLAHE": lambda im, k: clahe(im, clip_limit=0.005 + 0.02 * k),
        "gamma": lambda im, k: gamma(im, g=max(k, 0.05)),
        "grayscale": lambda im, k: blend(im, grayscale(im), min(k, 1.0)),
        "Reinhard": lambda im, k: blend(im, reinhard.transform(im), min(k, 1.0)),
        "Macenko": lambda im, k: blend(im, macenko.transform(im), min(k, 1.0)),
    }
    for name in ("sharpen (3x3)", "grayscale", "Reinhard", "Macenko"):  # a blend is at most the whole change
        methods[name].max_strength = 1.0
    return methods


def as_preprocess(spec):
    """A :class:`~smearlab.preprocess.Preprocess` from a pipeline, its dict, or None.

    Parameters
    ----------
    spec : a :class:`Preprocess` (returned as is), a dict of :meth:`Preprocess.to_dict`, or None
        (returned as None).
    """
    if spec is None:
        return None
    return spec if isinstance(spec, Preprocess) else Preprocess.from_dict(spec)
