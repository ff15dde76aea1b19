"""White-cell classification: cell crops, a small ResNet from scratch, training, metrics, the cascade.

Crops
-----
:func:`crops_from_dataset` turns a :class:`~smearlab.data.SmearDataset` into a
:class:`CropDataset` of fixed-size square crops (uint8, in memory):

* ``source="image"``: one crop per image with an ``image_label`` (Zheng WBC images, ImageFolder
  / PBC crops, the synthetic :func:`~smearlab.data.synthetic.make_wbc_crops`);
* ``source="boxes"``: one crop per box (ground truth, e.g. the WBC boxes of CBC), a square
  window around the box enlarged by ``pad`` (:func:`square_window`).

:func:`crops_from_predictions` does the same for a detector's boxes.

Every image is *letterboxed* (:func:`letterbox`): scaled to fit the square keeping its aspect, then
padded, never stretched. Windows that run past the image edge are padded the same way
(:func:`extract_crop`).

Model
-----
:class:`CellClassifier` is a small ResNet (basic blocks, He et al. 2016) trained from scratch, with
batch or group normalisation (GroupNorm, Wu & He 2018, does not depend on batch statistics and so
does not collapse when the test domain's statistics differ). Its input is ``(B, 3, S, S)`` float in
[0, 1]; normalisation happens inside the model. ``features`` holds the convolutional trunk with
the named stages ``stem, layer1 .. layer4`` (Grad-CAM targets), ``pool`` the global average pool
and ``head`` the linear classifier; :meth:`CellClassifier.embed` gives the pooled features.

Training (:func:`train_classifier`) samples classes evenly (:class:`torch.utils.data.WeightedRandomSampler`)
so that rare types (basophils, eosinophils) are seen, augments on the fly (:func:`default_crop_augment`:
the symmetries of the square, then colour and stain jitter from :mod:`smearlab.augment`) and anneals
the learning rate as in Ganin et al. (see :mod:`smearlab.domain`, which trains with the same loop,
:func:`fit`). :func:`classification_report` gives per-class and macro / weighted precision, recall
and F1 and the confusion matrix (scikit-learn).

Cascade
-------
:func:`differential_count`: a detector finds the cells, the classifier names the white cells in
its WBC boxes, and :func:`export_differential` writes one JSON per image and a CSV with one row per
image (the white-cell differential count).
"""
from __future__ import annotations

import csv
import io
import logging
import math
import re
import time
from collections import Counter, OrderedDict
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

from .data.errors import DataError
from .data.sample import Sample, SkipLog, SmearDataset
from .io import atomic_path, write_json, write_text, read_torch_file
from .segmentation import norm_layer

log = logging.getLogger("smearlab.classify")

__all__ = ["CellClassifier", "build_classifier", "letterbox", "square_window", "extract_crop", "CropDataset",
           "crops_from_dataset", "crops_from_predictions", "stratified_split", "CropAugment", "default_crop_augment",
           "fit", "train_classifier", "predict_classes", "classification_report", "plot_confusion", "save_classifier",
           "load_classifier", "differential_count", "export_differential"]

CHECKPOINT_FORMAT = "smearlab-classifier/1"
#: Input normalisation inside the model: ``(x - MEAN) / STD`` for x in [0, 1].
MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
STAGES = ("stem", "layer1", "layer2", "layer3", "layer4")


# ---------------------------------------------------------------------------------------------
# geometry: letterbox and crops
# ---------------------------------------------------------------------------------------------
def _check_image(image, where: str = "image") -> np.ndarray:
    img = np.asarray(image)
    if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"{where} must be an (H, W, 3) uint8 RGB array, got {img.shape} {img.dtype}")
    if img.shape[0] == 0 or img.shape[1] == 0:
        raise ValueError(f"{where} has zero size {img.shape[:2]}")
    return img


def _fill_colour(image: np.ndarray, fill) -> np.ndarray | str:
    """The padding colour (3,) uint8 for ``fill``: "median" of the border pixels, a grey level or RGB."""
    if isinstance(fill, str):
        if fill == "median":
            border = np.concatenate([image[0], image[-1], image[:, 0], image[:, -1]])
            return np.median(border, axis=0).round().astype(np.uint8)
        if fill == "edge":
            return "edge"
        raise ValueError(f"fill must be 'median', 'edge', a grey level or an RGB triple, got {fill!r}")
    c = np.broadcast_to(np.asarray(fill, np.float64), (3,))
    if not np.all((c >= 0) & (c <= 255)):
        raise ValueError(f"fill colour must be within 0..255, got {fill!r}")
    return c.round().astype(np.uint8)


def _pad_to(image: np.ndarray, top: int, bottom: int, left: int, right: int, colour) -> np.ndarray:
    if isinstance(colour, str):  # "edge": repeat the outermost pixels
        return np.pad(image, ((top, bottom), (left, right), (0, 0)), mode="edge")
    h, w = image.shape[:2]
    out = np.empty((h + top + bottom, w + left + right, 3), np.uint8)
    out[:] = colour
    out[top:top + h, left:left + w] = image
    return out


def letterbox(image: np.ndarray, size: int, fill="median") -> np.ndarray:
    """Fit ``image`` into a ``size`` x ``size`` square keeping its aspect ratio, padding the rest.

    The longer side is scaled to ``size`` (bilinear, antialiased when shrinking, by PIL) and the
    image is centred; the margin is filled, never stretched.

    Parameters
    ----------
    image : ``(H, W, 3)`` uint8 RGB.
    size : side of the output square in pixels.
    fill : "median" (the median colour of the image border: the background of a cell crop),
        "edge" (repeat the outermost pixels), a grey level or an RGB triple.

    Returns
    -------
    np.ndarray
        ``(size, size, 3)`` uint8.
    """
    img = _check_image(image)
    size = int(size)
    if size < 1:
        raise ValueError(f"size must be a positive number of pixels, got {size}")
    colour = _fill_colour(img, fill)
    h, w = img.shape[:2]
    s = size / max(h, w)
    nh, nw = min(size, max(1, round(h * s))), min(size, max(1, round(w * s)))
    if (nh, nw) != (h, w):
        img = np.asarray(Image.fromarray(img).resize((nw, nh), Image.BILINEAR))
    top, left = (size - nh) // 2, (size - nw) // 2
    return _pad_to(img, top, size - nh - top, left, size - nw - left, colour)


