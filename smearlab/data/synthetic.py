"""Synthetic blood smears: the embedded default dataset of quick mode and of the tests.

Drawing model
-------------
Every object adds *optical density* (absorbance, one value per RGB channel) to a padded
canvas; the image is ``illumination * exp(-density)`` (Beer-Lambert), so overlapping cells
darken each other whatever the drawing order. Each object is drawn only inside its own small
window: a soft-edged shape (ellipse whose radius is modulated by a few random harmonics) gives
an alpha map, and a radial profile or a texture gives the density inside it.

* red cells: slightly elliptical discs, darker rim, central pallor, faint low-frequency texture;
* white cells: cytoplasm + a nucleus whose shape depends on the type (lobed neutrophil, round
  lymphocyte, kidney-shaped monocyte, bilobed eosinophil with orange granules, basophil hidden
  by dark granules); chromatin and granules come from a per-image fine noise field;
* platelets: small irregular purple blobs; optional malaria stages drawn inside red cells.

Then one per-image pass: illumination (vignetting and a linear gradient), Gaussian blur of the
stain style, Gaussian noise, rounding to uint8. Colours live in :class:`StainStyle` (styles
"A" and "B"). Ground truth comes from the same alpha maps (mask = alpha >= 0.5), so it is
exact. Every random draw comes from ``SeedSequence(seed, spawn_key=(stream, index))``: image
``index`` does not depend on which other images were made.
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from PIL import Image
from scipy.ndimage import gaussian_filter
from tqdm.auto import tqdm

from .sample import Sample, SmearDataset

WBC_TYPES = ("neutrophil", "lymphocyte", "monocyte", "eosinophil", "basophil")
STAGES = ("ring", "trophozoite", "schizont", "gametocyte")
#: Label schemes: ``classes=`` name -> class names.
SCHEMES = {
    "cbc": ["RBC", "WBC", "Platelets"],
    "wbc": ["RBC", *WBC_TYPES, "Platelets"],
    "malaria": ["RBC", *STAGES, "WBC", "Platelets"],
}
#: Semantic mask of full smears: 1 = any cell body, 2 = white-cell nucleus or parasite.
SEMANTIC_NAMES = ["background", "cell", "nucleus"]
#: Semantic mask of white-cell crops (the crop's white cell only).
CROP_SEMANTIC_NAMES = ["background", "cytoplasm", "nucleus"]
#: Objects less visible than this (fraction of their mask inside the image) leave the ground truth.
MIN_VISIBLE = 0.3

# Frequencies used by the generator: flatter than in blood so that every type is seen.
_WBC_WEIGHTS = (0.30, 0.25, 0.15, 0.15, 0.15)
_NATURAL_WBC = (0.60, 0.30, 0.06, 0.03, 0.01)
_STAGE_WEIGHTS = (0.45, 0.25, 0.15, 0.15)
_WBC_RADIUS = {"neutrophil": (28, 33), "lymphocyte": (23, 28), "monocyte": (31, 36),
               "eosinophil": (28, 32), "basophil": (25, 29)}
_RBC_RADIUS = (14.0, 20.0)


# ---------------------------------------------------------------------------------------------
# stain styles: the one place for colours
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class StainStyle:
    """Colours and optics of one staining / imaging domain.

    Colours are RGB (0-255) of each component at unit density seen against ``background``;
    they are converted to optical densities, so any colour darker than the background works.

    Parameters
    ----------
    name : domain name, stored in ``Sample.domain``.
    background : plasma colour at the field centre.
    rbc, platelet, nucleus : colours of red cells, platelets and white-cell nuclei.
    neutrophil_cytoplasm, lymphocyte_cytoplasm, monocyte_cytoplasm : cytoplasm colours of the
        white-cell types.
    eosinophil_granules, basophil_granules : granule colours.
    parasite_cytoplasm, parasite_chromatin, pigment : colours of malaria parasites (cytoplasm,
        chromatin dots, haemozoin pigment).
    scale : magnification relative to style A (cell sizes are multiplied by it).
    blur : Gaussian blur sigma in pixels.
    noise : Gaussian noise sigma in grey levels.
    vignette : darkening at the field corners (fraction).
    jitter : per-image relative jitter of the stain densities.
    """

    name: str
    background: tuple = (236, 224, 186)
    rbc: tuple = (226, 150, 140)
    platelet: tuple = (150, 90, 170)
    nucleus: tuple = (88, 38, 118)
    neutrophil_cytoplasm: tuple = (224, 192, 196)
    lymphocyte_cytoplasm: tuple = (168, 176, 212)
    monocyte_cytoplasm: tuple = (190, 176, 196)
    eosinophil_granules: tuple = (226, 116, 74)
    basophil_granules: tuple = (62, 22, 92)
    parasite_cytoplasm: tuple = (120, 110, 190)
    parasite_chromatin: tuple = (110, 28, 100)
    pigment: tuple = (90, 62, 30)
    scale: float = 1.0
    blur: float = 0.6
    noise: float = 2.5
    vignette: float = 0.12
    jitter: float = 0.06

    def densities(self) -> dict[str, np.ndarray]:
        """Optical density (3,) of every coloured component."""
        bg = np.asarray(self.background, np.float64)
        out = {}
        for k in ("rbc", "platelet", "nucleus", "neutrophil_cytoplasm", "lymphocyte_cytoplasm",
                  "monocyte_cytoplasm", "eosinophil_granules", "basophil_granules",
                  "parasite_cytoplasm", "parasite_chromatin", "pigment"):
            c = np.clip(np.asarray(getattr(self, k), np.float64), 1.0, None)
            out[k] = np.maximum(-np.log(c / bg), 0.01).astype(np.float32)
        return out


#: A: yellowish-beige plasma, pink cells, sharp (like Zheng dataset 1).
#: B: lavender CellaVision-like plasma, mauve cells, bluer nuclei, softer, 1.25x magnification.
STAINS = {
    "A": StainStyle("A"),
    "B": StainStyle(
        "B", background=(232, 222, 238), rbc=(218, 162, 190), platelet=(120, 96, 176),
        nucleus=(72, 52, 140), neutrophil_cytoplasm=(214, 194, 222),
        lymphocyte_cytoplasm=(168, 180, 226), monocyte_cytoplasm=(184, 180, 210),
        eosinophil_granules=(216, 110, 90), basophil_granules=(56, 30, 110),
        parasite_cytoplasm=(124, 122, 206), parasite_chromatin=(96, 30, 120),
        pigment=(84, 66, 44), scale=1.25, blur=1.1, noise=2.0, vignette=0.08),
}


def get_stain(stain: "str | StainStyle") -> StainStyle:
    """The :class:`StainStyle` named ``stain`` ("A" or "B"), or ``stain`` itself.

    Parameters
    ----------
    stain : ``"A"``, ``"B"`` (a key of :data:`STAINS`) or a :class:`StainStyle`.
    """
    if isinstance(stain, StainStyle):
        return stain
    if isinstance(stain, str) and stain in STAINS:
        return STAINS[stain]
    raise ValueError(f"unknown stain {stain!r}; expected one of {sorted(STAINS)} or a StainStyle")


def class_name(cell_type: str, classes: str) -> str:
    """Class name of an object of ``cell_type`` under the label scheme ``classes``.

    Infected red cells carry their parasite stage as ``cell_type``; they are "RBC" except in
    the "malaria" scheme, where (as in IML and BBBC041) the infected cell is labelled by stage.

    Parameters
    ----------
    cell_type : ``"platelet"``, a white-cell type (:data:`WBC_TYPES`), a parasite stage
        (:data:`STAGES`) or anything else for a red cell.
    classes : label scheme, a key of :data:`SCHEMES` (``"cbc"``, ``"wbc"`` or ``"malaria"``).
    """
    if cell_type == "platelet":
        return "Platelets"
    if cell_type in WBC_TYPES:
        return cell_type if classes == "wbc" else "WBC"
    if cell_type in STAGES and classes == "malaria":
        return cell_type
    return "RBC"


# ---------------------------------------------------------------------------------------------
# shape primitives on a local window (dy, dx broadcastable float32 offsets from the centre)
# ---------------------------------------------------------------------------------------------
def _harmonics(rng, amp: float, kmax: int = 5):
    """Random radius modulation: (k, amplitude, phase) for k = 2..kmax."""
    return [(k, amp * rng.normal() / k ** 0.5, rng.uniform(0, 2 * np.pi)) for k in range(2, kmax + 1)]


def _blob(dy, dx, cy, cx, a, b, angle=0.0, harm=(), soft=0.8):
    """Soft ellipse with a harmonically modulated radius: (alpha, normalised radius)."""
    y, x = dy - cy, dx - cx
    c, s = np.cos(angle), np.sin(angle)
    u = (x * c + y * s) * (1.0 / a)
    v = (y * c - x * s) * (1.0 / b)
    rho = np.sqrt(u * u + v * v)
    if harm:
        th = np.arctan2(v, u)
        f = 1.0
        for k, amp, ph in harm:
            f = f + amp * np.cos(k * th + ph)
        rho = rho / np.maximum(f, 0.3)
    alpha = np.clip((1.0 - rho) * (0.5 * (a + b) / soft) + 0.5, 0.0, 1.0)
    return alpha.astype(np.float32, copy=False), rho


def _disc(dy, dx, cy, cx, r, soft=0.7):
    d = np.sqrt((dy - cy) ** 2 + (dx - cx) ** 2)
    return np.clip((r - d) / soft + 0.5, 0.0, 1.0)


def _capsule(dy, dx, p, q, r, soft=0.7):
    """Soft segment from p to q (y, x) with half-width r."""
    py, px = p
    vy, vx = q[0] - py, q[1] - px
    t = np.clip(((dy - py) * vy + (dx - px) * vx) / max(vy * vy + vx * vx, 1e-6), 0.0, 1.0)
    d = np.sqrt((dy - py - t * vy) ** 2 + (dx - px - t * vx) ** 2)
    return np.clip((r - d) / soft + 0.5, 0.0, 1.0)


def _noise_field(rng, h: int, w: int, cell: float) -> np.ndarray:
    """Smooth Gaussian noise (unit std) with feature size ``cell`` pixels."""
    gh, gw = int(h / cell) + 3, int(w / cell) + 3
    coarse = rng.standard_normal((gh, gw), dtype=np.float32)
    up = Image.fromarray(coarse, mode="F").resize((int(gw * cell), int(gh * cell)), Image.BICUBIC)
    f = np.asarray(up, dtype=np.float32)[:h, :w]
    return (f - f.mean()) / (f.std() + 1e-6)


# ---------------------------------------------------------------------------------------------
# the canvas
# ---------------------------------------------------------------------------------------------
@dataclass
class _Obj:
    cell_type: str
    y0: int                       # window origin in padded canvas coordinates
    x0: int
    mask: np.ndarray              # full object mask in the window
    nucleus: np.ndarray | None = None


class _Smear:
    """Padded optical-density canvas with the per-cell drawing functions."""

    def __init__(self, h: int, w: int, style: StainStyle, ss: np.random.SeedSequence):
        r_style, self.rng, self.rng_par, r_tex, self.rng_noise = [
            np.random.default_rng(s) for s in ss.spawn(5)]
        self.h, self.w, self.style = h, w, style
        self.scale = style.scale * r_style.uniform(0.96, 1.04)
        self.pad = p = int(np.ceil(40 * self.scale)) + 8
        hp, wp = h + 2 * p, w + 2 * p
        self.od = np.zeros((hp, wp, 3), np.float32)
        self.low = _noise_field(r_tex, hp, wp, 10.0)
        self.fine = _noise_field(r_tex, hp, wp, 2.2)
        dens = style.densities()
        gain = 1.0 + style.jitter * r_style.normal()
        self.pal = {k: (v * gain * (1 + 0.5 * style.jitter * r_style.normal(size=3))).astype(np.float32)
                    for k, v in dens.items()}
        self.bg = np.asarray(style.background, np.float32) * (1 + 0.02 * r_style.normal(size=3))
        self.vignette = style.vignette * r_style.uniform(0.5, 1.5)
        self.grad = (0.05 * r_style.normal(), r_style.uniform(0, 2 * np.pi))
        self.vig_c = (r_style.uniform(0.3, 0.7) * h, r_style.uniform(0.3, 0.7) * w)
        self.objects: list[_Obj] = []

    # -- windows ------------------------------------------------------------------------------
    def _window(self, cy, cx, ext):
        p = self.pad
        y0 = max(int(np.floor(cy - ext)) + p, 0)
        x0 = max(int(np.floor(cx - ext)) + p, 0)
        y1 = min(int(np.ceil(cy + ext)) + p + 1, self.od.shape[0])
        x1 = min(int(np.ceil(cx + ext)) + p + 1, self.od.shape[1])
        dy = (np.arange(y0, y1, dtype=np.float32) + (0.5 - p - cy))[:, None]
        dx = (np.arange(x0, x1, dtype=np.float32) + (0.5 - p - cx))[None, :]
        return (slice(y0, y1), slice(x0, x1)), dy, dx

    def _add(self, sl, density, colour):
        self.od[sl] += density[..., None] * self.pal[colour]

    # -- cells ----------------------------------------------------------------------------------
    def rbc(self, cy, cx, r) -> tuple[_Obj, tuple]:
        """Red cell: returns the object and its window (for a parasite)."""
        rng = self.rng
        e = rng.uniform(0.0, 0.09)
        amp = 0.05 if rng.random() < 0.1 else 0.012
        sl, dy, dx = self._window(cy, cx, r * (1 + e) * 1.15 + 2)
        alpha, rho = _blob(dy, dx, 0.0, 0.0, r * (1 + e), r * (1 - e), rng.uniform(0, np.pi),
                           _harmonics(rng, amp, 4), soft=0.9)
        pallor = rng.uniform(0.3, 0.6)
        prof = (0.62 + 0.4 * np.exp(-((rho - 0.78) / 0.2) ** 2)
                - pallor * np.exp(-(rho / rng.uniform(0.38, 0.52)) ** 2)
                + 0.25 * np.exp(-(((1.0 - rho) * r) / 1.6) ** 2))
        dens = alpha * prof * np.maximum(1.0 + 0.1 * self.low[sl], 0.6) * rng.uniform(0.85, 1.15)
        self._add(sl, dens, "rbc")
        obj = _Obj("RBC", sl[0].start, sl[1].start, alpha >= 0.5)
        self.objects.append(obj)
        return obj, (sl, dy, dx, alpha, r)

    def platelet(self, cy, cx, r):
        rng = self.rng
        sl, dy, dx = self._window(cy, cx, r * 1.6 + 2)
        alpha, rho = _blob(dy, dx, 0.0, 0.0, r, r * rng.uniform(0.7, 1.0), rng.uniform(0, np.pi),
                           _harmonics(rng, rng.uniform(0.15, 0.3), 5), soft=0.7)
        gran = np.clip(0.6 + 0.5 * self.fine[sl] + 0.4 * (1 - rho), 0.3, 1.6)
        self._add(sl, alpha * gran * rng.uniform(0.7, 1.1), "platelet")
        self.objects.append(_Obj("platelet", sl[0].start, sl[1].start, alpha >= 0.5))

    def wbc(self, kind, cy, cx, r):
        rng = self.rng
        sl, dy, dx = self._window(cy, cx, r * 1.12 + 2)
        body, _ = _blob(dy, dx, 0.0, 0.0, r, r * rng.uniform(0.92, 1.0), rng.uniform(0, np.pi),
                        _harmonics(rng, 0.02, 4), soft=0.9)
        low, fine = self.low[sl], self.fine[sl]
        nuc = _NUCLEUS[kind](rng, dy, dx, r) * body
        cyto = body * (1.0 - 0.85 * nuc)
        cyto_colour = {"lymphocyte": "lymphocyte_cytoplasm",
                       "monocyte": "monocyte_cytoplasm"}.get(kind, "neutrophil_cytoplasm")
        cd = rng.uniform(0.8, 1.1) * np.maximum(1.0 + 0.12 * low + 0.08 * fine, 0.5)
        if kind == "monocyte":  # vacuoles
            for _ in range(rng.integers(1, 6)):
                ang, rad = rng.uniform(0, 2 * np.pi), rng.uniform(0.45, 0.85) * r
                cd = cd * (1 - 0.7 * _disc(dy, dx, rad * np.sin(ang), rad * np.cos(ang),
                                           rng.uniform(1.5, 3.5) * self.scale))
        self._add(sl, cyto * cd, cyto_colour)
        chrom = np.maximum(1.0 + (0.4 if kind == "monocyte" else 0.28) * fine + 0.1 * low, 0.4)
        nd = {"lymphocyte": 1.25, "monocyte": 0.85}.get(kind, 1.05) * rng.uniform(0.9, 1.1)
        self._add(sl, nuc * chrom * nd, "nucleus")
        if kind == "eosinophil":
            g = np.clip((fine + 0.9) * 0.55, 0.0, 1.1) * cyto
            self._add(sl, g * rng.uniform(0.9, 1.2), "eosinophil_granules")
        elif kind == "basophil":
            g = np.clip((fine - 0.2) * 1.1, 0.0, 1.3) * body * (1 - 0.3 * nuc)
            self._add(sl, g * rng.uniform(0.8, 1.1), "basophil_granules")
        self.objects.append(_Obj(kind, sl[0].start, sl[1].start, body >= 0.5, nuc >= 0.5))

    def parasite(self, obj: _Obj, host: tuple, stage: str):
        """Draw a malaria ``stage`` inside the red cell ``obj`` (window ``host``)."""
        rng, s = self.rng_par, self.scale
        sl, dy, dx, halpha, r = host
        cyto = np.zeros(halpha.shape, np.float32)
        chrom = np.zeros_like(cyto)
        pig = np.zeros_like(cyto)
        ang = rng.uniform(0, 2 * np.pi)
        off = rng.uniform(0, 0.4) * r
        py, px = off * np.sin(ang), off * np.cos(ang)
        if stage == "ring":
            rr, wd = rng.uniform(0.2, 0.32) * r, rng.uniform(0.9, 1.4) * s
            d = np.sqrt((dy - py) ** 2 + (dx - px) ** 2)
            cyto = np.exp(-((d - rr) / wd) ** 2)
            for _ in range(1 + (rng.random() < 0.25)):
                a = rng.uniform(0, 2 * np.pi)
                chrom = np.maximum(chrom, _disc(dy, dx, py + rr * np.sin(a), px + rr * np.cos(a),
                                                rng.uniform(1.4, 2.0) * s))
        elif stage == "trophozoite":
            rad = rng.uniform(0.3, 0.45) * r
            cyto, _ = _blob(dy, dx, py * 0.5, px * 0.5, rad, rad * rng.uniform(0.7, 1.0),
                            rng.uniform(0, np.pi), _harmonics(rng, rng.uniform(0.2, 0.3), 5))
            cyto = cyto * (1.0 + 0.3 * self.fine[sl])
            chrom = _disc(dy, dx, py * 0.5 + rng.uniform(-0.3, 0.3) * rad,
                          px * 0.5 + rng.uniform(-0.3, 0.3) * rad, rng.uniform(1.6, 2.4) * s)
            pig = self._dots(rng, dy, dx, py * 0.5, px * 0.5, rad * 0.8, rng.integers(2, 6), 0.9 * s)
        elif stage == "schizont":
            rad = rng.uniform(0.45, 0.6) * r
            cyto = 0.45 * _disc(dy, dx, py * 0.3, px * 0.3, rad, soft=1.5)
            chrom = self._dots(rng, dy, dx, py * 0.3, px * 0.3, rad * 0.85, rng.integers(8, 17),
                               rng.uniform(1.4, 1.9) * s)
            pig = _disc(dy, dx, py * 0.3, px * 0.3, 2.0 * s)
        else:  # gametocyte: banana-shaped crescent or large oval
            if rng.random() < 0.5:
                c, sn = np.cos(ang), np.sin(ang)
                u, v = dx * c + dy * sn, dy * c - dx * sn
                v = v - rng.choice([-1, 1]) * 0.35 * u * u / r
                rho = np.sqrt((u / (0.9 * r)) ** 2 + (v / (0.3 * r)) ** 2)
                cyto = np.clip((1 - rho) * 0.3 * r + 0.5, 0.0, 1.0)
            else:
                cyto, _ = _blob(dy, dx, 0.0, 0.0, 0.8 * r, 0.65 * r, ang, soft=1.0)
            cyto = cyto * (1.0 + 0.2 * self.fine[sl])
            chrom = 0.5 * _disc(dy, dx, 0.0, 0.0, 0.2 * r, soft=2.0)
            pig = self._dots(rng, dy, dx, 0.0, 0.0, 0.5 * r, rng.integers(5, 12), 0.8 * s) * cyto
        cyto, chrom, pig = cyto * halpha, chrom * halpha, pig * halpha
        self._add(sl, cyto * 0.9, "parasite_cytoplasm")
        self._add(sl, chrom * 1.4, "parasite_chromatin")
        self._add(sl, pig, "pigment")
        obj.cell_type = stage
        obj.nucleus = np.maximum(np.maximum(cyto, chrom), pig) >= 0.5

    def _dots(self, rng, dy, dx, cy, cx, rad, n, r):
        out = np.zeros(np.broadcast_shapes(dy.shape, dx.shape), np.float32)
        for _ in range(int(n)):
            a, d = rng.uniform(0, 2 * np.pi), rad * np.sqrt(rng.random())
            out = np.maximum(out, _disc(dy, dx, cy + d * np.sin(a), cx + d * np.cos(a), r))
        return out

    # -- final image ----------------------------------------------------------------------------
    def render(self) -> np.ndarray:
        """Illuminate, blur, add noise and crop: the (h, w, 3) uint8 image."""
        st, p, h, w = self.style, self.pad, self.h, self.w
        m = min(int(np.ceil(3 * st.blur)) + 1, p)
        od = self.od[p - m:p + h + m, p - m:p + w + m]
        yy = (np.arange(-m, h + m, dtype=np.float32) + 0.5 - self.vig_c[0])[:, None]
        xx = (np.arange(-m, w + m, dtype=np.float32) + 0.5 - self.vig_c[1])[None, :]
        diag2 = float(h * h + w * w)
        g, ga = self.grad
        illum = (1.0 - self.vignette * (yy * yy + xx * xx) * (4.0 / diag2)
                 + g * (yy * np.sin(ga) + xx * np.cos(ga)) / np.sqrt(diag2))
        img = np.exp(-od) * illum[..., None]
        img *= self.bg
        if st.blur > 0:
            img = gaussian_filter(img, sigma=(st.blur, st.blur, 0), mode="nearest", truncate=3.0)
        img = img[m:m + h, m:m + w]
        img += self.rng_noise.standard_normal(img.shape, dtype=np.float32) * np.float32(st.noise)
        return np.clip(img + 0.5, 0, 255).astype(np.uint8)

    def clipped(self, obj: _Obj, what: str = "mask"):
        """(y0, x0, patch) of an object's mask clipped to the image, and its visible fraction."""
        m = getattr(obj, what)
        p = self.pad
        y0, x0 = obj.y0 - p, obj.x0 - p
        ya, xa = max(0, -y0), max(0, -x0)
        yb, xb = min(m.shape[0], self.h - y0), min(m.shape[1], self.w - x0)
        total = int(m.sum())
        if yb <= ya or xb <= xa or total == 0:
            return y0 + ya, x0 + xa, m[:0, :0], 0.0
        part = m[ya:yb, xa:xb]
        return y0 + ya, x0 + xa, part, float(part.sum()) / total


