"""Cell crops for the white-cell classifier: from whole images, from boxes, from predictions."""
from __future__ import annotations

import dataclasses
import logging
from collections import Counter
from typing import Iterable, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from ..core.errors import DataError
from ..core.geometry import extract_crop, letterbox, square_window
from ..data.classes import ClassMapping, match_classes, whole_labels
from ..data.predictions import class_names_of
from ..data.sample import Sample, SkipLog, SmearDataset
from ..data.splits import split_groups, stratified_split
from ..segmentation.classical import central_cell_box

log = logging.getLogger('smearlab.classification.crops')

#: The margin of ``source="central"`` crops (fraction of the found box's longer side): the box
#: is the stained part of the cell, and with this margin the window holds the whole cell at
#: about the scale of a whole-cell box with a margin of 0.1 (see :func:`central_crop_check`).
CENTRAL_PAD = 0.3

#: The margin around a whole-cell box that frames a cell as ``source="central"`` crops with
#: :data:`CENTRAL_PAD` do (the scale :func:`central_crop_check` measures): what a cascade cuts
#: around the detector's whole-cell boxes for a classifier trained on central crops. An
#: approximation: the stained part's share of the cell varies with the cell type and the stain.
CENTRAL_WHOLE_CELL_PAD = 0.1


class CropDataset(torch.utils.data.Dataset):
    """Square cell crops in memory: item ``i`` is ``(image (3, S, S) float in [0, 1], label, domain)``.

    Parameters
    ----------
    images : ``(N, S, S, 3)`` or ``(N, 3, S, S)`` uint8 (numpy or torch).
    labels : ``(N,)`` ints into ``class_names`` (-1 for unlabelled crops); fractions, NaN and
        non-numbers are refused (whole floats such as 1.0 pass).
    class_names : the classes.
    domains : one domain name per crop (default: ``name``).
    ids : one identifier per crop (image id, plus ``#k`` for the k-th box of an image).
    name : short name for reports.
    skipped : records that could not be turned into crops (:class:`~smearlab.data.sample.Skip`).
    groups : one key per crop: the crops of one key stay on one side of :meth:`split` (default:
        the image each crop was cut from; :func:`crops_from_dataset` joins near-copy images).

    Attributes
    ----------
    central : for crops made with ``source="central"`` (:func:`crops_from_dataset`): ``found``
        and ``fallback`` counts, ``fallback_side_px``, ``pad`` and ``fallback_ids``; else None.
    cut : how the crops were cut (:func:`crops_from_dataset`): ``{"source", "pad", "fill"}``, with
        ``"stain_normalised": True`` for a normalised copy; None when unknown. A classifier keeps
        it, so that a cascade cuts its crops the same way (:func:`~smearlab.classification.predict.save_cascade`).
    """

    def __init__(self, images, labels, class_names: Sequence[str], domains: Sequence[str] | None = None,
                 ids: Sequence[str] | None = None, name: str = "crops", skipped=None,
                 groups: Sequence[str] | None = None):
        x = torch.as_tensor(np.asarray(images) if not isinstance(images, torch.Tensor) else images)
        if x.ndim == 4 and x.shape[-1] == 3 and x.shape[1] != 3:
            x = x.permute(0, 3, 1, 2)
        if x.ndim != 4 or x.shape[1] != 3 or x.dtype != torch.uint8 or x.shape[2] != x.shape[3]:
            raise ValueError(f"images must be (N, S, S, 3) or (N, 3, S, S) uint8 squares, got "
                             f"{tuple(x.shape)} {x.dtype}")
        self.images = x.contiguous()
        self.labels = whole_labels(labels, "crop labels").reshape(-1)  # never truncated: 1.7 is no class
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
        self.groups = [str(g) for g in groups] if groups is not None else [_image_of_crop(i) for i in self.ids]
        if len(self.groups) != n:
            raise ValueError(f"{n} crops but {len(self.groups)} groups")
        self.skipped = SkipLog(skipped or [])
        self.central: dict | None = None
        self.cut: dict | None = None

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
        """The chosen crops (a copy), same classes.

        Parameters
        ----------
        indices : positions of the chosen crops, or a boolean mask of one entry per crop
            (``d.subset(d.labels == 0)``).
        name : name of the result (None: this dataset's name).

        Raises
        ------
        ValueError
            for a boolean mask of another length or positions that are not whole numbers.
        """
        idx = _positions(indices, len(self), f"the {len(self)} crops of {self.name!r}")
        out = CropDataset(self.images[torch.as_tensor(idx)], self.labels[idx], self.class_names,
                          [self.domains[i] for i in idx], [self.ids[i] for i in idx], name or self.name,
                          groups=[self.groups[i] for i in idx])
        out.cut = None if self.cut is None else dict(self.cut)
        return out

    def unlabelled(self, class_names: Sequence[str] | None = None, name: str | None = None) -> "CropDataset":
        """Every crop (a copy) with its label removed (-1): what an adaptation method may see of a
        target domain. Choosing the crops by class first would read the labels it does not have.

        Parameters
        ----------
        class_names : the class list the result carries (None: this dataset's), e.g. the classes
            shared with the source, so that it pairs with the source's crops.
        name : name of the result (None: this dataset's name).
        """
        out = self.subset(range(len(self)), name)
        out.labels = np.full(len(out), -1, np.int64)
        if class_names is not None:
            out.class_names = list(class_names)
        return out

    @classmethod
    def concat(cls, datasets: Sequence["CropDataset"], name: str | None = None) -> "CropDataset":
        """One dataset of several with the same classes and crop size.

        Parameters
        ----------
        datasets : the crop datasets (same ``class_names`` and crop size).
        name : name of the result (None: the names joined by ``"+"``).
        """
        first = datasets[0]
        for d in datasets[1:]:
            if d.class_names != first.class_names or d.size != first.size:
                raise ValueError(f"cannot concatenate {d.name!r} ({d.size} px, classes {d.class_names}) with "
                                 f"{first.name!r} ({first.size} px, classes {first.class_names})")
        out = cls(torch.cat([d.images for d in datasets]), np.concatenate([d.labels for d in datasets]),
                  first.class_names, [x for d in datasets for x in d.domains],
                  [x for d in datasets for x in d.ids], name or "+".join(d.name for d in datasets),
                  skipped=[s for d in datasets for s in d.skipped],
                  groups=[f"{d.name}/{g}" for d in datasets for g in d.groups])  # one name in two datasets: two groups
        same = all(d.cut == first.cut for d in datasets)  # crops cut two ways: no one way to cut them again
        out.cut = dict(first.cut) if same and first.cut is not None else None
        if not same and any((d.cut or {}).get("stain_normalised") for d in datasets):
            out.cut = {"stain_normalised": True}  # a model trained on these still needs the normaliser
        return out

    def by_domain(self) -> dict[str, "CropDataset"]:
        """One dataset per domain, by name."""
        return {d: self.subset([i for i, x in enumerate(self.domains) if x == d], name=d)
                for d in self.domain_names}

    def restrict(self, class_names: Sequence[str], name: str | None = None) -> "CropDataset":
        """Keep the crops of ``class_names`` only, relabelled in that order (e.g. shared classes).

        Parameters
        ----------
        class_names : the classes kept, in the order of the result's labels (each one of this
            dataset's classes); unlabelled crops are kept.
        name : name of the result (None: this dataset's name).
        """
        if len(set(class_names)) != len(class_names):
            raise ValueError(f"classes named twice in {list(class_names)}")
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
        """``(train, test)`` stratified by class (see :func:`stratified_split`), by :attr:`groups`:
        the crops of one image (ids ``<image>#k``), and of images that are near-copies of each other
        (:func:`crops_from_dataset`), stay on one side, so that no test cell has a neighbour from
        its own field, or its own twin, in training. Groups holding several crops are split by
        their most common class; with one crop per group this is the split of the crops.

        Parameters
        ----------
        test : fraction of each class for the test part, in (0, 1).
        seed : seed of the shuffle.
        """
        tr, te = stratified_split(self.labels, test, seed, groups=self.groups)
        return self.subset(tr, f"{self.name}:train"), self.subset(te, f"{self.name}:test")

    def show(self, n: int = 8, ax=None, seed: int = 0):
        """A row of ``n`` random crops titled by class and domain (matplotlib); returns the axes.

        Parameters
        ----------
        n : number of crops shown.
        ax : sequence of matplotlib axes, one per crop (default: a new pyplot figure).
        seed : seed of the random choice.
        """
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


