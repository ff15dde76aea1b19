"""Object size for the learned instance segmenter: the median diameter of an image's objects,
measured from its masks (:func:`object_diameter`) or estimated from the network's own features
(:class:`SizeModel`), so that every image can be brought to the one object size the network was
trained at.

This is Cellpose's diameter normalisation (Stringer et al., "Cellpose: a generalist algorithm
for cellular segmentation", Nature Methods 18, 2021): the network trains on images resized so
that their objects share one diameter, and a linear model from the network's pooled encoder
features (Cellpose's "style" vector) to the logarithm of the diameter, fitted on the training
images shown at many zooms, tells the size of a new image's objects before it is segmented. The
estimate does not come from a first segmentation, which cuts objects far larger than the
training size into pieces of the training size and so reports the size it expects.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
from skimage.transform import resize

#: The zooms at which each training image is shown to fit the size model.
FIT_ZOOMS = tuple(float(z) for z in np.exp(np.linspace(np.log(0.4), np.log(2.5), 9)))
#: Side of the centre crop whose features are pooled (bounds the time on large fields).
STYLE_SIDE = 384
#: The range an estimate is kept in (pixels).
DIAMETER_RANGE = (4.0, 250.0)


def object_diameter(masks: np.ndarray) -> float:
    """The median equivalent-circle diameter, in pixels, of the objects of ``(N, H, W)`` masks
    (``2 * sqrt(area / pi)``; Cellpose's measure); NaN when there are none. Every non-zero pixel
    of a mask is the object's (bool, 0/1, 0/255 and instance ids alike: summed values made a 0/255
    mask 16 times wider)."""
    masks = np.asarray(masks)
    if masks.ndim != 3:
        raise ValueError(f"object_diameter takes one mask per object, shape (N, H, W), got shape {masks.shape} "
                         "(a label image: split it with skimage.measure.label / np.stack per id)")
    if len(masks) == 0:
        return float("nan")
    areas = np.count_nonzero(masks.reshape(len(masks), -1), axis=1).astype(np.float64)
    areas = areas[areas > 0]
    if not len(areas):
        return float("nan")
    return float(np.median(2.0 * np.sqrt(areas / np.pi)))


def zoomed(x: np.ndarray, zoom: float, order: int = 1) -> np.ndarray:
    """``x`` (``(H, W)``, or ``(C, H, W)`` resized per channel) resized by ``zoom`` (at least one
    pixel a side): bilinear and anti-aliased when shrinking for ``order=1``, nearest for labels
    (``order=0``)."""
    if zoom == 1.0:
        return x
    hw = x.shape[-2:]
    out_hw = tuple(max(1, int(round(n * zoom))) for n in hw)
    shape = (*x.shape[:-2], *out_hw)
    return resize(x, shape, order=order, anti_aliasing=bool(order and zoom < 1), preserve_range=True,
                  mode="edge").astype(x.dtype)


@torch.no_grad()
def style_vector(model, channel: np.ndarray, zoom: float = 1.0) -> np.ndarray:
    """The network's pooled encoder features of one prepared channel shown at ``zoom``: the mean of
    every encoder level's feature maps over a centre crop (at most :data:`STYLE_SIDE` pixels a side
    after the zoom), each level's means scaled to unit length, concatenated."""
    h, w = channel.shape
    side = int(np.ceil(STYLE_SIDE / zoom))
    r0, c0 = max(0, (h - side) // 2), max(0, (w - side) // 2)
    x = zoomed(np.ascontiguousarray(channel[r0:r0 + side, c0:c0 + side], np.float32), zoom)
    dev = next(model.parameters()).device
    feats = model.encode(torch.from_numpy(np.ascontiguousarray(x))[None, None].to(dev))
    parts = []
    for f in feats:
        v = f.float().mean((0, 2, 3)).cpu().numpy().astype(np.float64)
        parts.append(v / max(np.linalg.norm(v), 1e-12))
    return np.concatenate(parts)


@dataclass
class SizeModel:
    """A ridge regression from :func:`style_vector` to the log of the median object diameter.

    Parameters
    ----------
    mean, scale : the standardisation of the style vector.
    coef, intercept : the regression on the standardised vector.
    alpha : the ridge penalty chosen by cross-validation over the training images.
    """

    mean: list
    scale: list
    coef: list
    intercept: float
    alpha: float

    def predict_log(self, styles: np.ndarray) -> np.ndarray:
        z = (np.atleast_2d(styles) - np.asarray(self.mean)) / np.asarray(self.scale)
        return z @ np.asarray(self.coef) + float(self.intercept)

    def estimate(self, model, channel: np.ndarray) -> float:
        """The estimated median object diameter (pixels) of one prepared channel."""
        d = float(np.exp(self.predict_log(style_vector(model, channel))[0]))
        return float(np.clip(d, *DIAMETER_RANGE))

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "SizeModel":
        return cls(**{k: d[k] for k in ("mean", "scale", "coef", "intercept", "alpha")})


def fit_size_model(model, channels: list, diameters: list, zooms=FIT_ZOOMS) -> tuple[SizeModel, float]:
    """Fit a :class:`SizeModel` on prepared training channels of known median object diameters,
    each shown at every zoom of ``zooms`` (the diameter zoomed with it).

    The ridge penalty is chosen by cross-validation with the zooms of one image kept in one fold.

    Parameters
    ----------
    model : the trained network (its :meth:`~smearlab.segmentation.unet.UNet.encode`).
    channels : ``(H, W)`` float32 channels, as the network reads them.
    diameters : each channel's median object diameter (NaN: the image is left out).
    zooms : the zooms each image is shown at.

    Returns
    -------
    (SizeModel, float)
        the model and its cross-validated error: the median factor between estimated and true
        diameters (1.0 is perfect).
    """
    from sklearn.linear_model import RidgeCV
    from sklearn.model_selection import GroupKFold, cross_val_predict

    xs, ys, groups = [], [], []
    for g, (x, d) in enumerate(zip(channels, diameters)):
        if not np.isfinite(d) or d <= 0:
            continue
        for z in zooms:
            xs.append(style_vector(model, x, z))
            ys.append(np.log(d * z))
            groups.append(g)
    n_images = len(set(groups))
    if n_images < 3:
        raise ValueError(f"the size model needs at least 3 training images with objects, got {n_images}")
    X, y = np.stack(xs), np.asarray(ys)
    mean, scale = X.mean(0), X.std(0)
    scale[scale < 1e-8] = 1.0
    Z = (X - mean) / scale
    folds = list(GroupKFold(n_splits=min(5, n_images)).split(Z, y, groups))
    reg = RidgeCV(alphas=np.logspace(-2, 4, 13), cv=folds).fit(Z, y)
    held_out = cross_val_predict(RidgeCV(alphas=[reg.alpha_]), Z, y, cv=folds)
    error = float(np.exp(np.median(np.abs(held_out - y))))
    size = SizeModel(mean=mean.tolist(), scale=scale.tolist(), coef=np.asarray(reg.coef_).tolist(),
                     intercept=float(reg.intercept_), alpha=float(reg.alpha_))
    return size, error
