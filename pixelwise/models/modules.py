"""Building blocks shared by several model families."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


class AtrousConv2d(nn.Conv2d):
    """A "same"-padded atrous (dilated) convolution that skips the taps which can only read padding.

    Once the rate reaches the feature map's height (width), every off-centre kernel row (column) falls
    outside the map for every output pixel; DeepLab v3 (sec. 3.3) notes that the 3x3 filter then
    "degenerates to a simple 1x1 filter since only the center filter weight is effective". Those rows
    (columns) are dropped from the computation: the result and the gradients are exactly those of the
    full convolution, at a fraction of the cost (ASPP's rate 36 at output stride 16 on a 512x512 input,
    or rates 24 and 36 on 256x256 training crops). Same parameters and state dict as ``nn.Conv2d``.
    While tracing or exporting to ONNX it always runs the full convolution (the graph must hold for
    every input size)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        same = all(p == d * (k // 2) for p, d, k in zip(self.padding, self.dilation, self.kernel_size, strict=True))
        if (
            not same
            or self.stride != (1, 1)
            or self.padding_mode != "zeros"
            or torch.jit.is_tracing()
            or torch.onnx.is_in_onnx_export()
        ):
            return super().forward(x)
        weight, padding = self.weight, list(self.padding)
        for dim, size in enumerate(x.shape[-2:]):
            k = self.kernel_size[dim]
            if k > 1 and self.dilation[dim] >= size:  # every off-centre tap of this dimension reads padding
                weight = weight.narrow(2 + dim, k // 2, 1)
                padding[dim] = 0
        if weight is self.weight:
            return super().forward(x)
        return F.conv2d(x, weight, self.bias, 1, tuple(padding), self.dilation, self.groups)


def conv2d(in_channels: int, out_channels: int, kernel_size: int, **kwargs: Any) -> nn.Conv2d:
    """``nn.Conv2d``, or :class:`AtrousConv2d` when dilated."""
    dilated = kwargs.get("dilation", 1) not in (1, (1, 1))
    return (AtrousConv2d if dilated else nn.Conv2d)(in_channels, out_channels, kernel_size, **kwargs)


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
            conv2d(
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


def resize_to(x: torch.Tensor, size: torch.Size | tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of logits/features to ``size`` (torchvision's convention, align_corners=False)."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def bilinear_kernel(channels: int, kernel_size: int) -> torch.Tensor:
    """``channels x channels x k x k`` weights that make a transposed convolution with stride
    ``k // 2`` a per-channel bilinear upsampling (FCN's ``surgery.interp``)."""
    factor = (kernel_size + 1) // 2
    center = factor - 1 if kernel_size % 2 == 1 else factor - 0.5
    og = torch.arange(kernel_size, dtype=torch.float32)
    filt = 1 - (og - center).abs() / factor
    weight = torch.zeros(channels, channels, kernel_size, kernel_size)
    weight[range(channels), range(channels)] = filt[:, None] * filt[None, :]
    return weight


class BilinearUpsample(nn.ConvTranspose2d):
    """``factor``x upsampling by a transposed convolution (kernel ``2 * factor``, stride ``factor``,
    no bias) initialised to bilinear interpolation; learned unless ``learnable=False`` (FCN sec. 3.3)."""

    def __init__(self, channels: int, factor: int, *, learnable: bool = True) -> None:
        super().__init__(channels, channels, 2 * factor, stride=factor, bias=False)
        with torch.no_grad():
            self.weight.copy_(bilinear_kernel(channels, 2 * factor))
        self.weight.requires_grad_(learnable)


class SeparableConv2d(nn.Sequential):
    """Depthwise-separable conv as DeepLab v3+ (Chen et al. 2018 sec. 3.1): a 3x3 depthwise (atrous)
    conv and a 1x1 pointwise conv, each followed by batch norm and ReLU."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, *, dilation: int = 1) -> None:
        pad = dilation * (kernel_size - 1) // 2
        super().__init__(
            conv2d(
                in_channels, in_channels, kernel_size, padding=pad, dilation=dilation, groups=in_channels, bias=False
            ),
            nn.BatchNorm2d(in_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(in_channels, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )


def batch_norm_any_batch(bn: nn.BatchNorm2d, x: torch.Tensor) -> torch.Tensor:
    """``bn(x)``, except in training with one value per channel (a pooled 1x1 map at batch size 1),
    where batch statistics do not exist: then normalise with the running statistics instead of
    failing (torchvision's DeepLab raises there)."""
    if isinstance(bn, nn.BatchNorm2d) and bn.training and x.shape[0] * x.shape[2] * x.shape[3] == 1:
        return F.batch_norm(x, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps)
    return bn(x)


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


class FCNHead(nn.Sequential):
    """Auxiliary head (PSPNet's deep supervision; torchvision's ``FCNHead`` layout): 3x3 conv to
    ``in_channels / 4``, BN, ReLU, dropout 0.1, 1x1 classifier."""

    def __init__(self, in_channels: int, num_classes: int) -> None:
        mid = in_channels // 4
        super().__init__(
            nn.Conv2d(in_channels, mid, 3, padding=1, bias=False),
            nn.BatchNorm2d(mid),
            nn.ReLU(inplace=True),
            nn.Dropout(0.1),
            nn.Conv2d(mid, num_classes, 1),
        )
