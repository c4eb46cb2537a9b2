"""Pyramid pooling (SPPNet, He et al. 2014; PSPNet, Zhao et al. 2017 sec. 3.2)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .modules import batch_norm_any_batch, resize_to


class PyramidPooling(nn.Module):
    """Pyramid pooling (SPPNet, He et al. 2014; PSPNet, Zhao et al. 2017 sec. 3.2): average-pool the
    features into ``b x b`` bins for each ``b`` in ``bins``, reduce each by a 1x1 conv to
    ``in_channels / len(bins)`` channels (BN, ReLU), upsample bilinearly and concatenate with the
    input. Output channels: ``2 * in_channels`` for the default reduction."""

    def __init__(self, in_channels: int, bins: Sequence[int] = (1, 2, 3, 6), reduction_channels: int | None = None):
        super().__init__()
        self.bins = tuple(bins)
        width = reduction_channels or in_channels // len(self.bins)
        self.stages = nn.ModuleList(
            nn.Sequential(
                nn.AdaptiveAvgPool2d(b),
                nn.Conv2d(in_channels, width, 1, bias=False),
                nn.BatchNorm2d(width),
                nn.ReLU(inplace=True),
            )
            for b in self.bins
        )
        self.out_channels = in_channels + width * len(self.bins)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        pooled = []
        for pool, conv, bn, relu in self.stages:
            pooled.append(resize_to(relu(batch_norm_any_batch(bn, conv(pool(x)))), size))
        return torch.cat([x, *pooled], dim=1)