_NUCLEUS = {}


def _nucleus(kind):
    def deco(fn):
        _NUCLEUS[kind] = fn
        return fn
    return deco


@_nucleus("neutrophil")
def _neutrophil_nucleus(rng, dy, dx, r):
    """3-5 lobes chained by thin strands."""
    n = rng.choice([3, 4, 5], p=[0.35, 0.4, 0.25])
    a = rng.uniform(0, 2 * np.pi)
    pts = [np.array([0.0, 0.0]) + rng.uniform(-0.2, 0.2, 2) * r]
    for _ in range(n - 1):
        for _ in range(10):
            a2 = a + rng.uniform(-1.3, 1.3)
            q = pts[-1] + 0.36 * r * np.array([np.sin(a2), np.cos(a2)])
            if np.hypot(*q) < 0.5 * r:
                break
        a = a2
        pts.append(q)
    out = 0.0
    for i, q in enumerate(pts):
        lr = rng.uniform(0.2, 0.27) * r
        lobe, _ = _blob(dy, dx, q[0], q[1], lr, lr * rng.uniform(0.7, 0.95), rng.uniform(0, np.pi),
                        _harmonics(rng, 0.06, 3))
        out = np.maximum(out, lobe)
        if i:
            out = np.maximum(out, _capsule(dy, dx, pts[i - 1], q, rng.uniform(0.05, 0.1) * r))
    return out


