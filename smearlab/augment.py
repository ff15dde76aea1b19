"""Augmentation of smear images with their boxes and masks, on the CPU or batched on a GPU.

One implementation serves both paths: :meth:`Augment.__call__` turns a numpy
:class:`~smearlab.data.Sample` into a batch of one and runs :meth:`Augment.batch`, which works on
``(B, C, H, W)`` tensors on any device with per-sample random parameters.

Geometry
--------
Every geometric transform is a 3x3 affine matrix ``M`` acting on pixel-edge coordinates
``(x, y, 1)`` (pixel ``i`` spans ``[i, i + 1)``, as in :mod:`smearlab.data.sample`) plus an
output size. :func:`warp` applies it: images are resampled with
:func:`torch.nn.functional.grid_sample` (bilinear; instance and semantic masks nearest). When ``M``
sends pixel centres onto pixel centres (flips, rot90, integer crops, pads and shifts) pixels are
copied instead (transpose, flip, window), so these transforms are exact. Boxes go through the same matrix
(:func:`map_boxes`), are clipped to the output, and are dropped together with their labels,
masks and other per-object entries when they become too small or too little visible; with
instance masks, an object with no pixel left is dropped and a cut object's box is that of its
visible pixels.

Photometry
----------
Colour jitter, blur, noise, gamma, salt-and-pepper and stain jitter change only the image (float
in [0, 1]), batched, with per-sample parameters.

Randomness
----------
:class:`Augment` owns a CPU :class:`torch.Generator` seeded by ``seed``. Every transform draws its
per-sample parameters from it (so results do not depend on the device) and per-pixel noise from
a device generator seeded by one of those draws: the same seed and call order give the same
output.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from skimage.color import hed_from_rgb, rgb_from_hed
from torchvision.transforms.v2 import functional as TF

from .core.errors import DataError
from .data.sample import IGNORE, Sample


__all__ = ["Augment", "Transform", "Geometric", "Photometric", "HorizontalFlip", "VerticalFlip", "Rot90",
           "Affine", "RandomCrop", "Pad", "Resize", "ColorJitter", "GaussianBlur", "GaussianNoise", "Gamma",
           "SaltPepper", "StainJitter", "default_augment", "warp", "map_boxes", "mask_boxes", "BOX_RULES"]


BOX_RULES = ("8point", "4corner", "mask")


#: Target entries that are per image even when their length equals the number of boxes.
IMAGE_KEYS = ("semantic", "image_id", "orig_size", "size")


def _affine(a, b, c, d, e, f) -> torch.Tensor:
    """``(B, 3, 3)`` float64 matrices ``[[a, b, c], [d, e, f], [0, 0, 1]]`` from numbers or (B,) tensors."""
    a, b, c, d, e, f = torch.broadcast_tensors(*(torch.as_tensor(v, dtype=torch.float64).reshape(-1)
                                                 for v in (a, b, c, d, e, f)))
    z = torch.zeros_like(a)
    return torch.stack([a, b, c, d, e, f, z, z, z + 1], -1).view(-1, 3, 3)


def map_boxes(boxes: torch.Tensor, matrix: torch.Tensor, rule: str = "8point") -> torch.Tensor:
    """Map ``(N, 4)`` xyxy boxes through one 3x3 matrix: min/max box of the mapped points.

    ``"4corner"`` maps the corners: the result contains the mapped box but is loose under
    rotation. ``"8point"`` maps two points on each edge, at 1/3 and 2/3 of its length: tighter for
    round objects (a disc rotated by 45 degrees gets a half-width of 2*sqrt(2)/3 = 0.94 of its
    radius instead of sqrt(2) = 1.41, so it may cut up to 6 % of a radius). Both are exact for
    axis-aligned maps (flips, rot90, crop, pad, resize). Returns float64.

    Parameters
    ----------
    boxes : ``(N, 4)`` ``x0, y0, x1, y1`` boxes in pixels.
    matrix : ``(3, 3)`` input->output map in pixel-edge coordinates.
    rule : ``"8point"`` or ``"4corner"`` (any other value acts as ``"8point"``).
    """
    x0, y0, x1, y1 = boxes.to(torch.float64).unbind(-1)
    if rule == "4corner":
        xs, ys = torch.stack([x0, x1, x0, x1], -1), torch.stack([y0, y0, y1, y1], -1)
    else:
        xm = [x0 + (x1 - x0) * u for u in (1 / 3, 2 / 3)]
        ym = [y0 + (y1 - y0) * u for u in (1 / 3, 2 / 3)]
        xs = torch.stack([*xm, *xm, x0, x0, x1, x1], -1)
        ys = torch.stack([y0, y0, y1, y1, *ym, *ym], -1)
    m = matrix.to(xs)
    px = m[0, 0] * xs + m[0, 1] * ys + m[0, 2]
    py = m[1, 0] * xs + m[1, 1] * ys + m[1, 2]
    return torch.stack([px.amin(-1), py.amin(-1), px.amax(-1), py.amax(-1)], -1)


def mask_boxes(masks: torch.Tensor) -> torch.Tensor:
    """Tight pixel-edge boxes ``(N, 4)`` float32 of ``(N, H, W)`` masks; all zero for an empty mask.

    Parameters
    ----------
    masks : ``(N, H, W)`` bool (or 0/1) masks.
    """
    out = []
    for hit in (masks.any(1), masks.any(2)):  # columns, rows
        idx = torch.arange(hit.shape[1], device=hit.device)
        out.append((torch.where(hit, idx, hit.shape[1]).amin(1), torch.where(hit, idx + 1, 0).amax(1)))
    (x0, x1), (y0, y1) = out
    box = torch.stack([x0, y0, x1, y1], -1).float()
    return box * masks.flatten(1).any(1, keepdim=True)


def _lattice(minv: torch.Tensor) -> torch.Tensor:
    """(B,) True where the output->input map is a signed permutation of the axes plus a whole-pixel
    shift (flips, rot90, integer crops, pads and shifts): every pixel centre lands on one."""
    lin = minv[:, :2, :2]
    off = 0.5 * lin.sum(2) + minv[:, :2, 2] - 0.5  # source index of output pixel (0, 0)
    near = lambda v: ((v - v.round()).abs() < 1e-9).flatten(1).all(1)  # noqa: E731
    perm = (lin.abs().sum(1) == 1).all(1) & (lin.abs().sum(2) == 1).all(1)
    return near(lin) & near(off) & perm


def _copy(x: torch.Tensor, minv: torch.Tensor, size) -> torch.Tensor:
    """Exact warp of ``x`` (..., H, W) by a :func:`_lattice` map: transpose, flip, then copy a window."""
    (a, b), (c, d) = minv[:2, :2].round().tolist()  # whole numbers (cos 90 degrees is 6e-17, not 0)
    ox, oy = (0.5 * minv[:2, :2].sum(1) + minv[:2, 2] - 0.5).round().long().tolist()
    kx, ky = a, d  # source column = kx * u + ox, source row = ky * v + oy (u, v: output column, row)
    if a == 0:  # source column follows the output row: swap the axes of the source
        x, kx, ky, ox, oy = x.transpose(-1, -2), c, b, oy, ox
    h, w = x.shape[-2:]
    if kx < 0:
        x, ox = x.flip(-1), w - 1 - ox
    if ky < 0:
        x, oy = x.flip(-2), h - 1 - oy
    (ho, wo), out = size, x.new_zeros(*x.shape[:-2], *size)
    v0, v1, u0, u1 = max(0, -oy), min(ho, h - oy), max(0, -ox), min(wo, w - ox)
    if v0 < v1 and u0 < u1:
        out[..., v0:v1, u0:u1] = x[..., v0 + oy:v1 + oy, u0 + ox:u1 + ox]
    return out


def _resample(x: torch.Tensor, minv: torch.Tensor, size, mode: str) -> torch.Tensor:
    """Warp float ``x`` (B, C, H, W) to ``size`` given output->input matrices ``minv`` (B, 3, 3)."""
    b, c, h, w = x.shape
    ho, wo = size
    if (ho, wo) == (h, w) and bool((minv == torch.eye(3, dtype=minv.dtype)).all()):
        return x
    out = x.new_empty(b, c, ho, wo)
    exact = _lattice(minv)
    for i in exact.nonzero().flatten().tolist():
        out[i] = _copy(x[i], minv[i], size)
    sel = (~exact).nonzero().flatten()
    if len(sel):
        dev = x.device
        ys, xs = torch.meshgrid(torch.arange(ho, device=dev) + 0.5, torch.arange(wo, device=dev) + 0.5,
                                indexing="ij")
        pts = torch.stack([xs, ys, torch.ones_like(xs)], -1).view(-1, 3)
        src = pts @ minv[sel, :2].transpose(1, 2).to(dev, torch.float32)  # pixel-edge coords
        grid = src * torch.tensor([2 / w, 2 / h], device=dev) - 1
        sel = sel.to(dev)
        out[sel] = F.grid_sample(x[sel], grid.view(-1, ho, wo, 2), mode=mode, padding_mode="zeros",
                                 align_corners=False)
    return out


def _nearest(a: torch.Tensor, minv: torch.Tensor, size, fill: int = 0) -> torch.Tensor:
    """Warp an integer or bool map ``(..., H, W)`` (masks, semantic) with nearest sampling.

    The same pixels as ``grid_sample(mode="nearest", align_corners=False)``, padded with ``fill``,
    gathered in the map's own dtype: a stack of hundreds of full-size instance masks is never
    turned into float32.
    """
    lead, (h, w), (ho, wo) = a.shape[:-2], a.shape[-2:], size
    if a.numel() == 0:
        return a.new_full((*lead, ho, wo), fill)
    dev = a.device
    ys, xs = torch.meshgrid(torch.arange(ho, device=dev) + 0.5, torch.arange(wo, device=dev) + 0.5,
                            indexing="ij")
    pts = torch.stack([xs, ys, torch.ones_like(xs)], -1).view(-1, 3)
    src = pts @ minv[:2].T.to(dev, torch.float32)  # pixel-edge coordinates in the input
    ix, iy = torch.round(src[:, 0] - 0.5).long(), torch.round(src[:, 1] - 0.5).long()
    valid = (ix >= 0) & (ix < w) & (iy >= 0) & (iy < h)
    idx = iy.clamp(0, h - 1) * w + ix.clamp(0, w - 1)
    out = a.flatten(-2).index_select(-1, idx)
    out = torch.where(valid, out, torch.full((), fill, dtype=a.dtype, device=dev))
    return out.view(*lead, ho, wo)


def warp(images: torch.Tensor, targets: Sequence[dict], matrices: torch.Tensor, size, box_rule: str = "8point",
         min_area: float = 1.0, min_visibility: float = 0.0):
    """Apply one affine map per sample to images and targets.

    Parameters
    ----------
    images : (B, C, H, W) float tensor.
    targets : B dicts with ``"boxes"`` (N, 4) and optionally ``"labels"``, ``"masks"`` (N, H, W),
        ``"semantic"`` (H, W), ``"area"`` and any other per-object tensors (lists or arrays N long
        come back as tensors, dropped with their boxes).
    matrices : (B, 3, 3) float64 input->output maps in pixel-edge coordinates.
    size : output (height, width).
    box_rule : ``"8point"``, ``"4corner"`` (see :func:`map_boxes`) or ``"mask"`` (tight box of the
        warped instance mask; ``"8point"`` for targets without masks, and for the visibility of
        all). With masks, whatever the rule, an object whose warped mask is empty is dropped (a
        crop that keeps a corner of a round cell's box but none of the cell; an object whose mask
        was already empty too, even under a flip), and an object the output's edge cuts gets the
        box of its visible pixels within its clipped box (objects inside keep the rule's box, so
        under a rotation the two kinds of box are not alike).
    min_area, min_visibility : after clipping to the output, an object is dropped when its box is
        under 1 px wide or high, under ``min_area`` px², or keeps less than ``min_visibility`` of
        the area of its unclipped box. Every tensor entry whose first dimension is the number of
        boxes (except ``IMAGE_KEYS``) is filtered alongside; ``"area"`` is recomputed.

    Returns
    -------
    images, targets : a new tensor (the input when every map is the identity) and new dicts.
    """
    if box_rule not in BOX_RULES:
        raise ValueError(f"box_rule must be one of {BOX_RULES}, got {box_rule!r}")
    minv = torch.linalg.inv(matrices)
    out = _resample(images, minv, size, "bilinear")
    h, w = size
    new = []
    for m, mi, t in zip(matrices, minv, targets):
        t, n = dict(t), len(t["boxes"])
        poly = map_boxes(t["boxes"], m, "4corner" if box_rule == "4corner" else "8point")
        for k, fill in (("masks", 0), ("semantic", IGNORE)):  # padding has no class: ignored, not background
            if k in t:
                t[k] = _nearest(t[k], mi, size, fill)
        hi = torch.tensor([w, h, w, h], dtype=poly.dtype, device=poly.device)
        clipped = torch.minimum(poly.clamp_min(0), hi)
        shown = torch.ones(n, dtype=torch.bool, device=poly.device)
        if "masks" in t:
            mm = t["masks"].bool()
            shown = mm.flatten(1).any(1)  # an object none of whose pixels is left is no object
            tight = mask_boxes(mm).to(poly)
            if box_rule == "mask":
                box = tight
            else:  # an object the output's edge cuts: the box of what is left of it, not its clipped box
                cut = (clipped != poly).any(1, keepdim=True)
                inner = torch.cat([torch.maximum(clipped[:, :2], tight[:, :2]),
                                   torch.minimum(clipped[:, 2:], tight[:, 2:])], 1)
                box = torch.where(cut & shown[:, None], inner, clipped)
        else:
            box = clipped
        bw, bh = box[:, 2] - box[:, 0], box[:, 3] - box[:, 1]
        area0 = ((poly[:, 2] - poly[:, 0]) * (poly[:, 3] - poly[:, 1])).clamp_min(1e-12)
        visible = (clipped[:, 2] - clipped[:, 0]) * (clipped[:, 3] - clipped[:, 1]) / area0
        keep = (bw >= 1 - 1e-6) & (bh >= 1 - 1e-6) & (bw * bh >= min_area - 1e-6) & (visible >= min_visibility)
        keep &= shown
        # integer boxes (hand-built from COCO's integers) came back truncated: 1.5 read as 1
        dtype = t["boxes"].dtype if t["boxes"].dtype.is_floating_point else torch.float32
        t = {k: v if k in IMAGE_KEYS else _kept(v, keep, n) for k, v in t.items()}
        t["boxes"] = box[keep].to(dtype)
        if "area" in t:
            t["area"] = (t["masks"].flatten(1).sum(1).float() if "masks" in t
                         else bw[keep] * bh[keep]).to(t["area"].dtype)
        new.append(t)
    return out, new


def _span(v, name: str, around: float | None = None) -> tuple[float, float]:
    """``(lo, hi)`` from a pair, or from a half-width ``v`` around ``around`` (a number itself when None)."""
    if isinstance(v, (tuple, list)) and len(v) == 2:
        lo, hi = float(v[0]), float(v[1])
    elif np.isscalar(v):
        lo, hi = (float(v), float(v)) if around is None else (around - float(v), around + float(v))
    else:
        raise ValueError(f"{name} must be a number or a (low, high) pair, got {v!r}")
    if not (math.isfinite(lo) and math.isfinite(hi) and lo <= hi):
        raise ValueError(f"{name} must give a finite range low <= high, got {v!r}")
    return lo, hi


def _uniform(n: int, span, g: torch.Generator) -> torch.Tensor:
    lo, hi = span
    return lo + (hi - lo) * torch.rand(n, generator=g, dtype=torch.float64)


def _hw(size) -> tuple[int, int]:
    h, w = (size, size) if np.isscalar(size) else size
    if int(h) < 1 or int(w) < 1:
        raise ValueError(f"size must be positive, got {size!r}")
    return int(h), int(w)


class Transform:
    """Base of all transforms: draw per-sample parameters, then apply them to a batch.

    Parameters
    ----------
    p : probability that the transform acts on each sample.
    """

    def __init__(self, p: float = 1.0):
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"p must be in [0, 1], got {p!r}")
        self.p = float(p)

    def sample_params(self, n: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """Random parameters for a batch of ``n``: CPU tensors, per-sample ones of first dimension ``n``.

        Parameters
        ----------
        n : batch size.
        generator : CPU generator the parameters are drawn from.
        """
        return {"on": torch.rand(n, generator=generator) < self.p}

    def apply(self, images: torch.Tensor, targets: list[dict], params: dict):
        """``(images, targets)`` transformed with ``params`` (images float in [0, 1]).

        Parameters
        ----------
        images : ``(B, C, H, W)`` float tensor in [0, 1].
        targets : B target dicts (see :func:`warp`).
        params : parameters from :meth:`sample_params` for this batch.
        """
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in vars(self).items())})"


class Geometric(Transform):
    """Base of the transforms that move pixels: subclasses give one matrix per sample.

    ``frame_bijection``: the map takes the whole input frame onto the whole output frame (flips,
    quarter turns, resizing), so nothing leaves the picture; ``keeps_content``: nothing leaves
    it, though the output frame may hold more (padding). :class:`Augment` composes consecutive
    maps into one warp only where that gives the same pixels as warping one by one: after a map
    that can cut content away (a rotation, a crop), only frame bijections may follow in the same
    warp, or what was cut would come back.
    """

    box_rule = "8point"
    frame_bijection = False
    keeps_content = False

    def matrices(self, params: dict, hw: tuple[int, int]) -> tuple[torch.Tensor, tuple[int, int]]:
        """``(B, 3, 3)`` float64 input->output maps and the output (height, width).

        Parameters
        ----------
        params : parameters from :meth:`sample_params` for the batch.
        hw : input (height, width).
        """
        raise NotImplementedError

    def apply(self, images, targets, params, *, min_area: float = 1.0, min_visibility: float = 0.0):
        """Warp images and targets with :meth:`matrices` (see :func:`warp`).

        Parameters
        ----------
        images : ``(B, C, H, W)`` float tensor in [0, 1].
        targets : B target dicts (see :func:`warp`).
        params : parameters from :meth:`sample_params` for this batch.
        min_area, min_visibility : drop rules for the objects (see :func:`warp`).
        """
        m, size = self.matrices(params, tuple(images.shape[-2:]))
        return warp(images, targets, m, size, self.box_rule, min_area, min_visibility)


class HorizontalFlip(Geometric):
    """Mirror left-right with probability ``p``.

    Parameters
    ----------
    p : probability per sample.
    """

    frame_bijection = keeps_content = True

    def __init__(self, p: float = 0.5):
        super().__init__(p)

    def matrices(self, params, hw):
        """Left-right mirror maps (identity where the flip is off).

        Parameters
        ----------
        params : parameters from :meth:`sample_params` for the batch.
        hw : input (height, width).

        Returns
        -------
        matrices : ``(B, 3, 3)`` float64 input->output maps.
        size : output (height, width).
        """
        on = params["on"].double()
        return _affine(1 - 2 * on, 0, on * hw[1], 0, 1, 0), hw


class VerticalFlip(Geometric):
    """Mirror top-bottom with probability ``p``.

    Parameters
    ----------
    p : probability per sample.
    """

    frame_bijection = keeps_content = True

    def __init__(self, p: float = 0.5):
        super().__init__(p)

    def matrices(self, params, hw):
        """Top-bottom mirror maps (identity where the flip is off).

        Parameters
        ----------
        params : parameters from :meth:`sample_params` for the batch.
        hw : input (height, width).

        Returns
        -------
        matrices : ``(B, 3, 3)`` float64 input->output maps.
        size : output (height, width).
        """
        on = params["on"].double()
        return _affine(1, 0, 0, 0, 1 - 2 * on, on * hw[0]), hw


class Rot90(Geometric):
    """Rotate by ``k`` quarter turns counter-clockwise (as :func:`numpy.rot90`), k uniform in {1, 2, 3}.

    A batch must keep one shape, so the parity of ``k`` is drawn once per batch (odd with
    probability 2p/3) and ``k`` per sample; each sample still gets k = 0 with probability 1 - p
    and k = 1, 2, 3 with p/3 each. Odd ``k`` swaps height and width.

    Parameters
    ----------
    p : probability that a sample is turned (k != 0).
    """

    frame_bijection = keeps_content = True

    def __init__(self, p: float = 0.5):
        super().__init__(p)

    def sample_params(self, n, generator):
        """``{"k": (n,) quarter turns}``, one parity for the whole batch.

        Parameters
        ----------
        n : batch size.
        generator : CPU generator the parameters are drawn from.
        """
        odd = bool(torch.rand(1, generator=generator) < 2 * self.p / 3)
        u = torch.rand(n, generator=generator)
        k = torch.where(u < 0.5, 1, 3) if odd else torch.where(u < self.p / 3 / (1 - 2 * self.p / 3), 2, 0)
        return {"k": k}

    def matrices(self, params, hw):
        """Quarter-turn maps; width and height swap for odd ``k``.

        Parameters
        ----------
        params : parameters from :meth:`sample_params` for the batch.
        hw : input (height, width).

        Returns
        -------
        matrices : ``(B, 3, 3)`` float64 input->output maps.
        size : output (height, width).
        """
        h, w = hw
        table = _affine([1, 0, -1, 0], [0, 1, 0, -1], [0, 0, w, h], [0, -1, 0, 1], [1, 0, -1, 0], [0, w, h, 0])
        k = params["k"]
        return table[k], (hw if not len(k) or int(k[0]) % 2 == 0 else (w, h))


class Affine(Geometric):
    """Rotation, scale, shear and translation about the image centre; output size unchanged.

    Parameters
    ----------
    degrees : rotation angle range (counter-clockwise): ``d`` means U(-d, d); or a (lo, hi) pair.
    scale : zoom factor range (lo, hi) or a number.
    shear : shear angle range in degrees along x and y (each drawn independently), like ``degrees``.
    translate : (fx, fy): shifts drawn from U(-fx, fx) * width and U(-fy, fy) * height.
    box_rule : how boxes follow the map, one of :data:`BOX_RULES` (see :func:`warp`).
    p : probability per sample.
    """

    def __init__(self, degrees=0.0, scale=(1.0, 1.0), shear=0.0, translate=(0.0, 0.0),
                 box_rule: str = "8point", p: float = 1.0):
        super().__init__(p)
        if box_rule not in BOX_RULES:
            raise ValueError(f"box_rule must be one of {BOX_RULES}, got {box_rule!r}")
        self.degrees, self.shear = _span(degrees, "degrees", 0.0), _span(shear, "shear", 0.0)
        self.scale = _span(scale, "scale")
        if self.scale[0] <= 0:
            raise ValueError(f"scale must be positive, got {scale!r}")
        if not (isinstance(translate, (tuple, list)) and len(translate) == 2):
            raise ValueError(f"translate must be a pair (x, y) of fractions or (low, high) spans, got {translate!r}")
        fx, fy = translate
        self.translate = _span(fx, "translate x", 0.0), _span(fy, "translate y", 0.0)
        self.box_rule = box_rule

    def sample_params(self, n, generator):
        """``on`` and per-sample ``angle``, ``shx``, ``shy`` (degrees), ``scale``, ``tx``, ``ty``.

        Parameters
        ----------
        n : batch size.
        generator : CPU generator the parameters are drawn from.
        """
        p = super().sample_params(n, generator)
        for k, span in (("angle", self.degrees), ("scale", self.scale), ("shx", self.shear), ("shy", self.shear),
                        ("tx", self.translate[0]), ("ty", self.translate[1])):
            p[k] = _uniform(n, span, generator)
        return p

    def matrices(self, params, hw):
        """Maps about the image centre; identity where the transform is off.

        Parameters
        ----------
        params : parameters from :meth:`sample_params` for the batch.
        hw : input (height, width).

        Returns
        -------
        matrices : ``(B, 3, 3)`` float64 input->output maps.
        size : output (height, width).
        """
        h, w = hw
        on = params["on"].double()
        a, shx, shy = (torch.deg2rad(params[k] * on) for k in ("angle", "shx", "shy"))
        s = torch.where(params["on"], params["scale"], 1.0)
        cos, sin = torch.cos(a), torch.sin(a)
        m = (_affine(1, 0, w / 2 + params["tx"] * on * w, 0, 1, h / 2 + params["ty"] * on * h)
             @ _affine(cos, sin, 0, -sin, cos, 0) @ _affine(1, torch.tan(shx), 0, torch.tan(shy), 1, 0)
             @ _affine(s, 0, 0, 0, s, 0) @ _affine(1, 0, -w / 2, 0, 1, -h / 2))
        return m, hw


class RandomCrop(Geometric):
    """A window of ``size`` (int or (h, w)) at a uniformly random integer position.

    Where the image is smaller than ``size`` the window reaches past it (zero padding, image at a
    random offset).

    Parameters
    ----------
    size : output size in pixels, an int (square) or (height, width).
    """

    def __init__(self, size):
        super().__init__(1.0)
        self.size = _hw(size)

    def sample_params(self, n, generator):
        """``{"u": (n, 2) uniform [0, 1) positions}`` of the windows.

        Parameters
        ----------
        n : batch size.
        generator : CPU generator the parameters are drawn from.
        """
        return {"u": torch.rand(n, 2, generator=generator, dtype=torch.float64)}

    def matrices(self, params, hw):
        """Integer shifts to each sample's window; the output size is ``size``.

        Parameters
        ----------
        params : parameters from :meth:`sample_params` for the batch.
        hw : input (height, width).

        Returns
        -------
        matrices : ``(B, 3, 3)`` float64 input->output maps.
        size : output (height, width).
        """
        d = torch.tensor([hw[1] - self.size[1], hw[0] - self.size[0]], dtype=torch.float64)
        off = torch.minimum(torch.floor(params["u"] * (d.abs() + 1)), d.abs()) * d.sign()
        return _affine(1, 0, -off[:, 0], 0, 1, -off[:, 1]), self.size


class Pad(Geometric):
    """Pad with zeros, image centred, to at least ``size`` (int or (h, w)); larger sides stay.

    Parameters
    ----------
    size : smallest output size in pixels, an int (square) or (height, width).
    """

    keeps_content = True

    def __init__(self, size):
        super().__init__(1.0)
        self.size = _hw(size)

    def matrices(self, params, hw):
        """Integer shifts that centre the image in the padded output.

        Parameters
        ----------
        params : parameters from :meth:`sample_params` for the batch.
        hw : input (height, width).

        Returns
        -------
        matrices : ``(B, 3, 3)`` float64 input->output maps.
        size : output (height, width).
        """
        out = (max(hw[0], self.size[0]), max(hw[1], self.size[1]))
        m = _affine(1, 0, (out[1] - hw[1]) // 2, 0, 1, (out[0] - hw[0]) // 2)
        return m.expand(len(params["on"]), 3, 3), out


class Resize(Geometric):
    """Scale by ``scale`` (a number, or a (lo, hi) range drawn once per batch: one output size).

    Parameters
    ----------
    scale : scale factor (> 0), or a (lo, hi) range.
    """

    frame_bijection = keeps_content = True

    def __init__(self, scale):
        super().__init__(1.0)
        self.scale = _span(scale, "scale")
        if self.scale[0] <= 0:
            raise ValueError(f"scale must be positive, got {scale!r}")

    def sample_params(self, n, generator):
        """``{"scale": (n,)}``: one factor drawn for the whole batch.

        Parameters
        ----------
        n : batch size.
        generator : CPU generator the parameters are drawn from.
        """
        return {"scale": _uniform(1, self.scale, generator).expand(n)}

    def matrices(self, params, hw):
        """Scaling maps to the output size ``round(hw * scale)``.

        Parameters
        ----------
        params : parameters from :meth:`sample_params` for the batch.
        hw : input (height, width).

        Returns
        -------
        matrices : ``(B, 3, 3)`` float64 input->output maps.
        size : output (height, width).
        """
        s = float(params["scale"][0])
        out = (round(hw[0] * s), round(hw[1] * s))
        if min(out) < 1:
            raise ValueError(f"Resize({s:.3g}) of a {hw[1]}x{hw[0]} image gives an empty image")
        m = _affine(out[1] / hw[1], 0, 0, 0, out[0] / hw[0], 0)
        return m.expand(len(params["scale"]), 3, 3), out


def _col(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Per-sample values (B,) or (B, C) shaped to broadcast over (B, C, H, W) images."""
    return v.to(x.device, x.dtype).view(len(v), -1, 1, 1)