def _positions(indices, n: int, what: str) -> np.ndarray:
    """``indices`` as int64 positions: a boolean mask of ``n`` entries becomes the positions of its
    True entries (taken as positions 0 and 1 it chose the wrong items); ValueError naming
    ``what`` for a mask of another length or positions that are not whole numbers."""
    idx = np.asarray(indices if hasattr(indices, "__array__") else list(indices))
    if idx.dtype == bool:
        if idx.shape != (n,):
            raise ValueError(f"a boolean mask of shape {idx.shape} for {what}: a mask needs one entry per item")
        return np.flatnonzero(idx)
    if idx.size and (idx.ndim != 1 or not (np.issubdtype(idx.dtype, np.integer) or (
            np.issubdtype(idx.dtype, np.floating) and np.all(np.isfinite(idx) & (idx == np.round(idx)))))):
        raise ValueError(f"indices into {what} must be whole numbers in one row (or a boolean mask), got "
                         f"{idx.dtype} of shape {idx.shape}: {idx.reshape(-1)[:3].tolist()}")
    return idx.reshape(-1).astype(np.int64)


def _image_of_crop(crop_id: str) -> str:
    """The image a crop was cut from: ``<image id>`` of a box crop's ``<image id>#<k>`` (an image id
    may hold a ``#`` itself); any other id is its own image."""
    head, sep, tail = crop_id.rpartition("#")
    return head if sep and tail.isdigit() else crop_id


