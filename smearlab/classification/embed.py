"""Embeddings of cell crops (pixels, CNN features), t-SNE maps and a domain separability score."""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
from sklearn.decomposition import PCA
from sklearn.linear_model import LogisticRegression
from sklearn.manifold import TSNE
from sklearn.metrics import silhouette_score
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from ..core.device import resolve_device
from ..core.geometry import check_crop_values, check_image, letterbox
from ..core.search import fold_count
from ..core.training import check_count
from .features import FeatureClassifier


def crop_tensor(data, size: int | None = None, fill="median") -> torch.Tensor:
    """Crops as one ``(N, 3, S, S)`` tensor (uint8, or float in [0, 1] when given as float).

    Parameters
    ----------
    data : a :class:`smearlab.classification.crops.CropDataset`, an ``(N, 3, S, S)`` tensor of
        square crops (a non-square tensor is refused), an ``(N, S, S, 3)`` uint8 array, or a
        sequence of ``(H, W, 3)`` uint8 images / Samples (a SmearDataset of cell images).
    size : letterbox every image to ``size`` (:func:`smearlab.core.geometry.letterbox`; square
        crops of another side are resized); None keeps the given size (images of different sizes
        then need ``size``).
    fill : what pads the letterbox (:func:`~smearlab.core.geometry.letterbox`).
    """
    if hasattr(data, "images") and isinstance(getattr(data, "images"), torch.Tensor):  # CropDataset
        data = data.images
    if isinstance(data, torch.Tensor):
        t = data[None] if data.ndim == 3 else data
        if t.ndim != 4 or t.shape[1] != 3:
            raise ValueError(f"image tensor must be (N, 3, S, S), got {tuple(t.shape)}")
        if t.shape[-2] != t.shape[-1]:
            raise ValueError(f"image tensor must hold square crops (N, 3, S, S), got {tuple(t.shape)}: "
                             "give non-square images as (H, W, 3) arrays, with size=, to letterbox them")
        check_crop_values(t)
        if size is not None and t.shape[-1] != size:
            t = _resize_tensor(t, size)
        return t
    if isinstance(data, np.ndarray) and data.ndim == 4:
        items = list(data)
    elif isinstance(data, np.ndarray) and data.ndim == 3:
        items = [data]
    else:
        items = [getattr(s, "image", s) for s in data]
    items = [np.asarray(i) for i in items]
    for k, im in enumerate(items):
        check_image(im, f"image {k}")
    if not items:
        s = size or 1
        return torch.zeros((0, 3, s, s), dtype=torch.uint8)
    if size is None:
        shapes = {im.shape for im in items}
        if len(shapes) > 1 or items[0].shape[0] != items[0].shape[1]:
            raise ValueError(f"images are not squares of one size ({sorted(shapes)[:3]}...): give size= "
                             "to letterbox them")
    else:
        items = [im if im.shape[:2] == (size, size) else letterbox(im, size, fill) for im in items]
    return torch.from_numpy(np.stack(items)).permute(0, 3, 1, 2).contiguous()


def _resize_tensor(t: torch.Tensor, size: int) -> torch.Tensor:
    f = t.float()
    out = torch.nn.functional.interpolate(f, size=(size, size), mode="bilinear", antialias=True,
                                          align_corners=False)
    return out.round().clamp(0, 255).to(torch.uint8) if t.dtype == torch.uint8 else out


def as_label_array(values, n: int, what: str) -> np.ndarray:
    """``values`` as a 1-D array of ``n`` entries (``ValueError`` naming ``what`` otherwise).

    Parameters
    ----------
    values : one label (class, domain...) per point: a sequence or an array.
    n : the number of points.
    what : what the values are, for the error message (e.g. ``"domains"``).
    """
    a = np.asarray(list(values) if not isinstance(values, np.ndarray) else values)
    if a.ndim != 1 or len(a) != n:
        raise ValueError(f"{what} must hold one value per point ({n}), got shape {a.shape}")
    missing = [i for i, v in enumerate(a.tolist()) if v is None or (isinstance(v, float) and v != v)]
    if missing:
        raise ValueError(f"{what} has no value for {len(missing)} point(s) (None or NaN), first at {missing[:3]}")
    return a