def square_window(box, pad: float = 0.1) -> tuple[int, int, int, int]:
    """The integer square window ``(x0, y0, x1, y1)`` centred on ``box``, enlarged by ``pad``.

    The side is ``max(width, height) * (1 + 2 * pad)`` rounded to whole pixels (at least 1): a
    margin of ``pad`` times the longer box side on each side. The window may reach past the
    image (see :func:`extract_crop`).
    """
    b = np.asarray(box, np.float64).reshape(-1)
    if b.shape != (4,) or not np.all(np.isfinite(b)):
        raise ValueError(f"box must be 4 finite numbers x0, y0, x1, y1, got {box!r}")
    x0, y0, x1, y1 = b
    if x1 <= x0 or y1 <= y0:
        raise ValueError(f"box must have x1 > x0 and y1 > y0, got {b.tolist()}")
    if pad < 0:
        raise ValueError(f"pad must be >= 0, got {pad}")
    side = max(1, int(round(max(x1 - x0, y1 - y0) * (1 + 2 * pad))))
    wx0 = int(math.floor((x0 + x1) / 2 - side / 2 + 0.5))
    wy0 = int(math.floor((y0 + y1) / 2 - side / 2 + 0.5))
    return wx0, wy0, wx0 + side, wy0 + side


def extract_crop(image: np.ndarray, box, pad: float = 0.1, fill="median") -> np.ndarray:
    """The square crop of :func:`square_window` around ``box``; parts outside the image are filled.

    The cell stays centred in the crop even at the image edge: the window is clipped to the
    image, the pixels inside are copied to their place in the square and the rest is ``fill``
    (see :func:`letterbox`; "median" is the median colour of the copied part's border).

    Raises
    ------
    ValueError
        when the box is degenerate or the window does not overlap the image at all.
    """
    img = _check_image(image)
    h, w = img.shape[:2]
    wx0, wy0, wx1, wy1 = square_window(box, pad)
    ix0, iy0, ix1, iy1 = max(wx0, 0), max(wy0, 0), min(wx1, w), min(wy1, h)
    if ix1 <= ix0 or iy1 <= iy0:
        raise ValueError(f"box {np.asarray(box).tolist()} lies outside the {w}x{h} image")
    inside = img[iy0:iy1, ix0:ix1]
    return _pad_to(inside, iy0 - wy0, wy1 - iy1, ix0 - wx0, wx1 - ix1, _fill_colour(inside, fill))


