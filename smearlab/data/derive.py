"""Datasets derived from others for a task: one class, foreground class maps, instances from
class maps, native-resolution tiles, images padded to a size."""
from __future__ import annotations

import dataclasses
import logging
from typing import Sequence

import numpy as np
from scipy import ndimage

from ..core.errors import DataError
from .boxes import mask_box
from .classes import match_classes
from .sample import Sample, SmearDataset, per_box_meta

log = logging.getLogger("smearlab.data")


def as_single_class(dataset, name: str = "cell"):
    """The dataset with every object relabelled as one class ``name`` (class-agnostic scoring).

    Classical segmenters give class 0 to every instance; scoring them against a dataset of
    several classes (red cells, white cells, platelets) needs the ground truth in one class.
    Samples are shallow copies: images and masks are shared, not re-read.

    Parameters
    ----------
    dataset : a SmearDataset.
    name : the one class name; the result is named ``"<dataset name>:<name>"``.
    """
    samples = [dataclasses.replace(s, labels=np.zeros(len(s.boxes), np.int64), **_image_class_kept(s, dataset))
               for s in dataset]
    return SmearDataset(samples, [name], f"{getattr(dataset, 'name', 'dataset')}:{name}",
                        root=getattr(dataset, "root", None), format=getattr(dataset, "format", None),
                        semantic_names=getattr(dataset, "semantic_names", None))


def _image_class_kept(s: Sample, dataset) -> dict:
    """A sample's image-level class moved out of ``image_label`` (an index into the old class
    list, which the new one does not have: a lymphocyte read as "nucleus") into
    ``meta["image_class"]``, by name."""
    if s.image_label is None:
        return {}
    names = list(getattr(dataset, "class_names", []))
    label = int(s.image_label)
    return {"image_label": None,
            "meta": {**s.meta, "image_class": names[label] if 0 <= label < len(names) else label}}


def foreground_semantic(dataset, name: str | None = None):
    """The dataset with ``semantic`` = union of each sample's instance masks (0 background, 1 foreground).

    For training a U-Net on an instance dataset (DSB2018 nuclei, synthetic cells) as two-class
    semantic segmentation. Samples are shallow copies (images shared); ``semantic_names`` is
    ``["background", "foreground"]``. A sample without objects gets an all-background mask.

    Parameters
    ----------
    dataset : a SmearDataset of instance masks.
    name : name of the result (None: the dataset's name).

    Raises
    ------
    DataError
        naming the sample when it has objects but no instance masks.
    """
    out = []
    for s in dataset:
        if len(s.boxes) and not s.has_masks:
            raise DataError(s.path or s.image_id, "sample has objects but no instance masks")

        def fg(s=s):
            m = s.masks
            return (np.asarray(m).any(0) if m is not None and len(m) else np.zeros(s.hw, bool)).astype(np.uint8)
        out.append(dataclasses.replace(s, _semantic=fg))
    return SmearDataset(out, getattr(dataset, "class_names", []), name or getattr(dataset, "name", "dataset"),
                        root=getattr(dataset, "root", None), format=getattr(dataset, "format", None),
                        semantic_names=["background", "foreground"])


def _image_meta(meta: dict) -> dict:
    """What a tile keeps of its image's ``meta``: the record that the pixels were preprocessed
    (dropped, a tile passed for raw and was processed a second time, 11 grey levels a pixel) and
    the file they came from."""
    return {k: meta[k] for k in ("preprocess", "source_path") if k in meta}


def _starts(n: int, tile: int) -> list[int]:
    """Tile origins along one axis: a grid of step ``tile``, the last tile flush with the end."""
    if n <= tile:
        return [0]
    return sorted(set(list(range(0, n - tile, tile)) + [n - tile]))