def _device_generator(x: torch.Tensor, seed: torch.Tensor) -> torch.Generator:
    return torch.Generator(device=x.device).manual_seed(int(seed))


class Photometric(Transform):
    """Base of the transforms that change only the image (float, result clipped to [0, 1]).

    Subclasses list their per-sample factors in ``ranges`` (``name -> (lo, hi)``, drawn from
    U(lo, hi)); ``seed`` seeds per-pixel noise. :meth:`image` sees only the samples it acts on.
    """

    ranges: dict = {}

    def sample_params(self, n, generator):
        """``on``, one value per sample for each of :attr:`ranges`, and a ``seed`` for per-pixel noise.

        Parameters
        ----------
        n : batch size.
        generator : CPU generator the parameters are drawn from.
        """
        p = super().sample_params(n, generator)
        for k, span in self.ranges.items():
            p[k] = _uniform(n, span, generator)
        p["seed"] = torch.randint(0, 2 ** 62, (), generator=generator)
        return p

    def image(self, x: torch.Tensor, params: dict) -> torch.Tensor:
        """The changed images as a new tensor (``x`` itself is left alone).

        Parameters
        ----------
        x : ``(B, C, H, W)`` float images in [0, 1], only the samples the transform acts on.
        params : their parameters (from :meth:`sample_params`, already restricted to those samples).
        """
        raise NotImplementedError

    def apply(self, images, targets, params):
        """``(images, targets)`` with :meth:`image` applied to the samples it acts on, clipped to [0, 1].

        Targets are returned unchanged; the input tensor is not modified.

        Parameters
        ----------
        images : ``(B, C, H, W)`` float tensor in [0, 1].
        targets : B target dicts (passed through).
        params : parameters from :meth:`sample_params` for this batch.
        """
        on = params["on"]
        if not bool(on.any()):
            return images, targets
        if bool(on.all()):
            return self.image(images, params).clamp_(0, 1), targets
        sel = on.nonzero().flatten()
        sub = {k: v[sel] if v.ndim else v for k, v in params.items()}
        out = images.clone()
        out[sel.to(images.device)] = self.image(images[sel.to(images.device)], sub).clamp_(0, 1)
        return out, targets