@_nucleus("lymphocyte")
def _lymphocyte_nucleus(rng, dy, dx, r):
    """Large round nucleus, thin cytoplasm rim."""
    nr = rng.uniform(0.76, 0.86) * r
    a, off = rng.uniform(0, 2 * np.pi), rng.uniform(0, 0.1) * r
    n, _ = _blob(dy, dx, off * np.sin(a), off * np.cos(a), nr, nr * rng.uniform(0.9, 1.0),
                 rng.uniform(0, np.pi), _harmonics(rng, 0.03, 4))
    return n


@_nucleus("monocyte")
def _monocyte_nucleus(rng, dy, dx, r):
    """Kidney shape: an ellipse with a disc bitten out of one side."""
    a = rng.uniform(0, 2 * np.pi)
    cy, cx = 0.1 * r * np.sin(a), 0.1 * r * np.cos(a)
    ang = rng.uniform(0, np.pi)
    n, _ = _blob(dy, dx, cy, cx, 0.66 * r, 0.5 * r, ang, _harmonics(rng, 0.04, 4))
    side = ang + np.pi / 2 * rng.choice([-1, 1])
    d = rng.uniform(0.5, 0.6) * r
    bite = _disc(dy, dx, cy + d * np.sin(side), cx + d * np.cos(side), rng.uniform(0.22, 0.28) * r, 1.5)
    return n * (1.0 - bite)