def tile_dataset(dataset, tile: int = 128, *, max_tiles: int | None = None, seed: int = 0):
    """Cut every image (and its semantic mask) into ``tile`` x ``tile`` tiles at native resolution.

    For training a U-Net on images of mixed, large sizes (DSB2018: 256 to 1024 px) without
    shrinking small objects: train on the tiles (``size=None``), predict on whole images. Tiles
    cover the image on a grid, the last row and column flush with the border (so they may
    overlap); an image smaller than ``tile`` stays whole. Instance masks are not kept.

    Parameters
    ----------
    dataset : SmearDataset with semantic masks (see :func:`foreground_semantic`).
    tile : tile side in pixels (>= 16).
    max_tiles : keep a random subset of this many tiles (seeded by ``seed``), or all.
    seed : seed of that random subset.

    Returns
    -------
    SmearDataset
        one sample per tile, named ``<image id>@<x0>,<y0>`` (``meta["source"]``, ``meta["window"]``
        ``(x0, y0, x1, y1)``), same
        ``semantic_names``.
    """
    if isinstance(tile, bool) or not isinstance(tile, (int, np.integer)) or tile < 16:
        raise ValueError(f"tile must be an integer >= 16, got {tile!r}")
    windows = []
    for i, s in enumerate(dataset):
        if not s.has_semantic:
            raise DataError(s.path or s.image_id, "sample has no semantic mask (needed to train)")
        h, w = s.hw
        windows += [(i, x, y, min(w, x + tile), min(h, y + tile)) for y in _starts(h, tile) for x in _starts(w, tile)]
    if max_tiles is not None and len(windows) > max_tiles:
        keep = np.sort(np.random.default_rng(seed).choice(len(windows), int(max_tiles), replace=False))
        windows = [windows[k] for k in keep]
    out = []
    for i, x0, y0, x1, y1 in windows:
        s = dataset[i]
        out.append(Sample(f"{s.image_id}@{x0},{y0}", _image=np.ascontiguousarray(s.image[y0:y1, x0:x1]),
                          domain=s.domain, sensor_bits=s.sensor_bits,
                          meta={**_image_meta(s.meta), "source": s.image_id, "window": (x0, y0, x1, y1)},
                          _semantic=np.ascontiguousarray(np.asarray(s.semantic)[y0:y1, x0:x1])))
    return SmearDataset(out, getattr(dataset, "class_names", []), f"{getattr(dataset, 'name', 'dataset')}-tiles",
                        semantic_names=getattr(dataset, "semantic_names", None))


def instances_from_semantic(dataset, groups: "dict[str, Sequence[int]] | None" = None, *, min_size: int = 4):
    """Instance masks from class maps: each connected component of each group is one instance.

    Zheng's WBC masks are class maps (0 background, 1 cytoplasm, 2 nucleus) with one cell per
    image; ``groups={"cell": (1, 2), "nucleus": (2,)}`` (the default for those names) turns them
    into whole-cell and nucleus instances for Mask R-CNN. Components smaller than ``min_size``
    pixels are dropped. Class maps are kept, so the U-Net trains on the same samples.

    Parameters
    ----------
    dataset : a SmearDataset whose samples have class maps (``semantic``).
    groups : ``{instance class name: class-map values}``: the result's classes, in this order.
        None is ``{"cell": (1, 2), "nucleus": (2,)}``, allowed only for class maps named
        ``background, cytoplasm, nucleus``.
    min_size : smallest component kept, in pixels.

    Returns
    -------
    SmearDataset
        same images and class maps, with instance boxes, labels and masks.
    """

    names = list(getattr(dataset, "semantic_names", None) or [])
    if groups is None:
        if names[:3] != ["background", "cytoplasm", "nucleus"]:
            raise ValueError(f"give groups for class maps named {names}: e.g. {{'cell': (1, 2)}}")
        groups = {"cell": (1, 2), "nucleus": (2,)}
    out = []
    for s in dataset:
        if s.semantic is None:
            raise DataError(s.path or s.image_id, "sample has no class map to make instances from")
        sem = np.asarray(s.semantic)
        masks, labels = [], []
        for k, values in enumerate(groups.values()):
            lab, n = ndimage.label(np.isin(sem, list(values)))
            for j in range(1, n + 1):
                m = lab == j
                if m.sum() >= min_size:
                    masks.append(m)
                    labels.append(k)
        m = np.stack(masks) if masks else np.zeros((0, *sem.shape), bool)
        boxes = np.stack([mask_box(x) for x in m]) if len(m) else np.zeros((0, 4), np.float32)
        kept = _image_class_kept(s, dataset)
        # replace keeps how the file is read (orientation, sensor bits, bit depth): a released image
        # read back another way no longer matched its masks
        out.append(dataclasses.replace(s, boxes=boxes, labels=labels, image_label=None,
                                       meta=kept.get("meta", dict(s.meta)), _image=s.image, _masks=m, _semantic=sem))
    return SmearDataset(out, list(groups), getattr(dataset, "name", "dataset"), semantic_names=names)