def _image_of(sample: Sample) -> np.ndarray:
    """The sample's image; a lazily read image is released again (large datasets stay small)."""
    lazy = sample.path is not None and sample._image is None
    img = sample.image
    if lazy:
        sample.release()
    return img


def crops_from_dataset(dataset: SmearDataset, size: int = 64, *, source: str = "image",
                       classes: Sequence[str] | None = None, pad: float | None = None, fill="median",
                       strict: bool = False, progress: bool = False, group_near_copies: bool = True) -> CropDataset:
    """Square crops of a :class:`~smearlab.data.SmearDataset`, letterboxed to ``size``.

    Parameters
    ----------
    dataset : the source. Its samples' ``domain`` (or the dataset name) becomes each crop's domain.
    size : crop side in pixels.
    source : ``"image"``: the whole image of each sample with an ``image_label`` (cell-crop
        datasets: Zheng, ImageFolder/PBC, synthetic white cells); samples without one are counted
        skips. ``"boxes"``: one crop per box, the :func:`square_window` enlarged by ``pad``.
        ``"central"``: for single-cell images whose field holds other cells too (PBC,
        CellaVision): one crop per labelled image around the cell at the centre
        (:func:`~smearlab.segmentation.classical.central_cell_box`), enlarged by ``pad``; where
        no cell is found, a centre crop of the median window side of the images where one was
        (one dataset is one magnification, so that is the cells' physical size). The result's
        :attr:`CropDataset.central` counts both (see also :func:`central_crop_check`).
    classes : class names to keep, in the order of the result's classes (default: all of the
        dataset's). E.g. ``["WBC"]`` for the white cells of a CBC smear.
    pad : margin around each box (fraction of its longer side); None: 0.1 for ``"boxes"``, 0.3
        for ``"central"`` (whose box is the stained part of the cell, mostly its nucleus).
    fill : padding colour, see :func:`letterbox`.
    strict : raise on an unreadable image instead of skipping it.
    progress : tqdm progress bar.
    group_near_copies : give the crops of images that are near-copies of each other (the same
        cell or field photographed twice, :func:`~smearlab.data.splits.near_copy_groups`) one
        :attr:`CropDataset.groups` key, so that :meth:`CropDataset.split` keeps them on one side
        (real data only: reads every image once more; False: each image its own group).

    Returns
    -------
    CropDataset
        Unreadable images and degenerate boxes are logged and counted in ``skipped`` (or raise with
        ``strict``). A class with no crop (e.g. an empty ImageFolder class folder) stays in
        ``class_names`` with zero crops and is logged; :attr:`CropDataset.empty_classes` lists it.
        Images of any size and mode (grey, RGBA, palette, 16-bit) are accepted: they are read as RGB
        and letterboxed.
    """
    if source not in ("image", "boxes", "central"):
        raise ValueError(f"source must be 'image', 'boxes' or 'central', got {source!r}")
    pad = (CENTRAL_PAD if source == "central" else 0.1) if pad is None else float(pad)
    names = list(dataset.class_names)
    classes = list(names if classes is None else classes)
    unknown = [c for c in classes if c not in names]
    if unknown:
        raise KeyError(f"classes {unknown} not in dataset {dataset.name!r} (classes {names})")
    if len(set(classes)) != len(classes):
        raise ValueError(f"classes named twice in {classes}")
    extract_crop(np.zeros((4, 4, 3), np.uint8), np.array([0.0, 0.0, 2.0, 2.0]), pad, fill)  # the arguments, once
    remap = {names.index(c): i for i, c in enumerate(classes)}
    skipped = SkipLog(strict=strict)
    image_ids = [s.image_id for s in dataset]
    near = split_groups(dataset, group_near_copies)  # None: each image alone
    group_of = image_ids if near is None else [image_ids[g] for g in near.tolist()]  # its first image's id
    imgs, labels, domains, ids, groups = [], [], [], [], []
    fallback: list[tuple[int, Sample]] = []
    sides: list[int] = []
    it = dataset
    if progress:
        it = tqdm(dataset, desc=f"crops {dataset.name}", unit="img")
    for n_image, s in enumerate(it):
        where = s.path or s.image_id
        dom = s.domain or dataset.name
        if source != "boxes":
            if s.image_label is None:
                skipped.add(where, "no image-level label (use source='boxes' for smears)")
                continue
            if not 0 <= s.image_label < len(names):
                skipped.add(where, f"image label {s.image_label} outside the {len(names)} classes {names}")
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
            if k is None and source == "central":
                box = central_cell_box(img)
                if box is None:  # cut in a second pass, once the cells' usual size is known
                    fallback.append((len(imgs), s))
                    crop = np.zeros((1, 1, 3), np.uint8)
                else:
                    window = square_window(box, pad)
                    sides.append(window[2] - window[0])
                    crop = extract_crop(img, box, pad, fill)
                label, crop_id = s.image_label, s.image_id
            elif k is None:
                crop, label, crop_id = img, s.image_label, s.image_id
            else:
                try:
                    crop = extract_crop(img, s.boxes[k], pad, fill)
                except ValueError as e:
                    skipped.add(where, str(e), f"box {k}")
                    continue
                index = s.meta.get("box_index")  # the boxes' indices before a selection (crops_from_predictions)
                label, crop_id = int(s.labels[k]), f"{s.image_id}#{k if index is None else int(index[k])}"
            imgs.append(letterbox(crop, size, fill))
            labels.append(remap[label])
            domains.append(dom)
            ids.append(crop_id)
            groups.append(group_of[n_image])
    central = None
    if source == "central":
        side = int(np.median(sides)) if sides else None
        for i, s in fallback:
            img = _image_of(s)
            h, w = img.shape[:2]
            half = min(side or min(h, w), min(h, w)) / 2
            imgs[i] = letterbox(extract_crop(img, (w / 2 - half, h / 2 - half, w / 2 + half, h / 2 + half), 0.0,
                                             fill), size, fill)
        central = {"found": len(imgs) - len(fallback), "fallback": len(fallback), "fallback_side_px": side,
                   "pad": pad, "fallback_ids": [s.image_id for _, s in fallback]}
        if fallback:
            log.info("%s: no central cell found in %d of %d images: centre crops of %s px instead",
                     dataset.name, len(fallback), len(imgs), side)
    stack = np.stack(imgs) if imgs else np.zeros((0, size, size, 3), np.uint8)
    out = CropDataset(stack, labels, classes, domains, ids, name=dataset.name,
                      skipped=[*getattr(dataset, "skipped", []), *skipped], groups=groups)
    out.central = central
    out.cut = {"source": source, "pad": None if source == "image" else float(pad),
               "fill": fill if isinstance(fill, str) else [int(v) for v in np.atleast_1d(fill)]}
    for c in out.empty_classes:
        log.warning("%s: class %r has no crops (kept with 0 crops)", dataset.name, c)
    return out