# ---------------------------------------------------------------------------------------------
# crop datasets
# ---------------------------------------------------------------------------------------------
def stratified_split(labels, test: float = 0.3, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Indices ``(train, test)``: each class split ``1 - test : test`` (rounded), shuffled by ``seed``.

    A class with two or more items puts at least one in each part; a class with one item goes
    to train. Works for any class sizes (unlike stratified sampling that needs two of each).
    """
    if not 0 < test < 1:
        raise ValueError(f"test must be a fraction in (0, 1), got {test}")
    y = np.asarray(labels)
    rng = np.random.default_rng(seed)
    tr, te = [], []
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        k = 0 if len(idx) < 2 else min(len(idx) - 1, max(1, int(round(test * len(idx)))))
        te += idx[:k].tolist()
        tr += idx[k:].tolist()
    return np.sort(np.asarray(tr, np.int64)), np.sort(np.asarray(te, np.int64))


class CropDataset(torch.utils.data.Dataset):
    """Square cell crops in memory: item ``i`` is ``(image (3, S, S) float in [0, 1], label, domain)``.

    Parameters
    ----------
    images : ``(N, S, S, 3)`` or ``(N, 3, S, S)`` uint8 (numpy or torch).
    labels : ``(N,)`` ints into ``class_names`` (-1 for unlabelled crops).
    class_names : the classes.
    domains : one domain name per crop (default: ``name``).
    ids : one identifier per crop (image id, plus ``#k`` for the k-th box of an image).
    name : short name for reports.
    skipped : records that could not be turned into crops (:class:`~smearlab.data.sample.Skip`).
    """

    def __init__(self, images, labels, class_names: Sequence[str], domains: Sequence[str] | None = None,
                 ids: Sequence[str] | None = None, name: str = "crops", skipped=None):
        x = torch.as_tensor(np.asarray(images) if not isinstance(images, torch.Tensor) else images)
        if x.ndim == 4 and x.shape[-1] == 3 and x.shape[1] != 3:
            x = x.permute(0, 3, 1, 2)
        if x.ndim != 4 or x.shape[1] != 3 or x.dtype != torch.uint8 or x.shape[2] != x.shape[3]:
            raise ValueError(f"images must be (N, S, S, 3) or (N, 3, S, S) uint8 squares, got "
                             f"{tuple(x.shape)} {x.dtype}")
        self.images = x.contiguous()
        self.labels = np.asarray(labels, np.int64).reshape(-1)
        n = len(self.images)
        self.class_names = [str(c) for c in class_names]
        if len(self.labels) != n:
            raise ValueError(f"{n} crops but {len(self.labels)} labels")
        bad = (self.labels < -1) | (self.labels >= len(self.class_names))
        if bad.any():
            raise ValueError(f"label {int(self.labels[bad][0])} outside the {len(self.class_names)} classes "
                             f"{self.class_names} (-1 marks an unlabelled crop)")
        self.name = name
        self.domains = [str(d) for d in domains] if domains is not None else [name] * n
        self.ids = [str(i) for i in ids] if ids is not None else [f"{name}_{i}" for i in range(n)]
        if len(self.domains) != n or len(self.ids) != n:
            raise ValueError(f"{n} crops but {len(self.domains)} domains and {len(self.ids)} ids")
        self.skipped = SkipLog(skipped or [])

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        return self.images[i].float().div_(255.0), int(self.labels[i]), self.domains[i]

    def __repr__(self) -> str:
        return (f"CropDataset({self.name!r}, {len(self)} crops of {self.size} px, domains={self.domain_names}, "
                f"per_class={self.class_counts()})")

    @property
    def size(self) -> int:
        """Crop side in pixels."""
        return int(self.images.shape[-1])

    @property
    def domain_names(self) -> list[str]:
        return sorted(set(self.domains))

    @property
    def empty_classes(self) -> list[str]:
        """Classes without a single crop."""
        return [n for n, c in self.class_counts().items() if c == 0]

    def class_counts(self) -> dict[str, int]:
        """Crops per class name (unlabelled crops not counted)."""
        c = Counter(self.labels.tolist())
        return {n: int(c.get(i, 0)) for i, n in enumerate(self.class_names)}

    def subset(self, indices: Iterable[int], name: str | None = None) -> "CropDataset":
        """The chosen crops (a copy), same classes."""
        idx = np.asarray(list(indices), np.int64)
        return CropDataset(self.images[torch.as_tensor(idx)], self.labels[idx], self.class_names,
                           [self.domains[i] for i in idx], [self.ids[i] for i in idx], name or self.name)

    @classmethod
    def concat(cls, datasets: Sequence["CropDataset"], name: str | None = None) -> "CropDataset":
        """One dataset of several with the same classes and crop size."""
        first = datasets[0]
        for d in datasets[1:]:
            if d.class_names != first.class_names or d.size != first.size:
                raise ValueError(f"cannot concatenate {d.name!r} ({d.size} px, classes {d.class_names}) with "
                                 f"{first.name!r} ({first.size} px, classes {first.class_names})")
        return cls(torch.cat([d.images for d in datasets]), np.concatenate([d.labels for d in datasets]),
                   first.class_names, [x for d in datasets for x in d.domains],
                   [x for d in datasets for x in d.ids], name or "+".join(d.name for d in datasets),
                   skipped=[s for d in datasets for s in d.skipped])

    def by_domain(self) -> dict[str, "CropDataset"]:
        """One dataset per domain, by name."""
        return {d: self.subset([i for i, x in enumerate(self.domains) if x == d], name=d)
                for d in self.domain_names}

    def restrict(self, class_names: Sequence[str], name: str | None = None) -> "CropDataset":
        """Keep the crops of ``class_names`` only, relabelled in that order (e.g. shared classes)."""
        unknown = [c for c in class_names if c not in self.class_names]
        if unknown:
            raise KeyError(f"classes {unknown} not in {self.name!r} (classes {self.class_names})")
        old = [self.class_names.index(c) for c in class_names]
        remap = np.full(len(self.class_names) + 1, -2, np.int64)
        remap[old] = np.arange(len(old))
        remap[-1] = -1  # unlabelled stays unlabelled
        new = remap[self.labels]
        keep = np.flatnonzero(new != -2)
        out = self.subset(keep, name)
        out.class_names, out.labels = list(class_names), new[keep]
        return out

    def split(self, test: float = 0.3, seed: int = 0) -> tuple["CropDataset", "CropDataset"]:
        """``(train, test)`` stratified by class (see :func:`stratified_split`)."""
        tr, te = stratified_split(self.labels, test, seed)
        return self.subset(tr, f"{self.name}:train"), self.subset(te, f"{self.name}:test")

    def show(self, n: int = 8, ax=None, seed: int = 0):
        """A row of ``n`` random crops titled by class and domain (matplotlib); returns the axes."""
        import matplotlib.pyplot as plt
        rng = np.random.default_rng(seed)
        idx = rng.choice(len(self), size=min(n, len(self)), replace=False)
        if ax is None:
            _, ax = plt.subplots(1, len(idx), figsize=(1.6 * len(idx), 2.0), squeeze=False)
            ax = ax[0]
        for a, i in zip(ax, idx):
            a.imshow(self.images[i].permute(1, 2, 0).numpy())
            lab = self.class_names[self.labels[i]] if self.labels[i] >= 0 else "?"
            a.set_title(f"{lab}\n{self.domains[i]}", fontsize=8)
            a.axis("off")
        return ax


def _image_of(sample: Sample) -> np.ndarray:
    """The sample's image; a lazily read image is released again (large datasets stay small)."""
    lazy = sample.path is not None and sample._image is None
    img = sample.image
    if lazy:
        sample.release()
    return img


def crops_from_dataset(dataset: SmearDataset, size: int = 64, *, source: str = "image",
                       classes: Sequence[str] | None = None, pad: float = 0.1, fill="median",
                       strict: bool = False, progress: bool = False) -> CropDataset:
    """Square crops of a :class:`~smearlab.data.SmearDataset`, letterboxed to ``size``.

    Parameters
    ----------
    dataset : the source. Its samples' ``domain`` (or the dataset name) becomes each crop's domain.
    size : crop side in pixels.
    source : ``"image"``: the whole image of each sample with an ``image_label`` (cell-crop
        datasets: Zheng, ImageFolder/PBC, synthetic white cells); samples without one are counted
        skips. ``"boxes"``: one crop per box, the :func:`square_window` enlarged by ``pad``.
    classes : class names to keep, in the order of the result's classes (default: all of the
        dataset's). E.g. ``["WBC"]`` for the white cells of a CBC smear.
    pad : margin around each box (fraction of its longer side), ``source="boxes"`` only.
    fill : padding colour, see :func:`letterbox`.
    strict : raise on an unreadable image instead of skipping it.
    progress : tqdm progress bar.

    Returns
    -------
    CropDataset
        Unreadable images and degenerate boxes are logged and counted in ``skipped`` (or raise with
        ``strict``). A class with no crop (e.g. an empty ImageFolder class folder) stays in
        ``class_names`` with zero crops and is logged; :attr:`CropDataset.empty_classes` lists it.
        Images of any size and mode (grey, RGBA, palette, 16-bit) are accepted: they are read as RGB
        and letterboxed.
    """
    if source not in ("image", "boxes"):
        raise ValueError(f"source must be 'image' or 'boxes', got {source!r}")
    names = list(dataset.class_names)
    classes = list(names if classes is None else classes)
    unknown = [c for c in classes if c not in names]
    if unknown:
        raise KeyError(f"classes {unknown} not in dataset {dataset.name!r} (classes {names})")
    remap = {names.index(c): i for i, c in enumerate(classes)}
    skipped = SkipLog(strict=strict)
    imgs, labels, domains, ids = [], [], [], []
    it = dataset
    if progress:
        from tqdm.auto import tqdm
        it = tqdm(dataset, desc=f"crops {dataset.name}", unit="img")
    for s in it:
        where = s.path or s.image_id
        dom = s.domain or dataset.name
        if source == "image":
            if s.image_label is None:
                skipped.add(where, "no image-level label (use source='boxes' for smears)")
                continue
            wanted = [None] if s.image_label in remap else []  # None: the whole image is the crop
        else:
            wanted = [k for k, lab in enumerate(s.labels.tolist()) if lab in remap]
        if not wanted:
            continue
        try:
            img = _image_of(s)
        except DataError as e:
            skipped.add(e.path, e.problem)
            continue
        for k in wanted:
            if k is None:
                crop, label, crop_id = img, s.image_label, s.image_id
            else:
                try:
                    crop = extract_crop(img, s.boxes[k], pad, fill)
                except ValueError as e:
                    skipped.add(where, str(e), f"box {k}")
                    continue
                label, crop_id = int(s.labels[k]), f"{s.image_id}#{k}"
            imgs.append(letterbox(crop, size, fill))
            labels.append(remap[label])
            domains.append(dom)
            ids.append(crop_id)
    stack = np.stack(imgs) if imgs else np.zeros((0, size, size, 3), np.uint8)
    out = CropDataset(stack, labels, classes, domains, ids, name=dataset.name,
                      skipped=[*getattr(dataset, "skipped", []), *skipped])
    for c in out.empty_classes:
        log.warning("%s: class %r has no crops (kept with 0 crops)", dataset.name, c)
    return out


def crops_from_predictions(dataset: SmearDataset, predictions: Sequence[dict], size: int = 64, *,
                           classes: Sequence[str] | None = None, score_threshold: float = 0.5, pad: float = 0.1,
                           fill="median") -> CropDataset:
    """Crops around a detector's boxes (e.g. its WBC boxes on CBC smears), for classification.

    Parameters
    ----------
    dataset : the images the predictions were made on (their own annotations are not used).
    predictions : one ``{"boxes", "scores", "labels"}`` dict per image, labels indexing
        ``dataset.class_names`` (:func:`smearlab.detection.predict.predict` output).
    size, classes, pad, fill : as :func:`crops_from_dataset` with ``source="boxes"``.
    score_threshold : boxes scoring below it are left out.

    Returns
    -------
    CropDataset
        labels are the *detected* classes; ``ids`` are ``<image_id>#<detection index>``.
    """
    import dataclasses
    if len(predictions) != len(dataset):
        raise ValueError(f"{len(predictions)} predictions for {len(dataset)} images of {dataset.name!r}")
    samples = []
    for i, (s, p) in enumerate(zip(dataset, predictions)):
        boxes = np.asarray(p["boxes"], np.float32).reshape(-1, 4)
        scores = np.asarray(p.get("scores", np.ones(len(boxes))), np.float32).reshape(-1)
        labels = np.asarray(p["labels"], np.int64).reshape(-1)
        if not len(boxes) == len(scores) == len(labels):
            raise ValueError(f"prediction {i}: {len(boxes)} boxes, {len(scores)} scores, {len(labels)} labels")
        keep = scores >= score_threshold
        samples.append(dataclasses.replace(s, boxes=boxes[keep], labels=labels[keep], image_label=None,
                                           _masks=None, meta={**s.meta, "scores": scores[keep]}))
    detected = SmearDataset(samples, dataset.class_names, f"{dataset.name}:detected")
    return crops_from_dataset(detected, size, source="boxes", classes=classes, pad=pad, fill=fill)


# ---------------------------------------------------------------------------------------------
# model
# ---------------------------------------------------------------------------------------------
class BasicBlock(nn.Module):
    """ResNet basic block: two 3x3 convolutions and a shortcut (1x1 convolution when the shape changes)."""

    def __init__(self, cin: int, cout: int, stride: int, norm: str):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.norm1 = norm_layer(norm, cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.norm2 = norm_layer(norm, cout)
        self.shortcut = nn.Identity() if stride == 1 and cin == cout else nn.Sequential(
            nn.Conv2d(cin, cout, 1, stride, bias=False), norm_layer(norm, cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.norm1(self.conv1(x)))
        return F.relu(self.norm2(self.conv2(y)) + self.shortcut(x))


class CellClassifier(nn.Module):
    """A small ResNet for cell crops, trained from scratch.

    Stages: ``stem`` (3x3 convolution, stride 2) then ``layer1 .. layer4`` with ``width * (1, 2,
    4, 8)`` channels (strides 1, 2, 2, 2): a 64 px crop ends as 4x4 cells of ``8 * width``
    features. Build it with :func:`build_classifier`.

    Attributes
    ----------
    features : ``nn.Sequential`` with children ``stem, layer1, layer2, layer3, layer4``.
    pool : global average pool and flatten, ``(B, C, h, w) -> (B, C)``.
    head : ``nn.Linear(C, len(class_names))``.
    class_names : the classes, in logit order.
    input_size : crop side the model was trained on (used to letterbox new images).
    config : the :func:`build_classifier` arguments (saved with the weights).
    """

    def __init__(self, class_names: Sequence[str], width: int = 32, norm: str = "group",
                 in_channels: int = 3, blocks: Sequence[int] = (1, 1, 1, 1), input_size: int = 64):
        super().__init__()
        self.class_names = [str(c) for c in class_names]
        if not self.class_names:
            raise ValueError("class_names is empty: a classifier needs at least one class")
        if len(set(self.class_names)) != len(self.class_names):
            raise ValueError(f"class_names has duplicates: {self.class_names}")
        if int(width) < 1 or in_channels not in (1, 3) or len(blocks) != 4 or min(blocks) < 1:
            raise ValueError(f"need width >= 1, in_channels 1 or 3 and four block counts >= 1; got "
                             f"width={width}, in_channels={in_channels}, blocks={tuple(blocks)}")
        norm_layer(norm, 8)  # validates the name
        self.config = {"class_names": list(self.class_names), "width": int(width), "norm": str(norm),
                       "in_channels": int(in_channels), "blocks": [int(b) for b in blocks]}
        self.input_size = int(input_size)
        w = int(width)
        chans = [w, 2 * w, 4 * w, 8 * w]
        stages: list[tuple[str, nn.Module]] = [("stem", nn.Sequential(
            nn.Conv2d(in_channels, w, 3, 2, 1, bias=False), norm_layer(norm, w), nn.ReLU()))]
        cin = w
        for i, (c, n) in enumerate(zip(chans, blocks)):
            layer = [BasicBlock(cin if j == 0 else c, c, (1 if i == 0 else 2) if j == 0 else 1, norm)
                     for j in range(n)]
            stages.append((f"layer{i + 1}", nn.Sequential(*layer)))
            cin = c
        self.features = nn.Sequential(OrderedDict(stages))
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(1))
        self.head = nn.Linear(chans[-1], len(self.class_names))
        k = int(in_channels)
        self.register_buffer("mean", torch.tensor(MEAN[:k] if k == 3 else (0.5,)).view(1, k, 1, 1))
        self.register_buffer("std", torch.tensor(STD[:k] if k == 3 else (0.25,)).view(1, k, 1, 1))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        for blk in self.modules():  # zero-init the last norm of each block (Goyal et al. 2017)
            if isinstance(blk, BasicBlock):
                nn.init.zeros_(blk.norm2.weight)

    @property
    def num_features(self) -> int:
        return self.head.in_features

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled features ``(B, C)`` before the head, for ``x`` ``(B, 3, S, S)`` in [0, 1]."""
        return self.pool(self.features((x - self.mean) / self.std))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits ``(B, K)`` for ``x`` ``(B, 3, S, S)`` float in [0, 1]."""
        return self.head(self.embed(x))


def build_classifier(class_names: Sequence[str], *, width: int = 32, norm: str = "group", in_channels: int = 3,
                     blocks: Sequence[int] = (1, 1, 1, 1), input_size: int = 64) -> CellClassifier:
    """A :class:`CellClassifier` with random weights.

    Parameters
    ----------
    class_names : the classes.
    width : channels of the first stage (then x2 per stage). 16 trains in seconds on a CPU.
    norm : "group" (default; GroupNorm does not depend on batch statistics, so it neither breaks on
        small batches nor collapses when the test domain's statistics differ) or "batch".
    in_channels : 3 (RGB) or 1.
    blocks : basic blocks per stage (``(1, 1, 1, 1)``: a ResNet-10; ``(2, 2, 2, 2)``: ResNet-18 layout).
    input_size : crop side the model expects (set again by training).
    """
    return CellClassifier(class_names, width=width, norm=norm, in_channels=in_channels, blocks=blocks,
                          input_size=input_size)


# ---------------------------------------------------------------------------------------------
# training
# ---------------------------------------------------------------------------------------------
class CropAugment:
    """Augmentation of square crop batches: a random symmetry of the square, then colour.

    Each crop gets one of the 8 flips / quarter turns (exact pixel copies, drawn uniformly), then
    ``photometric`` (a :class:`smearlab.augment.Augment`, e.g. colour and stain jitter) runs
    batched with per-crop parameters.

    Parameters
    ----------
    photometric : :class:`smearlab.augment.Augment` of photometric transforms, or None.
    seed : seeds the symmetry draws (the ``photometric`` pipeline has its own seed).
    """

    def __init__(self, photometric=None, seed: int = 0):
        self.photometric = photometric
        self.generator = torch.Generator().manual_seed(int(seed))

    def __repr__(self) -> str:
        return f"CropAugment(dihedral, {self.photometric!r})"

    def batch(self, x: torch.Tensor) -> torch.Tensor:
        """Augmented copy of ``(B, 3, S, S)`` crops (uint8, or float in [0, 1]); same dtype and device."""
        if x.ndim != 4 or x.shape[-1] != x.shape[-2]:
            raise ValueError(f"crops must be (B, C, S, S) squares, got {tuple(x.shape)}")
        k = torch.randint(0, 4, (len(x),), generator=self.generator)
        flip = torch.rand(len(x), generator=self.generator) < 0.5
        out = x.clone()
        for r in range(1, 4):
            sel = (k == r).nonzero().flatten().to(x.device)
            if len(sel):
                out[sel] = torch.rot90(x[sel], r, (2, 3))
        sel = flip.nonzero().flatten().to(x.device)
        if len(sel):
            out[sel] = out[sel].flip(3)
        return _augment_batch(self.photometric, out)


def default_crop_augment(seed: int = 0) -> CropAugment:
    """The crop augmentation of training: the 8 symmetries of the square, then from
    :mod:`smearlab.augment` colour jitter (brightness, contrast, saturation +-15 %) at p=0.8 and
    stain (HED) jitter at p=0.5. (No hue jitter: per-image hue rotation is slow on a CPU and the
    stain jitter already moves the colours.)"""
    from .augment import Augment, ColorJitter, StainJitter
    return CropAugment(Augment([ColorJitter(brightness=0.15, contrast=0.15, saturation=0.15, p=0.8),
                                StainJitter(alpha=0.05, beta=0.02, p=0.5)], seed=seed), seed=seed)


def _resolve_augment(augment, seed: int):
    if augment is True:
        return default_crop_augment(seed)
    if augment is False or augment is None:
        return None
    if not hasattr(augment, "batch"):
        raise TypeError(f"augment must be True, False, a CropAugment or a smearlab.augment.Augment, "
                        f"got {type(augment).__name__}")
    return augment


def _augment_batch(aug, x: torch.Tensor) -> torch.Tensor:
    if aug is None:
        return x
    if isinstance(aug, CropAugment):
        return aug.batch(x)
    empty = [{"boxes": torch.zeros((0, 4), device=x.device)} for _ in range(len(x))]
    return aug.batch(x, empty)[0]


def _check_crops(data, what: str) -> CropDataset:
    if not isinstance(data, CropDataset):
        raise TypeError(f"{what} must be a CropDataset (see crops_from_dataset), got {type(data).__name__}")
    if len(data) == 0:
        raise ValueError(f"{what} {data.name!r} has no crops")
    return data


class _Batches:
    """Endless batches of indices: class-balanced (:class:`WeightedRandomSampler`) or shuffled."""

    def __init__(self, labels: np.ndarray, batch_size: int, balanced: bool, generator: torch.Generator):
        n = len(labels)
        if balanced:
            lab = np.where(labels < 0, len(labels), labels)  # unlabelled crops: one group
            counts = np.bincount(lab)
            w = torch.as_tensor(1.0 / counts[lab], dtype=torch.double)
            self.sampler = torch.utils.data.WeightedRandomSampler(w, n, replacement=True, generator=generator)
        else:
            self.sampler = torch.utils.data.RandomSampler(range(n), generator=generator)
        self.batch_size = int(batch_size)
        self._it = iter(())

    def next(self) -> torch.Tensor:
        out = []
        while len(out) < self.batch_size:
            try:
                out.append(next(self._it))
            except StopIteration:
                self._it = iter(self.sampler)
        return torch.as_tensor(out)


def _optimiser(params, lr: float, weight_decay: float):
    return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=weight_decay, nesterov=True)


def fit(model: CellClassifier, train: CropDataset, *, steps: int, batch_size: int = 64, lr: float = 0.05,
        weight_decay: float = 5e-4, balanced: bool = True, augment=True, device="auto", seed: int = 0,
        target: CropDataset | None = None, domain_head: nn.Module | None = None, domain_weight: float = 1.0,
        gamma: float = 10.0, alpha: float = 10.0, beta: float = 0.75, val: CropDataset | None = None,
        eval_every: int | None = None, progress: bool = False) -> list[dict[str, Any]]:
    """The training loop shared by :func:`train_classifier` and :func:`smearlab.domain.train_dann`.

    SGD (momentum 0.9, Nesterov) with the annealed learning rate ``lr / (1 + alpha p) ** beta``
    of Ganin et al. (``p`` = training progress from 0 to 1), cross-entropy on class-balanced batches
    of ``train``. With ``target`` and ``domain_head`` (a :class:`smearlab.domain.DomainHead`) each
    step also draws a batch of ``target`` (labels unused), and adds ``domain_weight`` times the
    domain cross-entropy of both batches, the features passing a gradient reversal layer of weight
    ``dann_lambda(p, gamma)``.

    Returns one record per ``eval_every`` steps (default: every epoch of ``train``) and at the end:
    ``step``, ``epoch`` (fraction of passes over ``train``), ``loss`` (class), ``domain_loss``,
    ``domain_acc``, ``lambda``, ``lr``, ``train_acc``, ``seconds``, and ``val_macro_f1`` with ``val``.
    """
    from .detection.models import resolve_device
    from .domain import dann_lambda, dann_lr, grad_reverse
    _check_crops(train, "train")
    labelled = train.labels >= 0
    if not labelled.all():
        raise ValueError(f"train {train.name!r} has {int((~labelled).sum())} unlabelled crops")
    if train.class_names != model.class_names:
        raise ValueError(f"model classes {model.class_names} differ from the training data's {train.class_names}")
    if steps < 1 or batch_size < 1:
        raise ValueError(f"steps and batch_size must be >= 1, got steps={steps}, batch_size={batch_size}")
    if (target is None) != (domain_head is None):
        raise ValueError("give both target and domain_head (domain adaptation) or neither")
    dev = resolve_device(device)
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    aug = _resolve_augment(augment, seed)
    model.to(dev).train()
    model.input_size = train.size
    params = list(model.parameters())
    if domain_head is not None:
        _check_crops(target, "target")
        if target.size != train.size:
            raise ValueError(f"target crops are {target.size} px, source crops {train.size} px")
        domain_head.to(dev).train()
        params += list(domain_head.parameters())
        tgt_batches = _Batches(np.full(len(target), -1), batch_size, False, g)
    opt = _optimiser(params, lr, weight_decay)
    src_batches = _Batches(train.labels, batch_size, balanced, g)
    labels_t = torch.as_tensor(train.labels)
    amp = dev.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=amp)
    per_epoch = max(1, math.ceil(len(train) / batch_size))
    every = int(eval_every or per_epoch)
    history: list[dict[str, Any]] = []
    fresh = {"loss": 0.0, "dloss": 0.0, "dacc": 0.0, "correct": 0, "n": 0, "steps": 0}
    acc = dict(fresh)
    t0 = time.perf_counter()
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=steps, desc="train" if domain_head is None else "train DANN", unit="step")
    for step in range(steps):
        p = step / max(steps - 1, 1)
        cur_lr = dann_lr(p, lr, alpha, beta)
        for group in opt.param_groups:
            group["lr"] = cur_lr
        idx = src_batches.next()
        x = _augment_batch(aug, train.images[idx].to(dev))
        y = labels_t[idx].to(dev)
        lam = dann_lambda(p, gamma)
        with torch.autocast(dev.type, dtype=torch.float16, enabled=amp):
            if domain_head is None:
                logits = model(x.float() / 255)
                dloss = None
            else:
                xt = _augment_batch(aug, target.images[tgt_batches.next()].to(dev))
                feats = model.embed(torch.cat([x, xt]).float() / 255)
                logits = model.head(feats[:len(x)])
                dlogits = domain_head(grad_reverse(feats, lam))
                dy = torch.cat([torch.zeros(len(x)), torch.ones(len(xt))]).long().to(dev)
                dloss = F.cross_entropy(dlogits.float(), dy)
        loss = F.cross_entropy(logits.float(), y)
        total = loss if dloss is None else loss + domain_weight * dloss
        opt.zero_grad(set_to_none=True)
        scaler.scale(total).backward()
        scaler.step(opt)
        scaler.update()
        acc["loss"] += float(loss.detach())
        acc["correct"] += int((logits.detach().argmax(1) == y).sum())
        acc["n"] += len(y)
        acc["steps"] += 1
        if dloss is not None:
            acc["dloss"] += float(dloss.detach())
            acc["dacc"] += float((dlogits.detach().argmax(1) == dy).float().mean())
        if bar is not None:
            bar.update(1)
        if (step + 1) % every == 0 or step + 1 == steps:
            k = max(acc["steps"], 1)
            rec = {"step": step + 1, "epoch": round((step + 1) / per_epoch, 3), "loss": acc["loss"] / k,
                   "train_acc": acc["correct"] / max(acc["n"], 1), "lr": cur_lr,
                   "lambda": lam if domain_head is not None else 0.0}
            if domain_head is not None:
                rec.update(domain_loss=acc["dloss"] / k, domain_acc=acc["dacc"] / k)
            if val is not None:
                pred, _ = predict_classes(model, val, device=dev)
                rec["val_macro_f1"] = classification_report(val.labels, pred, val.class_names)["macro"]["f1"]
                model.train()
            rec["seconds"] = time.perf_counter() - t0
            history.append(rec)
            acc = dict(fresh)
    if bar is not None:
        bar.close()
    model.eval()
    if domain_head is not None:
        domain_head.eval()
    return history


