"""Atrous Spatial Pyramid Pooling (DeepLab v3, Chen et al. 2017 sec. 3.3; depthwise-separable for v3+)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .modules import ConvNormAct, SeparableConv2d, batch_norm_any_batch


class ASPPPooling(nn.Sequential):
    """Image-level features (DeepLab v3 sec. 3.3): global average pooling, 1x1 conv, batch norm,
    ReLU, bilinear upsampling back to the feature map's size. Layout as torchvision's."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(in_channels, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        pool, conv, bn, relu = self
        y = relu(batch_norm_any_batch(bn, conv(pool(x))))
        return F.interpolate(y, size=size, mode="bilinear", align_corners=False)


class ASPP(nn.Module):
    """Atrous Spatial Pyramid Pooling with image pooling (DeepLab v3 sec. 3.3): a 1x1 conv, one 3x3
    atrous conv per rate (depthwise-separable for v3+), image pooling, all with 256 channels, batch
    norm and ReLU, concatenated and projected by a 1x1 conv (+BN, ReLU, dropout).
    Module layout (``convs``, ``project``) as torchvision's, so its weights map one to one."""

    def __init__(
        self,
        in_channels: int,
        rates: Sequence[int],
        out_channels: int = 256,
        *,
        separable: bool = False,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        self.rates = tuple(rates)
        branches: list[nn.Module] = [ConvNormAct(in_channels, out_channels, 1)]
        for rate in rates:
            if separable:
                branches.append(SeparableConv2d(in_channels, out_channels, 3, dilation=rate))
            else:
                branches.append(ConvNormAct(in_channels, out_channels, 3, padding=rate, dilation=rate))
        branches.append(ASPPPooling(in_channels, out_channels))
        self.convs = nn.ModuleList(branches)
        self.project = nn.Sequential(
            nn.Conv2d(len(branches) * out_channels, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.project(torch.cat([branch(x) for branch in self.convs], dim=1))
