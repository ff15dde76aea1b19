"""Measured cell features and the classifier built on them: nucleus shape and lobes, stain colours
of nucleus and cytoplasm, chromatin texture, then a multinomial logistic regression.

This is the classic route of cytometry tools (measure each cell, then classify the measurements)
and the one that works with a few dozen labelled crops, where a network trained from scratch
does not. The features are computed on each crop resized to :data:`FEATURE_SIZE`:

- the nucleus is the crop's purple part near the centre: blue above green and dark, smoothed,
  Otsu-thresholded, the parts whose centre lies in the middle 60 % of the crop;
- *shape*: nucleus area fraction, number of parts (lobes cut apart), solidity, eccentricity and
  extent of the largest part, ``nucleus_circularity`` (despite its name the inverse of the usual
  circularity: perimeter squared over ``4 pi`` area, summed over the parts; about 1 for a disc,
  1.08 as measured on pixels, growing for lobed or ragged nuclei), thickness (largest inscribed
  radius over the square root of the area), thin fraction (pixels within 2.5 px of the edge), skeleton length, the
  fraction of the crop that is not background and the nucleus share of it;
- *stain*: mean and spread of the haematoxylin, eosin and DAB optical densities
  (:func:`skimage.color.rgb2hed`) in the nucleus and in the cytoplasm (not nucleus, not
  background), and the cytoplasm-minus-nucleus difference of each RGB channel;
- *texture*: the histogram of uniform local binary patterns (8 neighbours, radius 1) in the nucleus.

:class:`FeatureClassifier` is an ``nn.Module`` whose ``forward`` maps crops to logits like
:class:`~smearlab.classification.model.CellClassifier`, so it predicts through
:func:`~smearlab.classification.predict.predict_classes`, embeds through
:func:`~smearlab.classification.embed.cnn_embedding` and saves as the same model folder. Train it
with :func:`smearlab.classification.train.fit_features`; re-estimate its feature statistics on an
unlabelled target domain with :func:`smearlab.classification.adapt.adapt_feature_statistics`.
"""
from __future__ import annotations

import warnings
from typing import Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..core.model_folder import warn_other_version
from ..data.classes import model_class_names


#: The version of :func:`cell_features`, saved with a fitted model: 2 (2026-12-07) counts the
#: nucleus in its cell (``cell_fraction``, ``nucleus_to_cell``); 1 could leave a pale nucleus out.
#: A model of another version is read with a warning: the features it sees moved a little.
FEATURES_VERSION = 2

#: Side (px) every crop is resized to before its features are measured.
FEATURE_SIZE = 128

#: The features, in column order.
FEATURE_NAMES: tuple[str, ...] = (
    "nucleus_fraction", "nucleus_parts", "nucleus_solidity", "nucleus_eccentricity", "nucleus_circularity",
    "nucleus_extent", "nucleus_thickness", "nucleus_thin_fraction", "nucleus_skeleton", "cell_fraction",
    "nucleus_to_cell",
    *(f"{stain}_{region}_{stat}" for stain in ("haematoxylin", "eosin", "dab")
      for region in ("nucleus", "cytoplasm") for stat in ("mean", "std")),
    "cytoplasm_minus_nucleus_red", "cytoplasm_minus_nucleus_green", "cytoplasm_minus_nucleus_blue",
    *(f"nucleus_lbp_{k}" for k in range(10)),
)


