"""The learned instance segmenter: a U-Net that predicts each pixel's class among background,
object interior and object boundary, and a marker-controlled watershed on its output that splits
touching objects (the family of the DSB2018 winners' "mask + contour" networks; StarDist and
Cellpose predict distances or flows instead).

* Input: one grey channel in which the objects are bright, whatever the look
  (:func:`nuclear_channel`: bright-field images are inverted, the polarity decided per image), so
  fluorescence, colour and grey bright-field images go through one network.
* Targets (:func:`instance_targets`): the boundary class is a band inside each object's edge,
  plus every pixel where two objects touch: what tells two touching nuclei apart. Optionally
  (``InstanceTrainConfig.separation``, :func:`separation_weights`) the pixels between two
  objects weigh more in the loss (U-Net's weight map).
* Prediction (:func:`predict_probabilities`): tiled with overlap, the tiles' probabilities
  averaged with weights that fall to the tile edges, so large images (1000 px bright-field
  fields, BBBC041 and IML fields) go through in pieces without seams.
* Object size (optional, ``InstanceTrainConfig.diameter``): the network trains on images resized
  so that their objects share one median diameter, and a size model fitted on its features
  (:mod:`smearlab.segmentation.size`, Cellpose's diameter normalisation) brings each new image to
  that size before prediction, the probabilities resized back to the image.
* Instances (:func:`probabilities_to_instances`): markers are the connected components of the
  confident interior, the watershed of the interior probability grows them over the foreground;
  the three thresholds, and whether the probabilities are averaged over the image's flips and
  quarter turns, are tuned on validation images (:func:`tune_thresholds`) and saved with the
  model as ``thresholds.json``.
"""
from __future__ import annotations

import itertools
import time
import warnings
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage as ndi
from skimage.segmentation import find_boundaries, watershed
from skimage.transform import resize

from ..core.device import resolve_device
from ..core.errors import DataError
from ..core.model_folder import read_model_folder, save_model_folder, warn_other_version
from ..core.search import grid_search
from ..core.training import History, TimeBudget, check_count, ema_model, step_loop
from ..data.boxes import mask_box
from ..data.imageio import LUMA
from ..data.predictions import Predictions, empty_prediction
from ..data.sample import SmearDataset
from ..metrics.instances import dsb_score
from .classical import as_image_array, fluorescence_look, is_colour, is_stained_brightfield
from .size import SizeModel, fit_size_model, object_diameter, zoomed
from .unet import UNet


#: The version of :func:`nuclear_channel` a model is trained on, saved in its folder: 2 (2026-12-07)
#: decides the objects' side before the stretch (1 stretched first). A folder of another version
#: is read with a warning: its network sees slightly different inputs.
INPUT_VERSION = 2

#: The classes the network predicts.
CLASSES = ("background", "interior", "boundary")


# -- input ----------------------------------------------------------------------------------------
def nuclear_channel(image: np.ndarray, polarity: str = "auto") -> np.ndarray:
    """One float32 channel in [0, 1] where the objects are bright.

    The side of the objects is decided first (:func:`image_polarity`: dark in bright-field images),
    then the grey level (BT.601 luma) is stretched from the background's 1st percentile to the
    objects' 99.8th (inverted when the objects are dark: from the 99th to the 0.2th). Objects
    covering 0.2 % of the field or more reach 1 and the background stays near 0; stretched
    the other way round first, a field with dark objects on under 1 % of it had its background
    noise spread over [0, 1] and its objects crushed to 0.

    Parameters
    ----------
    image : ``(H, W, 3)`` uint8 RGB or ``(H, W)`` grey image (an alpha channel is dropped; NaN
        values are refused).
    polarity : ``"auto"`` (:func:`image_polarity`), ``"dark"`` (objects darker than the background,
        bright-field) or ``"bright"`` (fluorescence): for a field the objects fill, where the
        minority rule of ``"auto"`` takes the background for the objects.
    """
    if polarity not in ("auto", "dark", "bright"):
        raise ValueError(f"polarity must be 'auto', 'dark' or 'bright', got {polarity!r}")
    img = as_image_array(image, "nuclear_channel")
    grey = _luma(img)
    side = _polarity(img, grey) if polarity == "auto" else polarity
    return _stretched(grey, dark=side == "dark").astype(np.float32)


def image_polarity(image: np.ndarray) -> str:
    """``"dark"`` when an image's objects are darker than their surroundings (bright-field), else
    ``"bright"`` (fluorescence), decided per image:

    * a colour image whose median grey level is above a quarter of the full scale is a stained
      bright-field image (stains absorb light, so what is stained is darker), whatever share of
      the field its objects cover: a tissue section packed with nuclei is still bright-field;
    * a colour image on a near-black, colourless background is fluorescence, however packed
      (:func:`~smearlab.segmentation.classical.fluorescence_look`);
    * any other image (grey, or a colour composite) by :func:`polarity`: the objects are the
      minority of the pixels.

    Parameters
    ----------
    image : ``(H, W, 3)`` RGB or ``(H, W)`` grey image (uint8, or float in [0, 1]).
    """
    img = as_image_array(image, "image_polarity")
    grey = _luma(img)
    return _polarity(img, grey)


def _luma(img: np.ndarray) -> np.ndarray:
    return img.astype(np.float32) @ np.asarray(LUMA, np.float32) if img.ndim == 3 else img.astype(np.float32)


def _stretched(grey: np.ndarray, dark: bool) -> np.ndarray:
    """``grey`` in [0, 1] with the objects bright: the percentiles of the objects' side reach further
    out (0.2 % of the pixels) than the background's (1 %), so that few objects still set the top."""
    if dark:
        lo, hi = np.percentile(grey, (0.2, 99.0))
        return np.clip((hi - grey) / max(float(hi - lo), 1e-6), 0.0, 1.0)
    lo, hi = np.percentile(grey, (1.0, 99.8))
    return np.clip((grey - lo) / max(float(hi - lo), 1e-6), 0.0, 1.0)