def train_classifier(model: CellClassifier, train: CropDataset, val: CropDataset | None = None, *,
                     epochs: int = 30, steps: int | None = None, batch_size: int = 64, lr: float = 0.05,
                     weight_decay: float = 5e-4, balanced: bool = True, augment=True, device="auto",
                     seed: int = 0, progress: bool = False) -> list[dict[str, Any]]:
    """Train ``model`` in place on labelled crops.

    Parameters
    ----------
    model : a :class:`CellClassifier` whose ``class_names`` equal ``train.class_names``.
    train, val : :class:`CropDataset` (``val`` is scored with macro F1 once per epoch).
    epochs : passes over ``train`` (an epoch is ``ceil(len(train) / batch_size)`` steps).
    steps : number of optimisation steps instead of ``epochs`` (equal training length across
        datasets of different sizes).
    batch_size, lr, weight_decay : SGD with momentum; the learning rate is annealed as
        ``lr / (1 + 10 p) ** 0.75`` over training progress ``p`` (Ganin et al. 2016).
    balanced : draw each class equally often (WeightedRandomSampler with weights 1 / class count);
        otherwise plain shuffling.
    augment : True for :func:`default_crop_augment`, False, a :class:`CropAugment` or any
        :class:`smearlab.augment.Augment`.
    device : "auto" (CUDA when present), "cpu", "cuda"; mixed precision on CUDA.
    seed : seeds the sampling, the augmentation and dropout (the weights are drawn when the model
        is built: seed torch before :func:`build_classifier` for repeatable runs).
    progress : tqdm progress bar over steps.

    Returns
    -------
    list of dict
        one record per epoch (see :func:`fit`).
    """
    per_epoch = max(1, math.ceil(len(_check_crops(train, "train")) / batch_size))
    total = int(steps) if steps is not None else int(epochs) * per_epoch
    return fit(model, train, steps=total, batch_size=batch_size, lr=lr, weight_decay=weight_decay,
               balanced=balanced, augment=augment, device=device, seed=seed, val=val, progress=progress)