def box_tiles(dataset: SmearDataset, tile: int = 640, *, min_visible: float = 0.5) -> SmearDataset:
    """Every image cut into ``tile`` x ``tile`` tiles at native resolution, with the boxes inside.

    For training a detector on large fields (IML malaria, BBBC041: 1280 x 960 and larger) at the
    scale it will predict at with tiles. Tiles cover the image on a grid of step ``tile``, the last
    row and column flush with the border, so they overlap the one before them (by up to a whole
    tile less a pixel; a box inside both is in both); an image smaller than ``tile`` stays whole.
    Instance masks (Mask R-CNN) are cut with the image, and a cut object's box is then its mask's
    box in the tile (an object whose mask does not reach into the tile is not in it).
    A box cut by a tile edge is kept, clipped, when at least ``min_visible`` of its area is
    inside, else dropped from that tile: its cell is then mostly in a neighbouring tile, and the
    piece left in this tile is unlabelled there (trained as background; about a tenth of the
    cells of 40-80 px on 640 px tiles show such a piece), and a cell on a corner of four tiles
    with a quarter in each is in none. Per-box flags of ``meta`` (crowd regions, VOC difficult)
    follow their boxes; the image's preprocessing record (``meta["preprocess"]``, so that a tile of
    a processed image is not processed again) and ``source_path`` are kept.

    Parameters
    ----------
    dataset : SmearDataset with boxes.
    tile : tile side in pixels (>= 16).
    min_visible : the share of a box's area that must lie in a tile for the box to be kept there.

    Returns
    -------
    SmearDataset
        one sample per tile, named ``<image id>@<x0>,<y0>`` as :func:`tile_dataset` names them
        (``meta["source"]``, ``meta["window"]`` ``(x0, y0, x1, y1)``, the
        per-box flags), same classes.
    """
    if isinstance(tile, bool) or not isinstance(tile, (int, np.integer)) or tile < 16:
        raise ValueError(f"tile must be an integer >= 16, got {tile!r}")
    if isinstance(min_visible, bool) or not isinstance(min_visible, (int, float, np.integer, np.floating)) \
            or not 0 < float(min_visible) <= 1:
        raise ValueError(f"min_visible must be a share of a box's area in (0, 1], got {min_visible!r}")
    out = []
    for s in dataset:
        h, w = s.hw
        img = s.image
        masks = np.asarray(s.masks) if s.has_masks else None
        boxes = s.boxes.astype(np.float64)  # a share exactly at min_visible is kept (float32: 0.3 * 100 > 30)
        area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
        for y in _starts(h, tile):
            for x in _starts(w, tile):
                x1, y1 = min(w, x + tile), min(h, y + tile)
                b = np.clip(boxes - np.array([x, y, x, y], np.float64), 0, [x1 - x, y1 - y] * 2)
                inside = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
                keep = (inside > 0) & (inside >= min_visible * np.maximum(area, 1e-6))
                m = None
                if masks is not None:  # a Mask R-CNN's targets: each object's mask cut with the image
                    idx = np.flatnonzero(keep)  # only the tile's objects (a field holds thousands)
                    m = np.ascontiguousarray(masks[idx, y:y1, x:x1])
                    seen = m.any(axis=(1, 2))  # a box reaching into the tile, its mask not
                    keep[idx[~seen]] = False
                    m = m[seen]
                    b = b.copy()
                    b[keep] = [mask_box(k) for k in m] if len(m) else b[keep]  # the cut object's own box
                # per-box flags (crowd regions, VOC difficult) follow their boxes: a crowd region
                # of a tile became an ordinary object
                flags = {k: v for k, v in per_box_meta(s.meta, keep).items() if isinstance(v, np.ndarray)}
                out.append(Sample(f"{s.image_id}@{x},{y}", boxes=b[keep], labels=s.labels[keep], domain=s.domain,
                                  image_label=s.image_label, sensor_bits=s.sensor_bits,
                                  _image=np.ascontiguousarray(img[y:y1, x:x1]), _masks=m,
                                  meta={**flags, **_image_meta(s.meta), "source": s.image_id,
                                        "window": (x, y, x1, y1)}))
        s.release()
    return SmearDataset(out, dataset.class_names, f"{dataset.name}-tiles{tile}")