def _polarity(img: np.ndarray, grey: np.ndarray) -> str:
    colour = is_colour(img)  # once: both tests start from it
    if is_stained_brightfield(img, grey, colour=colour):
        return "dark"
    # a colour field on a near-black, colourless background is fluorescence however packed: by the
    # minority rule a field 58 % nuclei read "dark", and the network was handed its background
    return "bright" if fluorescence_look(img, grey, colour=colour) else polarity(grey)


def polarity(channel: np.ndarray) -> str:
    """``"dark"`` when the objects of a grey channel are darker than the background (bright-field),
    else ``"bright"`` (fluorescence). The objects are assumed to be the minority of the pixels, as
    cells and nuclei in most fields are, so the median is background: the objects lie on the side
    of the range that reaches further from it (the 0.2th and 99.8th percentiles, so that objects
    on 0.2 % of the field count; :func:`image_polarity` adds what colour tells).

    Parameters
    ----------
    channel : ``(H, W)`` grey values (any scale).
    """
    lo, mid, hi = np.percentile(np.asarray(channel, np.float64), (0.2, 50.0, 99.8))
    return "dark" if mid - lo > hi - mid else "bright"


# -- targets --------------------------------------------------------------------------------------
def instance_targets(masks: np.ndarray, hw: tuple[int, int], boundary: int = 2) -> np.ndarray:
    """``(H, W)`` uint8 target: 0 background, 1 interior, 2 boundary.

    The boundary is a band ``boundary`` pixels wide inside each object's edge, plus every pixel
    of an object that touches another object (within one pixel).

    Parameters
    ----------
    masks : ``(N, H, W)`` instance masks (bool, or 0/1 and 0/255 integers).
    hw : ``(height, width)`` of the image.
    boundary : width of the boundary band in pixels (at least 1).
    """
    if isinstance(boundary, bool) or not isinstance(boundary, (int, np.integer)) or boundary < 1:
        raise ValueError(f"boundary must be a whole number of pixels of at least 1, got {boundary!r}")
    target = np.zeros(hw, np.uint8)
    if masks is None or not len(masks):
        return target
    masks = np.asarray(masks, bool)  # 0/1 masks: uint8 & indexed rows, not pixels
    labels = np.zeros(hw, np.int32)
    for k, m in enumerate(masks, start=1):
        labels[m & (labels == 0)] = k
    target[labels > 0] = 1
    inner = find_boundaries(labels, mode="inner")
    if boundary > 1:
        inner = ndi.binary_dilation(inner, iterations=boundary - 1) & (labels > 0)
    big = labels.max() + 1
    higher = ndi.maximum_filter(labels, size=3)  # a neighbour of a larger label is another object
    lower = ndi.minimum_filter(np.where(labels > 0, labels, big), size=3)  # ... or of a smaller one
    touching = (labels > 0) & ((higher != labels) | ((lower != labels) & (lower != big)))
    target[inner | touching] = 2
    return target


def separation_weights(masks: np.ndarray, hw: tuple[int, int], weight: float = 10.0, sigma: float = 5.0
                       ) -> np.ndarray:
    """``(H, W)`` float32 extra loss weight of the pixels that lie between two objects: U-Net's
    separation term ``weight * exp(-(d1 + d2)**2 / (2 * sigma**2))`` (Ronneberger et al., MICCAI
    2015, eq. 2), ``d1`` and ``d2`` a pixel's distances to the nearest and the second-nearest
    object (0 inside one), so the boundary where two nuclei touch and the narrow gaps between
    close ones weigh up to ``1 + weight`` times the rest; zero elsewhere and wherever fewer than
    two objects lie within ``3 * sigma`` pixels.

    Parameters
    ----------
    masks : ``(N, H, W)`` bool instance masks.
    hw : ``(height, width)`` of the image.
    weight : the term's peak (``w0``; the paper's 10).
    sigma : how fast it falls with the distance, in pixels (the paper's about 5).
    """
    if masks is None or len(masks) < 2:
        return np.zeros(hw, np.float32)
    masks = np.asarray(masks, bool)  # 0/1 masks: ~1 is -2, every pixel read as outside
    d1 = np.full(hw, np.inf, np.float32)
    d2 = np.full(hw, np.inf, np.float32)
    reach = int(np.ceil(3 * sigma))
    for m in masks:
        rows, cols = np.nonzero(m.any(1))[0], np.nonzero(m.any(0))[0]
        if not len(rows):
            continue
        r0, r1 = max(0, rows[0] - reach), min(hw[0], rows[-1] + reach + 1)
        c0, c1 = max(0, cols[0] - reach), min(hw[1], cols[-1] + reach + 1)
        d = ndi.distance_transform_edt(~m[r0:r1, c0:c1]).astype(np.float32)
        d[d > reach] = np.inf  # beyond the reach the term is negligible (and the window not exact)
        n1, n2 = d1[r0:r1, c0:c1], d2[r0:r1, c0:c1]  # views: updated in place
        np.minimum(n2, np.maximum(n1, d), out=n2)
        np.minimum(n1, d, out=n1)
    out = np.zeros(hw, np.float32)
    near = np.isfinite(d2)
    out[near] = float(weight) * np.exp(-((d1[near] + d2[near]) ** 2) / (2.0 * float(sigma) ** 2))
    return out