@_nucleus("eosinophil")
def _eosinophil_nucleus(rng, dy, dx, r):
    """Two lobes joined by a strand."""
    a = rng.uniform(0, 2 * np.pi)
    d = rng.uniform(0.26, 0.34) * r
    p = (d * np.sin(a), d * np.cos(a))
    q = (-p[0], -p[1])
    out = _capsule(dy, dx, p, q, 0.07 * r)
    for c in (p, q):
        lr = rng.uniform(0.22, 0.28) * r
        lobe, _ = _blob(dy, dx, c[0], c[1], lr, lr * rng.uniform(0.75, 0.95), a)
        out = np.maximum(out, lobe)
    return out


@_nucleus("basophil")
def _basophil_nucleus(rng, dy, dx, r):
    """Irregular nucleus (hidden under the granules)."""
    n, _ = _blob(dy, dx, 0.0, 0.0, 0.55 * r, 0.45 * r, rng.uniform(0, np.pi), _harmonics(rng, 0.12, 4))
    return n


# ---------------------------------------------------------------------------------------------
# ground truth
# ---------------------------------------------------------------------------------------------
class _PatchMasks:
    """Lazy (N, H, W) instance masks from per-object patches (picklable)."""

    def __init__(self, hw, patches):
        self.hw, self.patches = hw, patches

    def __call__(self) -> np.ndarray:
        out = np.zeros((len(self.patches), *self.hw), bool)
        for i, (y0, x0, m) in enumerate(self.patches):
            out[i, y0:y0 + m.shape[0], x0:x0 + m.shape[1]] = m
        return out