class ColorJitter(Photometric):
    """Brightness, contrast and saturation factors U(1-v, 1+v) and a hue shift U(-h, h) (turns).

    Each also accepts a (lo, hi) pair. Applied in that order, batched with per-sample factors,
    with :mod:`torchvision.transforms.v2.functional` for greyscale and hue.

    Parameters
    ----------
    brightness, contrast, saturation : half-width ``v`` of the factor range U(1-v, 1+v), or a
        (lo, hi) pair; factors must be >= 0.
    hue : half-width ``h`` of the hue shift U(-h, h) in turns, or a (lo, hi) pair, within
        [-0.5, 0.5].
    p : probability per sample.
    """

    needs_rgb = True  # works on the three colour channels

    def __init__(self, brightness=0.0, contrast=0.0, saturation=0.0, hue=0.0, p: float = 1.0):
        super().__init__(p)
        self.ranges = {"brightness": _span(brightness, "brightness", 1.0), "contrast": _span(contrast, "contrast", 1.0),
                       "saturation": _span(saturation, "saturation", 1.0), "hue": _span(hue, "hue", 0.0)}
        if min(v[0] for k, v in self.ranges.items() if k != "hue") < 0 or max(map(abs, self.ranges["hue"])) > 0.5:
            raise ValueError("colour factors must be >= 0 and hue within [-0.5, 0.5]")

    def image(self, x, p):
        """Brightness, contrast, saturation, then hue, with each sample's factors.

        Parameters
        ----------
        x : ``(B, C, H, W)`` float images in [0, 1], only the samples the transform acts on.
        p : their parameters (from :meth:`sample_params`, already restricted to those samples).
        """
        x = (x * _col(p["brightness"], x)).clamp_(0, 1)
        c, s = _col(p["contrast"], x), _col(p["saturation"], x)
        mean = TF.rgb_to_grayscale(x).mean((-3, -2, -1), keepdim=True)
        x.mul_(c).add_(mean * (1 - c)).clamp_(0, 1)
        grey = TF.rgb_to_grayscale(x).mul_(1 - s)
        x.mul_(s).add_(grey).clamp_(0, 1)
        return _shift_hue(x, p["hue"])


