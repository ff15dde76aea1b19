"""The U-Net: a small encoder-decoder for class maps, with its checkpoint."""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..core.device import resolve_device
from ..core.errors import DataError
from ..core.geometry import letterbox_window
from ..core.model_folder import read_model_folder, save_model_folder
from ..core.nn import conv_block
from ..metrics.semantic import IGNORE


_MEAN, _STD = 0.5, 0.25  # input normalisation: (x / 255 - mean) / std


def resize_and_pad(img: torch.Tensor, sem: torch.Tensor | None, size: int | None):
    """The letterbox of ``(3, H, W)`` uint8 (and its ``(H, W)`` mask) in a ``size`` square: the
    longer side scaled to ``size``, centred (:func:`smearlab.core.geometry.letterbox_window`),
    image padding 0 and mask padding :data:`~smearlab.metrics.semantic.IGNORE`.

    Returns ``(image, mask, window)``: ``window`` ``(x0, y0, x1, y1)`` is where the content lies
    (the whole image when ``size`` is None).

    Parameters
    ----------
    img : ``(3, H, W)`` uint8 image tensor.
    sem : its ``(H, W)`` class map, or None.
    size : side of the square in pixels, or None to leave the image as it is.
    """
    h, w = img.shape[-2:]
    if size is None:
        return img, sem, (0, 0, w, h)
    x0, y0, x1, y1 = letterbox_window((h, w), size)
    nh, nw = y1 - y0, x1 - x0
    if (nh, nw) != (h, w):
        s = size / max(h, w)
        x = img[None].float()
        # torch's antialiased bilinear resize to a width of 1 gives the first row everywhere (CPU):
        # a tall strip is resized lying flat, as the transpose, and turned back
        flip = nw == 1 and nh > 1
        x = F.interpolate(x.transpose(-1, -2) if flip else x, (nw, nh) if flip else (nh, nw), mode="bilinear",
                          antialias=s < 1, align_corners=False)
        img = (x.transpose(-1, -2) if flip else x)[0].round().clamp(0, 255).to(torch.uint8)
        if sem is not None:
            # "nearest-exact" samples pixel centres, as the image's bilinear resize does ("nearest"
            # takes the top-left of each cell: the target sat half a working pixel down and right)
            sem = F.interpolate(sem[None, None].float(), (nh, nw), mode="nearest-exact")[0, 0].to(sem.dtype)
    pads = (x0, size - x1, y0, size - y1)
    img = F.pad(img, pads, value=0)
    if sem is not None:
        sem = F.pad(sem, pads, value=IGNORE)
    return img, sem, (x0, y0, x1, y1)


def normalise(x: torch.Tensor) -> torch.Tensor:
    """The U-Net's input: uint8 images as ``(x / 255 - 0.5) / 0.25``.

    Parameters
    ----------
    x : uint8 image tensor, e.g. ``(B, 3, H, W)``.
    """
    return (x.float() / 255 - _MEAN) / _STD