def _tight_box(y0, x0, m):
    rows, cols = np.flatnonzero(m.any(1)), np.flatnonzero(m.any(0))
    return [x0 + cols[0], y0 + rows[0], x0 + cols[-1] + 1, y0 + rows[-1] + 1]


def _paint(sem, sm: _Smear, obj: _Obj, what: str, value: int):
    y0, x0, m, _ = sm.clipped(obj, what)
    if m.size:
        view = sem[y0:y0 + m.shape[0], x0:x0 + m.shape[1]]
        np.maximum(view, m.astype(np.uint8) * np.uint8(value), out=view)


# ---------------------------------------------------------------------------------------------
# argument checks and counts
# ---------------------------------------------------------------------------------------------
def _positive_int(name, v):
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v <= 0:
        raise ValueError(f"{name} must be a positive integer, got {v!r}")
    return int(v)


def _check_classes(classes):
    if classes not in SCHEMES:
        raise ValueError(f"unknown classes scheme {classes!r}; expected one of {sorted(SCHEMES)}")
    return classes


def _count(rng, spec, default_range, name):
    """A count: ``None`` draws from ``default_range``, an int is used as is, (lo, hi) draws."""
    if spec is None:
        spec = default_range
    if isinstance(spec, (int, np.integer)) and not isinstance(spec, bool):
        if spec < 0:
            raise ValueError(f"{name} must be >= 0, got {spec}")
        return int(spec)
    try:
        lo, hi = (int(v) for v in spec)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be None, an int or a (low, high) pair, got {spec!r}") from None
    if lo < 0 or hi < lo:
        raise ValueError(f"{name} range must satisfy 0 <= low <= high, got {spec!r}")
    return int(rng.integers(lo, hi + 1))