def _shift_hue(x: torch.Tensor, hue: torch.Tensor) -> torch.Tensor:
    """``(B, 3, H, W)`` float images with each sample's hue turned by ``hue[i]`` (turns).

    The arithmetic of :func:`torchvision.transforms.v2.functional.adjust_hue` (HSV round trip),
    done once for the whole batch with per-sample shifts: adjust_hue takes one shift per call, and
    a call per image was the slowest part of batched augmentation on a GPU. Where torchvision's
    HSV helpers are not importable, it falls back to one adjust_hue call per shifted image.
    """
    on = hue != 0
    if not bool(on.any()):
        return x
    try:
        from torchvision.transforms.v2.functional._color import _hsv_to_rgb, _rgb_to_hsv
    except ImportError:  # another torchvision layout: the per-image public call
        for i in on.nonzero().flatten().tolist():
            x[i] = TF.adjust_hue(x[i], float(hue[i]))
        return x
    idx = on.nonzero().flatten().to(x.device)
    hsv = _rgb_to_hsv(x[idx])
    h, sat, val = hsv.unbind(dim=-3)
    h = (h + _col(hue[on], h)[:, 0]).remainder_(1.0)
    x[idx] = _hsv_to_rgb(torch.stack((h, sat, val), dim=-3))
    return x