# -- the model and its folder -------------------------------------------------------------------------
@dataclass
class InstanceThresholds:
    """The prediction settings tuned on validation images: the post-processing of
    :func:`probabilities_to_instances` and whether the probabilities are averaged over flips.

    Parameters
    ----------
    foreground : a pixel is an object's when ``p(interior) + p(boundary)`` reaches this.
    marker : the confident interior (``p(interior)`` at least this) seeds one object per
        connected component.
    min_size : objects smaller than this many pixels are dropped.
    tta : average the probabilities over the eight flips and quarter turns of the image
        (:func:`predict_probabilities`; eight times the prediction time).
    """

    foreground: float = 0.5
    marker: float = 0.6
    min_size: int = 12
    tta: bool = False


def build_instance_unet(base: int = 16, depth: int = 4, norm: str = "group") -> UNet:
    """A U-Net of one input channel and the three classes of :data:`CLASSES`.

    Parameters
    ----------
    base : channels of the first level (doubled per level).
    depth : number of down-sampling levels.
    norm : ``"group"`` or ``"batch"`` normalisation.
    """
    model = UNet(1, len(CLASSES), base=base, depth=depth, norm=norm)
    model.task = "instances"
    model.diameter, model.size_model = None, None  # set by training at one object size
    model.sensor_bits = None  # set by training: the bits its images were read with
    return model


def save_instance_unet(model: UNet, folder, thresholds: InstanceThresholds | None = None, **meta) -> Path:
    """Write the instance U-Net as a model folder (kind ``"unet"``, task ``"instances"``) with its
    tuned ``thresholds.json``.

    Parameters
    ----------
    model : a model of :func:`build_instance_unet`.
    folder : the model folder.
    thresholds : the tuned post-processing (None: ``model.thresholds``, which training with
        validation images tunes, else the defaults).
    meta : plain values kept in ``weights.pt`` (e.g. ``epoch``).
    """
    if thresholds is None:  # the model's tuned settings (they were dropped for the defaults)
        thresholds = getattr(model, "thresholds", None)
    if thresholds is not None and not isinstance(thresholds, InstanceThresholds):
        raise TypeError(f"thresholds must be an InstanceThresholds, got {type(thresholds).__name__}")
    config = {**model.config, "task": "instances", "input": "nuclear_channel", "input_version": INPUT_VERSION,
              "class_names": list(CLASSES)}
    if getattr(model, "sensor_bits", None):  # the camera's bits its training images were read with
        config["sensor_bits"] = int(model.sensor_bits)
    if getattr(model, "diameter", None) is not None:  # trained at one object size: its size model travels
        config.update(diameter=float(model.diameter), size_model=model.size_model.to_dict())
    return save_model_folder(folder, "unet", model, config, class_names=CLASSES,
                             thresholds=asdict(thresholds or InstanceThresholds()), **meta)


def load_instance_unet(folder, device="auto") -> UNet:
    """The instance U-Net of a model folder, in eval mode, its tuned thresholds as
    ``model.thresholds`` (an :class:`InstanceThresholds`).

    Parameters
    ----------
    folder : the model folder (:func:`save_instance_unet`).
    device : ``"auto"`` (the default: CUDA when there is one), ``"cpu"``, ``"cuda"``.
    """
    saved = read_model_folder(folder, "unet")
    folder = Path(folder)
    if saved.config.get("task") != "instances":
        names = saved.config.get("class_names")
        raise DataError(folder / "config.json", "this U-Net folder holds a class-map segmenter"
                        f"{f' (classes {names})' if names else ''}, not the instance segmenter: read it with "
                        "smearlab.models.load_model")
    config = {k: v for k, v in saved.config.items() if k in ("in_channels", "num_classes", "base", "depth", "norm")}
    try:
        model = UNet(**config)
        model.load_state_dict(saved.state_dict)
    except (TypeError, ValueError, RuntimeError) as e:
        raise DataError(folder / "weights.pt", f"U-Net weights do not match config.json: {e}") from None
    if model.config["in_channels"] != 1 or model.config["num_classes"] != len(CLASSES):
        raise DataError(folder / "config.json", f"an instance U-Net reads 1 channel and predicts {len(CLASSES)} "
                        f"classes {list(CLASSES)}; this one {model.config['in_channels']} and "
                        f"{model.config['num_classes']}")
    warn_other_version(folder, "input channel", saved.config.get("input_version"), INPUT_VERSION,
                       "decides the objects' side before the stretch")
    model.task = "instances"
    model.thresholds = _read_thresholds(saved.thresholds, folder / "thresholds.json")
    model.diameter = saved.config.get("diameter")
    model.sensor_bits = saved.config.get("sensor_bits")
    model.size_model = None
    if model.diameter is not None:
        try:
            model.size_model = SizeModel.from_dict(saved.config["size_model"])
        except (KeyError, TypeError) as e:
            raise DataError(folder / "config.json", "a model trained at one object size (diameter "
                            f"{model.diameter}) needs its size model, which is missing or incomplete: {e}") from None
    return model.to(resolve_device(device)).eval()


def _read_thresholds(values: dict | None, path: Path) -> InstanceThresholds:
    """The :class:`InstanceThresholds` of a folder's ``thresholds.json``, each value checked; the
    untuned defaults, with a warning, when the file is missing."""
    if values is None and not path.is_file():
        warnings.warn(f"{path} is missing: the untuned default thresholds are used", stacklevel=3)
        return InstanceThresholds()
    known = {f.name for f in fields(InstanceThresholds)}
    if not isinstance(values, dict):
        raise DataError(path, f"must be a JSON object with {sorted(known)}, got {type(values).__name__}")
    if set(values) - known:
        raise DataError(path, f"unknown settings {sorted(set(values) - known)} (known: {sorted(known)})")
    values = {"tta": False, **values}  # folders saved before the flip average was tuned: tuned without it
    if known - set(values):  # a half-written file would predict with untuned defaults for the rest
        raise DataError(path, f"missing settings {sorted(known - set(values))} (a tuned file holds all of {sorted(known)})")
    th = InstanceThresholds(**values)
    for name in ("foreground", "marker"):
        v = getattr(th, name)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 <= v <= 1.0:
            raise DataError(path, f"{name} must be a probability between 0 and 1, got {v!r}")
    if isinstance(th.min_size, bool) or not isinstance(th.min_size, int) or th.min_size < 0:
        raise DataError(path, f"min_size must be a whole number of pixels >= 0, got {th.min_size!r}")
    if not isinstance(th.tta, bool):
        raise DataError(path, f"tta must be true or false, got {th.tta!r}")
    return th


