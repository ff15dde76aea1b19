"""Prediction with the U-Net: class maps, objects from boxes (two-stage), instances from class
maps."""
from __future__ import annotations

import logging
import math

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from scipy import ndimage as ndi
from skimage.measure import label as cc

from ..core.device import resolve_device
from ..core.geometry import check_pad, crop_window
from ..core.training import check_count
from ..data.sample import Sample
from . import classical
from .unet import UNet, normalise, resize_and_pad

log = logging.getLogger(__name__)


def _image_of(x) -> np.ndarray:
    """The ``(H, W, 3)`` uint8 image of a Sample or array; ValueError for anything else."""
    img = x.image if isinstance(x, Sample) else np.asarray(x)
    if img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"image must be (H, W, 3), got shape {img.shape}")
    if img.dtype != np.uint8:
        raise ValueError(f"image must be uint8 RGB, got dtype {img.dtype}; convert 16-bit or float "
                         "images with smearlab.data.imageio.to_rgb8 (loaders do it on read)")
    if img.shape[0] == 0 or img.shape[1] == 0:
        raise ValueError(f"image has zero size {img.shape[:2]}")
    return img


def _image_list(images):
    """``images`` as given, one ``(H, W, 3)`` array wrapped in a list; a lone grey ``(H, W)``
    array is refused (iterated, it would be read as H images of one row)."""
    if isinstance(images, np.ndarray) and images.ndim == 2:
        raise ValueError(f"images is a grey (H, W) image of shape {images.shape}: give it as RGB (H, W, 3) uint8 "
                         "(smearlab.data.imageio.to_rgb8), or a list of images")
    if isinstance(images, np.ndarray) and images.ndim == 3:
        return [images]
    return images


def _forward(model: nn.Module, x: torch.Tensor, tta: bool) -> torch.Tensor:
    """Logits of a normalised batch; with ``tta`` the log of the softmax averaged over the 4 flips."""
    if not tta:
        return model(x).float()
    prob = 0
    for dims in ((), (-1,), (-2,), (-2, -1)):
        xi = x.flip(dims) if dims else x
        p = model(xi).float().softmax(1)
        prob = prob + (p.flip(dims) if dims else p)
    return (prob / 4).clamp_min(1e-8).log()


@torch.no_grad()
def predict_semantic(model: UNet, images, batch_size: int = 8, device="auto",
                     size: "int | None | str" = "model", tta: bool = False, keep: str = "all") -> list[np.ndarray]:
    """Semantic masks ``(H, W)`` uint8 at each image's own size.

    Parameters
    ----------
    model : trained :class:`UNet`.
    images : SmearDataset / Samples, ``(H, W, 3)`` uint8 arrays, or one such array.
    batch_size : images per forward pass (images of equal working size are batched).
    device : "auto", "cpu", "cuda"...
    size : working square size; "model" uses ``model.input_size`` (the training ``size``),
        None the native size. Logits are resized back to each image's size before argmax.
    tta : test-time augmentation: average the class probabilities over the image and its
        horizontal, vertical and double flips (4 forward passes).
    keep : ``"all"``: every pixel as predicted; ``"central"``: only the cell of interest of a
        single-cell image (:func:`central_cell`), for datasets labelled that way (Zheng WBC).

    Returns
    -------
    list of numpy.ndarray
        one class map per image, in the model's class numbering, or, for a dataset with
        ``semantic_names``, in the dataset's: the model's ``class_names`` are matched to them by
        name (a dataset of the same classes in another order is renumbered; of other classes,
        refused), so that scoring against the dataset never compares classes by position.
    """
    if keep not in ("all", "central"):
        raise ValueError(f"keep must be 'all' or 'central', got {keep!r}")
    check_count("batch_size", batch_size)
    if not (size is None or (isinstance(size, str) and size == "model")
            or (not isinstance(size, bool) and isinstance(size, (int, np.integer)) and size >= 1)):
        raise ValueError(f"size must be None, 'model' or a whole number of pixels of at least 1, got {size!r}")
    if not isinstance(tta, (bool, np.bool_)):  # a string such as "no" is truthy
        raise ValueError(f"tta must be True or False, got {tta!r}")
    lookup = _class_lookup(model, images)
    dev = resolve_device(device)
    images = _image_list(images)
    if size == "model":
        size = getattr(model, "input_size", None)
    model.to(dev).eval()
    items = []
    for x in images:
        img = torch.from_numpy(np.ascontiguousarray(_image_of(x))).permute(2, 0, 1)
        items.append((img.shape[-2:], *resize_and_pad(img, None, size)[::2]))  # (hw, image, window)
    out: list[np.ndarray | None] = [None] * len(items)
    groups: dict[tuple, list[int]] = {}
    for i, (_, img, _) in enumerate(items):
        groups.setdefault(tuple(img.shape[-2:]), []).append(i)
    amp = dev.type == "cuda"
    for idx in groups.values():
        for b in range(0, len(idx), batch_size):
            chunk = idx[b:b + batch_size]
            x = torch.stack([items[i][1] for i in chunk]).to(dev)
            with torch.autocast(dev.type, dtype=torch.float16, enabled=amp):
                logits = _forward(model, normalise(x), tta)
            for j, i in enumerate(chunk):
                (h, w), _, (x0, y0, x1, y1) = items[i]
                lg = logits[j:j + 1, :, y0:y1, x0:x1]
                if (y1 - y0, x1 - x0) != (h, w):
                    lg = F.interpolate(lg, (int(h), int(w)), mode="bilinear", align_corners=False)
                out[i] = lg[0].argmax(0).to(torch.uint8).cpu().numpy()
    if keep == "central":
        out = [central_cell(m) for m in out]
    return out if lookup is None else [lookup[m] for m in out]