class GaussianBlur(Photometric):
    """Gaussian blur with sigma U(lo, hi) pixels per sample (separable, edge pixels repeated).

    Parameters
    ----------
    sigma : blur sigma in pixels, a (lo, hi) range or a number (>= 0).
    p : probability per sample.
    """

    def __init__(self, sigma=(0.1, 1.5), p: float = 0.5):
        super().__init__(p)
        self.ranges = {"sigma": _span(sigma, "sigma")}
        if self.ranges["sigma"][0] < 0:
            raise ValueError(f"sigma must be >= 0, got {sigma!r}")

    def image(self, x, p):
        """The blurred images (kernel radius ``ceil(3 * largest sigma)``).

        Parameters
        ----------
        x : ``(B, C, H, W)`` float images in [0, 1], only the samples the transform acts on.
        p : their parameters (from :meth:`sample_params`, already restricted to those samples).
        """
        s = p["sigma"]
        r = max(1, math.ceil(3 * float(s.max())))
        d = torch.arange(-r, r + 1, dtype=torch.float64)
        k = torch.exp(-0.5 * (d / s.clamp_min(1e-6)[:, None]) ** 2)
        b, c, h, w = x.shape
        k = (k / k.sum(1, keepdim=True)).repeat_interleave(c, 0).to(x)  # (B*C, 2r+1)
        y = F.pad(x.reshape(1, b * c, h, w), (r, r, r, r), mode="replicate")
        y = F.conv2d(F.conv2d(y, k[:, None, None, :], groups=b * c), k[:, None, :, None], groups=b * c)
        return y.view(b, c, h, w)