# -- training --------------------------------------------------------------------------------------
#: How each training crop's image can be drawn (``InstanceTrainConfig.sampling``).
SAMPLINGS = ("area", "image")


@dataclass
class InstanceTrainConfig:
    """Training of the instance U-Net on random crops.

    Parameters
    ----------
    crop : side of the square training crops (images smaller than that are padded).
    batch_size : crops per step.
    lr : Adam learning rate (cosine schedule to 0).
    steps : optimisation steps (ignored with ``time_budget_s``).
    time_budget_s : train for this many seconds instead of ``steps`` (the schedule is fitted to the
        measured speed; see :class:`~smearlab.core.training.TimeBudget`).
    boundary : width of the boundary band of the targets (pixels).
    boundary_weight : cross-entropy weight of the boundary class (the scarce class that splits
        touching objects).
    separation : peak of the extra loss weight of the background and boundary pixels between
        two objects (:func:`separation_weights`, U-Net's weight map), so that the pixels that keep
        touching nuclei apart count more; 0: no such weight.
    separation_sigma : how fast that weight falls with the distance to the two objects (pixels).
    scale_jitter : ``(low, high)`` zoom range of the training crops (each crop is cut
        ``crop / zoom`` pixels wide and resized to ``crop``, the zoom drawn log-uniformly; the
        targets by nearest neighbour), so that the network sees the objects at more sizes than the
        few training images hold; None: no zoom.
    diameter : train at one object size: each training image (with its masks) is resized so that
        its median object diameter (:func:`~smearlab.segmentation.size.object_diameter`) becomes
        this many pixels, and a size model is fitted afterwards so that prediction can resize each
        new image the same way (Cellpose's normalisation); the zooms of ``scale_jitter`` then
        vary the size around it. None: images are used at their own scale.
    sampling : how each training crop's image is drawn: ``"image"`` (every image equally likely,
        as StarDist and Cellpose draw their patches: a look held by small images is not outweighed
        by one large image of another look) or ``"area"`` (in proportion to its area, so every
        pixel is equally likely). ``"image"`` was chosen on the DSB2018 subset's 20 training images
        by 3-fold cross-validation (mean validation DSB 0.421 against 0.393; benchmarks/RESULTS.md).
    ema_decay : keep an exponential moving average of the weights (decay per step, e.g. 0.998;
        :func:`~smearlab.core.training.ema_model`, as detection's ``TrainConfig.ema_decay``): the
        trained model ends with the average, the size model and the threshold tuning read it,
        and the last raw weights stay on the model as ``model.raw_weights`` (a state dict, not
        saved) for comparison. None: no average.
    amp : mixed precision on CUDA: float16 autocast with a gradient scaler.
    cpu_bf16 : bfloat16 autocast on the CPU (the loss stays float32), as detection's
        ``TrainConfig.cpu_bf16``: fast on CPUs with AMX or AVX-512 BF16 (recent Xeons), slower
        elsewhere; off by default. Training only: tuning and prediction run in float32.
    seed : seeds the crops, the augmentation and the weights.
    device : ``"auto"``, ``"cpu"`` or ``"cuda"``.
    """

    crop: int = 128
    batch_size: int = 8
    lr: float = 2e-3
    steps: int = 1500
    time_budget_s: float | None = None
    boundary: int = 2
    boundary_weight: float = 3.0
    separation: float = 0.0
    separation_sigma: float = 5.0
    scale_jitter: tuple[float, float] | None = None
    diameter: float | None = None
    sampling: str = "image"
    ema_decay: float | None = None
    amp: bool = True
    cpu_bf16: bool = False
    seed: int = 0
    device: str = "auto"

    def __post_init__(self):
        for name in ("crop", "batch_size", "steps", "boundary"):  # bare numpy / convolution errors otherwise
            check_count(name, getattr(self, name))
        if self.crop < 16:
            raise ValueError(f"crop must be at least 16 pixels (the U-Net halves it several times), got {self.crop}")
        if self.scale_jitter is not None:
            lo, hi = (float(v) for v in self.scale_jitter)
            if not 0 < lo <= hi:
                raise ValueError(f"scale_jitter must be (low, high) with 0 < low <= high, got {self.scale_jitter}")
            self.scale_jitter = (lo, hi)
        if not float(self.boundary_weight) > 0:
            raise ValueError(f"boundary_weight must be a positive cross-entropy weight, got {self.boundary_weight!r}")
        if not float(self.separation) >= 0:
            raise ValueError(f"separation must be a weight of 0 or more, got {self.separation!r}")
        if not float(self.separation_sigma) > 0:
            raise ValueError(f"separation_sigma must be a positive number of pixels, got {self.separation_sigma!r}")
        if self.diameter is not None and not float(self.diameter) > 0:
            raise ValueError(f"diameter must be a positive number of pixels, got {self.diameter!r}")
        if self.sampling not in SAMPLINGS:
            raise ValueError(f"sampling must be one of {list(SAMPLINGS)}, got {self.sampling!r}")
        if self.ema_decay is not None and not 0.0 < float(self.ema_decay) < 1.0:
            raise ValueError(f"ema_decay must lie between 0 and 1 (exclusive), got {self.ema_decay!r}")


