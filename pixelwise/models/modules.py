"""Building blocks shared by several model families."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ConvNormAct(nn.Sequential):
    """``conv -> [BatchNorm] -> ReLU``. The conv has no bias when batch norm follows it."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        *,
        padding: int = 0,
        dilation: int = 1,
        batch_norm: bool = True,
    ) -> None:
        layers: list[nn.Module] = [
            nn.Conv2d(
                in_channels,
                out_channels,
                kernel_size,
                padding=padding,
                dilation=dilation,
                bias=not batch_norm,
            )
        ]
        if batch_norm:
            layers.append(nn.BatchNorm2d(out_channels))
        layers.append(nn.ReLU(inplace=True))
        super().__init__(*layers)


class DoubleConv(nn.Sequential):
    """Two 3x3 ``ConvNormAct`` layers: the unit of every U-Net level."""

    def __init__(self, in_channels: int, out_channels: int, *, padding: int, batch_norm: bool) -> None:
        super().__init__(
            ConvNormAct(in_channels, out_channels, 3, padding=padding, batch_norm=batch_norm),
            ConvNormAct(out_channels, out_channels, 3, padding=padding, batch_norm=batch_norm),
        )


def center_crop(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Crop the spatial centre of ``x`` (``... x H x W``) to ``height x width``."""
    top = (x.shape[-2] - height) // 2
    left = (x.shape[-1] - width) // 2
    return x[..., top : top + height, left : left + width]


def mirror_pad(x: torch.Tensor, left: int, right: int, top: int, bottom: int) -> torch.Tensor:
    """Mirror (reflect) padding of any width, also wider than the image itself.

    ``F.pad(mode="reflect")`` requires each pad to be smaller than the size; mirroring repeatedly
    extends the image the way the U-Net paper's overlap-tile strategy does (Fig. 2).
    """
    while left or right or top or bottom:
        h, w = x.shape[-2:]
        step = (min(left, w - 1), min(right, w - 1), min(top, h - 1), min(bottom, h - 1))
        if max(step) == 0:  # 1-pixel image: nothing to mirror, repeat the edge
            return F.pad(x, (left, right, top, bottom), mode="replicate")
        x = F.pad(x, step, mode="reflect")
        left, right, top, bottom = (a - b for a, b in zip((left, right, top, bottom), step, strict=True))
    return x