class GaussianNoise(Photometric):
    """Add Gaussian noise of standard deviation U(lo, hi) (image range [0, 1]) per sample.

    Parameters
    ----------
    std : noise standard deviation (image range [0, 1]), a (lo, hi) range or a number.
    p : probability per sample.
    """

    def __init__(self, std=(0.005, 0.03), p: float = 0.5):
        super().__init__(p)
        self.ranges = {"std": _span(std, "std")}

    def image(self, x, p):
        """The images plus noise drawn from a device generator seeded by ``p["seed"]``.

        Parameters
        ----------
        x : ``(B, C, H, W)`` float images in [0, 1], only the samples the transform acts on.
        p : their parameters (from :meth:`sample_params`, already restricted to those samples).
        """
        noise = torch.randn(x.shape, generator=_device_generator(x, p["seed"]), device=x.device, dtype=x.dtype)
        return x + _col(p["std"], x) * noise


class Gamma(Photometric):
    """Gamma correction ``x ** g`` with g drawn from ``gamma`` = (lo, hi) per sample.

    Parameters
    ----------
    gamma : exponent range (lo, hi), or a number (> 0).
    p : probability per sample.
    """

    def __init__(self, gamma=(0.8, 1.25), p: float = 0.5):
        super().__init__(p)
        self.ranges = {"gamma": _span(gamma, "gamma")}
        if self.ranges["gamma"][0] <= 0:
            raise ValueError(f"gamma must be positive, got {gamma!r}")

    def image(self, x, p):
        """``x ** g`` with each sample's ``g``.

        Parameters
        ----------
        x : ``(B, C, H, W)`` float images in [0, 1], only the samples the transform acts on.
        p : their parameters (from :meth:`sample_params`, already restricted to those samples).
        """
        return x.clamp_min(0) ** _col(p["gamma"], x)


class SaltPepper(Photometric):
    """Set a fraction ``amount`` (number or (lo, hi)) of the pixels to white or black, half each.

    Parameters
    ----------
    amount : fraction of the pixels changed, a (lo, hi) range or a number, within [0, 1].
    p : probability per sample.
    """

    def __init__(self, amount=(0.0, 0.01), p: float = 0.5):
        super().__init__(p)
        self.ranges = {"amount": _span(amount, "amount")}
        if not 0 <= self.ranges["amount"][0] <= self.ranges["amount"][1] <= 1:
            raise ValueError(f"amount must be within [0, 1], got {amount!r}")

    def image(self, x, p):
        """The images with white and black pixels (the same pixels in every channel).

        Parameters
        ----------
        x : ``(B, C, H, W)`` float images in [0, 1], only the samples the transform acts on.
        p : their parameters (from :meth:`sample_params`, already restricted to those samples).
        """
        b, _, h, w = x.shape
        r = torch.rand((b, 1, h, w), generator=_device_generator(x, p["seed"]), device=x.device, dtype=x.dtype)
        half = _col(p["amount"], x) / 2
        return torch.where(r < half, 1.0, torch.where(r > 1 - half, 0.0, x))


class StainJitter(Photometric):
    """Random perturbation of the stain concentrations (HED colour augmentation).

    RGB is turned into optical density ``-ln(max(x, 1/255))`` and projected on the
    haematoxylin, eosin and DAB stain vectors of Ruifrok & Johnston (2001), "Quantification of
    histochemical staining by color deconvolution", Anal. Quant. Cytol. Histol. 23:291-299 (the
    matrix of :func:`skimage.color.rgb2hed`; for Romanowsky-stained blood the third channel acts as
    a residual). Each concentration ``c`` becomes ``alpha * c + beta`` with alpha ~ U(1-a, 1+a)
    and beta ~ U(-b, b) per sample and stain (as in Tellez et al. 2018, "Whole-slide mitosis
    detection in H&E breast histology using PHH3 as a reference to train distilled
    stain-invariant convolutional networks"), then the image is reconstructed.

    Parameters
    ----------
    alpha : half-width ``a`` of the concentration factor U(1-a, 1+a), or a (lo, hi) pair.
    beta : half-width ``b`` of the concentration offset U(-b, b), or a (lo, hi) pair.
    p : probability per sample.
    """

    needs_rgb = True  # works on the three colour channels

    _to_hed = torch.tensor(hed_from_rgb, dtype=torch.float32)
    _to_rgb = torch.tensor(rgb_from_hed, dtype=torch.float32)

    def __init__(self, alpha: float = 0.05, beta: float = 0.02, p: float = 0.5):
        super().__init__(p)
        self.alpha, self.beta = _span(alpha, "alpha", 1.0), _span(beta, "beta", 0.0)
        if self.alpha[0] < 0:
            raise ValueError(f"alpha must keep the concentration factor >= 0, got the range {self.alpha} "
                             "(a negative factor turns stain into its complement)")

    def sample_params(self, n, generator):
        """``on``, ``seed`` and ``(n, 3)`` ``alpha`` and ``beta``, one per sample and stain.

        Parameters
        ----------
        n : batch size.
        generator : CPU generator the parameters are drawn from.
        """
        p = super().sample_params(n, generator)
        p["alpha"] = _uniform(3 * n, self.alpha, generator).view(n, 3)
        p["beta"] = _uniform(3 * n, self.beta, generator).view(n, 3)
        return p

    def image(self, x, p):
        """The images with their stain concentrations perturbed and reconstructed.

        Parameters
        ----------
        x : ``(B, C, H, W)`` float images in [0, 1], only the samples the transform acts on.
        p : their parameters (from :meth:`sample_params`, already restricted to those samples).
        """
        od = x.clamp_min(1 / 255).log_().neg_()
        conc = torch.einsum("bchw,cs->bshw", od, self._to_hed.to(x)).mul_(_col(p["alpha"], x)).add_(_col(p["beta"], x))
        return torch.einsum("bshw,sc->bchw", conc, self._to_rgb.to(x)).neg_().exp_()