def _prepared(dataset: SmearDataset, boundary: int, diameter: float | None = None,
              separation: tuple[float, float] | None = None
              ) -> tuple[list[tuple[np.ndarray, ...]], list[np.ndarray], list[float]]:
    """The training items (channel, targets), each image resized to ``diameter`` when given, with
    a third array, the separation weights (:func:`separation_weights` with ``separation = (weight,
    sigma)``, kept on the background and boundary pixels only), when ``separation`` is given; the
    channels at their own scale and their median object diameters (for the size model)."""
    out, channels, diameters = [], [], []
    for s in dataset:
        hw = s.hw
        if len(s.boxes) and not s.has_masks:  # its objects would be trained on as background
            raise DataError(s.path or s.image_id, f"{len(s.boxes)} objects but no instance masks: the instance "
                                                  "segmenter trains on masks")
        masks = s.masks if s.has_masks else np.zeros((0, *hw), bool)
        x, d = nuclear_channel(s.image), object_diameter(masks)
        channels.append(x)
        diameters.append(d)
        zoom = float(diameter) / d if diameter is not None and np.isfinite(d) else 1.0
        if zoom != 1.0:
            labels = np.zeros(hw, np.int32)
            for k, m in enumerate(masks, 1):
                labels[m] = k
            labels = zoomed(labels, zoom, order=0)
            ids = np.unique(labels[labels > 0])
            masks = labels[None] == ids[:, None, None] if len(ids) else np.zeros((0, *labels.shape), bool)
            x, hw = zoomed(x, zoom), labels.shape
        target = instance_targets(masks, hw, boundary)
        if separation is None:
            out.append((x, target))
        else:
            extra = separation_weights(masks, hw, *separation)
            extra[target == 1] = 0.0  # the interior keeps weight one: only background and boundary lie between
            out.append((x, target, extra))
    return out, channels, diameters


def _crop_batch(items, rng: np.random.Generator, crop: int, batch_size: int,
                scale_jitter: tuple[float, float] | None = None,
                sampling: str = InstanceTrainConfig.sampling) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random crops (their images drawn each equally, or by area with ``sampling="area"``),
    zooms (``scale_jitter``), flips, quarter turns, gamma and contrast: the channels ``(B, 1, C,
    C)``, the targets ``(B, C, C)`` and each pixel's loss weight ``(B, C, C)`` (one, plus the
    item's separation weights where it has them)."""
    sizes = np.array([item[0].size for item in items], np.float64)
    pick = rng.choice(len(items), size=batch_size, p=sizes / sizes.sum() if sampling == "area" else None)
    xs, ys, ws = [], [], []
    for i in pick:
        x, y = items[i][:2]
        e = items[i][2] if len(items[i]) > 2 else None  # the separation weights, when the item has them
        side = crop
        if scale_jitter is not None:
            zoom = float(np.exp(rng.uniform(np.log(scale_jitter[0]), np.log(scale_jitter[1]))))
            side = max(8, int(round(crop / zoom)))
        h, w = x.shape
        if h < side or w < side:
            pad = ((0, max(0, side - h)), (0, max(0, side - w)))
            x, y = np.pad(x, pad), np.pad(y, pad)
            e = None if e is None else np.pad(e, pad)
            h, w = x.shape
        r, c = rng.integers(0, h - side + 1), rng.integers(0, w - side + 1)
        xc, yc = x[r:r + side, c:c + side], y[r:r + side, c:c + side]
        ec = np.zeros((side, side), np.float32) if e is None else e[r:r + side, c:c + side]
        if side != crop:
            xc = resize(xc, (crop, crop), order=1, anti_aliasing=side > crop, preserve_range=True).astype(np.float32)
            yc = resize(yc, (crop, crop), order=0, anti_aliasing=False, preserve_range=True).astype(y.dtype)
            ec = resize(ec, (crop, crop), order=0, anti_aliasing=False, preserve_range=True).astype(np.float32)
        k = int(rng.integers(0, 4))
        xc, yc, ec = np.rot90(xc, k), np.rot90(yc, k), np.rot90(ec, k)
        if rng.random() < 0.5:
            xc, yc, ec = xc[:, ::-1], yc[:, ::-1], ec[:, ::-1]
        xc = np.clip(xc ** float(np.exp(rng.uniform(-0.4, 0.4))) * rng.uniform(0.8, 1.2), 0, 1)
        xs.append(np.ascontiguousarray(xc))
        ys.append(np.ascontiguousarray(yc))
        ws.append(1.0 + np.ascontiguousarray(ec, dtype=np.float32))
    return (torch.from_numpy(np.stack(xs))[:, None].float(), torch.from_numpy(np.stack(ys)).long(),
            torch.from_numpy(np.stack(ws)))


def weighted_cross_entropy(logits: torch.Tensor, target: torch.Tensor, class_weight: torch.Tensor,
                           pixel_weight: torch.Tensor) -> torch.Tensor:
    """Cross-entropy with a weight per class and one per pixel, normalised by the total weight:
    with every pixel weight one it is ``F.cross_entropy(logits, target, weight=class_weight)``."""
    per_pixel = F.cross_entropy(logits, target, weight=class_weight, reduction="none")
    return (per_pixel * pixel_weight).sum() / (class_weight[target] * pixel_weight).sum()


