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
    every input size).

    In bf16/fp16 on CPU, a conv with many input channels and a large rate (ASPP's) runs as one matrix
    product per tap, accumulated in fp32 into the shifted output window (taps that miss the map are
    skipped): oneDNN's reduced-precision dilated kernels run there at a fraction of their speed
    (2048 -> 256 channels at 64x64, bf16, 2 threads: rate 12 177 -> 46 ms, rate 24 215 -> 35 ms, rate 36
    305 -> 23 ms; at rates 1-2, or with 256-512 input channels, oneDNN's own kernels are as fast or faster).
    """

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
        low = _cpu_low_precision(x)
        slow_in_onednn = self.groups == 1 and self.in_channels >= 1024 and max(self.dilation) >= 4
        if low is not None and slow_in_onednn and x.dim() == 4:
            return _conv_as_tap_products(x, weight, self.bias, self.dilation, low)
        if weight is self.weight:
            return super().forward(x)
        return F.conv2d(x, weight, self.bias, 1, tuple(padding), self.dilation, self.groups)


def _cpu_low_precision(x: torch.Tensor) -> torch.dtype | None:
    """bf16/fp16 if a conv of ``x`` would run in it on the CPU (its dtype, or CPU autocast's), else None."""
    if x.device.type != "cpu":
        return None
    try:
        autocast = torch.is_autocast_enabled("cpu")
        autocast_dtype = torch.get_autocast_dtype("cpu") if autocast else None
    except TypeError:  # PyTorch < 2.4
        autocast = torch.is_autocast_cpu_enabled()
        autocast_dtype = torch.get_autocast_cpu_dtype() if autocast else None
    dtype = autocast_dtype if autocast else x.dtype
    return dtype if dtype in (torch.bfloat16, torch.float16) else None


def _conv_as_tap_products(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, dilation: tuple[int, ...], dtype: torch.dtype
) -> torch.Tensor:
    """A stride-1, same-padded (dilated) conv as one (pixels x C_in) @ (C_in x C_out) product per tap,
    each added in fp32 into the window of the output it shifts to. Returns channels-last, in ``dtype``."""
    n, c, h, w = x.shape
    out_channels, _, kh, kw = weight.shape
    with torch.autocast("cpu", enabled=False):
        rows = x.to(dtype).permute(0, 2, 3, 1)  # NHWC
        taps = weight.to(dtype).permute(2, 3, 1, 0)  # kh, kw, C_in, C_out
        out = torch.zeros(n, h, w, out_channels, dtype=torch.float32, device=x.device)
        if bias is not None:
            out += bias.to(dtype).float()
        for i in range(kh):
            dy = (i - kh // 2) * dilation[0]
            y0, y1 = max(0, -dy), min(h, h - dy)  # output rows whose input row y + dy is on the map
            for j in range(kw):
                dx = (j - kw // 2) * dilation[1]
                x0, x1 = max(0, -dx), min(w, w - dx)
                if y0 >= y1 or x0 >= x1:
                    continue
                src = rows[:, y0 + dy : y1 + dy, x0 + dx : x1 + dx].reshape(-1, c)
                out[:, y0:y1, x0:x1] += (src @ taps[i, j]).view(n, y1 - y0, x1 - x0, out_channels)
        return out.to(dtype).permute(0, 3, 1, 2)


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