def _seed_seq(seed, stream: str, index: int) -> np.random.SeedSequence:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    if isinstance(index, bool) or not isinstance(index, (int, np.integer)) or index < 0:
        raise ValueError(f"index must be a non-negative integer, got {index!r}")
    return np.random.SeedSequence(int(seed), spawn_key=(zlib.crc32(stream.encode()), int(index)))


def _place(rng, n, radii, centres, cradii, box, thr, cluster=0.0):
    """Place ``n`` discs of ``radii``: best of a few random candidates, some touching a neighbour."""
    (ylo, yhi), (xlo, xhi) = box
    cy, cx, cr = list(centres[0]), list(centres[1]), list(cradii)
    out = []
    for r in radii:
        if cy and rng.random() < cluster:  # deliberate overlap with a neighbour
            j = rng.integers(len(cy))
            a, d = rng.uniform(0, 2 * np.pi), rng.uniform(0.6, 0.95) * (r + cr[j])
            y, x = cy[j] + d * np.sin(a), cx[j] + d * np.cos(a)
        else:
            ys = rng.uniform(ylo, yhi, 12)
            xs = rng.uniform(xlo, xhi, 12)
            if cy:
                d = np.hypot(ys[:, None] - np.asarray(cy), xs[:, None] - np.asarray(cx))
                score = (d / (r + np.asarray(cr))).min(1)
                ok = np.flatnonzero(score > thr)
                k = ok[0] if len(ok) else int(np.argmax(score))
            else:
                k = 0
            y, x = ys[k], xs[k]
        cy.append(y)
        cx.append(x)
        cr.append(r)
        out.append((y, x))
    return out