def _as_rgb_stack(images) -> np.ndarray:
    """``(N, S, S, 3)`` uint8 at :data:`FEATURE_SIZE` from crops in any of the accepted forms."""
    if hasattr(images, "images") and isinstance(getattr(images, "images"), torch.Tensor):  # CropDataset
        images = images.images
    if isinstance(images, np.ndarray) and images.ndim == 3:
        images = images[None]
    if isinstance(images, (list, tuple)):
        shapes = sorted({np.asarray(i).shape for i in images})
        if len(shapes) > 1:
            raise ValueError(f"crops of different shapes {shapes[:3]}: letterbox them to one square size first "
                             "(smearlab.classification.embed.crop_tensor(crops, size))")
        images = np.stack([np.asarray(i) for i in images]) if len(images) else np.zeros((0, 3, 1, 1), np.uint8)
    x = torch.as_tensor(images)
    if x.ndim != 4:
        raise ValueError(f"crops must be (N, S, S, 3) or (N, 3, S, S), got shape {tuple(x.shape)}")
    if x.shape[1] != 3 and x.shape[-1] == 3:
        x = x.permute(0, 3, 1, 2)
    if x.shape[1] != 3:
        raise ValueError(f"crops must have 3 colour channels, got shape {tuple(x.shape)}")
    if x.shape[2] != x.shape[3]:  # resizing would stretch the cell and change every shape feature
        raise ValueError(f"crops must be square, got {x.shape[2]} x {x.shape[3]} px: letterbox them first "
                         "(smearlab.classification.embed.crop_tensor(crops, size))")
    if x.dtype == torch.uint8:
        x = x.float() / 255
    else:
        x = x.float()
        if len(x) and not bool(torch.isfinite(x).all()):
            raise ValueError("float crops hold NaN or infinite values")
        if len(x) and (float(x.min()) < -1e-3 or float(x.max()) > 1 + 1e-3):
            raise ValueError(f"float crops must be in [0, 1], got values in [{float(x.min()):.3g}, "
                             f"{float(x.max()):.3g}]")
    if len(x) and x.shape[-2:] != (FEATURE_SIZE, FEATURE_SIZE):
        x = F.interpolate(x, size=(FEATURE_SIZE, FEATURE_SIZE), mode="bilinear", align_corners=False,
                          antialias=x.shape[-1] > FEATURE_SIZE)
    return (x.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


#: The least range of the purple-ness score in which a nucleus is looked for. Blank fields with
#: sensor noise span about 0.02; every Zheng and PBC crop spans 0.87 or more.
MIN_CONTRAST = 0.1


def nucleus_mask(rgb: np.ndarray) -> np.ndarray:
    """The nucleus of the cell at the centre of a crop: ``(H, W)`` bool.

    Purple-ness (blue minus green, plus darkness), smoothed and Otsu-thresholded; of the parts
    larger than 0.1 % of the crop, those whose centroid lies in the middle 60 % of the crop
    (all lobes of a neutrophil), else the largest part. Empty when the crop holds no contrast
    (the score's range below :data:`MIN_CONTRAST`: a blank field or its sensor noise).

    Parameters
    ----------
    rgb : ``(H, W, 3)`` uint8 crop.
    """
    from skimage import filters, measure, morphology

    f = rgb.astype(np.float32) / 255
    score = filters.gaussian(f[..., 2] - f[..., 1] + (1 - f.mean(-1)), 1)
    if float(score.max() - score.min()) < MIN_CONTRAST:  # a blank field: Otsu would split its noise
        return np.zeros(score.shape, bool)
    mask = score > filters.threshold_otsu(score)
    h, w = mask.shape
    with warnings.catch_warnings():  # skimage renamed min_size; the call is the same on every version
        warnings.simplefilter("ignore")
        mask = morphology.remove_small_objects(mask, max(4, int(0.001 * h * w)))
    labels = measure.label(mask)
    if labels.max() == 0:
        return mask
    keep = np.zeros_like(mask)
    for r in measure.regionprops(labels):
        cy, cx = r.centroid
        if abs(cy - h / 2) < 0.3 * h and abs(cx - w / 2) < 0.3 * w:
            keep |= labels == r.label
    if not keep.any():
        keep = labels == (int(np.argmax(np.bincount(labels.ravel())[1:])) + 1)
    return keep


def _crop_features(rgb: np.ndarray) -> np.ndarray:
    """The :data:`FEATURE_NAMES` of one ``(S, S, 3)`` uint8 crop."""
    from scipy import ndimage as ndi
    from skimage import color, feature, filters, measure, morphology

    m = nucleus_mask(rgb)
    h, w = m.shape
    area = float(m.sum())
    parts = measure.regionprops(measure.label(m))
    largest = max(parts, key=lambda r: r.area) if parts else None
    hull = morphology.convex_hull_image(m) if area else m
    dist = ndi.distance_transform_edt(m)
    root = np.sqrt(max(area, 1.0))
    lum = rgb.astype(np.float32).mean(-1) / 255
    # a field without contrast holds no cell: all of it is background (it read as 100 % cell)
    background = lum > filters.threshold_otsu(lum) if float(np.ptp(lum)) > MIN_CONTRAST / 3 else np.ones_like(m)
    background &= ~m  # the cell holds its nucleus (a pale nucleus above the threshold read as background:
    # cell_fraction too small, nucleus_to_cell above 1)
    cytoplasm = ~m & ~background
    cell_fraction = float((~background).mean())
    shape = [area / (h * w), len(parts), area / max(float(hull.sum()), 1.0),
             largest.eccentricity if largest else 0.0,
             # "nucleus_circularity" is P^2 / (4 pi A), the inverse of the usual 4 pi A / P^2: about 1
             # (1.08 on pixels) for a disc, growing for lobed nuclei (the name stays: saved models use it)
             sum(r.perimeter for r in parts) ** 2 / (4 * np.pi * max(area, 1.0)),
             largest.extent if largest else 0.0, float(dist.max()) / root,
             float((dist[m] < 2.5).mean()) if area else 0.0,
             float(morphology.skeletonize(m).sum()) / root, cell_fraction,
             area / (h * w) / max(cell_fraction, 1e-3)]

    def stats(channel, region):
        return [float(channel[region].mean()), float(channel[region].std())] if region.sum() > 5 else [0.0, 0.0]

    hed = color.rgb2hed(rgb)
    stain = [v for c in range(3) for region in (m, cytoplasm) for v in stats(hed[..., c], region)]
    f = rgb.astype(np.float32) / 255
    relative = [float(f[..., c][cytoplasm].mean() - f[..., c][m].mean()) if area and cytoplasm.sum() > 5 else 0.0
                for c in range(3)]
    lbp = feature.local_binary_pattern((lum * 255).astype(np.uint8), 8, 1, "uniform")
    texture = (np.bincount(lbp[m].astype(int), minlength=10)[:10] / max(area, 1.0)).tolist()
    return np.asarray(shape + stain + relative + texture, np.float32)


def cell_features(images) -> np.ndarray:
    """The measured features of each crop: ``(N, len(FEATURE_NAMES))`` float32.

    Parameters
    ----------
    images : a :class:`~smearlab.classification.crops.CropDataset`, an ``(N, 3, S, S)`` or
        ``(N, S, S, 3)`` array or tensor (uint8, or float in [0, 1]), one ``(S, S, 3)`` crop, or a
        list of crops. Each is resized to :data:`FEATURE_SIZE` first.

    Raises
    ------
    ValueError
        for crops of another shape or float values outside [0, 1].
    """
    rgb = _as_rgb_stack(images)
    if not len(rgb):
        return np.zeros((0, len(FEATURE_NAMES)), np.float32)
    out = np.stack([_crop_features(c) for c in rgb])
    return np.nan_to_num(out, nan=0.0, posinf=0.0, neginf=0.0)


class FeatureClassifier(nn.Module):
    """Measured cell features, standardised, then a linear layer: a multinomial logistic regression
    on :func:`cell_features`, as a module (see the module docstring). Build it with
    :func:`smearlab.classification.model.build_classifier` (``arch="features"``) and train it with
    :func:`smearlab.classification.train.fit_features`.

    Parameters
    ----------
    class_names : the classes, in logit order.
    input_size : crop side new images are letterboxed to before their features are measured.
    feature_names : the features a saved model was fitted on (its ``config.json``); refused when
        they differ from :data:`FEATURE_NAMES`, whose order the weights follow.
    features_version : the :data:`FEATURES_VERSION` a saved model was fitted with (a warning when
        it is another).

    Attributes
    ----------
    mean, scale : ``(F,)`` buffers: the feature statistics the inputs are standardised with (the
        training crops', or a target domain's after
        :func:`~smearlab.classification.adapt.adapt_feature_statistics`).
    head : ``nn.Linear(F, K)``: the regression's weights.
    config : the :func:`build_classifier` arguments (saved with the weights).
    """

    def __init__(self, class_names: Sequence[str], input_size: int = FEATURE_SIZE,
                 feature_names: Sequence[str] | None = None, features_version: int | None = None):
        super().__init__()
        self.class_names = model_class_names(class_names)
        if feature_names is not None and list(feature_names) != list(FEATURE_NAMES):
            raise ValueError(f"the model was fitted on other features ({len(feature_names)}: "
                             f"{list(feature_names)[:3]}...) than this version measures ({len(FEATURE_NAMES)}: "
                             f"{list(FEATURE_NAMES)[:3]}...); refit it with fit_features")
        if feature_names is not None:  # a saved model
            warn_other_version("a features classifier", "measured features", features_version, FEATURES_VERSION,
                               "measures cell_fraction and nucleus_to_cell with the nucleus inside its cell")
        self.config = {"class_names": list(self.class_names), "arch": "features",
                       "feature_names": list(FEATURE_NAMES), "features_version": FEATURES_VERSION}
        self.input_size = int(input_size)
        n = len(FEATURE_NAMES)
        self.register_buffer("mean", torch.zeros(n))
        self.register_buffer("scale", torch.ones(n))
        self.head = nn.Linear(n, len(self.class_names))
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    @property
    def num_features(self) -> int:
        return self.head.in_features

    def measure(self, x) -> torch.Tensor:
        """The raw :func:`cell_features` of ``x`` as a float tensor on the model's device."""
        return torch.from_numpy(cell_features(x.detach().cpu() if isinstance(x, torch.Tensor) else x)).to(
            self.mean.device)

    def embed(self, x) -> torch.Tensor:
        """Standardised features ``(B, F)`` of crops ``x`` (``(B, 3, S, S)`` in [0, 1], or uint8)."""
        return (self.measure(x) - self.mean) / self.scale

    def forward(self, x) -> torch.Tensor:
        """Class logits ``(B, K)`` for crops ``x`` ``(B, 3, S, S)`` float in [0, 1] (or uint8)."""
        return self.head(self.embed(x))