class UNet(nn.Module):
    """A small U-Net: ``depth`` 2x down-samplings, ``base * 2**i`` channels at level ``i``.

    Input ``(B, in_channels, H, W)`` of any size is padded (replicate) to a multiple of
    ``2**depth`` and the logits ``(B, num_classes, H, W)`` are cropped back.
    Input is expected normalised (see :func:`predict_semantic`, which does it).

    Parameters
    ----------
    in_channels : input channels (3 for RGB).
    num_classes : output classes (class-map values).
    base : channels of the first level (>= 1).
    depth : number of 2x down-samplings (>= 1).
    norm : ``"batch"`` or ``"group"`` (see :func:`smearlab.core.nn.norm_layer`).
    """

    def __init__(self, in_channels: int = 3, num_classes: int = 3, base: int = 16, depth: int = 4,
                 norm: str = "batch"):
        super().__init__()
        if depth < 1 or base < 1:
            raise ValueError(f"depth and base must be >= 1, got depth={depth}, base={base}")
        self.config = {"in_channels": int(in_channels), "num_classes": int(num_classes),
                       "base": int(base), "depth": int(depth), "norm": str(norm)}
        ch = [base * 2 ** i for i in range(depth + 1)]
        self.down = nn.ModuleList([conv_block(in_channels, ch[0], norm)] +
                                  [conv_block(ch[i], ch[i + 1], norm) for i in range(depth)])
        self.reduce = nn.ModuleList([nn.Conv2d(ch[i + 1], ch[i], 1) for i in range(depth)])
        self.up = nn.ModuleList([conv_block(2 * ch[i], ch[i], norm) for i in range(depth)])
        self.head = nn.Conv2d(ch[0], num_classes, 1)
        self.input_size: int | None = None  # training square size, set by train_unet / load_unet
        self.crop_pad: float | None = None  # context margin of crop models (train_crop_unet)

    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The encoder's feature maps, finest first (the last is the deepest level), of ``x``
        padded (replicate) to a multiple of ``2**depth``."""
        h, w = x.shape[-2:]
        m = 2 ** self.config["depth"]
        ph, pw = (-h) % m, (-w) % m
        if ph or pw:
            x = F.pad(x, (0, pw, 0, ph), mode="replicate")
        skips = []
        for i, blk in enumerate(self.down):
            x = blk(x if i == 0 else F.max_pool2d(x, 2))
            skips.append(x)
        return skips

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits ``(B, num_classes, H, W)`` of normalised images (see :func:`normalise`).

        Parameters
        ----------
        x : ``(B, in_channels, H, W)`` float tensor of any size.
        """
        h, w = x.shape[-2:]
        skips = self.encode(x)
        x = skips.pop()
        for i in reversed(range(self.config["depth"])):
            x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
            x = self.up[i](torch.cat([self.reduce[i](x), skips.pop()], 1))
        return self.head(x)[..., :h, :w]


def save_unet(model: UNet, folder, *, class_names=None, **meta) -> Path:
    """Write the U-Net as a model folder (:mod:`smearlab.core.model_folder`, kind ``"unet"``):
    its layer settings, the square ``input_size`` it was trained at and, for a crop U-Net, the
    ``crop_pad`` around each box. ``class_names``: the names of the class-map values (the
    dataset's ``semantic_names``); ``meta`` (e.g. ``epoch``) is kept in ``weights.pt``.

    Parameters
    ----------
    model : the trained :class:`UNet`.
    folder : the model folder (created if needed).
    class_names : names of the class-map values, or None.
    **meta : further plain values kept in ``weights.pt``.

    Returns
    -------
    Path
        ``folder``.
    """
    config = {**model.config, "input_size": model.input_size, "crop_pad": getattr(model, "crop_pad", None),
              "class_names": None if class_names is None else list(class_names)}
    if getattr(model, "sensor_bits", None):  # the camera's bits its training images were read with
        config["sensor_bits"] = int(model.sensor_bits)
    return save_model_folder(folder, "unet", model, config, class_names=class_names, side_files=False, **meta)


def load_unet(folder, device: "str | torch.device | None" = "auto") -> UNet:
    """A :class:`UNet` from its model folder (:func:`save_unet`, :func:`~smearlab.segmentation.train.train_unet`).

    Parameters
    ----------
    folder : the model folder.
    device : ``"auto"`` (the default, as every loader: CUDA when there is one), ``"cpu"``, ``"cuda"``...
        (see :func:`~smearlab.core.device.resolve_device`).

    Raises
    ------
    DataError
        naming the file when the folder is missing, unreadable, of another kind, or its weights
        do not fit its config.
    """
    saved = read_model_folder(folder, "unet")
    config = dict(saved.config)
    extra = {k: config.pop(k, None) for k in ("input_size", "crop_pad", "class_names", "sensor_bits")}
    try:
        model = UNet(**config)
        model.load_state_dict(saved.state_dict)
    except (TypeError, ValueError, RuntimeError) as e:
        raise DataError(Path(folder) / "weights.pt", f"U-Net weights do not match config.json: {e}") from e
    names = extra["class_names"]
    if names is not None and len(names) != model.config["num_classes"]:
        raise DataError(Path(folder) / "config.json", f"{len(names)} class names {list(names)} for a U-Net of "
                        f"{model.config['num_classes']} outputs: the class map would be named wrongly")
    model.input_size, model.crop_pad, model.class_names = extra["input_size"], extra["crop_pad"], extra["class_names"]
    model.sensor_bits = extra["sensor_bits"]
    return model.to(resolve_device(device)).eval()