def _target_problem(t: dict, hw) -> str | None:
    """What is wrong with one target for an image of size ``hw``, or None."""
    boxes = t.get("boxes")
    if boxes is None or boxes.ndim != 2 or boxes.shape[1] != 4:
        return f"boxes must be an (N, 4) tensor, got {None if boxes is None else tuple(boxes.shape)}"
    n = len(boxes)
    if "labels" in t and len(t["labels"]) != n:
        return f"{n} boxes but {len(t['labels'])} labels"
    if "masks" in t and tuple(t["masks"].shape) != (n, *hw):
        return f"instance masks have shape {tuple(t['masks'].shape)}, expected {(n, *hw)} (N boxes, image H, W)"
    if "semantic" in t and tuple(t["semantic"].shape) != tuple(hw):
        return f"semantic mask has shape {tuple(t['semantic'].shape)}, image is {tuple(hw)}"
    return None


def _as_per_object(v):
    """A per-object list or array as a tensor when it holds numbers (labels, flags), else as a
    list (text: names), so that either is dropped with its boxes."""
    a = np.asarray(v)
    return torch.as_tensor(a) if a.dtype.kind in "biuf" else list(v)


def _kept(v, keep: torch.Tensor, n: int):
    """A target entry with the objects ``keep`` selects when it holds one value per object: a
    tensor, or a list or array (numbers become a tensor, text stays a list; only tensors were cut
    before, and numpy labels slid onto the wrong boxes); anything else as it is."""
    if not torch.is_tensor(v) and _per_object(v, n):
        v = _as_per_object(v)
    if isinstance(v, list):
        return [x for x, ok in zip(v, keep.tolist()) if ok]
    if torch.is_tensor(v) and v.ndim and len(v) == n:
        return v[keep.to(v.device)]
    return v


def _per_object(v, n: int) -> bool:
    """A per-object ``meta`` entry: a list or array aligned with the boxes (a tuple is one value of
    the image, e.g. a tile's ``window``, whatever its length)."""
    return isinstance(v, (list, np.ndarray)) and len(v) == n


class Augment:
    """A sequence of transforms with its own random generator.

    Parameters
    ----------
    transforms : :class:`Transform` objects, applied in order.
    seed : seeds the generator: the same seed and call order give the same results. In a
        DataLoader worker the generator is seeded from the worker's torch seed instead (distinct
        per worker and per epoch; seed the loader for repeatable runs).
    min_area, min_visibility : drop rules applied after the geometric transforms (consecutive ones
        are composed into one map and one warp; see :func:`warp`).

    Examples
    --------
    >>> aug = Augment([HorizontalFlip(), Affine(degrees=10), ColorJitter(0.1, 0.1)], seed=0)
    >>> out = aug(sample)                              # numpy Sample in, new Sample out
    >>> images, targets = aug.batch(images, targets)   # (B, C, H, W) tensors on any device
    """

    def __init__(self, transforms: Sequence[Transform], seed: int = 0, *, min_area: float = 1.0,
                 min_visibility: float = 0.0):
        self.transforms = list(transforms)
        for t in self.transforms:
            if not isinstance(t, Transform):
                raise TypeError(f"not a Transform: {t!r}")
        self.seed = seed
        self.generator = torch.Generator().manual_seed(int(seed))
        self.drop = {"min_area": float(min_area), "min_visibility": float(min_visibility)}

    def __repr__(self) -> str:
        inner = ",\n  ".join(map(repr, self.transforms))
        return f"Augment([\n  {inner}], seed={self.seed}, {self.drop})"

    def __call__(self, sample: Sample) -> Sample:
        """A new, augmented :class:`Sample` (the input is not changed).

        Per-object ``meta`` entries (lists or arrays as long as the box list; tuples are values
        of the image) are filtered with the boxes. The copy has ``path=None`` (``release()`` would
        otherwise re-read the file over the augmented pixels); the file is in
        ``meta["source_path"]``.
        """
        self._seed_in_worker()
        image = sample.image
        t = {"boxes": torch.tensor(sample.boxes), "labels": torch.tensor(sample.labels),
             "_index": torch.arange(len(sample.boxes))}
        if sample.has_masks:
            t["masks"] = torch.tensor(np.asarray(sample.masks, bool))
        if sample.has_semantic:
            t["semantic"] = torch.tensor(np.asarray(sample.semantic))
        problem = _target_problem(t, image.shape[:2])
        if problem:
            raise DataError(sample.path or sample.image_id, problem)
        x, (t,) = self.batch(torch.tensor(image).permute(2, 0, 1)[None], [t])
        keep, n = t["_index"].numpy(), len(sample.boxes)
        meta = {k: (v[keep] if isinstance(v, np.ndarray) else type(v)(v[i] for i in keep))
                if _per_object(v, n) else v for k, v in sample.meta.items()}
        if sample.path is not None:
            meta["source_path"] = str(sample.path)
        return dataclasses.replace(
            sample, path=None, boxes=t["boxes"].numpy(), labels=t["labels"].numpy(), meta=meta, size=None,
            _image=x[0].permute(1, 2, 0).contiguous().numpy(),
            _masks=t["masks"].numpy() if "masks" in t else None,
            _semantic=t["semantic"].numpy() if "semantic" in t else None)

    def _seed_in_worker(self) -> None:
        """In a DataLoader worker, seed the generator once from the worker's torch seed (distinct per
        worker and per epoch, set by the loader): every worker holds a copy of this pipeline in one
        state, so without it every worker drew the same numbers, every epoch alike. The detection
        trainer's workers seed it the same way."""
        info = torch.utils.data.get_worker_info()
        if info is not None and getattr(self, "_worker_seed", None) != torch.initial_seed():
            self._worker_seed = torch.initial_seed()
            self.generator.manual_seed(self._worker_seed)

    def batch(self, images: torch.Tensor, targets: Sequence[dict], generator: torch.Generator | None = None):
        """Augment a batch with per-sample random parameters.

        Parameters
        ----------
        images : (B, C, H, W) float tensor in [0, 1] or uint8, on any device.
        targets : B torchvision-style dicts: ``"boxes"`` (N, 4) (integer boxes come back float32),
            ``"labels"``, optional
            ``"masks"`` (N, H, W) bool/uint8, ``"semantic"`` (H, W) and other per-object tensors
            (per-object lists or arrays, N long, come back as tensors, filtered with the boxes).
        generator : CPU generator for the parameters (default: this pipeline's own).

        Returns
        -------
        images, targets : same dtype and device as given; new dicts.
        """
        if images.ndim != 4:
            raise ValueError(f"images must be (B, C, H, W), got shape {tuple(images.shape)}")
        b, c, h, w = images.shape
        if h == 0 or w == 0:
            raise ValueError(f"images have zero size {h}x{w}")
        if images.dtype != torch.uint8:
            if not images.dtype.is_floating_point:
                raise ValueError(f"images must be uint8 (0..255) or float in [0, 1], got {images.dtype}: "
                                 "convert wider integers first (smearlab.data.imageio.to_rgb8)")
            if images.numel() and (float(images.amin()) < -1e-6 or float(images.amax()) > 1 + 1e-6):
                raise ValueError(f"float images must lie in [0, 1], got {float(images.amin()):g}.."
                                 f"{float(images.amax()):g} (0..255 floats would be clipped to white)")
        rgb_only = [type(t).__name__ for t in self.transforms if getattr(t, "needs_rgb", False)]
        if c != 3 and rgb_only:
            raise ValueError(f"{', '.join(rgb_only)} need RGB images (3 channels), got {c}: augment before "
                             "converting to grey, or leave colour transforms out")
        if len(targets) != b:
            raise ValueError(f"{b} images but {len(targets)} targets")
        if generator is None:
            self._seed_in_worker()
        for i, t in enumerate(targets):
            problem = _target_problem(t, (h, w))
            if problem:
                raise ValueError(f"target {i}: {problem}")
        g = self.generator if generator is None else generator
        x = images.float() / 255 if images.dtype == torch.uint8 else images.float()
        targets = [dict(t) for t in targets]
        for t in targets:  # boxes are float: integer ones were truncated by a warp (1.5 read as 1)
            if "boxes" in t and not t["boxes"].dtype.is_floating_point:
                t["boxes"] = t["boxes"].float()
            # per-object lists and arrays as tensors: only tensors are dropped with their boxes (numpy
            # labels kept their length, and the labels after a dropped box slid onto the wrong boxes)
            n = len(t["boxes"])
            for k, v in list(t.items()):
                if k not in IMAGE_KEYS and not torch.is_tensor(v) and _per_object(v, n):
                    t[k] = _as_per_object(v)
        trs, i = self.transforms, 0
        while i < len(trs):
            if not _fusable(trs[i]):
                kw = self.drop if isinstance(trs[i], Geometric) else {}
                x, targets = trs[i].apply(x, targets, trs[i].sample_params(b, g), **kw)
                i += 1
                continue
            # consecutive geometric transforms (same box rule) compose into one map and one warp:
            # one resampling of the images instead of one per transform (flips and quarter turns
            # stay exact copies), the same random draws in the same order
            rule, size, m, cut = trs[i].box_rule, tuple(x.shape[-2:]), None, False
            while i < len(trs) and _fusable(trs[i]) and trs[i].box_rule == rule \
                    and not (cut and not trs[i].frame_bijection):  # what a map cut away must stay away
                mi, size = trs[i].matrices(trs[i].sample_params(b, g), size)
                m = mi if m is None else mi @ m
                cut = cut or not trs[i].keeps_content
                i += 1
            x, targets = warp(x, targets, m, size, rule, **self.drop)
        # contiguous: a transform may return another memory layout (the stain jitter's einsum gives
        # channels-last), and a CPU convolution's backward pass on such a batch corrupted memory
        # (torch 2.14.1, GroupNorm classifier)
        x = x.contiguous()
        if images.dtype == torch.uint8:
            return (x * 255).round_().clamp_(0, 255).to(torch.uint8), targets
        return x.to(images.dtype), targets