def _class_lookup(model, images) -> np.ndarray | None:
    """The model's class values -> the dataset's, matched by name; None when they are the same
    (or either side has no names)."""
    ours, theirs = getattr(model, "class_names", None), getattr(images, "semantic_names", None)
    if not ours or not theirs:
        return None
    ours, theirs = [str(c) for c in ours], [str(c) for c in theirs]
    if ours == theirs:
        return None
    if sorted(ours) != sorted(theirs):
        raise ValueError(f"the U-Net predicts the classes {ours}, the dataset "
                         f"{getattr(images, 'name', '?')!r} is labelled {theirs}: its class maps would be read "
                         "with other meanings; remap the dataset's classes, or predict on its images "
                         "(a list of samples or arrays) to get the model's own numbering")
    log.info("the U-Net's classes %s renumbered to the dataset's order %s", ours, theirs)
    return np.array([theirs.index(c) for c in ours], np.uint8)


def central_cell(class_map: np.ndarray) -> np.ndarray:
    """The class map with only the cell of interest of a single-cell image left: the connected
    foreground region (any class but 0) holding the image centre, or the one nearest to it.

    Single-cell datasets label the centred cell only (every one of the 400 Zheng WBC masks is
    one region over the centre pixel), while a network also finds the neighbours cut by the
    image edge; scored against such labels those count as errors.

    Parameters
    ----------
    class_map : ``(H, W)`` integer class map, 0 background.

    Returns
    -------
    np.ndarray
        a copy with every other foreground region set to 0 (unchanged when there is no foreground).
    """
    regions = cc(class_map > 0, connectivity=2)
    if regions.max() <= 1:
        return class_map.copy()
    h, w = class_map.shape
    k = regions[h // 2, w // 2]
    if k == 0:
        dist = ndi.distance_transform_edt(regions == 0, return_indices=True)[1]
        k = regions[dist[0][h // 2, w // 2], dist[1][h // 2, w // 2]]
    return np.where(regions == k, class_map, 0).astype(class_map.dtype)


def _boxes_of(entry, where: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(boxes, labels, scores)`` of one image's boxes, Sample or prediction dict."""
    if isinstance(entry, Sample):
        boxes, labels, scores = entry.boxes, entry.labels, None
    elif isinstance(entry, dict):
        if "boxes" not in entry:
            raise ValueError(f"{where}: prediction has no 'boxes'")
        boxes, labels, scores = entry["boxes"], entry.get("labels"), entry.get("scores")
    else:
        boxes, labels, scores = entry, None, None
    boxes = np.asarray(boxes, np.float32)
    if boxes.size == 0:
        boxes = boxes.reshape(0, 4)
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"{where}: boxes must have shape (N, 4) (x0, y0, x1, y1), got {boxes.shape}")
    if not np.all(np.isfinite(boxes)):
        raise ValueError(f"{where}: boxes contain NaN or infinite values")
    inverted = np.flatnonzero((boxes[:, 2] < boxes[:, 0]) | (boxes[:, 3] < boxes[:, 1]))
    if len(inverted):  # crop_window would still cut (and segment) a window around such a box
        j = int(inverted[0])
        raise ValueError(f"{where}: box {j} {boxes[j].tolist()} has x1 < x0 or y1 < y0; boxes are (x0, y0, x1, y1)")
    n = len(boxes)
    labels = np.zeros(n, np.int64) if labels is None else np.asarray(labels, np.int64).reshape(-1)
    scores = np.ones(n, np.float32) if scores is None else np.asarray(scores, np.float32).reshape(-1)
    if len(labels) != n or len(scores) != n:
        raise ValueError(f"{where}: {n} boxes but {len(labels)} labels and {len(scores)} scores")
    return boxes, labels, scores


def _instance(cmap: np.ndarray, inner: tuple[int, int, int, int], keep: str) -> np.ndarray:
    """Foreground (class > 0) of one crop's class map; with ``keep="largest"`` one component.

    The component kept has the most pixels inside ``inner`` (the box in crop coordinates,
    ``x0, y0, x1, y1``), ties and no overlap broken by total size.
    """
    fg = cmap > 0
    if keep == "all" or not fg.any():
        return fg
    lab, n = ndi.label(fg, structure=np.ones((3, 3), bool))
    if n <= 1:
        return fg
    x0, y0, x1, y1 = inner
    inside = np.bincount(lab[y0:y1, x0:x1].ravel(), minlength=n + 1)[1:]
    total = np.bincount(lab.ravel(), minlength=n + 1)[1:]
    best = int(np.lexsort((total, inside))[-1]) + 1
    return lab == best


def two_stage_segment(boxes_or_detector_predictions, unet: UNet, images, *, pad: "float | str" = "model",
                      crop_size: "int | None | str" = "model", keep: str = "largest",
                      batch_size: int = 32, device="auto", return_semantic: bool = False):
    """Instance masks from boxes: crop each box with context, run the U-Net, paste the result.

    Parameters
    ----------
    boxes_or_detector_predictions : per image, a detector prediction dict (``boxes``, and
        ``labels``/``scores`` kept as they are), a Sample (its ground-truth boxes: an oracle
        first stage) or an ``(N, 4)`` xyxy array (labels 0, scores 1).
    unet : a (crop) :class:`UNet` from :func:`train_crop_unet`.
    images : SmearDataset, Samples or ``(H, W, 3)`` uint8 arrays, aligned with the boxes.
    pad : crop margin (fraction of the box's longer side, see :func:`crop_window`); "model"
        uses ``unet.crop_pad`` (0.2 when unset).
    crop_size : working square size of the U-Net; "model" uses ``unet.input_size``.
    keep : ``"largest"`` keeps, per box, the foreground component with most pixels inside the
        box (a neighbour's fringe at the crop edge is dropped); ``"all"`` keeps every
        foreground pixel of the crop.
    batch_size, device : as in :func:`predict_semantic` (all crops are batched together).
    return_semantic : also return one ``(H, W)`` uint8 class map per image (instances pasted by
        increasing score, so the higher score wins where crops overlap; 0 elsewhere), numbered
        as :func:`predict_semantic` numbers them (the dataset's classes for a dataset with
        ``semantic_names``).

    Returns
    -------
    list of dict, or (list of dict, list of ndarray)
        one prediction per image: ``boxes`` (the given boxes clipped to the image), ``labels``,
        ``scores`` and ``masks`` ``(N, H, W)`` bool, one instance per box (empty when the U-Net
        finds no foreground in its crop); instances may overlap (each is scored on its own).
    """
    if keep not in ("largest", "all"):
        raise ValueError(f"keep must be 'largest' or 'all', got {keep!r}")
    check_count("batch_size", batch_size)
    if pad == "model":
        pad = getattr(unet, "crop_pad", None)
        pad = 0.2 if pad is None else pad
    pad = check_pad(pad)
    if crop_size == "model":
        crop_size = getattr(unet, "input_size", None)
    lookup = _class_lookup(unet, images) if return_semantic else None  # the class maps in the dataset's numbering
    images = _image_list(images)
    entries = list(boxes_or_detector_predictions)
    if len(entries) != len(images):
        raise ValueError(f"{len(entries)} box sets for {len(images)} images")
    per_image, crops = [], []
    for i, (entry, x) in enumerate(zip(entries, images)):
        img = _image_of(x)
        h, w = img.shape[:2]
        boxes, labels, scores = _boxes_of(entry, f"image {i}")
        boxes = np.clip(boxes, 0, [w, h, w, h]).astype(np.float32)
        windows = [crop_window(b, (h, w), pad) for b in boxes]
        crops += [img[ya:yb, xa:xb] for xa, ya, xb, yb in windows]
        per_image.append((h, w, boxes, labels, scores, windows))
    cmaps = predict_semantic(unet, crops, batch_size=batch_size, device=device, size=crop_size) if crops else []
    preds, sems, k = [], [], 0
    for h, w, boxes, labels, scores, windows in per_image:
        masks = np.zeros((len(boxes), h, w), bool)
        sem = np.zeros((h, w), np.uint8) if return_semantic else None
        maps = cmaps[k:k + len(boxes)]
        k += len(boxes)
        for j, ((xa, ya, xb, yb), box, cm) in enumerate(zip(windows, boxes, maps)):
            bx0, by0, bx1, by1 = box
            inner = (max(0, math.floor(bx0) - xa), max(0, math.floor(by0) - ya),
                     max(1, math.ceil(bx1) - xa), max(1, math.ceil(by1) - ya))
            masks[j, ya:yb, xa:xb] = _instance(cm, inner, keep)
        if sem is not None:
            for j in np.argsort(scores, kind="stable"):
                xa, ya, xb, yb = windows[j]
                m = masks[j, ya:yb, xa:xb]
                sem[ya:yb, xa:xb][m] = maps[j][m]
            sems.append(sem if lookup is None else lookup[sem])
        preds.append({"boxes": boxes, "labels": labels, "scores": scores, "masks": masks})
    return (preds, sems) if return_semantic else preds


def semantic_to_instances(class_map: np.ndarray, *, split: str = "watershed", min_distance: int = 5,
                          min_size: int = 16, label: int = 0) -> dict:
    """Instances of a semantic prediction's foreground (every class > 0), in the prediction form.

    Parameters
    ----------
    class_map : ``(H, W)`` integer class map (e.g. from :func:`predict_semantic`).
    split : ``"watershed"`` splits touching objects with the distance-transform watershed of
        :func:`smearlab.segmentation.classical.watershed_segment` (``min_distance``); ``"components"``
        keeps connected components as they are.
    min_distance : minimum separation of the watershed markers in pixels (``"watershed"`` only).
    min_size : drop instances smaller than this many pixels.
    label : class index of every instance.

    Returns
    -------
    dict
        ``boxes``, ``scores`` (1.0), ``labels`` and ``masks``.
    """
    cm = np.asarray(class_map)
    if cm.ndim != 2:
        raise ValueError(f"class map must be 2-D (H, W), got shape {cm.shape}")
    if split not in ("watershed", "components"):
        raise ValueError(f"split must be 'watershed' or 'components', got {split!r}")
    fg = cm > 0
    if split == "watershed":
        return classical.watershed_segment(fg, min_distance=min_distance, min_size=min_size, label=label)
    return classical.labels_to_prediction(cc(fg, connectivity=1), None, label, min_size)