def pixel_embedding(images, n_components: int = 50, *, size: int | None = None, seed: int = 0) -> np.ndarray:
    """PCA of the raw pixels: ``(N, k)`` with ``k = min(n_components, N, pixels)``.

    Parameters
    ----------
    images : crops in any form :func:`crop_tensor` accepts.
    n_components : principal components kept.
    size : letterbox (or resize) the crops to this side first (fewer pixels, faster PCA).
    seed : seed of the randomized SVD.
    """
    if isinstance(n_components, bool) or not isinstance(n_components, (int, np.integer)) or n_components < 1:
        raise ValueError(f"n_components must be a positive integer, got {n_components!r}")
    x = crop_tensor(images, size)
    if len(x) < 2:
        raise ValueError(f"PCA needs at least 2 images, got {len(x)}")
    flat = x.reshape(len(x), -1).float()
    flat = (flat / 255.0 if x.dtype == torch.uint8 else flat).numpy()
    k = int(min(n_components, flat.shape[0], flat.shape[1]))
    return PCA(n_components=k, random_state=seed).fit_transform(flat).astype(np.float32)


@torch.no_grad()
def cnn_embedding(model, data, *, device="auto", batch_size: int = 256) -> np.ndarray:
    """A classifier's pooled features ``model.embed(x)``: ``(N, C)`` float32.

    Parameters
    ----------
    model : a :class:`smearlab.classification.model.CellClassifier` (anything with ``embed`` taking
        ``(B, 3, S, S)`` float in [0, 1]); images are letterboxed to ``model.input_size`` (with the
        fill of its training crops, ``model.crop_cut["fill"]``, else "median"), crops
        of another size refused (as :func:`~smearlab.classification.predict.predict_classes`
        does: the cells would be seen at another size), except by a feature classifier, which
        measures crops of any size.
    data : crops in any form :func:`crop_tensor` accepts.
    device : "auto" (CUDA when present), "cpu", "cuda"; mixed precision on CUDA.
    batch_size : crops per forward pass.
    """
    if not hasattr(model, "embed"):
        raise TypeError(f"model must have an embed(x) method (a CellClassifier), got {type(model).__name__}")
    check_count("batch_size", batch_size)
    dev = resolve_device(device)
    size = getattr(model, "input_size", None)
    given = crop_tensor(data) if hasattr(data, "images") or isinstance(data, torch.Tensor) else None
    if given is not None and size and len(given) and tuple(given.shape[-2:]) != (size, size):
        if not isinstance(model, FeatureClassifier):
            raise ValueError(f"crops of {given.shape[-1]} px for a classifier trained on {size} px crops: the "
                             f"cells would be seen at another size; cut the crops at {size} px")
        size = None  # as predict_classes feeds it: the features rescale themselves
    fill = (getattr(model, "crop_cut", None) or {}).get("fill", "median")  # as its training crops were padded
    x = given if given is not None and size is None else crop_tensor(data, size, fill)
    was = model.training
    model.to(dev).eval()
    out = []
    try:
        for b in range(0, len(x), batch_size):
            xb = x[b:b + batch_size].to(dev)
            xb = xb.float() / 255 if xb.dtype == torch.uint8 else xb.float()
            with torch.autocast(dev.type, dtype=torch.float16, enabled=dev.type == "cuda"):
                out.append(model.embed(xb).float().reshape(len(xb), -1).cpu())
    finally:
        model.train(was)
    if not out:
        return np.zeros((0, getattr(model, "num_features", 0)), np.float32)
    return torch.cat(out).numpy().astype(np.float32)


