"""Network building blocks shared by the segmentation and classification models."""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


def norm_layer(kind: str, c: int) -> nn.Module:
    """``"batch"`` (BatchNorm2d) or ``"group"`` (GroupNorm, gcd(8, c) groups) over ``c`` channels.

    Parameters
    ----------
    kind : ``"batch"`` or ``"group"``; anything else is a ``ValueError``.
    c : number of channels normalised.
    """
    if kind == "batch":
        return nn.BatchNorm2d(c)
    if kind == "group":
        return nn.GroupNorm(math.gcd(8, c), c)
    raise ValueError(f"norm must be 'batch' or 'group', got {kind!r}")


def conv_block(cin: int, cout: int, norm: str) -> nn.Sequential:
    """Two 3x3 convolutions (padding 1, no bias), each followed by normalisation and ReLU.

    Parameters
    ----------
    cin : input channels.
    cout : output channels (of both convolutions).
    norm : ``"batch"`` or ``"group"`` (see :func:`norm_layer`).

    Returns
    -------
    nn.Sequential
        keeps the spatial size.
    """
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False), norm_layer(norm, cout), nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False), norm_layer(norm, cout), nn.ReLU(inplace=True))


class BasicBlock(nn.Module):
    """ResNet basic block: two 3x3 convolutions and a shortcut (1x1 convolution when the shape changes).

    Parameters
    ----------
    cin : input channels.
    cout : output channels.
    stride : stride of the first convolution (and of the shortcut); 2 halves the spatial size.
    norm : ``"batch"`` or ``"group"`` (see :func:`norm_layer`).
    """

    def __init__(self, cin: int, cout: int, stride: int, norm: str):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.norm1 = norm_layer(norm, cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.norm2 = norm_layer(norm, cout)
        self.shortcut = nn.Identity() if stride == 1 and cin == cout else nn.Sequential(
            nn.Conv2d(cin, cout, 1, stride, bias=False), norm_layer(norm, cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``relu(norm2(conv2(relu(norm1(conv1(x))))) + shortcut(x))``.

        Parameters
        ----------
        x : ``(B, cin, H, W)`` tensor.

        Returns
        -------
        torch.Tensor
            ``(B, cout, ceil(H / stride), ceil(W / stride))``.
        """
        y = F.relu(self.norm1(self.conv1(x)))
        return F.relu(self.norm2(self.conv2(y)) + self.shortcut(x))