def pad_to(dataset: SmearDataset, size, *, only: "Sequence[bool] | None" = None) -> SmearDataset:
    """Every image smaller than ``size`` on both sides (orientation aside) placed at the top left
    of a canvas of that size, turned to the image's orientation and filled with the median colour
    of the image's border (its background); boxes are unchanged, instance masks and semantic masks
    padded with background. A detector resizes each input so that its short side meets its own
    input size: a field half the training size was enlarged twice, its cells shown at twice the
    size ``smearlab predict`` shows them at (it predicts such a field at the training
    magnification); on the canvas they are resized as the training images were. Other images are
    kept as they are.

    Parameters
    ----------
    dataset : the images (any annotations).
    size : ``(height, width)`` or ``[short, long]`` of the canvas (e.g. a detector's
        ``train_image_size``); each image is padded to it in its own orientation.
    only : which images to pad (None: every one smaller than ``size``).

    Returns
    -------
    SmearDataset
        same classes and order; a padded sample keeps its id, with ``meta["padded_from"]``
        ``(height, width)`` and the file it came from as ``meta["source_path"]``.
    """
    short, long = sorted(int(v) for v in size)
    if short < 1:
        raise ValueError(f"size must be two positive sides, got {size!r}")
    out = []
    for i, s in enumerate(dataset):
        h, w = s.hw
        H, W = (short, long) if h <= w else (long, short)
        if (h, w) == (H, W) or h > H or w > W or (only is not None and not only[i]):
            out.append(s)
            continue
        img = s.image
        border = np.concatenate([img[0], img[-1], img[:, 0], img[:, -1]]).reshape(-1, *img.shape[2:])
        canvas = np.empty((H, W) + img.shape[2:], img.dtype)
        canvas[:] = np.median(border, axis=0).astype(img.dtype)
        canvas[:h, :w] = img
        masks = None
        if s.has_masks:
            m = np.asarray(s.masks)
            masks = np.zeros((len(m), H, W), bool)
            masks[:, :h, :w] = m
        semantic = None
        if s.has_semantic:
            sem = np.asarray(s.semantic)
            semantic = np.zeros((H, W), sem.dtype)
            semantic[:h, :w] = sem
        meta = {**s.meta, "padded_from": (h, w)}
        if s.path is not None:
            meta.setdefault("source_path", str(s.path))
        out.append(dataclasses.replace(s, path=None, size=None, _image=canvas, _masks=masks, _semantic=semantic,
                                       meta=meta))
        s.release()
    return SmearDataset(out, dataset.class_names, dataset.name, root=dataset.root, format=dataset.format,
                        semantic_names=getattr(dataset, "semantic_names", None))


def repeat_rare(dataset: SmearDataset, *, threshold: float = 0.5, max_repeat: int = 8) -> SmearDataset:
    """Class-aware sampling by repetition: each image (tile) appears ``r`` times, ``r`` the largest
    repeat factor of the classes it holds, ``r(c) = max(1, sqrt(threshold / f(c)))`` with ``f(c)``
    the share of images holding class ``c`` (the repeat factor sampling of LVIS, Gupta, Dollar
    and Girshick, CVPR 2019), rounded and capped at ``max_repeat``. Tiles holding a rare parasite
    stage are then seen often, tiles of red cells alone once.

    Parameters
    ----------
    dataset : the images (or tiles).
    threshold : the share of images above which a class is not repeated.
    max_repeat : the most times one image appears.

    Returns
    -------
    SmearDataset
        the samples, repeated (shared, not copied), in their order.
    """
    n = max(len(dataset), 1)
    holding = np.zeros(len(dataset.class_names))
    for s in dataset:
        holding[np.unique(s.labels)] += 1
    factor = np.maximum(1.0, np.sqrt(threshold / np.maximum(holding / n, 1e-9)))
    out = []
    for s in dataset:
        r = int(min(max_repeat, round(float(factor[np.unique(s.labels)].max())))) if len(s.labels) else 1
        out += [s] * r
    return SmearDataset(out, dataset.class_names, f"{dataset.name}-repeated")


def remap_dataset(ds: SmearDataset, class_names: list[str], what: str, owner: str = "the model") -> SmearDataset:
    """The dataset with labels indexing ``class_names`` (by class name or alias, see
    :mod:`smearlab.data.classes`); ValueError for a class in the data that ``class_names`` lacks
    (a class of ``class_names`` the data lacks is fine: it has no objects).

    Parameters
    ----------
    ds : the dataset.
    class_names : the classes, in label order (a model's, or another split's).
    what : what the dataset is, for messages (``"training"``, ``"corrected"`` ...).
    owner : whose classes they are, for messages (``"the model"``, ``"Training/"``).
    """
    names = list(ds.class_names)
    class_names = list(class_names)
    if names == class_names:
        return ds
    mapping = match_classes(names, class_names, what=f"the {what} dataset's and {owner}'s classes")
    used = sorted({int(v) for s in ds.samples for v in s.labels.tolist()})
    missing = [names[i] for i in used if mapping.lut[i] < 0]
    if missing:
        raise ValueError(f"{what} dataset {ds.name!r} has objects of class {missing[0]!r}, which is not one of "
                         f"{owner}'s classes {class_names} (all missing: {missing}); give {owner} this class, "
                         "or drop or merge it in the data (load it with class_names=, class_map=)")
    lut = mapping.lut

    def image_label(s):  # in the new classes too (it indexed the dataset's list); dropped when absent
        return None if s.image_label is None or lut[int(s.image_label)] < 0 else int(lut[int(s.image_label)])
    samples = [dataclasses.replace(s, labels=lut[s.labels], image_label=image_label(s), meta=dict(s.meta))
               for s in ds.samples]
    log.info("%s dataset %r: classes mapped onto %s's %s: %s", what, ds.name, owner, class_names,
             mapping.describe())
    return SmearDataset(samples, class_names, ds.name, root=ds.root, format=ds.format,
                        semantic_names=ds.semantic_names)