def train_instance_unet(model: UNet, train: SmearDataset, val: SmearDataset | None = None,
                        config: InstanceTrainConfig | None = None, *, progress: bool = False) -> History:
    """Train the instance U-Net in place on random crops of ``train``'s images and instance masks;
    with ``val``, tune the post-processing on it afterwards (``model.thresholds``).

    Parameters
    ----------
    model : a model of :func:`build_instance_unet`.
    train : images with instance masks.
    val : validation images with instance masks (for :func:`tune_thresholds`), or None.
    config : :class:`InstanceTrainConfig`.
    progress : a progress bar.

    Returns
    -------
    History
        one record per 50 steps (``step``, ``loss``, ``lr``, ``seconds``); the last record holds
        the tuned thresholds and their validation DSB score when ``val`` is given, and with
        ``config.diameter`` the size model's cross-validated error (``size_model_error``, the
        median factor between estimated and true diameters) and the seconds its fit took.
    """
    cfg = config or InstanceTrainConfig()
    dev = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    separation = (float(cfg.separation), float(cfg.separation_sigma)) if cfg.separation > 0 else None
    items, channels, diameters = _prepared(train, cfg.boundary, cfg.diameter, separation)
    if not items:
        raise ValueError("no training images")
    sized = sum(1 for d in diameters if np.isfinite(d) and d > 0)
    if cfg.diameter is not None and sized < 3:  # found after the training, the run was lost
        raise ValueError(f"diameter={cfg.diameter}: the size model needs at least 3 training images with objects, "
                         f"{train.name!r} has {sized}; train without a diameter (diameter=None) or on more images")
    model.to(dev).train()
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    weight = torch.tensor([1.0, 1.0, float(cfg.boundary_weight)], device=dev)
    budget = None if cfg.time_budget_s is None else TimeBudget(cfg.time_budget_s, 50, initial_epochs=cfg.steps // 50)
    use_amp = bool(cfg.amp and dev.type == "cuda")
    cpu_bf16 = bool(cfg.cpu_bf16 and dev.type == "cpu")
    autocast = (dict(device_type="cpu", dtype=torch.bfloat16, enabled=True) if cpu_bf16
                else dict(device_type=dev.type, dtype=torch.float16, enabled=use_amp))
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    ema = ema_model(model, cfg.ema_decay) if cfg.ema_decay is not None else None

    def step(_i: int) -> dict[str, float]:
        x, y, w = _crop_batch(items, rng, cfg.crop, cfg.batch_size, cfg.scale_jitter, cfg.sampling)
        with torch.autocast(**autocast):
            logits = model(x.to(dev))
        loss = weighted_cross_entropy(logits.float(), y.to(dev), weight, w.to(dev))
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        if ema is not None:
            ema.update_parameters(model)
        return {"loss": float(loss.detach())}

    history = step_loop(step, cfg.steps, record_every=50, optimizer=opt, budget=budget, progress=progress,
                        desc="instance U-Net", history=History(best_metric="val_dsb"),
                        lr_at=lambda i, n: cfg.lr * 0.5 * (1 + np.cos(np.pi * min(i, n) / n)))
    model.eval()
    model.raw_weights = None
    if ema is not None:  # the trained model is the average; the raw weights stay for comparison
        model.raw_weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
        model.load_state_dict(ema.module.state_dict())
    model.thresholds = InstanceThresholds()
    model.diameter, model.size_model = None, None
    model.sensor_bits = getattr(train, "sensor_bits", None)  # how new image files must be read (saved in config.json)
    if cfg.diameter is not None:
        t0 = time.perf_counter()
        model.size_model, error = fit_size_model(model, channels, diameters)
        model.diameter = float(cfg.diameter)
        history.records[-1].update(size_model_error=error, size_model_s=round(time.perf_counter() - t0, 2))
    if val is not None and len(val):
        model.thresholds, score = tune_thresholds(model, val, device=dev)
        history.records[-1].update(val_dsb=score, thresholds=asdict(model.thresholds))
        history.best_value = score
    return history


# -- prediction ------------------------------------------------------------------------------------
def _ramp(n: int, overlap: int) -> np.ndarray:
    """Blending weights along one tile side: rising over ``overlap`` pixels at both ends."""
    w = np.ones(n, np.float32)
    if overlap > 0:
        edge = np.linspace(0.05, 1.0, min(overlap, n // 2) + 2, dtype=np.float32)[1:-1]
        w[:len(edge)] = edge
        w[n - len(edge):] = edge[::-1]
    return w


@torch.no_grad()
def predict_probabilities(model: UNet, image: np.ndarray, *, tile: int = 256, overlap: int = 48,
                          device=None, tta: bool = False, diameter: float | None = None,
                          polarity: str = "auto") -> np.ndarray:
    """``(3, H, W)`` class probabilities of one image, in overlapping tiles blended without seams.

    Tiles of ``tile`` pixels (the image padded by reflection to whole tiles) overlap by
    ``overlap`` pixels; each tile's probabilities are weighted by a ramp that falls towards its
    edges (where a convolution sees the least context) and the weighted sum is normalised, so a
    pixel is mostly decided by the tile that sees it best.

    Parameters
    ----------
    model : the instance U-Net (run in eval mode; its mode is restored afterwards).
    image : ``(H, W, 3)`` RGB or ``(H, W)`` grey image.
    tile : tile side in pixels (a multiple of ``2 ** depth``, rounded down to one); a side of the
        image shorter than a tile is one tile of its own length (rounded up to the multiple), so a
        small image is not mostly padding. The network normalises each tile by that tile's own
        statistics (GroupNorm), so a tile's output depends on what the tile holds: keep tiles at
        least as large as the training crops (``InstanceTrainConfig.crop``). Much smaller tiles
        change the result: with 64 px tiles a nearly empty tile of a lightly trained model
        grew faint objects out of noise (48 objects for 40; 40 with one tile).
    overlap : overlap of neighbouring tiles in pixels, ``0 <= overlap < tile``.
    device : the device to run on (None: the model's); the model is moved there.
    tta : average over the eight flips and quarter turns of the image (test-time augmentation:
        each pixel is seen in eight orientations, which steadies the interior probability that
        seeds the objects; eight times the time).
    diameter : the median diameter of the image's objects in pixels, for a model trained at one
        object size (``model.diameter``): the image is resized to that size and the probabilities
        back. None: estimated by the model's size model. Ignored by a model trained at the
        images' own scale.
    polarity : the objects' side, as for :func:`nuclear_channel` (``"auto"``: decided per image).
    """
    was = model.training  # eval: BatchNorm statistics of one tile would be used otherwise
    model.eval()
    try:
        return _probabilities(model, image, tile=tile, overlap=overlap, device=device, tta=tta, diameter=diameter,
                              polarity=polarity)
    finally:
        model.train(was)


def _probabilities(model: UNet, image: np.ndarray, *, tile: int, overlap: int, device, tta: bool,
                   diameter: float | None, polarity: str) -> np.ndarray:
    m = 2 ** model.config["depth"]
    if isinstance(tile, bool) or not isinstance(tile, (int, np.integer)) or tile < m:
        raise ValueError(f"tile must be a whole number of pixels >= {m} (2 ** the U-Net's depth), got {tile!r}")
    if isinstance(overlap, bool) or not isinstance(overlap, (int, np.integer)) or not 0 <= overlap < tile // m * m:
        raise ValueError(f"overlap must be a whole number of pixels in [0, tile), got {overlap!r} for tile {tile}: "
                         "tiles further apart than their side leave pixels nobody predicts")
    dev = next(model.parameters()).device if device is None else resolve_device(device)
    model.to(dev)
    x = nuclear_channel(image, polarity)
    trained_at = getattr(model, "diameter", None)
    if trained_at is not None:
        if diameter is None:
            size_model = getattr(model, "size_model", None)
            if size_model is None:
                raise ValueError("this model was trained at one object size but has no size model: give the "
                                 "image's object diameter (diameter=...)")
            diameter = size_model.estimate(model, x)
        if not float(diameter) > 0:
            raise ValueError(f"diameter must be a positive number of pixels, got {diameter!r}")
        zoom = float(np.clip(trained_at / float(diameter), 0.25, 4.0))
        if zoom != trained_at / float(diameter):  # the resize is bounded: say so instead of silently
            warnings.warn(f"objects of {float(diameter):.1f} px are {trained_at / float(diameter):.2f} times from "
                          f"the model's training size of {trained_at:g} px; the image is resized by {zoom:g} "
                          "only (the bound is 0.25-4x), so its objects stay off the training size", stacklevel=2)
        if abs(zoom - 1.0) > 0.05:
            p = _oriented_probabilities(model, zoomed(x, zoom), tile, overlap, dev, tta)
            p = resize(p, (p.shape[0], *x.shape), order=1, preserve_range=True, mode="edge").astype(np.float32)
            return p / np.maximum(p.sum(0, keepdims=True), 1e-6)
    return _oriented_probabilities(model, x, tile, overlap, dev, tta)


def _oriented_probabilities(model: UNet, x: np.ndarray, tile: int, overlap: int, dev, tta: bool) -> np.ndarray:
    """The tiled probabilities of one prepared channel, averaged over its eight orientations with
    ``tta``."""
    if not tta:
        return _tiled_probabilities(model, x, tile, overlap, dev)
    acc = np.zeros((len(CLASSES), *x.shape), np.float32)
    for k, flip in itertools.product(range(4), (False, True)):
        t = np.rot90(x, k)
        t = np.ascontiguousarray(t[:, ::-1] if flip else t)
        p = _tiled_probabilities(model, t, tile, overlap, dev)
        acc += np.rot90(p[:, :, ::-1] if flip else p, -k, axes=(1, 2))
    return acc / 8.0


def _tiled_probabilities(model: UNet, x: np.ndarray, tile: int, overlap: int, dev) -> np.ndarray:
    """The tiled prediction of :func:`predict_probabilities` on one prepared channel ``x``."""
    h, w = x.shape
    m = 2 ** model.config["depth"]
    tile = max(m, int(tile) // m * m)

    def axis(n: int) -> tuple[int, int, int]:  # (tile side, step, padded length) along one side
        side = min(tile, -(-n // m) * m)  # a side shorter than a tile: one tile of its own length
        step = max(m, side - int(overlap))
        return side, step, side if n <= side else int(np.ceil((n - side) / step)) * step + side

    (th, sh, H), (tw, sw, W) = axis(h), axis(w)
    xp = np.pad(x, ((0, H - h), (0, W - w)), mode="reflect")  # less than a tile or a step of padding
    acc = np.zeros((len(CLASSES), H, W), np.float32)
    norm = np.zeros((H, W), np.float32)
    wt = np.outer(_ramp(th, overlap), _ramp(tw, overlap))
    for y0, x0 in itertools.product(range(0, H - th + 1, sh), range(0, W - tw + 1, sw)):
        t = torch.from_numpy(np.ascontiguousarray(xp[y0:y0 + th, x0:x0 + tw]))[None, None].to(dev)
        p = model(t).softmax(1)[0].float().cpu().numpy()
        acc[:, y0:y0 + th, x0:x0 + tw] += p * wt
        norm[y0:y0 + th, x0:x0 + tw] += wt
    return (acc / np.maximum(norm, 1e-6))[:, :h, :w]


def probabilities_to_instances(probs: np.ndarray, thresholds: InstanceThresholds | None = None) -> dict:
    """Instances (the prediction form, class 0) from the three class probabilities.

    Markers are the connected components of ``p(interior) >= marker`` inside the foreground; the
    watershed of ``-p(interior)`` grows them over the foreground ``p(interior) + p(boundary) >= foreground``;
    objects smaller than ``min_size`` pixels are dropped. A foreground component without a
    marker keeps one of its own. Each object's score is its mean interior probability.

    Parameters
    ----------
    probs : ``(3, H, W)`` probabilities of :data:`CLASSES`.
    thresholds : the post-processing (None: :class:`InstanceThresholds` defaults).
    """
    th = thresholds or InstanceThresholds()
    probs = np.asarray(probs)
    if probs.ndim != 3 or probs.shape[0] != len(CLASSES):
        raise ValueError(f"probs must be ({len(CLASSES)}, H, W) probabilities of {list(CLASSES)}, got shape "
                         f"{probs.shape}" + (" (channels last? move them first)" if probs.ndim == 3
                                             and probs.shape[-1] == len(CLASSES) else ""))
    interior = probs[1]
    fg = (probs[1] + probs[2]) >= th.foreground
    if not fg.any():
        return empty_prediction(fg.shape)
    markers, _ = ndi.label((interior >= th.marker) & fg)  # a marker outside the foreground could join two objects
    return seeded_watershed(interior, fg, markers, th.min_size)


def seeded_watershed(interior: np.ndarray, fg: np.ndarray, markers: np.ndarray, min_size: int) -> dict:
    """Instances (the prediction form, class 0) grown from labelled ``markers`` by the watershed
    of ``-interior`` over the foreground ``fg``: a foreground component without a marker keeps one
    of its own, objects under ``min_size`` pixels are dropped, each scores its mean interior.

    Parameters
    ----------
    interior : ``(H, W)`` interior probability.
    fg : ``(H, W)`` bool foreground.
    markers : ``(H, W)`` int labels 1..n of the seeds (0 elsewhere).
    min_size : smallest object kept, in pixels.
    """
    markers = markers.copy()
    n = int(markers.max())
    comps, n_comp = ndi.label(fg)
    seeded = np.unique(comps[markers > 0])
    for c in np.setdiff1d(np.arange(1, n_comp + 1), seeded):  # components without a confident core
        n += 1
        markers[comps == c] = n
    lab = watershed(-interior, markers, mask=fg)
    sizes = np.bincount(lab.ravel())
    keep = [k for k in range(1, len(sizes)) if sizes[k] >= min_size]
    if not keep:
        return empty_prediction(fg.shape)
    masks = np.stack([lab == k for k in keep])
    scores = np.array([float(interior[m].mean()) for m in masks], np.float32)
    boxes = np.stack([mask_box(m) for m in masks]).astype(np.float32)
    order = np.argsort(-scores, kind="stable")
    return {"boxes": boxes[order], "scores": scores[order], "labels": np.zeros(len(keep), np.int64),
            "masks": masks[order]}


def predict_instances(model: UNet, images, *, thresholds: InstanceThresholds | None = None, tile: int = 256,
                      overlap: int = 48, device=None, diameter: float | None = None,
                      polarity: str = "auto") -> Predictions:
    """One instance prediction per image (a Sample, a dataset's samples, or arrays).

    Parameters
    ----------
    model : the instance U-Net.
    images : a SmearDataset, Samples or ``(H, W, 3)`` arrays (or one array).
    thresholds : the prediction settings (None: ``model.thresholds``, else the defaults).
    tile, overlap, device, diameter, polarity : as for :func:`predict_probabilities` (``diameter``:
        one object size for every image; ``polarity``: one side for every image).

    Returns
    -------
    Predictions
        one dict per image (``boxes``, ``scores``, ``labels`` 0, ``masks``), class ``"object"``.
    """
    th = thresholds or getattr(model, "thresholds", None) or InstanceThresholds()
    if isinstance(images, np.ndarray) and (images.ndim == 2 or (images.ndim == 3 and images.shape[2] in (1, 3, 4))):
        images = [images]  # one image, not a stack of rows
    out = []
    for x in images:
        img = getattr(x, "image", x)
        out.append(probabilities_to_instances(
            predict_probabilities(model, img, tile=tile, overlap=overlap, device=device, tta=th.tta,
                                  diameter=diameter, polarity=polarity), th))
    return Predictions(out, None)


#: The settings :func:`tune_thresholds` searches by default. Measured on the DSB2018 subset's
#: validation images (benchmarks/RESULTS.md): larger minimum sizes and lower marker thresholds than
#: first searched, and the flip average, each raised the validation score.
THRESHOLD_GRID = {"foreground": (0.4, 0.5, 0.6), "marker": (0.4, 0.5, 0.6, 0.7, 0.8), "min_size": (6, 12, 24, 48),
                  "tta": (False, True)}


def tune_thresholds(model: UNet, val: SmearDataset, *, device=None, grid: dict | None = None
                    ) -> tuple[InstanceThresholds, float]:
    """The prediction settings with the best mean DSB score on ``val`` (probabilities computed
    once per ``tta`` choice).

    Parameters
    ----------
    model : the instance U-Net.
    val : validation images with instance masks.
    device : the device to run on.
    grid : ``{"foreground": [...], "marker": [...], "min_size": [...], "tta": [...]}`` to search
        (None: :data:`THRESHOLD_GRID`; a missing ``tta`` means without).

    Returns
    -------
    (InstanceThresholds, float)
        the best settings and their mean DSB score.
    """
    grid = grid or THRESHOLD_GRID
    probs: dict[bool, list] = {}  # of the flip-average choice being searched (the outermost), computed once

    def evaluate(c: dict) -> float:
        th = InstanceThresholds(float(c["foreground"]), float(c["marker"]), int(c["min_size"]), bool(c["tta"]))
        if th.tta not in probs:
            probs.clear()  # one choice's probabilities in memory at a time
            probs[th.tta] = [predict_probabilities(model, s.image, device=device, tta=th.tta) for s in val]
        return float(dsb_score(val, [probabilities_to_instances(p, th) for p in probs[th.tta]], kind="masks") or 0.0)

    found = grid_search({"tta": grid.get("tta", (False,)), "foreground": grid["foreground"], "marker": grid["marker"],
                         "min_size": grid["min_size"]}, evaluate)
    c = found.params
    return InstanceThresholds(float(c["foreground"]), float(c["marker"]), int(c["min_size"]), bool(c["tta"])), found.score