def tsne(X, perplexity: float = 30.0, seed: int = 0, *, n_components: int = 2,
         threads: int | None = None) -> np.ndarray:
    """t-SNE map of ``X`` (scikit-learn ``TSNE``, PCA initialisation, ``random_state=seed``).

    The same ``X``, perplexity and seed give the same map.

    Parameters
    ----------
    X : ``(N, D)`` features.
    perplexity : effective number of neighbours; must be below ``N`` (5-50 is usual).
    seed : random state.
    n_components : output dimensions.
    threads : OpenMP threads of the optimisation (threadpoolctl). None: 1 below 5000 points,
        where threads cost more than they save (and on a busy CPU their spin-waiting makes a
        0.2 s map take a minute), the library default above. The map does not depend on it.

    Returns
    -------
    ``(N, n_components)`` float32.
    """
    x = np.asarray(X, np.float32)
    if x.ndim != 2:
        raise ValueError(f"X must be (N, D), got shape {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError("X contains NaN or infinite values")
    if not 0 < float(perplexity) < len(x):
        raise ValueError(f"perplexity must be in (0, N) with N = {len(x)} points, got {perplexity!r}")
    if np.all(x == x[0]):  # no spread: the PCA start divides by zero and the optimiser can crash the process
        raise ValueError(f"all {len(x)} points are identical: there is nothing to map (a collapsed embedding?)")
    if threads is None:
        threads = 1 if len(x) < 5000 else None
    model = TSNE(n_components=n_components, perplexity=float(perplexity), init="pca", learning_rate="auto",
                 random_state=seed)
    with threadpool_limits(limits=threads):
        y = model.fit_transform(x)
    return y.astype(np.float32)


def separability(X, domains, *, cv: int = 5, seed: int = 0, groups=None) -> dict[str, Any]:
    """How well the domains separate in an embedding.

    Parameters
    ----------
    X : ``(N, D)`` embedding (features, PCA or a t-SNE map).
    domains : ``(N,)`` domain of each point (names or ints), at least two distinct.
    cv : folds of the stratified cross-validation (fewer when a domain is smaller).
    seed : shuffling of the folds.
    groups : one key per point whose points stay in one fold (e.g.
        :attr:`~smearlab.classification.crops.CropDataset.groups`: crops of one image, near-copies),
        so that a twin in training does not make a domain look separable; None: every point alone.

    Returns
    -------
    dict
        ``linear_domain_accuracy``: cross-validated accuracy of a logistic-regression domain
        classifier on the standardised embedding (1.0 = fully separable; chance =
        ``chance``, the share of the largest domain); ``silhouette``: mean silhouette of the
        domains (scikit-learn, Euclidean; near 0 = mixed, towards 1 = apart); ``chance``; ``n``.
    """
    x = np.asarray(X, np.float64)
    if x.ndim != 2:
        raise ValueError(f"X must be (N, D), got shape {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError("X contains NaN or infinite values")
    d = as_label_array(domains, len(x), "domains")
    names, counts = np.unique(d, return_counts=True)
    if len(names) < 2:
        raise ValueError(f"separability needs at least two domains, got {names.tolist()}")
    if counts.min() < 2:
        raise ValueError(f"every domain needs at least 2 points for cross-validation; counts "
                         f"{dict(zip(names.tolist(), counts.tolist()))}")
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    g = None if groups is None else as_label_array(groups, len(x), "groups")
    grouped = g is not None and len(np.unique(g)) < len(g)
    # a fold per group of the domain with the fewest, or a fold would hold none of it
    folds, short = fold_count(d, cv, g if grouped else None)
    if any(n < 2 for n in short.values()):
        raise ValueError("every domain needs points of at least 2 groups for grouped cross-validation; groups "
                         f"per domain {dict((str(n), len(np.unique(g[d == n]))) for n in names)}")
    splitter = (StratifiedGroupKFold if grouped else StratifiedKFold)(folds, shuffle=True, random_state=seed)
    acc = cross_val_score(clf, x, d, groups=g, cv=splitter, scoring="accuracy")
    return {"linear_domain_accuracy": float(acc.mean()), "silhouette": float(silhouette_score(x, d)),
            "chance": float(counts.max() / counts.sum()), "n": int(len(x))}


def separability_table(embeddings: dict, domains, **kw) -> dict[str, dict[str, Any]]:
    """:func:`separability` of every embedding: ``{name: {"linear_domain_accuracy", "silhouette", ...}}``.

    Parameters
    ----------
    embeddings : ``{name: (N, D) embedding}``.
    domains : ``(N,)`` domain of each point.
    **kw : options of :func:`separability` (``cv``, ``seed``, ``groups``).
    """
    return {name: separability(x, domains, **kw) for name, x in embeddings.items()}
