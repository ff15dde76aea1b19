"""Robustness to image noise: the check used in the nuclei-segmentation literature.

Noise model
-----------
:func:`add_noise` adds independent Gaussian noise to every pixel and channel, with

* mean ``mean_frac * max(image)`` (default 5 % of the image maximum), and
* variance ``var_frac * mean(image ** 2)`` (default 10 % of the image *power*, the mean of the
  squared intensities over all pixels and channels),

both measured on the image's own 0..255 intensities, so the noise has standard deviation
``sqrt(var_frac * mean(image ** 2))`` grey levels. The sum is rounded and clipped to 0..255.
For a typical bright-field smear (mean intensity about 200) that is a shift of about +13 grey
levels and a standard deviation of about 63 *before clipping*: a hard test, as intended. On a
bright image the clipping at 255 takes much of it back (on three DSB2018 bright-field images the
mean moved by -2 to +8 grey levels and the variance was 55-81 % of the stated one, against about
100 % on dark fluorescence images; clipping at 0 takes some back too where a black background
meets noise wider than its mean shift: 65 % of the variance on a black field holding one patch of
60-120), and a grey image gets independent noise in each of its
three channels, so that its grey level carries a third of the variance: compare noise drops
between looks with that in mind.

:func:`noisy_dataset` applies it to every image of a dataset (lazily, deterministic per image)
and :func:`compare_with_noise` reports every metric of an evaluation with and without it.
"""
from __future__ import annotations

import dataclasses
import zlib
from functools import partial
from typing import Callable, Mapping

import numpy as np

from ..core.files import flatten_dict
from ..data.sample import Sample, SmearDataset


__all__ = ["add_noise", "noise_parameters", "image_seed", "noisy_dataset", "compare_with_noise"]


def _check_fraction(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.number)) \
            or not np.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return float(value)


def _as_intensities(image) -> np.ndarray:
    """``image`` as float64 0..255 intensities; ValueError for anything else."""
    img = np.asarray(image)
    if img.dtype == bool or not (np.issubdtype(img.dtype, np.integer) or np.issubdtype(img.dtype, np.floating)):
        raise ValueError(f"image must be a numeric array, got dtype {img.dtype}")
    if not (img.ndim == 2 or (img.ndim == 3 and img.shape[2] in (1, 3, 4))):
        raise ValueError(f"image must have shape (H, W), (H, W, 3) or (H, W, 4), got {img.shape}")
    if img.size == 0:
        raise ValueError(f"image has zero size {img.shape}")
    f = img.astype(np.float64)
    if not np.all(np.isfinite(f)):
        raise ValueError("image contains NaN or infinite values")
    if f.min() < 0 or f.max() > 255:
        raise ValueError(f"image values must lie in 0..255 (8-bit intensities), got {f.min():g}..{f.max():g}; "
                         "convert 16-bit images first (smearlab.data.imageio.to_rgb8)")
    if np.issubdtype(img.dtype, np.floating) and 0 < f.max() <= 1:
        raise ValueError(f"a float image in 0..{f.max():g} reads as 0..1 data, not 0..255 intensities: the noise "
                         "would turn it black; convert it first (smearlab.data.imageio.to_rgb8)")
    return f


def noise_parameters(image, mean_frac: float = 0.05, var_frac: float = 0.10) -> tuple[float, float]:
    """``(mean, std)`` of the Gaussian noise :func:`add_noise` would add to ``image``.

    ``mean = mean_frac * image.max()`` and ``std = sqrt(var_frac * mean(image ** 2))``, on the
    image's 0..255 intensities (all colour channels together; an alpha channel is left out).

    Parameters
    ----------
    image : ``(H, W)`` or ``(H, W, C)`` array of 0..255 intensities.
    mean_frac : noise mean as a fraction of the image maximum.
    var_frac : noise variance as a fraction of the image power ``mean(image ** 2)``.
    """
    return _parameters(_colour(_as_intensities(image)), mean_frac, var_frac)


def _parameters(f: np.ndarray, mean_frac, var_frac) -> tuple[float, float]:
    mean_frac = _check_fraction("mean_frac", mean_frac)
    var_frac = _check_fraction("var_frac", var_frac)
    return mean_frac * float(f.max()), float(np.sqrt(var_frac * np.mean(f * f)))


def add_noise(image, mean_frac: float = 0.05, var_frac: float = 0.10, seed: int = 0) -> np.ndarray:
    """``image`` plus Gaussian noise of mean ``mean_frac * max`` and variance ``var_frac * power``.

    Parameters
    ----------
    image : ``(H, W)`` or ``(H, W, C)`` array of 0..255 intensities (uint8, or any numeric
        dtype within that range; 16-bit data must be converted first).
    mean_frac : noise mean as a fraction of the image maximum (default 0.05).
    var_frac : noise variance as a fraction of the image power ``mean(image ** 2)``
        (default 0.10).
    seed : seed of the noise (same seed, same image: same result).

    Returns
    -------
    ndarray
        uint8, same shape as ``image``: ``clip(round(image + noise), 0, 255)``.

    Raises
    ------
    ValueError
        for a non-numeric, empty or wrongly shaped image, values outside 0..255, NaN, or a
        negative fraction.
    """
    full = _as_intensities(image)
    f = _colour(full)
    mean, std = _parameters(f, mean_frac, var_frac)
    noise = np.random.default_rng(seed).normal(mean, std, size=f.shape) if std > 0 else np.full(f.shape, mean)
    noisy = np.clip(np.rint(f + noise), 0, 255).astype(np.uint8)
    if f.shape == full.shape:
        return noisy
    return np.concatenate([noisy, np.rint(full[..., 3:]).astype(np.uint8)], axis=2)  # alpha kept as it is