# ---------------------------------------------------------------------------------------------
# public API
# ---------------------------------------------------------------------------------------------
def generate_sample(seed: int, *, index: int = 0, width: int = 512, height: int = 384,
                    stain: "str | StainStyle" = "A", classes: str = "cbc", n_rbc=None, n_wbc=None,
                    n_platelets=None, malaria: bool | None = None, parasite_rate: float = 0.15,
                    wbc_weights: Sequence[float] | None = None) -> Sample:
    """One synthetic smear image with boxes, labels, instance and semantic masks.

    Parameters
    ----------
    seed, index : the image is a pure function of (seed, index, stain, size, counts).
    width, height : image size in pixels.
    stain : "A", "B" or a :class:`StainStyle`.
    classes : label scheme, a key of :data:`SCHEMES` ("cbc", "wbc", "malaria"). It changes
        the labels; the image only through ``malaria``'s default (parasites are drawn for
        ``"malaria"``).
    n_rbc, n_wbc, n_platelets : None (random in a default range: 20-60 red cells, 0-3 white
        cells, 1-8 platelets per 512x384 at scale 1, divided by the scale), an int, or a
        (low, high) pair.
    malaria : draw parasites in red cells; None means ``classes == "malaria"``.
    parasite_rate : probability that a red cell is infected (when ``malaria``).
    wbc_weights : relative frequency of the five white-cell types (default flattened, so that
        every type is common).

    Returns
    -------
    Sample
        ``boxes`` are the tight boxes of each object's full (amodal) mask clipped to the image;
        objects with less than ``MIN_VISIBLE`` of their mask inside the image are drawn but left
        out of boxes, labels and masks. ``semantic`` (see :data:`SEMANTIC_NAMES`) covers every
        drawn object; parasites count as "nucleus". ``meta["cell_type"]`` names each object
        ("RBC", a white-cell type, "platelet", or the parasite stage of an infected red cell).
    """
    width, height = _positive_int("width", width), _positive_int("height", height)
    style = get_stain(stain)
    classes = _check_classes(classes)
    if not 0.0 <= float(parasite_rate) <= 1.0:
        raise ValueError(f"parasite_rate must be in [0, 1], got {parasite_rate!r}")
    malaria = classes == "malaria" if malaria is None else bool(malaria)
    wts = np.asarray(_WBC_WEIGHTS if wbc_weights is None else wbc_weights, np.float64)
    if wts.shape != (5,) or (wts < 0).any() or wts.sum() <= 0:
        raise ValueError(f"wbc_weights must be 5 non-negative numbers, got {wbc_weights!r}")

    sm = _Smear(height, width, style, _seed_seq(seed, f"smear:{style.name}", index))
    rng, s = sm.rng, sm.scale
    area = width * height / (512 * 384)
    n_r = _count(rng, n_rbc, (round(20 * area / s), round(60 * area / s)), "n_rbc")
    n_w = _count(rng, n_wbc, (0, 3), "n_wbc") if n_wbc is not None else int(
        rng.choice(4, p=[0.2, 0.45, 0.25, 0.1]))
    n_p = _count(rng, n_platelets, (1, max(1, round(8 * area / s))), "n_platelets")

    kinds = [WBC_TYPES[k] for k in rng.choice(5, size=n_w, p=wts / wts.sum())]
    wr = [rng.uniform(*_WBC_RADIUS[k]) * s for k in kinds]
    # white-cell centres keep a margin from the edges; an image narrower than two margins centres them
    inner = tuple((min(0.3 * 30 * s, n / 2), max(n - 0.3 * 30 * s, n / 2)) for n in (height, width))
    wxy = _place(rng, n_w, wr, ([], []), [], inner, 1.1)
    rr = rng.uniform(*_RBC_RADIUS, n_r) * s
    outer = ((-0.3 * 17 * s, height + 0.3 * 17 * s), (-0.3 * 17 * s, width + 0.3 * 17 * s))
    rxy = _place(rng, n_r, rr, ([y for y, _ in wxy], [x for _, x in wxy]), [1.25 * r for r in wr],
                 outer, rng.uniform(0.8, 1.0), cluster=rng.uniform(0.05, 0.25))
    pr = rng.uniform(3.0, 6.0, n_p) * s
    pxy = np.stack([rng.uniform(0, height, n_p), rng.uniform(0, width, n_p)], 1)

    infected = sm.rng_par.random(n_r) < parasite_rate if malaria else np.zeros(n_r, bool)
    stages = sm.rng_par.choice(4, size=n_r, p=_STAGE_WEIGHTS)
    for i, ((y, x), r) in enumerate(zip(rxy, rr)):
        obj, host = sm.rbc(y, x, r)
        if infected[i]:
            sm.parasite(obj, host, STAGES[stages[i]])
    for k, (y, x), r in zip(kinds, wxy, wr):
        sm.wbc(k, y, x, r)
    for (y, x), r in zip(pxy, pr):
        sm.platelet(y, x, r)
    image = sm.render()

    names = SCHEMES[classes]
    sem = np.zeros((height, width), np.uint8)
    boxes, labels, patches, types, vis = [], [], [], [], []
    for obj in sm.objects:
        _paint(sem, sm, obj, "mask", 1)
        y0, x0, m, frac = sm.clipped(obj)
        if frac < MIN_VISIBLE:
            continue
        cell_type = obj.cell_type
        if cell_type in STAGES and not sm.clipped(obj, "nucleus")[2].any():
            cell_type = "RBC"  # its parasite lies wholly outside the image: what shows is an uninfected cell
        boxes.append(_tight_box(y0, x0, m))
        labels.append(names.index(class_name(cell_type, classes)))
        patches.append((y0, x0, m))
        types.append(cell_type)
        vis.append(round(frac, 4))
    for obj in sm.objects:
        if obj.nucleus is not None:
            _paint(sem, sm, obj, "nucleus", 2)
    meta = {"cell_type": types, "visible": vis, "n_dropped": len(sm.objects) - len(types),
            "stain": style.name, "scale": round(sm.scale, 4), "classes": classes,
            "seed": int(seed), "index": int(index), "generator": "smearlab.synthetic/1"}
    return Sample(image_id=f"syn{style.name}_{index:05d}", _image=image,
                  boxes=np.asarray(boxes, np.float32).reshape(-1, 4), labels=labels,
                  domain=style.name, meta=meta, _masks=_PatchMasks((height, width), patches),
                  _semantic=sem)


