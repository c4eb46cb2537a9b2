"""Building blocks shared by several model families."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .atrous_conv import conv2d


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
    extends the image the way the U-Net paper's overlap-tile strategy does (Fig. 2). Each padded pixel is the
    image's pixel at its position reflected into the image (period ``2 (n - 1)``), looked up by index: repeated
    ``F.pad`` passes went wrong once one side's pad exceeded the other's by more than the image.
    """
    if not (left or right or top or bottom):
        return x

    def index(n: int, before: int, after: int) -> torch.Tensor:
        i = torch.arange(-before, n + after, device=x.device)
        if n == 1:  # 1 pixel: nothing to mirror, repeat the edge
            return torch.zeros_like(i)
        i = i.remainder(2 * (n - 1))
        return torch.where(i < n, i, 2 * (n - 1) - i)

    h, w = x.shape[-2:]
    return x.index_select(-2, index(h, top, bottom)).index_select(-1, index(w, left, right))


def resize_to(x: torch.Tensor, size: torch.Size | tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of logits/features to ``size`` (torchvision's convention, align_corners=False)."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def on_stride_grid(x: torch.Tensor, factor: int | None, size: torch.Size | tuple[int, int]) -> bool:
    """Whether ``x`` has the ``ceil(size / factor)`` cells of a map ``factor`` pixels apart over ``size`` (None:
    a backbone whose cells are on another grid, :attr:`~pixelwise.models.backbones.Backbone.stride_grid`)."""
    return factor is not None and tuple(x.shape[-2:]) == (-(-size[0] // factor), -(-size[1] // factor))


def upsample(x: torch.Tensor, factor: int | None, size: torch.Size | tuple[int, int]) -> torch.Tensor:
    """Bilinear upsampling of a map whose cells are ``factor`` pixels of ``size``'s grid apart (the ratio of the
    two strides), by exactly ``factor``, cut to ``size``. A stride-``s`` map of an input ``H`` pixels high has
    ``ceil(H / s)`` rows: resized to ``H`` (:func:`resize_to`) their pitch becomes ``H / ceil(H / s)``, and where
    ``H`` is no multiple of ``s`` the scores land up to a few pixels from where the network computed them, and
    from where training on crops that are multiples put them. The same as :func:`resize_to` at multiples. A map
    of another number of cells than ``ceil(size / factor)`` (a backbone that rounds its sizes down) follows
    another convention: resized as before; so is a map with ``factor`` None (from
    :meth:`~pixelwise.models.backbones.Backbone.stride_ratio`: VGG's Caffe-style pooling puts its cells at ``8 i``)."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    if not on_stride_grid(x, factor, size):
        return resize_to(x, size)
    return F.interpolate(x, scale_factor=factor, mode="bilinear", align_corners=False)[..., : size[0], : size[1]]


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