def _colour(f: np.ndarray) -> np.ndarray:
    """The colour channels of 0..255 intensities (an alpha channel is neither measured nor noised)."""
    return f[..., :3] if f.ndim == 3 and f.shape[2] == 4 else f


def image_seed(seed: int, image_id: str) -> int:
    """The noise seed of one image: a pure function of ``seed`` and the image id.

    Parameters
    ----------
    seed : the run's seed.
    image_id : the image's id (hashed with CRC-32).
    """
    return int(np.random.SeedSequence([int(seed), zlib.crc32(str(image_id).encode())]).generate_state(1)[0])


def _noisy_image(sample: Sample, mean_frac: float, var_frac: float, seed: int) -> np.ndarray:
    return add_noise(sample.image, mean_frac, var_frac, image_seed(seed, sample.image_id))


def noisy_dataset(dataset, seed: int = 0, *, mean_frac: float = 0.05,
                  var_frac: float = 0.10) -> SmearDataset:
    """The dataset with :func:`add_noise` applied to every image, annotations unchanged.

    Images are made lazily on first access. The noise of an image depends only on ``seed`` and
    its ``image_id`` (so a subset or a re-ordered dataset gets the same noisy images). Boxes,
    labels, instance and semantic masks are shared with the clean samples (masks are read from
    them on first access). A noisy sample has no ``path`` (its pixels are not the file's); the
    clean file is in ``meta["clean_path"]``.

    Parameters
    ----------
    dataset : SmearDataset (or a sequence of Samples).
    seed : noise seed.
    mean_frac, var_frac : see :func:`add_noise`.
    """
    _check_fraction("mean_frac", mean_frac)
    _check_fraction("var_frac", var_frac)
    out = []
    for s in dataset:
        if not isinstance(s, Sample):
            raise ValueError(f"noisy_dataset needs Samples, got {type(s).__name__}")
        meta = dict(s.meta)
        if s.path is not None:
            meta["clean_path"] = str(s.path)
        out.append(dataclasses.replace(
            s, path=None, meta=meta, bit_depth=8,
            _image=partial(_noisy_image, s, mean_frac, var_frac, seed),
            _masks=(lambda s=s: s.masks) if s.has_masks else None,
            _semantic=(lambda s=s: s.semantic) if s.has_semantic else None))
    names = getattr(dataset, "class_names", [])
    return SmearDataset(out, names, f"{getattr(dataset, 'name', 'dataset')}+noise",
                        format=getattr(dataset, "format", None),
                        semantic_names=getattr(dataset, "semantic_names", None))


def _number(v) -> float | None:
    if isinstance(v, bool) or v is None:
        return None
    if isinstance(v, (int, float, np.number)) and np.isfinite(v):
        return float(v)
    return None


def compare_with_noise(evaluate_fn: Callable[[SmearDataset], Mapping], dataset, seed: int = 0, *,
                       mean_frac: float = 0.05, var_frac: float = 0.10) -> dict[str, dict]:
    """Every metric of ``evaluate_fn`` on the clean and the noisy dataset, and the change.

    Parameters
    ----------
    evaluate_fn : ``dataset -> {metric: value}`` (nested dicts allowed, e.g.
        ``{"nucleus": {"dice": 0.9}}``); it should predict on the dataset it is given.
    dataset : the clean dataset.
    seed, mean_frac, var_frac : see :func:`noisy_dataset`.

    Returns
    -------
    dict
        ``{metric: {"clean": value, "noisy": value, "delta": noisy - clean}}`` with nested
        metric names joined by dots (``"nucleus.dice"``). ``delta`` is None when either value
        is not a finite number (e.g. an undefined Dice).
    """
    clean = evaluate_fn(dataset)
    noisy = evaluate_fn(noisy_dataset(dataset, seed, mean_frac=mean_frac, var_frac=var_frac))
    if not isinstance(clean, Mapping) or not isinstance(noisy, Mapping):
        raise ValueError(f"evaluate_fn must return a dict of metrics, got {type(clean).__name__}")
    a, b = flatten_dict(clean), flatten_dict(noisy)
    out = {}
    for k in list(a) + [k for k in b if k not in a]:
        ca, cb = a.get(k), b.get(k)
        na, nb = _number(ca), _number(cb)
        out[k] = {"clean": ca, "noisy": cb, "delta": None if na is None or nb is None else nb - na}
    return out