def make_dataset(n: int, seed: int = 0, *, stain: "str | StainStyle" = "A", classes: str = "cbc",
                 width: int = 512, height: int = 384, malaria: bool | None = None,
                 progress: bool = False, **kw) -> SmearDataset:
    """``n`` synthetic smears: image ``i`` is ``generate_sample(seed, index=i, ...)``.

    Parameters
    ----------
    n : number of images (>= 0).
    seed : generator seed.
    stain, classes, width, height, malaria : see :func:`generate_sample`.
    progress : show a tqdm progress bar.
    **kw : further :func:`generate_sample` options (``n_rbc``, ``parasite_rate``, ...).
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
        raise ValueError(f"n must be a non-negative integer, got {n!r}")
    style = get_stain(stain)
    classes = _check_classes(classes)
    _positive_int("width", width), _positive_int("height", height)
    it = range(int(n))
    if progress:
        it = tqdm(it, desc=f"synthetic-{style.name}", unit="img")
    samples = [generate_sample(seed, index=i, width=width, height=height, stain=style,
                               classes=classes, malaria=malaria, **kw) for i in it]
    return SmearDataset(samples, SCHEMES[classes], f"synthetic-{style.name}", format="synthetic",
                        semantic_names=SEMANTIC_NAMES)


def make_domains(n_per_domain: int, seed: int = 0, **kw) -> dict[str, SmearDataset]:
    """``{"A": ..., "B": ...}``: one :func:`make_dataset` per stain style (same other options).

    Parameters
    ----------
    n_per_domain : number of images per style.
    seed : generator seed (the same for both styles).
    **kw : further :func:`make_dataset` options (``classes``, ``width``, ``height``...).
    """
    return {st: make_dataset(n_per_domain, seed, stain=st, **kw) for st in ("A", "B")}


def make_wbc_crops(n: int, seed: int = 0, stain: "str | StainStyle" = "A", size: int = 96, *,
                   balance: "str | Sequence[float]" = "uniform", progress: bool = False) -> SmearDataset:
    """``n`` single white-cell crops (``size`` x ``size``) for classification.

    Parameters
    ----------
    n, seed : number of crops and generator seed (crop ``i`` depends on (seed, i) only).
    stain : "A", "B" or a :class:`StainStyle`.
    size : crop side in pixels.
    balance : "uniform" (types in turn, exactly balanced), "natural" (blood frequencies,
        neutrophils 60 % ... basophils 1 %) or five relative weights.
    progress : show a tqdm progress bar.

    Returns
    -------
    SmearDataset
        class names :data:`WBC_TYPES`; each sample has ``image_label`` = its type, one box and
        instance mask (the white cell, clipped), and a semantic mask over
        :data:`CROP_SEMANTIC_NAMES` (surrounding red cells are background).
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
        raise ValueError(f"n must be a non-negative integer, got {n!r}")
    size = _positive_int("size", size)
    style = get_stain(stain)
    if isinstance(balance, str):
        if balance not in ("uniform", "natural"):
            raise ValueError(f"unknown balance {balance!r}; expected 'uniform', 'natural' or 5 weights")
        wts = None if balance == "uniform" else np.asarray(_NATURAL_WBC)
    else:
        wts = np.asarray(balance, np.float64)
        if wts.shape != (5,) or (wts < 0).any() or wts.sum() <= 0:
            raise ValueError(f"balance weights must be 5 non-negative numbers, got {balance!r}")
    it = range(int(n))
    if progress:
        it = tqdm(it, desc=f"wbc-crops-{style.name}", unit="img")
    samples = [_wbc_crop(seed, i, style, size, wts) for i in it]
    return SmearDataset(samples, list(WBC_TYPES), f"synthetic-wbc-{style.name}", format="synthetic",
                        semantic_names=CROP_SEMANTIC_NAMES)


def _wbc_crop(seed, index, style, size, wts) -> Sample:
    sm = _Smear(size, size, style, _seed_seq(seed, f"crop:{style.name}", index))
    rng, s = sm.rng, sm.scale
    t = index % 5 if wts is None else int(rng.choice(5, p=wts / wts.sum()))
    kind = WBC_TYPES[t]
    r = rng.uniform(*_WBC_RADIUS[kind]) * s
    c = size / 2 + rng.uniform(-3, 3, 2)
    n_r = int(rng.integers(3, 9))
    rr = rng.uniform(*_RBC_RADIUS, n_r) * s
    lim = (-0.5 * 17 * s, size + 0.5 * 17 * s)
    for (y, x), ri in zip(_place(rng, n_r, rr, ([c[0]], [c[1]]), [r * 1.1], (lim, lim), 0.9), rr):
        sm.rbc(y, x, ri)
    for _ in range(int(rng.integers(0, 3))):
        sm.platelet(rng.uniform(0, size), rng.uniform(0, size), rng.uniform(3, 6) * s)
    sm.objects.clear()
    sm.wbc(kind, c[0], c[1], r)
    image = sm.render()
    obj = sm.objects[0]
    y0, x0, m, frac = sm.clipped(obj)
    sem = np.zeros((size, size), np.uint8)
    _paint(sem, sm, obj, "mask", 1)
    _paint(sem, sm, obj, "nucleus", 2)
    meta = {"cell_type": [kind], "visible": [round(frac, 4)], "stain": style.name,
            "scale": round(sm.scale, 4), "seed": int(seed), "index": int(index),
            "generator": "smearlab.synthetic/1"}
    return Sample(image_id=f"synwbc{style.name}_{index:05d}", _image=image,
                  boxes=np.asarray([_tight_box(y0, x0, m)], np.float32), labels=[t], image_label=t,
                  domain=style.name, meta=meta, _masks=_PatchMasks((size, size), [(y0, x0, m)]),
                  _semantic=sem)