def crops_from_predictions(dataset: SmearDataset, predictions: Sequence[dict], size: int = 64, *,
                           classes: Sequence[str] | None = None, score_threshold: float = 0.5, pad: float = 0.1,
                           fill="median", group_near_copies: bool = True) -> CropDataset:
    """Crops around a detector's boxes (e.g. its WBC boxes on CBC smears), for classification.

    Parameters
    ----------
    dataset : the images the predictions were made on (their own annotations are not used).
    predictions : one ``{"boxes", "scores", "labels"}`` dict per image: a
        :class:`~smearlab.data.predictions.Predictions` list (what
        :func:`smearlab.detection.predict.predict` returns) labels its model's classes, whatever
        their order in ``dataset``; a plain list's labels index ``dataset.class_names``.
    size, classes, pad, fill, group_near_copies : as :func:`crops_from_dataset` with ``source="boxes"``
        (``group_near_copies=False`` skips the near-copy search where no split will be made).
    score_threshold : boxes scoring below it are left out.

    Returns
    -------
    CropDataset
        labels are the *detected* classes; ``ids`` are ``<image_id>#<detection index>``.
    """
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
        # the truth's per-box arrays (crowd flags, VOC difficult) describe its boxes, not these: kept,
        # they flagged unrelated predicted boxes, or refused the dataset when the counts differed
        own = {k: v for k, v in s.meta.items() if not (isinstance(v, np.ndarray) and v.shape[:1] == (len(s.boxes),))}
        samples.append(dataclasses.replace(s, boxes=boxes[keep], labels=labels[keep], image_label=None,
                                           _masks=None, meta={**own, "scores": scores[keep],
                                                              "box_index": np.flatnonzero(keep)}))
    # the detected classes are the model's: its class list, not the dataset's (in another order a
    # red cell labelled 0 = "WBC" by the model was cropped as the dataset's class 0)
    names = class_names_of(predictions) or dataset.class_names
    detected = SmearDataset(samples, list(names), f"{dataset.name}:detected")
    return crops_from_dataset(detected, size, source="boxes", classes=classes, pad=pad, fill=fill,
                              group_near_copies=group_near_copies)


