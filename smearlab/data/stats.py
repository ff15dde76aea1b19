"""Dataset statistics for exploration: objects per image, box sizes, colour."""
from __future__ import annotations

from typing import Any

import numpy as np
from skimage.color import rgb2hsv

from .imageio import full_scale
from .sample import SmearDataset


def objects_per_image(dataset: SmearDataset) -> np.ndarray:
    """(n_images, n_classes) object counts (COCO crowd regions, a clump boxed as one, left out).

    Parameters
    ----------
    dataset : a SmearDataset.
    """
    k = len(dataset.class_names)
    out = np.zeros((len(dataset), k), np.int64)
    for i, s in enumerate(dataset):
        out[i] = np.bincount(s.labels[~s.crowd], minlength=k)[:k]
    return out


def class_distribution(dataset: SmearDataset) -> tuple[dict[str, int], str]:
    """What a class histogram shows, and what it counts: objects per class, COCO crowd regions
    left out (as :func:`summary` counts them), or images per class for a set of labelled
    single-cell images.

    Parameters
    ----------
    dataset : a SmearDataset.

    Returns
    -------
    (dict, str)
        ``{class: count}`` and ``"objects"`` or ``"images"``.
    """
    s = dataset.summary()
    if s["objects"] or "images_per_class" not in s:
        return s["per_class"], "objects"
    return s["images_per_class"], "images"


def box_sizes(dataset: SmearDataset) -> dict[str, np.ndarray]:
    """Box (width, height) per class name, each an (N, 2) float array (crowd regions left out:
    the box of a clump is no cell's size).

    Parameters
    ----------
    dataset : a SmearDataset.
    """
    per = {n: [] for n in dataset.class_names}
    for s in dataset:
        keep = ~s.crowd
        wh = (s.boxes[:, 2:] - s.boxes[:, :2])[keep]
        for lab, v in zip(s.labels[keep], wh):
            per[dataset.class_names[lab]].append(v)
    return {n: np.array(v, np.float32).reshape(-1, 2) for n, v in per.items()}


def colour_stats(dataset: SmearDataset, max_images: int | None = None, seed: int = 0,
                 release: bool = True) -> dict[str, np.ndarray]:
    """Mean R, G, B, H, S, V (in [0, 1]) per image, grouped by domain.

    Images are read on a 4x-subsampled grid, which is plenty for means. With ``max_images``
    a seeded random subset is used, drawn per domain in proportion to its images and at least
    one of each (one subset over all images could leave a small domain out: its colour gap
    then read 0). Lazily read images are released afterwards when
    ``release`` is set, so large datasets stay small in memory.

    Parameters
    ----------
    dataset : a SmearDataset.
    max_images : use about this many images (a random subset; a domain takes at least one), or all.
    seed : seed of that subset.
    release : release lazily read images afterwards (:meth:`Sample.release`).

    Returns
    -------
    dict
        ``{domain: (n_images, 6) array}``; samples without a domain go under the dataset's name.
        The hue of a grey image is NaN (it has none).
    """
    idx = np.arange(len(dataset))
    if max_images is not None and len(idx) > max_images:
        rng = np.random.default_rng(seed)
        domains = np.array([s.domain or dataset.name for s in dataset.samples])
        idx = np.sort(np.concatenate([
            rng.choice(part, max(1, int(max_images * len(part) / len(idx))), replace=False)
            for part in (np.flatnonzero(domains == d) for d in sorted(set(domains)))]))
    out: dict[str, list] = {}
    for i in idx:
        s = dataset[int(i)]
        img = s.image
        small = np.clip(img[::4, ::4].astype(np.float32) / full_scale(img), 0.0, 1.0)
        hsv = rgb2hsv(small)
        out.setdefault(s.domain or dataset.name, []).append(
            np.concatenate([small.reshape(-1, 3).mean(0), _hsv_mean(hsv)]))
        if release:
            s.release()
    return {k: np.array(v) for k, v in out.items()}


def _hsv_mean(hsv: np.ndarray) -> np.ndarray:
    """Mean of HSV with the hue averaged on the circle, each pixel's hue weighted by its saturation
    (a grey or white pixel has no hue: rgb2hsv gives it 0, red, and a mostly white field of purple
    cells read as red); NaN for a grey image (no pixel with a hue: it read as red too)."""
    h = hsv[..., 0].ravel() * 2 * np.pi
    w = hsv[..., 1].ravel()
    if not w.mean() > 1e-3:
        return np.array([np.nan, hsv[..., 1].mean(), hsv[..., 2].mean()])
    hue = (np.arctan2((w * np.sin(h)).sum(), (w * np.cos(h)).sum()) / (2 * np.pi)) % 1.0
    return np.array([hue, hsv[..., 1].mean(), hsv[..., 2].mean()])


def colour_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Distance between two domains' mean RGB (Euclidean, in [0, 1] units).

    Parameters
    ----------
    a, b : ``(n_images, 6)`` arrays of two domains from :func:`colour_stats` (the first three
        columns, mean R, G, B, are used).
    """
    return float(np.linalg.norm(a[:, :3].mean(0) - b[:, :3].mean(0)))


def summary(dataset: SmearDataset) -> dict[str, Any]:
    """Headline numbers of a dataset for the report index.

    Parameters
    ----------
    dataset : a SmearDataset.

    Returns
    -------
    dict
        :meth:`SmearDataset.summary` plus ``objects_per_image_mean`` and ``median_box_size``
        (``{class: [width, height]}`` in pixels).
    """
    per_image = objects_per_image(dataset)
    sizes = box_sizes(dataset)
    out = dataset.summary()
    out["objects_per_image_mean"] = float(per_image.sum(1).mean()) if len(dataset) else None
    out["median_box_size"] = {n: [float(x) for x in np.median(v, 0)] for n, v in sizes.items() if len(v)}
    return out
