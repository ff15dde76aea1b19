"""Windows and padding: the one box/window convention and the one letterbox.

Every window, like every box, is ``(x0, y0, x1, y1)`` in pixel-edge coordinates (a window
covering columns 0..9 has ``x0=0, x1=10``), so ``image[y0:y1, x0:x1]`` is its content. The one
letterbox scales an image's longer side to the square's side and centres it
(:func:`letterbox_window` says where the content lands; :func:`letterbox` does it for numpy
images, :func:`smearlab.segmentation.unet.resize_and_pad` for the U-Net's tensors).
"""
from __future__ import annotations

import math

import numpy as np
from PIL import Image


def check_crop_values(images) -> None:
    """Refuse (``ValueError``) crops the models would misread: floats are read as 0..1 and uint8
    as 0..255, so float values outside [0, 1] (0..255 floats saturate every pixel) and other
    integer types (int64 0..255, read unscaled) are refused.

    Parameters
    ----------
    images : a tensor or array of crops (any shape).
    """
    dtype = str(images.dtype).replace("torch.", "")
    floating = (images.is_floating_point() if hasattr(images, "is_floating_point")  # a torch tensor
                else np.issubdtype(np.asarray(images).dtype, np.floating))
    if not floating and dtype != "uint8":
        raise ValueError(f"image tensors must be uint8 (0..255) or float (0..1), got {dtype}")
    if not floating or not len(images):
        return
    lo, hi = float(images.min()), float(images.max())
    if not (-1e-3 <= lo and hi <= 1 + 1e-3):  # NaN fails too
        raise ValueError(f"float image tensors must hold values in [0, 1], got [{lo:.3g}, {hi:.3g}] "
                         "(uint8 tensors are read as 0..255)")


def check_image(image, where: str = "image") -> np.ndarray:
    """``image`` as an ``(H, W, 3)`` uint8 RGB array of non-zero size; ``ValueError`` otherwise.

    Parameters
    ----------
    image : array-like to check (converted with ``np.asarray``, not copied or cast).
    where : names the image in the error message (e.g. ``"image 3"``).

    Returns
    -------
    np.ndarray
        the image as an array.
    """
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
    img = check_image(image)
    colour = _fill_colour(img, fill)
    x0, y0, x1, y1 = letterbox_window(img.shape[:2], size)
    if (y1 - y0, x1 - x0) != img.shape[:2]:
        img = np.asarray(Image.fromarray(img).resize((x1 - x0, y1 - y0), Image.BILINEAR))
    return _pad_to(img, y0, int(size) - y1, x0, int(size) - x1, colour)


def letterbox_window(hw: tuple[int, int], size: int) -> tuple[int, int, int, int]:
    """Where an image of ``hw = (height, width)`` lands in its ``size`` x ``size`` letterbox:
    the window ``(x0, y0, x1, y1)`` of its content (longer side scaled to ``size``, centred).

    Parameters
    ----------
    hw : ``(height, width)`` of the image in pixels.
    size : side of the letterbox square in pixels (at least 1).

    Returns
    -------
    tuple of int
        ``(x0, y0, x1, y1)`` in the square's pixels.
    """
    size = int(size)
    if size < 1:
        raise ValueError(f"size must be a positive number of pixels, got {size}")
    h, w = int(hw[0]), int(hw[1])
    s = size / max(h, w)
    nh, nw = min(size, max(1, round(h * s))), min(size, max(1, round(w * s)))
    top, left = (size - nh) // 2, (size - nw) // 2
    return left, top, left + nw, top + nh


def square_window(box, pad: float = 0.1) -> tuple[int, int, int, int]:
    """The integer square window ``(x0, y0, x1, y1)`` centred on ``box``, enlarged by ``pad``.

    The side is ``max(width, height) * (1 + 2 * pad)`` rounded to whole pixels (at least 1): a
    margin of ``pad`` times the longer box side on each side. The window may reach past the
    image (see :func:`extract_crop`).

    Parameters
    ----------
    box : ``(x0, y0, x1, y1)`` in pixels, with ``x1 > x0`` and ``y1 > y0``.
    pad : margin on each side as a fraction of the box's longer side (>= 0).

    Returns
    -------
    tuple of int
        ``(x0, y0, x1, y1)`` of the square window, possibly reaching past the image.
    """
    b = np.asarray(box, np.float64).reshape(-1)
    if b.shape != (4,) or not np.all(np.isfinite(b)):
        raise ValueError(f"box must be 4 finite numbers x0, y0, x1, y1, got {box!r}")
    x0, y0, x1, y1 = b
    if x1 <= x0 or y1 <= y0:
        raise ValueError(f"box must have x1 > x0 and y1 > y0, got {b.tolist()}")
    if not 0 <= pad < math.inf:  # NaN and infinity too (an infinite window overflowed)
        raise ValueError(f"pad must be a finite number >= 0, got {pad}")
    side = max(1, int(round(max(x1 - x0, y1 - y0) * (1 + 2 * pad))))
    wx0 = int(math.floor((x0 + x1) / 2 - side / 2 + 0.5))
    wy0 = int(math.floor((y0 + y1) / 2 - side / 2 + 0.5))
    return wx0, wy0, wx0 + side, wy0 + side