def _fusable(tr: Transform) -> bool:
    """A geometric transform that only gives matrices (its maps can be composed with others')."""
    return isinstance(tr, Geometric) and type(tr).apply is Geometric.apply


def default_augment(seed: int = 0, **kw) -> Augment:
    """The smear augmentation used for training.

    Flips and quarter turns (exact), a small affine map at p=0.3 (+-10 degrees, scale 0.9-1.1,
    shear +-3 degrees, shift +-3 %), colour jitter at p=0.8, stain jitter at p=0.5, and light blur
    and noise at p=0.1. ``kw`` goes to :class:`Augment` (``min_area``, ``min_visibility``).

    Parameters
    ----------
    seed : seed of the pipeline's generator.
    **kw : :class:`Augment` options (``min_area``, ``min_visibility``).
    """
    return Augment([
        HorizontalFlip(0.5), VerticalFlip(0.5), Rot90(0.5),
        Affine(degrees=10, scale=(0.9, 1.1), shear=3, translate=(0.03, 0.03), p=0.3),
        ColorJitter(brightness=0.15, contrast=0.15, saturation=0.15, hue=0.02, p=0.8),
        StainJitter(alpha=0.05, beta=0.02, p=0.5),
        GaussianBlur(sigma=(0.3, 1.0), p=0.1),
        GaussianNoise(std=(0.005, 0.02), p=0.1),
    ], seed=seed, **kw)


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
        """Augmented copy of ``(B, 3, S, S)`` crops (uint8, or float in [0, 1]); same dtype and device.

        Parameters
        ----------
        x : ``(B, C, S, S)`` crops.
        """
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
        return augment_crop_batch(self.photometric, out)


def default_crop_augment(seed: int = 0) -> CropAugment:
    """The crop augmentation of training: the 8 symmetries of the square, then from
    :mod:`smearlab.augment` colour jitter (brightness, contrast, saturation +-15 %) at p=0.8 and
    stain (HED) jitter at p=0.5. (No hue jitter: per-image hue rotation is slow on a CPU and the
    stain jitter already moves the colours.)

    Parameters
    ----------
    seed : seed of the symmetry draws and of the photometric pipeline.
    """
    return CropAugment(Augment([ColorJitter(brightness=0.15, contrast=0.15, saturation=0.15, p=0.8),
                                StainJitter(alpha=0.05, beta=0.02, p=0.5)], seed=seed), seed=seed)


def stain_shift_crop_augment(seed: int = 0) -> CropAugment:
    """The crop augmentation for classifiers meant to travel between labs: the 8 symmetries of
    the square, a zoom-in of 1-1.15 (p=0.5; magnification and cell size differ between
    microscopes; only in, so that no empty border enters the crop), colour jitter (brightness, contrast, saturation +-25 %) at p=0.8 and a
    stronger stain jitter (concentration factors U(0.85, 1.15), offsets U(-0.04, 0.04)) at p=0.8.
    ``augment="stain"`` in the classifier's training.

    Parameters
    ----------
    seed : seed of the symmetry draws and of the photometric pipeline.
    """
    return CropAugment(Augment([Affine(scale=(1.0, 1.15), p=0.5),
                                ColorJitter(brightness=0.25, contrast=0.25, saturation=0.25, p=0.8),
                                StainJitter(alpha=0.15, beta=0.04, p=0.8)], seed=seed), seed=seed)


def augment_crop_batch(aug, x: torch.Tensor) -> torch.Tensor:
    """``x`` (a batch of crops) through ``aug``: a :class:`CropAugment`, an :class:`Augment` (no
    boxes), or None (unchanged).

    Parameters
    ----------
    aug : a :class:`CropAugment`, an :class:`Augment` or None.
    x : ``(B, C, S, S)`` crops (uint8, or float in [0, 1]).
    """
    if aug is None:
        return x
    if isinstance(aug, CropAugment):
        return aug.batch(x)
    empty = [{"boxes": torch.zeros((0, 4), device=x.device)} for _ in range(len(x))]
    return aug.batch(x, empty)[0]
