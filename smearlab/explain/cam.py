"""Grad-CAM for the classifier and the detector, and class-activation maps turned into cell masks."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

import numpy as np
import pytorch_grad_cam as pgc
import torch
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from scipy import ndimage as ndi
from torch import nn
from torchvision.ops import box_iou

from ..classification.predict import crop_fill
from ..core.device import resolve_device
from ..core.geometry import check_image, letterbox, letterbox_window
from ..data.sample import Sample
from ..data.torchdata import image_to_tensor
from ..metrics.semantic import cell_mask_scores
from ..preprocess import as_preprocess

log = logging.getLogger(__name__)


#: Layers of :class:`smearlab.classification.model.CellClassifier` summed by default.
DEFAULT_LAYERS = ("features.layer2", "features.layer3", "features.layer4")


#: Candidate layer combinations for tuning (:func:`tune_cam_masks`).
LAYER_SETS = (("features.layer4",), ("features.layer3", "features.layer4"), DEFAULT_LAYERS,
              ("features.layer1", "features.layer2", "features.layer3", "features.layer4"),
              ("features.layer2", "features.layer3"))


#: Candidate relative thresholds for tuning.
THRESHOLDS = (0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7)


#: CAM methods by name (pytorch-grad-cam classes); the gradient-based ones suit detectors too.
#: ``"eigencam"`` (the first principal component of the activations) is class-agnostic: it
#: explains no class, so it takes no target (see :func:`layer_cams`).
METHODS = ("gradcam", "gradcam++", "hirescam", "xgradcam", "layercam", "eigencam")


def _check_eigencam_target(method: str, target) -> None:
    """Refuse a target with EigenCAM, which ignores it (its map is the same for every class)."""
    if method == "eigencam" and target is not None:
        raise ValueError("EigenCAM is class-agnostic (the first principal component of the activations, the "
                         "same map for every class): it cannot explain a given target; use target=None, or "
                         "a gradient method (e.g. method='gradcam') to explain a class")


# Modules whose output is not one feature map (dicts, lists, flattened scores): never targets.
_NOT_FEATURE_MAPS = {"IntermediateLayerGetter", "FeaturePyramidNetwork", "BackboneWithFPN", "RPNHead",
                     "RegionProposalNetwork", "RoIHeads", "MultiScaleRoIAlign", "RetinaNetHead",
                     "RetinaNetClassificationHead", "RetinaNetRegressionHead",
                     "GeneralizedRCNNTransform", "LastLevelMaxPool", "LastLevelP6P7"}


_FLAT = (nn.Linear, nn.Flatten, nn.AdaptiveAvgPool1d)


def _not_a_feature_map(module: nn.Module) -> bool:
    """Whether ``module`` is (or subclasses, e.g. the detector's own RoI heads) one of :data:`_NOT_FEATURE_MAPS`."""
    return any(c.__name__ in _NOT_FEATURE_MAPS for c in type(module).__mro__)


def _is_feature_layer(module: nn.Module) -> bool:
    if _not_a_feature_map(module):
        return False
    has_conv = False
    for m in module.modules():
        if isinstance(m, _FLAT) or (m is not module and _not_a_feature_map(m)):
            return False
        has_conv |= isinstance(m, nn.Conv2d)
    return has_conv


def layer_names(model: nn.Module, max_depth: int | None = None) -> list[str]:
    """The dotted names of ``model``'s modules usable as CAM layers, in definition order.

    A usable layer is a convolution, or a container of convolutions whose output is one feature
    map: containers that also hold a linear or flatten layer (a classifier head) and torchvision
    detection parts that return dicts or lists (``backbone.body``, ``backbone.fpn``, the RPN and
    RoI heads) are left out, and so is the model itself.

    Parameters
    ----------
    model : any ``torch.nn.Module``.
    max_depth : keep names with at most this many dots plus one (``"features.layer2"`` has
        depth 2); None keeps all.
    """
    if max_depth is not None and (isinstance(max_depth, bool) or not isinstance(max_depth, int)
                                  or max_depth < 1):
        raise ValueError(f"max_depth must be a positive integer or None, got {max_depth!r}")
    out = []
    for name, mod in model.named_modules():
        if not name or (max_depth is not None and name.count(".") + 1 > max_depth):
            continue
        if _is_feature_layer(mod):
            out.append(name)
    return out


def _describe(names: list[str], limit: int = 40) -> str:
    if len(names) <= limit:
        return ", ".join(names)
    shallow = [n for n in names if n.count(".") <= 1] or names[:limit]
    return ", ".join(shallow[:limit]) + f", ... ({len(names)} in all; see smearlab.explain.cam.layer_names(model))"


def resolve_layers(model: nn.Module, names: "str | Iterable[str]") -> list[nn.Module]:
    """The modules called ``names`` (dotted paths) in ``model``, in the order given.

    Parameters
    ----------
    model : the network.
    names : one dotted module name or several (see :func:`layer_names`).

    Raises
    ------
    KeyError
        for a name that is not a module of ``model`` or is not a usable CAM layer; the message
        lists the valid names (:func:`layer_names`).
    ValueError
        for an empty list of names.
    """
    if isinstance(names, str):
        names = [names]
    names = list(names)
    if not names:
        raise ValueError("layers is empty: name at least one convolutional layer")
    valid = layer_names(model)
    modules = dict(model.named_modules())
    out = []
    for n in names:
        if not isinstance(n, str) or n not in valid:
            why = ("is not a layer of the model" if n not in modules else
                   "does not output a single feature map (not a convolutional layer)")
            raise KeyError(f"Grad-CAM layer {n!r} {why}; valid layers: {_describe(valid)}")
        out.append(modules[n])
    return out


def _normalise(maps: np.ndarray) -> np.ndarray:
    """Min-max scale each map (last two axes) to [0, 1]; a constant map becomes zeros."""
    m = np.asarray(maps, np.float32)
    lo = m.min(axis=(-2, -1), keepdims=True)
    span = m.max(axis=(-2, -1), keepdims=True) - lo
    return np.where(span > 0, (m - lo) / np.where(span > 0, span, 1), 0).astype(np.float32)


def _cam_class(method: str):
    classes = {"gradcam": pgc.GradCAM, "gradcam++": pgc.GradCAMPlusPlus, "hirescam": pgc.HiResCAM,
               "xgradcam": pgc.XGradCAM, "layercam": pgc.LayerCAM, "eigencam": pgc.EigenCAM}
    if method not in classes:
        raise ValueError(f"unknown CAM method {method!r}; choose one of {list(METHODS)}")

    class PerLayer(classes[method]):
        """The library's CAM, but returning each layer's map (B, L, H, W) instead of their mean."""

        def aggregate_multi_layers(self, cam_per_target_layer):
            return np.concatenate(cam_per_target_layer, axis=1)

    return PerLayer


def _as_batch(images) -> torch.Tensor:
    """Images -> (B, 3, H, W) float tensor in [0, 1]."""
    if isinstance(images, torch.Tensor):
        t = images
        if t.ndim == 3:
            t = t[None]
        if t.dtype == torch.uint8:
            t = t.float() / 255.0
    else:
        if isinstance(images, np.ndarray):
            a = images
        else:
            items = [np.asarray(getattr(x, "image", x)) for x in images]
            shapes = {i.shape for i in items}
            if len(shapes) > 1:
                raise ValueError(f"images have different shapes {sorted(shapes)}; letterbox them to "
                                 "one size first, or use cam_masks(..., size=...)")
            a = np.stack(items) if items else np.zeros((0, 1, 1, 3), np.uint8)
        if a.ndim == 3:
            a = a[None]
        if a.ndim != 4 or a.shape[-1] != 3:
            raise ValueError(f"images must be (B, H, W, 3) arrays or (B, 3, H, W) tensors, got shape {a.shape}")
        t = torch.from_numpy(np.ascontiguousarray(a)).permute(0, 3, 1, 2)
        t = t.float() / 255.0 if a.dtype == np.uint8 else t.float()
    if t.ndim != 4 or t.shape[1] != 3:
        raise ValueError(f"images must be (B, 3, H, W), got shape {tuple(t.shape)}")
    if t.numel() and not (-1e-3 <= float(t.min()) and float(t.max()) <= 1 + 1e-3):  # NaN fails too
        raise ValueError(f"float images must hold values in [0, 1], got [{float(t.min()):.3g}, {float(t.max()):.3g}] "
                         "(uint8 images are read as 0..255)")
    # contiguous NCHW: the backward pass of a CPU convolution on a channels-last view of an
    # HWC array crashes (segfault) in this torch build
    return t.float().contiguous()


def _targets(target, n: int, num_classes: int | None = None):
    """pytorch-grad-cam targets for ``n`` images (None: the library takes each predicted class);
    class indices are checked against ``num_classes`` (a negative index would explain a class
    counted from the end, and be recorded as a custom target)."""
    if target is None:
        return None

    def one(t):
        if callable(t):
            return t
        if isinstance(t, bool) or not isinstance(t, (int, np.integer)):
            raise ValueError(f"a target must be a class index (an int) or a callable, got {t!r}")
        if t < 0 or (num_classes is not None and t >= num_classes):
            raise ValueError(f"target class {int(t)} is not one of the model's {num_classes} classes 0..{num_classes - 1}"
                             if num_classes else f"target class {int(t)} must be >= 0")
        return ClassifierOutputTarget(int(t))
    if not isinstance(target, (list, tuple, np.ndarray)):
        return [one(target)] * n
    target = list(target)
    if len(target) != n:
        raise ValueError(f"target has {len(target)} entries for {n} images")
    return [one(t) for t in target]


def _device(model: nn.Module, device) -> torch.device:
    if device is None:
        p = next(iter(model.parameters()), None)
        return p.device if p is not None else torch.device("cpu")
    dev = resolve_device(device)
    model.to(dev)
    return dev


def _forward_order(layers: Sequence[str], modules: Sequence[nn.Module], run, gradients: bool,
                   frozen_out: list | None = None) -> list[int]:
    """Indices of ``layers`` in the order their modules finish a forward pass (``run()``): the
    order in which pytorch-grad-cam lists their activations and maps, whatever order they were
    asked in (a child module finishes before its parent). Refuses, for gradient methods, a layer
    whose output needs no gradient (a frozen stage): its map would be paired with another layer's
    gradient. With ``frozen_out`` (a list), the frozen layers' indices are put there instead."""
    done: list[int] = []
    frozen: list[int] = [] if frozen_out is None else frozen_out

    def hook(i: int):
        def record(_m, _inputs, out):
            if i not in done:
                done.append(i)
                if isinstance(out, torch.Tensor) and not out.requires_grad:
                    frozen.append(i)
        return record

    handles = [m.register_forward_hook(hook(i)) for i, m in enumerate(modules)]
    try:
        with torch.enable_grad():
            run()
    finally:
        for h in handles:
            h.remove()
    unused = [layers[i] for i in range(len(layers)) if i not in done]
    if unused:
        raise ValueError(f"layers {unused} are not run by the model's forward pass")
    if gradients and frozen and frozen_out is None:
        raise ValueError(f"layers {[layers[i] for i in frozen]} are frozen (their output needs no gradient): "
                         "gradient methods cannot explain through them; pick later layers or method='eigencam'")
    return done


def layer_cams(model: nn.Module, images, layers: "str | Sequence[str]" = DEFAULT_LAYERS, target=None, *,
               method: str = "gradcam", batch_size: int = 32, device=None) -> dict[str, np.ndarray]:
    """One class activation map per layer, each upsampled to the input size and scaled to [0, 1].

    Parameters
    ----------
    model : a classifier ``(B, 3, H, W) float [0, 1] -> (B, K) logits``.
    images : ``(B, 3, H, W)`` float tensor in [0, 1] (or uint8), ``(B, H, W, 3)`` uint8 array,
        or a list of equal-sized ``(H, W, 3)`` arrays / Samples.
    layers : dotted module names (see :func:`layer_names`).
    target : None (each image's predicted class), a class index for all images, one index per
        image, or pytorch-grad-cam target objects. With ``method="eigencam"`` only None: EigenCAM
        is class-agnostic (the same map whatever the class), so a target is refused.
    method : one of :data:`METHODS` (default Grad-CAM).
    batch_size : images per forward/backward pass.
    device : None keeps the model where it is; ``"auto"``/``"cpu"``/``"cuda"`` moves it.

    Returns
    -------
    dict
        ``{layer name: (B, H, W) float32}``, each map min-max normalised per image (an all-zero
        map stays zero). The model's train/eval mode is restored afterwards.

    Raises
    ------
    ValueError
        for a target with ``method="eigencam"``, which cannot honour it.
    """
    _check_eigencam_target(method, target)
    if isinstance(layers, str):
        layers = [layers]
    layers = list(layers)
    modules = resolve_layers(model, layers)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    x = _as_batch(images)
    if not len(x):
        raise ValueError("no images to explain")
    if isinstance(target, (list, tuple, np.ndarray)) and len(target) != len(x):
        raise ValueError(f"target has {len(target)} entries for {len(x)} images")
    dev = _device(model, device)
    was_training = model.training
    model.eval()
    try:  # the maps come back in forward order: each is filed under its own layer's name
        order = _forward_order(layers, modules, lambda: model(x[:1].to(dev)), method != "eigencam")
    finally:
        model.train(was_training)
    cam = _cam_class(method)(model, [modules[i] for i in order])
    chunks = []
    try:
        for b in range(0, len(x), batch_size):
            xb = x[b:b + batch_size].to(dev)
            tb = target[b:b + batch_size] if isinstance(target, (list, tuple, np.ndarray)) else target
            maps = cam(xb, _targets(tb, len(xb), len(getattr(model, "class_names", None) or []) or None))
            chunks.append(np.asarray(maps, np.float32).reshape(len(xb), len(layers), *x.shape[-2:]))
    finally:
        cam.activations_and_grads.release()
        model.train(was_training)
    allmaps = np.concatenate(chunks) if chunks else np.zeros((0, len(layers), *x.shape[-2:]), np.float32)
    allmaps = _normalise(allmaps) if allmaps.size else allmaps
    at = {i: k for k, i in enumerate(order)}
    return {name: allmaps[:, at[i]] for i, name in enumerate(layers)}


def cam_maps(model: nn.Module, images, layers: "str | Sequence[str]" = DEFAULT_LAYERS, target=None,
             **kw) -> np.ndarray:
    """Class activation maps of several layers, each upsampled and normalised, then **summed**.

    Parameters are those of :func:`layer_cams`.

    Parameters
    ----------
    model : a classifier ``(B, 3, H, W) float [0, 1] -> (B, K) logits``.
    images : as in :func:`layer_cams` (equal-sized images).
    layers : dotted module names whose maps are summed (see :func:`layer_names`).
    target : None (each image's predicted class), a class index for all images, one index per
        image, or pytorch-grad-cam target objects; only None with ``method="eigencam"``, which
        is class-agnostic (a target is refused, see :func:`layer_cams`).
    **kw : ``method``, ``batch_size``, ``device`` of :func:`layer_cams`.

    Returns
    -------
    (B, H, W) float32 array with values in ``[0, len(layers)]``.
    """
    per = layer_cams(model, images, layers, target, **kw)
    return np.sum(list(per.values()), axis=0, dtype=np.float32)


def _largest_component(mask: np.ndarray) -> np.ndarray:
    lab, n = ndi.label(mask)
    if n <= 1:
        return mask
    sizes = np.bincount(lab.ravel())
    sizes[0] = 0
    return lab == int(np.argmax(sizes))


def cam_to_mask(cam: np.ndarray, rel_threshold: float = 0.5, dilate: int = 5, *, largest: bool = True,
                fill_holes: bool = True) -> np.ndarray:
    """A cell mask from a class activation map.

    Steps: ``cam >= rel_threshold * cam.max()`` -> binary dilation with a ``dilate`` x ``dilate``
    box (``scipy.ndimage.binary_dilation``) -> hole filling (``fill_holes``) -> the largest
    connected component (``largest``). A map without a positive value gives an empty mask.

    Parameters
    ----------
    cam : ``(H, W)`` map, or ``(B, H, W)`` maps (each thresholded against its own maximum).
    rel_threshold : fraction of the maximum, in (0, 1].
    dilate : side of the square structuring element (0 or 1: no dilation).
    largest : keep only the largest 4-connected component.
    fill_holes : fill holes enclosed by the mask.

    Returns
    -------
    bool array of ``cam``'s shape.
    """
    c = np.asarray(cam, dtype=np.float64)
    if c.ndim == 3:
        return np.stack([cam_to_mask(m, rel_threshold, dilate, largest=largest, fill_holes=fill_holes)
                         for m in c]) if len(c) else np.zeros(c.shape, bool)
    if c.ndim != 2:
        raise ValueError(f"cam must be (H, W) or (B, H, W), got shape {c.shape}")
    if not np.all(np.isfinite(c)):
        raise ValueError("cam contains NaN or infinite values")
    if isinstance(rel_threshold, bool) or not isinstance(rel_threshold, (int, float, np.number)) \
            or not 0.0 < float(rel_threshold) <= 1.0:
        raise ValueError(f"rel_threshold must be in (0, 1], got {rel_threshold!r}")
    if isinstance(dilate, bool) or not isinstance(dilate, (int, np.integer)) or dilate < 0:
        raise ValueError(f"dilate must be a non-negative integer (box side), got {dilate!r}")
    top = float(c.max()) if c.size else 0.0
    if top <= 0:
        return np.zeros(c.shape, bool)
    mask = c >= float(rel_threshold) * top
    if dilate > 1:
        mask = ndi.binary_dilation(mask, structure=np.ones((int(dilate), int(dilate)), bool))
    if fill_holes:
        mask = ndi.binary_fill_holes(mask)
    if largest:
        mask = _largest_component(mask)
    return mask.astype(bool)


def _letterboxed(images: list[np.ndarray], size: int | None, fill: Any = "median"):
    """(batch (B, S, S, 3) uint8, content boxes) for images of any sizes, padded with ``fill``
    (the classifier's training fill, :func:`~smearlab.classification.predict.crop_fill`: another
    one gave it another input than prediction does, and another class to explain)."""
    if size is None:
        shapes = {i.shape for i in images}
        if len(shapes) > 1:
            raise ValueError(f"images have different sizes {sorted(s[:2] for s in shapes)}: give size= "
                             "(the classifier's input size) to letterbox them")
        return np.stack(images), [None] * len(images)
    boxes, out, cache = [], [], {}
    for img in images:
        hw = img.shape[:2]
        if hw not in cache:
            cache[hw] = letterbox_window(hw, size)
        boxes.append(cache[hw] if hw != (size, size) else None)
        out.append(img if hw == (size, size) else np.asarray(letterbox(img, size, fill=fill)))
    return np.stack(out), boxes


def _unletterbox(cam: np.ndarray, box, hw) -> np.ndarray:
    """The part of a letterboxed map over the image content, resized to the image's ``hw``."""
    if box is None:
        return cam
    x0, y0, x1, y1 = box
    t = torch.from_numpy(np.ascontiguousarray(cam[y0:y1, x0:x1], np.float32))[None, None]
    return _normalise(torch.nn.functional.interpolate(t, size=tuple(int(v) for v in hw), mode="bilinear",
                                                      align_corners=False)[0, 0].numpy())


@dataclass
class CamMasks:
    """Result of :func:`cam_masks`: one entry per image, each at the image's own size.

    ``cams`` are the summed maps, ``per_layer`` ``{layer: [maps]}``, ``masks`` the bool masks,
    ``targets`` the class each map explains (-1: no class).

    Parameters
    ----------
    cams : per image, the ``(H, W)`` float32 sum of the layers' maps.
    masks : per image, the ``(H, W)`` bool mask (:func:`cam_to_mask`).
    per_layer : ``{layer: [per-image (H, W) maps]}``, each normalised to [0, 1].
    targets : per image, the class index each map explains; -1 for a custom target object, and
        for EigenCAM's class-agnostic maps, which explain no class.
    layers : the layers summed into ``cams``.
    rel_threshold : the relative threshold of the masks.
    dilate : the dilation (box side, pixels) of the masks.
    """

    cams: list[np.ndarray]
    masks: list[np.ndarray]
    per_layer: dict[str, list[np.ndarray]] = field(default_factory=dict)
    targets: list[int] = field(default_factory=list)
    layers: list[str] = field(default_factory=list)
    rel_threshold: float = 0.5
    dilate: int = 5


def _model_size(model) -> int | None:
    for attr in ("input_size", "size"):
        v = getattr(model, attr, None)
        if isinstance(v, int) and v > 0:
            return v
    return None


def cam_masks(model: nn.Module, images, *, layers: "str | Sequence[str]" = DEFAULT_LAYERS, target=None,
              rel_threshold: float = 0.5, dilate: int = 5, largest: bool = True, size: "int | None | str" = "model",
              method: str = "gradcam", batch_size: int = 32, device=None) -> CamMasks:
    """Grad-CAM cell masks for images of any size, end to end.

    Each image is letterboxed to ``size`` (:func:`smearlab.core.geometry.letterbox`), the per-layer
    maps are computed there (:func:`layer_cams`), cropped to the image content and resized back
    to the image's own pixels, summed, and thresholded (:func:`cam_to_mask`).

    Parameters
    ----------
    model : a classifier ``(B, 3, H, W) float [0, 1] -> (B, K) logits``.
    images : a SmearDataset / list of Samples, or ``(H, W, 3)`` uint8 arrays (sizes may differ).
    size : the classifier's input size; ``"model"`` reads ``model.input_size`` (None when it has
        none: the images must then share one size and are used as they are).
    layers : dotted module names whose maps are summed (see :func:`layer_names`).
    target : as in :func:`layer_cams` (None: predicted class). With ``method="eigencam"`` only
        None, and the maps explain no class: ``targets`` records -1 for every image.
    rel_threshold, dilate, largest : mask settings, see :func:`cam_to_mask`.
    method : one of :data:`METHODS` (default Grad-CAM).
    batch_size : images per forward/backward pass.
    device : None keeps the model where it is; ``"auto"``/``"cpu"``/``"cuda"`` moves it.

    Returns
    -------
    CamMasks

    Raises
    ------
    ValueError
        for a target with ``method="eigencam"``, which is class-agnostic and cannot honour it.
    """
    _check_eigencam_target(method, target)
    imgs = [np.asarray(getattr(x, "image", x)) for x in (images if not isinstance(images, np.ndarray)
                                                          or images.ndim == 4 else [images])]
    if not imgs:
        raise ValueError("no images to explain")
    for i, im in enumerate(imgs):
        check_image(im, f"image {i}")
    if size == "model":
        size = _model_size(model)
    layers = [layers] if isinstance(layers, str) else list(layers)
    resolve_layers(model, layers)  # a wrong name fails before any work
    batch, boxes = _letterboxed(imgs, size, crop_fill(model))
    x = _as_batch(batch)
    if target is None and method != "eigencam":  # EigenCAM is class-agnostic: no class to find
        dev = _device(model, device)
        was = model.training
        model.eval()
        with torch.no_grad():
            target = torch.cat([model(x[b:b + batch_size].to(dev)).argmax(1).cpu()
                                for b in range(0, len(x), batch_size)]).tolist() if len(x) else []
        model.train(was)
    elif isinstance(target, (int, np.integer)):
        target = [int(target)] * len(imgs)
    elif callable(target):  # one pytorch-grad-cam target for every image
        target = [target] * len(imgs)
    per = layer_cams(model, x, layers, target, method=method, batch_size=batch_size, device=device)
    per_img = {n: [_unletterbox(m[i], boxes[i], imgs[i].shape[:2]) for i in range(len(imgs))]
               for n, m in per.items()}
    cams = [np.sum([per_img[n][i] for n in layers], axis=0, dtype=np.float32) for i in range(len(imgs))]
    masks = [cam_to_mask(c, rel_threshold, dilate, largest=largest) for c in cams]
    tg = [-1] * len(imgs) if target is None else [int(t) if not callable(t) else -1 for t in target]
    return CamMasks(cams, masks, per_img, tg, layers, float(rel_threshold), int(dilate))


def _layer_sums(per_layer: dict[str, list[np.ndarray]], layers: Sequence[str]) -> list[np.ndarray]:
    missing = [n for n in layers if n not in per_layer]
    if missing:
        raise KeyError(f"layers {missing} were not computed; available: {list(per_layer)}")
    n = len(per_layer[layers[0]])
    return [np.sum([per_layer[k][i] for k in layers], axis=0, dtype=np.float32) for i in range(n)]


def tune_cam_masks(cams, truth, *, layer_sets: Sequence[Sequence[str]] | None = None,
                   thresholds: Sequence[float] = THRESHOLDS, dilate: int = 5, largest: bool = True,
                   key: str = "cell_dice") -> dict[str, Any]:
    """The layers and relative threshold whose masks score best (mean ``key``) on the given images.

    Tune on training images only, then apply the result to the test images.

    Parameters
    ----------
    cams : a :class:`CamMasks` (its ``per_layer`` maps), ``{layer: [maps]}``, or a list of
        already summed maps (then ``layer_sets`` is not used).
    truth : ground truth as in :func:`~smearlab.metrics.semantic.cell_mask_scores`.
    layer_sets : candidate layer combinations (default: every set in :data:`LAYER_SETS` whose
        layers were all computed; with a list of maps: one unnamed set).
    thresholds : candidate relative thresholds.
    dilate, largest : mask settings, see :func:`cam_to_mask`.
    key : the score to maximise: ``"cell_dice"``, ``"cell_iou"``, ``"nucleus_dice"``, ...

    Returns
    -------
    dict
        ``layers`` (list, or None for summed maps), ``rel_threshold``, ``score`` and ``table``:
        one ``{"layers", "rel_threshold", key}`` row per candidate. Ties go to the threshold
        nearest 0.5 (distances rounded to 9 decimals, so 0.3 and 0.7 are equally near), then to
        the lower threshold, then to the earlier layer set.
    """
    return best_cam_masks(cam_mask_table(cams, truth, layer_sets, thresholds, dilate, largest), key)


def cam_mask_table(cams, truth, layer_sets, thresholds, dilate: int, largest: bool) -> list[dict]:
    """Every candidate of :func:`tune_cam_masks` with all its scores (:func:`~smearlab.metrics.semantic.cell_mask_scores`).

    Parameters
    ----------
    cams, truth, layer_sets, thresholds, dilate, largest : as in :func:`tune_cam_masks`
        (``layer_sets=None`` takes the default sets).

    Returns
    -------
    list of dict
        one ``{"layers", "rel_threshold", "scores"}`` row per candidate, ``scores`` the dict of
        :func:`~smearlab.metrics.semantic.cell_mask_scores`.
    """
    truth = list(truth)
    per = cams.per_layer if isinstance(cams, CamMasks) else cams
    if isinstance(per, dict):
        if layer_sets is None:
            layer_sets = [ls for ls in LAYER_SETS if all(n in per for n in ls)] or [list(per)]
        candidates = [(list(ls), _layer_sums(per, list(ls))) for ls in layer_sets]
    else:
        candidates = [(None, list(per))]
    if not thresholds:
        raise ValueError("thresholds is empty")
    table = []
    for layers, summed in candidates:
        for t in thresholds:
            masks = [cam_to_mask(c, t, dilate, largest=largest) for c in summed]
            table.append({"layers": layers, "rel_threshold": float(t), "scores": cell_mask_scores(truth, masks)})
    return table


def best_cam_masks(table: list[dict], key: str) -> dict[str, Any]:
    """:func:`tune_cam_masks`'s answer for ``key`` from :func:`cam_mask_table`.

    Parameters
    ----------
    table : the rows of :func:`cam_mask_table`.
    key : the score to maximise (a key of the rows' ``scores``, e.g. ``"cell_dice"``).

    Ties go to the threshold nearest 0.5 (the distance rounded to 9 decimals: float error does not
    decide), then to the lower threshold, then to the earlier row.
    """
    rows = [{"layers": r["layers"], "rel_threshold": r["rel_threshold"], key: r["scores"][key] or 0.0} for r in table]
    best = max(enumerate(rows), key=lambda it: (it[1][key], -round(abs(it[1]["rel_threshold"] - 0.5), 9),
                                                   -it[1]["rel_threshold"], -it[0]))[1]
    return {"layers": best["layers"], "rel_threshold": best["rel_threshold"], "score": best[key], "table": rows}


def select_cam_masks(cams: CamMasks, layers: Sequence[str], rel_threshold: float, *, largest: bool = True) -> CamMasks:
    """Masks from maps already computed by :func:`cam_masks`: the sum over ``layers`` (a subset of
    ``cams.layers``) thresholded at ``rel_threshold``, without running the network again.

    Parameters
    ----------
    cams : the result of :func:`cam_masks` (its ``per_layer`` maps and ``dilate`` are reused).
    layers : the layers to sum, each among ``cams.per_layer``.
    rel_threshold : the relative threshold of the masks, in (0, 1].
    largest : keep only the largest connected component of each mask.

    Returns
    -------
    CamMasks
    """
    layers = list(layers)
    summed = _layer_sums(cams.per_layer, layers)
    masks = [cam_to_mask(c, rel_threshold, cams.dilate, largest=largest) for c in summed]
    return CamMasks(summed, masks, {n: cams.per_layer[n] for n in layers}, list(cams.targets), layers,
                    float(rel_threshold), cams.dilate)


@dataclass
class DetectorCam:
    """Why a detector found a box: the summed CAM (``(H, W)``, image pixels, values in
    ``[0, len(layers)]``), each layer's map, and the detection it explains (``box`` xyxy,
    0-based ``label``, ``score``, ``iou`` with the box asked about).

    Parameters
    ----------
    cam : the summed map, ``(H, W)`` float32 in image pixels.
    per_layer : ``{layer: (H, W) map}``, each normalised to [0, 1].
    box : ``(4,)`` float32 ``x0, y0, x1, y1`` of the explained detection, in pixels.
    label : 0-based class of the explained detection.
    score : its score.
    iou : its IoU with the box asked about.
    layers : the layers summed into ``cam``.
    """

    cam: np.ndarray
    per_layer: dict[str, np.ndarray]
    box: np.ndarray
    label: int
    score: float
    iou: float
    layers: list[str]


class BoxScoreTarget:
    """pytorch-grad-cam target for one detection: IoU + score of the detection **of class
    ``label``** that overlaps ``box`` best (IoU > ``iou_threshold``), 0 when there is none.

    pytorch-grad-cam's ``FasterRCNNBoxScoreTarget`` takes the best-overlapping detection of any
    class and scores 0 when its class differs; RetinaNet decodes one box per anchor for several
    classes, so two detections can share the identical box, and that target then took the
    other class's (a score without gradient: a crash). Detections of other classes are skipped.

    Parameters
    ----------
    label : the detector's class (1-based, as in its ``labels`` output).
    box : ``(4,)`` ``x0, y0, x1, y1`` in pixels.
    iou_threshold : least IoU (exclusive) for a detection to count.
    """

    def __init__(self, label: int, box, iou_threshold: float = 0.5):
        self.label = int(label)
        self.box = np.asarray(box, np.float32).reshape(4)
        self.iou_threshold = float(iou_threshold)

    def __call__(self, model_outputs: dict) -> torch.Tensor:
        boxes = model_outputs["boxes"]
        output = torch.zeros(1, device=boxes.device, dtype=boxes.dtype)
        same = model_outputs["labels"] == self.label
        if not len(boxes) or not bool(same.any()):
            return output
        ref = torch.as_tensor(self.box[None], device=boxes.device, dtype=boxes.dtype)
        ious = torch.where(same, box_iou(ref, boxes)[0], torch.full_like(boxes[:, 0], -1))
        k = int(ious.argmax())
        if ious[k] > self.iou_threshold:
            output = output + ious[k] + model_outputs["scores"][k]
        return output


def detector_layers(detector: nn.Module) -> list[str]:
    """The backbone stages that feed the FPN (``backbone.body.<stage>``): the default CAM layers.

    Parameters
    ----------
    detector : a torchvision FPN detector (``backbone.body.return_layers``).
    """
    body = getattr(getattr(detector, "backbone", None), "body", None)
    ret = getattr(body, "return_layers", None)
    if not ret:
        raise ValueError("detector has no backbone.body with return_layers (not a torchvision FPN "
                         "detector); pass layers= explicitly (see smearlab.explain.cam.layer_names)")
    return [f"backbone.body.{k}" for k in ret]


#: the grid (input pixels per cell) a detector's feature map is resampled to before it is
#: cropped to the image: a finer grid costs memory (channels x cells), a coarser one shifts the map
VALID_REGION_CELL = 4


def _valid_region(size_holder: dict):
    """reshape_transform that maps a feature map onto the real image: resampled to one cell per
    :data:`VALID_REGION_CELL` pixels of the padded input, then cropped to the image. The detector
    pads its batch to a multiple of its stride; a crop by whole cells of a coarse layer kept part
    of the padding and squeezed the map up and left (by up to a stride: 18 px of a 100 px image
    at stride 32)."""
    def crop(x: torch.Tensor) -> torch.Tensor:
        (h, w), (ph, pw) = size_holder["image"], size_holder["padded"]
        th, tw = max(1, -(-int(ph) // VALID_REGION_CELL)), max(1, -(-int(pw) // VALID_REGION_CELL))
        if tuple(x.shape[-2:]) != (th, tw):
            x = torch.nn.functional.interpolate(x, size=(th, tw), mode="bilinear", align_corners=False)
        return x[..., :max(1, round(h * th / ph)), :max(1, round(w * tw / pw))]
    return crop


def detector_cam(detector: nn.Module, image: np.ndarray, box: "int | Sequence[float]" = 0, *,
                 label: int | None = None, layers: "str | Sequence[str] | None" = None,
                 iou_threshold: float = 0.5, method: str = "gradcam", device=None) -> DetectorCam:
    """Grad-CAM of a torchvision detector for one box: which pixels made it find that box.

    The target is :class:`BoxScoreTarget`: the detection of the chosen class that overlaps the
    box best (IoU >= ``iou_threshold``) contributes IoU + score, and the maps of
    ``layers`` for that target are cropped to the image (the detector pads its batch), resized
    to the image size, normalised and summed.

    Parameters
    ----------
    detector : a model from :func:`smearlab.detection.build_detector` / ``load_model`` (any
        torchvision detector returning ``{"boxes", "labels", "scores"}``).
    image : ``(H, W, 3)`` uint8 RGB image (a Sample is accepted). A preprocessing pipeline saved
        with the model (``preprocess_spec``) is applied first, as in prediction.
    box : an index into the detector's own detections on this image (highest score first, as
        :func:`smearlab.detection.predict` returns them with its defaults, above the model's score
        floor, before thresholds: not the order of thresholded predictions or of ``smearlab
        predict``'s records), or a box ``(x0, y0, x1, y1)`` in pixels (a ground-truth box, or a
        box of thresholded predictions: the best-matching detection is explained).
    label : 0-based class of the box (None: the class of the matching detection).
    layers : dotted module names (default :func:`detector_layers`).
    iou_threshold : least IoU between the box and a detection for it to count.
    method : a gradient-based method of :data:`METHODS` (not ``"eigencam"``, which ignores the box).
    device : None keeps the model where it is; ``"auto"``/``"cpu"``/``"cuda"`` moves it.

    Raises
    ------
    ValueError
        when the detector makes no detection matching the box (with the best IoU it reached),
        or the box index is out of range; for a Sample already preprocessed
        (``meta["preprocess"]``) given to a detector with a pipeline, which would process it twice.
    """

    img = check_image(getattr(image, "image", image))
    pre = getattr(detector, "preprocess_spec", None)
    if pre is not None:
        pre = as_preprocess(pre)
        if isinstance(image, Sample) and image.meta.get("preprocess"):  # processed already: predict refuses it too
            raise ValueError(f"{image.image_id} was already preprocessed with the steps {image.meta['preprocess']} "
                             "(meta['preprocess']): give the raw sample; the detector applies its own pipeline")
        img = pre(img)
    default = layers is None
    layers = detector_layers(detector) if default else ([layers] if isinstance(layers, str) else list(layers))
    modules = resolve_layers(detector, layers)
    dev = _device(detector, device)
    cfg = getattr(detector, "detector_config", None)
    x = image_to_tensor(img, grayscale=bool(cfg is not None and cfg.in_channels == 1))[None].contiguous().to(dev)
    was = detector.training
    detector.eval()
    out: list = []
    frozen: list[int] = []
    try:  # the detections, and the layers in forward order (the order their maps come back in)
        forward = _forward_order(layers, modules, lambda: out.append(detector(x)[0]), method != "eigencam",
                                 frozen if default else None)
    finally:
        detector.train(was)
    if frozen and method != "eigencam":  # the default stages of a detector trained with its first ones frozen
        if len(frozen) == len(layers):
            raise ValueError(f"every default layer {layers} is frozen (its output needs no gradient): give "
                             "layers= after the frozen stages, or method='eigencam'")
        log.info("detector_cam: frozen stages %s left out of the default layers", [layers[i] for i in frozen])
        forward = [i for i in forward if i not in frozen]
        keep = sorted(forward)
        layers, modules = [layers[i] for i in keep], [modules[i] for i in keep]
        forward = [keep.index(i) for i in forward]
    detector.eval()
    det = {k: v.detach() for k, v in out[0].items()}
    out.clear()  # the forward's graph is not kept through the CAM pass
    keep = det["labels"] > 0  # background (RetinaNet may emit it) is no detection: predict() drops it too
    boxes, scores, labels = det["boxes"][keep], det["scores"][keep], det["labels"][keep]  # labels 1-based
    order = torch.argsort(scores, descending=True, stable=True)
    boxes, scores, labels = boxes[order], scores[order], labels[order]
    if isinstance(box, (int, np.integer)) and not isinstance(box, bool):
        if not 0 <= int(box) < len(boxes):
            detector.train(was)
            raise ValueError(f"box index {int(box)} out of range: the detector made {len(boxes)} "
                             "detections on this image")
        ref = boxes[int(box)]
        want = int(labels[int(box)]) if label is None else int(label) + 1
    else:
        ref = torch.as_tensor(np.asarray(box, np.float32).reshape(4), device=boxes.device)
        want = None if label is None else int(label) + 1
    ious = box_iou(ref[None], boxes)[0] if len(boxes) else torch.zeros(0)
    ok = ious >= iou_threshold
    if want is not None:
        ok &= labels == want
    if not bool(ok.any()):
        detector.train(was)
        best = float(ious.max()) if len(ious) else 0.0
        raise ValueError(f"the detector makes no detection matching box {ref.tolist()} (label "
                         f"{'any' if want is None else want - 1}) at IoU >= {iou_threshold}: best IoU "
                         f"{best:.2f} among {len(boxes)} detections; lower the model's score floor or "
                         "pick another box")
    j = int(torch.where(ok, ious, torch.full_like(ious, -1)).argmax())
    want = int(labels[j])
    sizes: dict = {}
    hook = detector.transform.register_forward_hook(
        lambda _m, _i, out: sizes.update(image=out[0].image_sizes[0], padded=tuple(out[0].tensors.shape[-2:])))
    cls = _cam_class(method)
    cam = cls(detector, [modules[i] for i in forward], reshape_transform=_valid_region(sizes))
    try:
        # the target is the chosen detection's own box and class: among the detections of that
        # class (another class's may overlap ``ref`` better, or share the box exactly) the best overlap
        maps = cam(x, [BoxScoreTarget(want, boxes[j].detach().cpu().numpy(), 0.5)])
    finally:
        cam.activations_and_grads.release()
        hook.remove()
        detector.train(was)
    maps = _normalise(np.asarray(maps, np.float32)[0])
    at = {i: k for k, i in enumerate(forward)}
    per = {n: maps[at[i]] for i, n in enumerate(layers)}
    return DetectorCam(maps.sum(0), per, boxes[j].detach().cpu().numpy().astype(np.float32), want - 1,
                       float(scores[j]), float(ious[j]), layers)