def extract_crop(image: np.ndarray, box, pad: float = 0.1, fill="median") -> np.ndarray:
    """The square crop of :func:`square_window` around ``box``; parts outside the image are filled.

    The cell stays centred in the crop even at the image edge: the window is clipped to the
    image, the pixels inside are copied to their place in the square and the rest is ``fill``
    (see :func:`letterbox`; "median" is the median colour of the copied part's border).

    Parameters
    ----------
    image : ``(H, W, 3)`` uint8 RGB.
    box : ``(x0, y0, x1, y1)`` in pixels.
    pad : margin on each side as a fraction of the box's longer side (see :func:`square_window`).
    fill : "median", "edge", a grey level or an RGB triple for the part outside the image (see
        :func:`letterbox`).

    Returns
    -------
    np.ndarray
        ``(side, side, 3)`` uint8, ``side`` that of :func:`square_window`.

    Raises
    ------
    ValueError
        when the box is degenerate or the window does not overlap the image at all.
    """
    img = check_image(image)
    h, w = img.shape[:2]
    wx0, wy0, wx1, wy1 = square_window(box, pad)
    ix0, iy0, ix1, iy1 = max(wx0, 0), max(wy0, 0), min(wx1, w), min(wy1, h)
    if ix1 <= ix0 or iy1 <= iy0:
        raise ValueError(f"box {np.asarray(box).tolist()} lies outside the {w}x{h} image")
    inside = img[iy0:iy1, ix0:ix1]
    return _pad_to(inside, iy0 - wy0, wy1 - iy1, ix0 - wx0, wx1 - ix1, _fill_colour(inside, fill))


def crop_window(box, hw: tuple[int, int], pad: float) -> tuple[int, int, int, int]:
    """The square crop window ``(x0, y0, x1, y1)`` around ``box`` with a context margin, inside the image.

    The square is centred on the box, its side ``max(box w, box h) * (1 + 2 * pad)`` (at least
    one pixel), rounded outwards to whole pixels and clipped to the image ``hw`` (so crops at the
    border are not square).

    Parameters
    ----------
    box : ``(x0, y0, x1, y1)`` in pixels.
    hw : ``(height, width)`` of the image in pixels.
    pad : margin on each side as a fraction of the box's longer side.

    Returns
    -------
    tuple of int
        ``(x0, y0, x1, y1)`` inside the image, at least one pixel wide and high (a box outside the
        image gets the nearest pixel row/column).
    """
    x0, y0, x1, y1 = (float(v) for v in box)
    h, w = int(hw[0]), int(hw[1])
    side = max(x1 - x0, y1 - y0, 1.0) * (1 + 2 * float(pad))
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    ya, yb = max(0, math.floor(cy - side / 2)), min(h, math.ceil(cy + side / 2))
    xa, xb = max(0, math.floor(cx - side / 2)), min(w, math.ceil(cx + side / 2))
    if yb <= ya:  # box entirely outside the image: the nearest pixel row/column
        ya = min(max(ya, 0), h - 1)
        yb = ya + 1
    if xb <= xa:
        xa = min(max(xa, 0), w - 1)
        xb = xa + 1
    return xa, ya, xb, yb


def check_pad(pad) -> float:
    """``pad`` as a float: a crop margin, a finite number >= 0; ``ValueError`` otherwise (bools too).

    Parameters
    ----------
    pad : the margin, a fraction of the box side (see :func:`crop_window`).
    """
    if isinstance(pad, bool) or not isinstance(pad, (int, float, np.number)) or not np.isfinite(pad) or pad < 0:
        raise ValueError(f"pad must be a finite number >= 0 (a fraction of the box side), got {pad!r}")
    return float(pad)