def align_classes(a: CropDataset, b: CropDataset, class_map=None) -> tuple[CropDataset, ClassMapping]:
    """``b`` with its classes named as ``a``'s where they are the same class by name.

    Names are matched by :func:`smearlab.data.classes.match_classes` (same name, then aliases:
    case, spaces, ``_`` / ``-`` and plural endings; ``class_map`` for anything else), never by
    position. The mapping is logged when anything was renamed; ``b``'s classes without a
    counterpart keep their names (:func:`shared_classes` then reports them).

    Parameters
    ----------
    a : the domain whose names win (usually the source).
    b : the other domain.
    class_map : ``{b's name: a's name}`` for names no rule matches.

    Returns
    -------
    (CropDataset, ClassMapping)
        ``b`` renamed (the same object when nothing changed) and the mapping of ``b``'s classes
        onto ``a``'s (:meth:`ClassMapping.describe` says what was mapped).
    """
    mapping = match_classes(b.class_names, a.class_names, class_map, what=f"the classes of {b.name!r} and {a.name!r}")
    renamed = [a.class_names[t] if t >= 0 else n for n, t in zip(b.class_names, mapping.lut.tolist())]
    if renamed == b.class_names:
        return b, mapping
    log.warning("%s -> %s classes: %s", b.name, a.name, mapping.describe())
    out = b.subset(range(len(b)))
    out.class_names = renamed
    out.central = b.central
    return out, mapping


