"""The U-Net: a small encoder-decoder for class maps, with its checkpoint."""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..core.device import resolve_device
from ..core.errors import DataError
from ..core.files import atomic_path, read_torch_file
from ..core.nn import conv_block
from ..metrics.semantic import IGNORE


_MEAN, _STD = 0.5, 0.25  # input normalisation: (x / 255 - mean) / std


def resize_and_pad(img: torch.Tensor, sem: torch.Tensor | None, size: int | None):
    """Scale ``(3, H, W)`` uint8 (and ``(H, W)`` mask) to fit ``size`` keeping the aspect, pad bottom/right.

    Returns (image, mask, (h, w) of the content). Mask padding is :data:`IGNORE`.
    """
    h, w = img.shape[-2:]
    if size is None:
        return img, sem, (h, w)
    s = size / max(h, w)
    nh, nw = max(1, round(h * s)), max(1, round(w * s))
    if (nh, nw) != (h, w):
        img = F.interpolate(img[None].float(), (nh, nw), mode="bilinear", antialias=s < 1,
                            align_corners=False)[0].round().clamp(0, 255).to(torch.uint8)
        if sem is not None:
            sem = F.interpolate(sem[None, None].float(), (nh, nw), mode="nearest")[0, 0].to(sem.dtype)
    img = F.pad(img, (0, size - nw, 0, size - nh), value=0)
    if sem is not None:
        sem = F.pad(sem, (0, size - nw, 0, size - nh), value=IGNORE)
    return img, sem, (nh, nw)


def normalise(x: torch.Tensor) -> torch.Tensor:
    """The U-Net's input: uint8 images as ``(x / 255 - 0.5) / 0.25``."""
    return (x.float() / 255 - _MEAN) / _STD


class UNet(nn.Module):
    """A small U-Net: ``depth`` 2x down-samplings, ``base * 2**i`` channels at level ``i``.

    Input ``(B, in_channels, H, W)`` of any size is padded (replicate) to a multiple of
    ``2**depth`` and the logits ``(B, num_classes, H, W)`` are cropped back.
    Input is expected normalised (see :func:`predict_semantic`, which does it).
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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        m = 2 ** self.config["depth"]
        ph, pw = (-h) % m, (-w) % m
        if ph or pw:
            x = F.pad(x, (0, pw, 0, ph), mode="replicate")
        skips = []
        for i, blk in enumerate(self.down):
            x = blk(x if i == 0 else F.max_pool2d(x, 2))
            skips.append(x)
        x = skips.pop()
        for i in reversed(range(self.config["depth"])):
            x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
            x = self.up[i](torch.cat([self.reduce[i](x), skips.pop()], 1))
        return self.head(x)[..., :h, :w]


def save_unet(model: UNet, path, **extra) -> Path:
    """Write ``{"state_dict", "config", "input_size", "crop_pad", **extra}`` atomically (:func:`torch.save`)."""
    path = Path(path)
    obj = {"state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
           "config": dict(model.config), "input_size": model.input_size,
           "crop_pad": getattr(model, "crop_pad", None), **extra}
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)
    return path


def load_unet(path, device: "str | torch.device | None" = "cpu") -> UNet:
    """A :class:`UNet` from :func:`save_unet` / :func:`train_unet`; DataError on an unreadable file."""
    p = Path(path)
    obj = read_torch_file(p, "U-Net checkpoint")
    if not isinstance(obj, dict) or not isinstance(obj.get("state_dict"), dict) \
            or not isinstance(obj.get("config"), dict):
        raise DataError(p, "not a smearlab U-Net checkpoint (expected keys 'state_dict' and 'config')")
    try:
        model = UNet(**obj["config"])
        model.load_state_dict(obj["state_dict"])
    except (TypeError, ValueError, RuntimeError) as e:
        raise DataError(p, f"U-Net checkpoint does not match its config: {e}") from e
    model.input_size = obj.get("input_size")
    model.crop_pad = obj.get("crop_pad")
    return model.to(resolve_device(device)).eval()