# ---------------------------------------------------------------------------------------------
# prediction and metrics
# ---------------------------------------------------------------------------------------------
def _as_batch_source(data, size: int) -> torch.Tensor:
    """``(N, 3, S, S)`` uint8 or float tensor from a CropDataset, a tensor or a list of images."""
    if isinstance(data, CropDataset):
        return data.images
    if isinstance(data, torch.Tensor):
        if data.ndim == 3:
            data = data[None]
        if data.ndim != 4 or data.shape[1] != 3:
            raise ValueError(f"image tensor must be (N, 3, S, S), got {tuple(data.shape)}")
        return data
    if isinstance(data, np.ndarray) and data.ndim == 3:
        data = [data]
    images = [letterbox(s.image if isinstance(s, Sample) else np.asarray(s), size) for s in data]
    if not images:
        return torch.zeros((0, 3, size, size), dtype=torch.uint8)
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2)


@torch.no_grad()
def predict_classes(model: nn.Module, data, device="auto", batch_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Class predictions and probabilities.

    Parameters
    ----------
    model : a :class:`CellClassifier` (or any module mapping ``(B, 3, S, S)`` in [0, 1] to logits).
    data : a :class:`CropDataset`, an ``(N, 3, S, S)`` tensor (uint8, or float in [0, 1]), or
        ``(H, W, 3)`` uint8 images / Samples (letterboxed to ``model.input_size``).
    device : "auto", "cpu", "cuda".
    batch_size : crops per forward pass.

    Returns
    -------
    pred : ``(N,)`` int64 class indices.
    probs : ``(N, K)`` float32 softmax probabilities.
    """
    from .detection.models import resolve_device
    dev = resolve_device(device)
    x = _as_batch_source(data, int(getattr(model, "input_size", 64) or 64))
    was_training = model.training
    model.to(dev).eval()
    out = []
    amp = dev.type == "cuda"
    for b in range(0, len(x), batch_size):
        xb = x[b:b + batch_size].to(dev)
        xb = xb.float() / 255 if xb.dtype == torch.uint8 else xb.float()
        with torch.autocast(dev.type, dtype=torch.float16, enabled=amp):
            logits = model(xb)
        out.append(logits.float().softmax(1).cpu())
    if was_training:
        model.train()
    k = len(getattr(model, "class_names", [])) or (out[0].shape[1] if out else 0)
    probs = torch.cat(out).numpy() if out else np.zeros((0, k), np.float32)
    return probs.argmax(1).astype(np.int64), probs.astype(np.float32)


def classification_report(y_true, y_pred, class_names: Sequence[str]) -> dict[str, Any]:
    """Per-class precision, recall, F1 and support, macro and weighted means, and the confusion matrix.

    Computed with :func:`sklearn.metrics.precision_recall_fscore_support` (``zero_division=0``).
    Macro and weighted means run over the classes present in ``y_true`` (a class with no test
    example would otherwise count as F1 = 0); predictions of an absent class still count as
    errors of the true class.

    Returns
    -------
    dict
        ``per_class`` ``{name: {precision, recall, f1, support}}``, ``macro`` and ``weighted``
        ``{precision, recall, f1}``, ``accuracy``, ``confusion`` (``K x K`` list, rows true,
        columns predicted, all classes), ``class_names``, ``n``.
    """
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support
    yt, yp = np.asarray(y_true, np.int64).reshape(-1), np.asarray(y_pred, np.int64).reshape(-1)
    k = len(class_names)
    if len(yt) != len(yp):
        raise ValueError(f"{len(yt)} true labels but {len(yp)} predictions")
    for what, a in (("y_true", yt), ("y_pred", yp)):
        if len(a) and (a.min() < 0 or a.max() >= k):
            raise ValueError(f"{what} holds a label outside 0..{k - 1} ({list(class_names)})")
    all_labels = list(range(k))
    p, r, f, s = precision_recall_fscore_support(yt, yp, labels=all_labels, zero_division=0)
    present = [c for c in all_labels if s[c] > 0]
    out = {"class_names": list(class_names), "n": int(len(yt)),
           "per_class": {class_names[c]: {"precision": float(p[c]), "recall": float(r[c]), "f1": float(f[c]),
                                          "support": int(s[c])} for c in all_labels},
           "accuracy": float((yt == yp).mean()) if len(yt) else 0.0,
           "confusion": confusion_matrix(yt, yp, labels=all_labels).tolist() if len(yt) else
           [[0] * k for _ in range(k)]}
    for avg in ("macro", "weighted"):
        if present:
            mp, mr, mf, _ = precision_recall_fscore_support(yt, yp, labels=present, average=avg, zero_division=0)
        else:
            mp = mr = mf = 0.0
        out[avg] = {"precision": float(mp), "recall": float(mr), "f1": float(mf)}
    return out


def plot_confusion(report: dict, ax=None, *, normalize: bool = True, title: str | None = None):
    """Confusion matrix of a :func:`classification_report` (sklearn's ConfusionMatrixDisplay); rows true."""
    import matplotlib.pyplot as plt
    from sklearn.metrics import ConfusionMatrixDisplay
    ax = ax or plt.gca()
    m = np.asarray(report["confusion"], float)
    if normalize:
        m = m / np.maximum(m.sum(1, keepdims=True), 1)
    disp = ConfusionMatrixDisplay(m, display_labels=report["class_names"])
    disp.plot(ax=ax, colorbar=False, values_format=".2f" if normalize else "d", xticks_rotation=45)
    ax.set_title(title or f"macro F1 {report['macro']['f1']:.3f}")
    return ax


# ---------------------------------------------------------------------------------------------
# saving
# ---------------------------------------------------------------------------------------------
def save_classifier(model: CellClassifier, path, **extra) -> Path:
    """Write ``{"format", "state_dict", "config", "input_size", **extra}`` atomically (``torch.save``)."""
    path = Path(path)
    obj = {"format": CHECKPOINT_FORMAT, "config": dict(model.config), "input_size": int(model.input_size),
           "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()}, **extra}
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)
    return path


def load_classifier(path, device="cpu") -> CellClassifier:
    """A :class:`CellClassifier` saved by :func:`save_classifier` (read with ``weights_only=True``).

    Raises
    ------
    DataError
        naming the file when it is missing, unreadable, or not a matching classifier checkpoint.
    """
    from .detection.models import resolve_device
    p = Path(path)
    obj = read_torch_file(p, "classifier checkpoint")
    if not isinstance(obj, dict) or obj.get("format") != CHECKPOINT_FORMAT:
        raise DataError(p, f"not a smearlab classifier checkpoint (expected format {CHECKPOINT_FORMAT!r})")
    try:
        model = build_classifier(**obj["config"], input_size=obj.get("input_size", 64))
        model.load_state_dict(obj["state_dict"])
    except (TypeError, ValueError, KeyError, RuntimeError) as e:
        raise DataError(p, f"classifier checkpoint does not match its config: {e}") from None
    return model.to(resolve_device(device)).eval()


# ---------------------------------------------------------------------------------------------
# the cascade: detector -> white-cell boxes -> classifier -> differential count
# ---------------------------------------------------------------------------------------------
def _ground_truth_predictions(samples) -> list[dict]:
    return [{"boxes": s.boxes, "scores": np.ones(len(s.boxes), np.float32), "labels": s.labels} for s in samples]


def _safe_name(image_id: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", image_id).strip("._") or "image"


def differential_count(detector, classifier: CellClassifier, images, wbc_class: str = "WBC", *,
                       detector_classes: Sequence[str] | None = None, score_threshold: float = 0.5,
                       pad: float = 0.1, device="auto", batch_size: int = 4, out_dir=None,
                       progress: bool = False) -> list[dict[str, Any]]:
    """Detect cells, name the white cells, and count each type per image (a differential count).

    Parameters
    ----------
    detector : a detection model (anything :func:`smearlab.detection.predict.predict` accepts; its
        tuned ``thresholds.json`` is not applied, ``score_threshold`` is), a list of prediction
        dicts aligned with ``images`` (``{"boxes", "scores", "labels"}``), or ``"ground_truth"``
        to use the samples' own boxes.
    classifier : a trained :class:`CellClassifier`; its ``class_names`` are the white-cell types.
    images : a SmearDataset, a list of Samples, or ``(H, W, 3)`` uint8 arrays.
    wbc_class : the detector class whose boxes are white cells.
    detector_classes : the detector's class names (default: ``detector.detector_config.class_names``,
        or the dataset's class names for ground truth or given predictions).
    score_threshold : detections below this score are ignored.
    pad : margin around each white-cell box for its crop (see :func:`square_window`).
    device, batch_size : for the detector; the classifier runs on ``device`` too.
    out_dir : if given, write the results with :func:`export_differential`.
    progress : progress bar of the detector.

    Returns
    -------
    list of dict
        one per image: ``image_id``, ``file``, ``cells`` (detections per detector class above the
        threshold), ``wbc`` (number of white cells), ``differential`` (count per white-cell type),
        ``percent`` (per type, of the white cells), and ``wbc_cells`` (``box``, ``score``, ``type``,
        ``probability`` per white cell).
    """
    samples = list(images) if not isinstance(images, np.ndarray) else [images]
    ds_classes = getattr(images, "class_names", None)
    if isinstance(detector, str):
        if detector != "ground_truth":
            raise ValueError(f"detector must be a model, a list of predictions or 'ground_truth', got {detector!r}")
        if not all(isinstance(s, Sample) for s in samples):
            raise ValueError("detector='ground_truth' needs Samples (a SmearDataset) with boxes")
        preds = _ground_truth_predictions(samples)
    elif isinstance(detector, (list, tuple)):
        preds = list(detector)
    else:
        from .detection.predict import predict
        preds = predict(detector, samples, batch_size=batch_size, device=device, progress=progress,
                        thresholds=None)
        cfg = getattr(detector, "detector_config", None)
        ds_classes = list(cfg.class_names) if cfg is not None else ds_classes
    if len(preds) != len(samples):
        raise ValueError(f"{len(preds)} predictions for {len(samples)} images")
    names = list(detector_classes or ds_classes or [])
    if wbc_class not in names:
        raise KeyError(f"white-cell class {wbc_class!r} not among the detector classes {names or '(unknown)'}; "
                       "pass detector_classes=")
    wbc = names.index(wbc_class)
    types = list(classifier.class_names)
    results = []
    for i, (s, p) in enumerate(zip(samples, preds)):
        img = s.image if isinstance(s, Sample) else _check_image(s, f"image {i}")
        boxes = np.asarray(p["boxes"], np.float32).reshape(-1, 4)
        scores = np.asarray(p.get("scores", np.ones(len(boxes))), np.float32).reshape(-1)
        labels = np.asarray(p["labels"], np.int64).reshape(-1)
        keep = scores >= score_threshold
        cells = {n: int(((labels == c) & keep).sum()) for c, n in enumerate(names)}
        sel = np.flatnonzero((labels == wbc) & keep)
        crops, kept = [], []
        for j in sel:
            try:
                crops.append(letterbox(extract_crop(img, boxes[j], pad), classifier.input_size))
                kept.append(j)
            except ValueError as e:
                log.warning("image %s: white-cell box %d skipped (%s)", getattr(s, "image_id", i), j, e)
        if crops:
            pred, prob = predict_classes(classifier, torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2),
                                         device=device)
        else:
            pred, prob = np.zeros(0, np.int64), np.zeros((0, len(types)), np.float32)
        counts = {t: int((pred == k).sum()) for k, t in enumerate(types)}
        n = len(pred)
        results.append({
            "image_id": getattr(s, "image_id", f"image_{i:05d}"),
            "file": str(s.path.name) if isinstance(s, Sample) and s.path is not None else "",
            "cells": cells, "wbc": n, "differential": counts,
            "percent": {t: (100.0 * c / n if n else 0.0) for t, c in counts.items()},
            "wbc_cells": [{"box": [round(float(v), 2) for v in boxes[j]], "score": float(scores[j]),
                           "type": types[int(k)], "probability": float(prob[m, k])}
                          for m, (j, k) in enumerate(zip(kept, pred))],
        })
    if out_dir is not None:
        export_differential(results, out_dir)
    return results


def export_differential(results: Sequence[dict], out_dir, csv_name: str = "differential.csv") -> Path:
    """Write one JSON per image (``<image_id>.json``) and one CSV with a row per image, atomically.

    CSV columns: ``image_id, file, wbc``, then ``<type>`` (count) per white-cell type, then
    ``<class>_detected`` per detector class. Returns the CSV path.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if not results:
        raise ValueError("no results to export")
    types = list(results[0]["differential"])
    dclasses = list(results[0]["cells"])
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["image_id", "file", "wbc", *types, *(f"{c}_detected" for c in dclasses)])
    used: Counter = Counter()
    for r in results:
        stem = _safe_name(r["image_id"])
        used[stem] += 1
        if used[stem] > 1:
            stem = f"{stem}_{used[stem]}"
        write_json(out / f"{stem}.json", r)
        w.writerow([r["image_id"], r["file"], r["wbc"], *(r["differential"][t] for t in types),
                    *(r["cells"][c] for c in dclasses)])
    path = out / csv_name
    write_text(path, buf.getvalue())
    return path