def shared_classes(a: CropDataset, b: CropDataset, min_count: int = 2) -> tuple[list[str], dict[str, dict]]:
    """Classes usable in both domains, and the others with their counts.

    A class is shared when each domain has at least ``min_count`` crops of it (2: one for the
    training split and one for the test split). Classes are matched by name, in ``a``'s order.

    Parameters
    ----------
    a, b : the crop datasets of the two domains.
    min_count : fewest crops of a class each domain needs.

    Returns
    -------
    shared : class names.
    missing : ``{class: {domain name: count, ...}}`` for every class left out.
    """
    ca, cb = a.class_counts(), b.class_counts()
    shared, missing = [], {}
    for name in list(ca) + [n for n in cb if n not in ca]:
        na, nb = ca.get(name, 0), cb.get(name, 0)
        if na >= min_count and nb >= min_count:
            shared.append(name)
        else:
            missing[name] = {a.name: int(na), b.name: int(nb)}
    return shared, missing


def central_crop_check(dataset: SmearDataset, pad: float = CENTRAL_PAD, *, min_cover: float = 0.9) -> dict:
    """How often the ``source="central"`` crop holds the labelled cell, on images whose cell of
    interest has a ground-truth box (Zheng, synthetic white cells): the share of images whose
    crop window covers at least ``min_cover`` of that box.

    Parameters
    ----------
    dataset : single-cell images, each with exactly one box (the labelled cell); others are
        left out and counted.
    pad : the crops' margin (as :func:`crops_from_dataset`).
    min_cover : the fraction of the ground-truth box the window must cover.

    Returns
    -------
    dict
        ``holds`` (share of checked images), ``n`` (images checked), ``not_found`` (no central
        cell: a centre crop would be cut), ``median_cover``, ``median_scale`` (window side over
        the side of the ground-truth box's window with a margin of 0.1: 1 is the scale of
        whole-cell box crops) and ``left_out`` (images without exactly one box).
    """
    covers, scales, not_found, left_out = [], [], 0, 0
    for s in dataset:
        if len(s.boxes) != 1:
            left_out += 1
            continue
        img = _image_of(s)
        box = central_cell_box(img)
        if box is None:
            not_found += 1
            covers.append(0.0)
            continue
        wx0, wy0, wx1, wy1 = square_window(box, pad)
        gx0, gy0, gx1, gy1 = (float(v) for v in s.boxes[0])
        inter = max(0.0, min(wx1, gx1) - max(wx0, gx0)) * max(0.0, min(wy1, gy1) - max(wy0, gy0))
        covers.append(inter / max((gx1 - gx0) * (gy1 - gy0), 1e-9))
        ref = square_window(s.boxes[0], 0.1)
        scales.append((wx1 - wx0) / (ref[2] - ref[0]))
    n = len(covers)
    return {"holds": float(np.mean(np.asarray(covers) >= min_cover)) if n else None, "n": n,
            "not_found": not_found, "median_cover": float(np.median(covers)) if n else None,
            "median_scale": float(np.median(scales)) if scales else None, "left_out": left_out}
