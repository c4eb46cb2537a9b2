"""U-Net.

O. Ronneberger, P. Fischer, T. Brox, "U-Net: Convolutional Networks for Biomedical Image
Segmentation", MICCAI 2015 (arXiv:1505.04597).

Contracting path: four levels of two 3x3 convs + ReLU, each followed by 2x2 max pooling (stride 2),
doubling the channels 64-128-256-512, and a 1024-channel bottom block. Expansive path: 2x2 "up-
convolution" halving the channels, concatenation with the (cropped) feature map of the same level,
two 3x3 convs. A 1x1 conv maps the 64 channels to the classes. The paper's net uses unpadded
("valid") convs, so a 572x572 input gives a 388x388 output, and predicts large images tile by tile
with the missing context mirrored (overlap-tile, Fig. 2).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from .backbones import Backbone, resnet
from .modules import DoubleConv, center_crop, mirror_pad
from .registry import register_model
from .weights import Pretrained


class UNet(nn.Module):
    """U-Net with ``padding="same"`` (output = input size at any size) or ``"valid"`` (the paper's).

    ``forward`` always returns logits ``N x num_classes x H x W`` at the input size. With
    ``padding="valid"`` it does so by overlap-tile: the input is mirror-padded by the net's
    receptive-field margin (92 px per side for depth 4) and, if ``tile_size`` is set, predicted in
    output tiles of that size, so that memory stays bounded on large images.
    """

    def __init__(
        self,
        *,
        in_channels: int = 3,
        num_classes: int,
        base_channels: int = 64,
        depth: int = 4,
        padding: Literal["same", "valid"] = "same",
        batch_norm: bool = True,
        dropout: float = 0.0,
        tile_size: int | None = None,
    ) -> None:
        super().__init__()
        if padding not in ("same", "valid"):
            raise ValueError(f"padding must be 'same' or 'valid', got {padding!r}")
        self.padding = padding
        self.depth = depth
        self.tile_size = tile_size
        pad = 1 if padding == "same" else 0
        widths = [base_channels * 2**i for i in range(depth + 1)]  # 64, 128, 256, 512, 1024

        self.encoder = nn.ModuleList()
        channels = in_channels
        for width in widths:
            self.encoder.append(DoubleConv(channels, width, padding=pad, batch_norm=batch_norm))
            channels = width
        self.pool = nn.MaxPool2d(2, 2)
        # The paper puts drop-out at the end of the contracting path.
        self.dropout = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        self.up = nn.ModuleList(
            nn.ConvTranspose2d(widths[i + 1], widths[i], kernel_size=2, stride=2) for i in reversed(range(depth))
        )
        self.decoder = nn.ModuleList(
            DoubleConv(2 * widths[i], widths[i], padding=pad, batch_norm=batch_norm) for i in reversed(range(depth))
        )
        self.classifier = nn.Conv2d(widths[0], num_classes, kernel_size=1)
        if padding == "valid":
            self.margin = self._valid_margin()
            if tile_size is not None and self.valid_output_size(tile_size + 2 * self.margin) != tile_size:
                raise ValueError(f"tile_size={tile_size} is not a valid output size for a depth-{depth} valid U-Net")

    # --- the network itself -------------------------------------------------------------------
    def _net(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for level, block in enumerate(self.encoder):
            x = block(x)  # level l: 1/2^l of the input
            if level < self.depth:
                skips.append(x)
                x = self.pool(x)
        x = self.dropout(x)  # bottom: 1/2^depth, widths[-1] channels
        for up, block, skip in zip(self.up, self.decoder, reversed(skips), strict=True):
            x = up(x)  # 2x up, half the channels
            if self.padding == "valid":
                skip = center_crop(skip, *x.shape[-2:])  # the paper's "cropping" (grey arrows)
            else:
                # odd size at this level: max pooling's floor lost a row/column; pad it back (a
                # no-op pad otherwise: unconditional, so that exported graphs take any size)
                dh, dw = skip.shape[-2] - x.shape[-2], skip.shape[-1] - x.shape[-1]
                x = F.pad(x, (dw // 2, dw - dw // 2, dh // 2, dh - dh // 2))
            x = block(torch.cat([skip, x], dim=1))
        return self.classifier(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.padding == "same":
            return self._net(x)
        return self._overlap_tile(x)

    # --- valid padding: sizes and overlap-tile ------------------------------------------------
    def valid_output_size(self, size: int) -> int | None:
        """Output size of the unpadded net for an input of ``size`` pixels, or None if invalid."""
        for _ in range(self.depth):
            size -= 4
            if size <= 0 or size % 2:
                return None
            size //= 2
        size -= 4
        for _ in range(self.depth):
            size = 2 * size - 4
        return size if size > 0 else None

    def _valid_margin(self) -> int:
        size = 2 ** (self.depth + 1)
        while self.valid_output_size(size) is None:
            size += 1
        return (size - self.valid_output_size(size)) // 2  # 92 for depth 4

    def _valid_tile(self, size: int) -> int:
        """Smallest valid output size >= ``size``."""
        out = max(size, 1)
        while self.valid_output_size(out + 2 * self.margin) != out:
            out += 1
        return out

    def _overlap_tile(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        m = self.margin
        th = self.tile_size or self._valid_tile(h)
        tw = self.tile_size or self._valid_tile(w)
        rows, cols = -(-h // th), -(-w // tw)
        padded = mirror_pad(x, m, m + cols * tw - w, m, m + rows * th - h)
        if rows == cols == 1:
            return self._net(padded)[..., :h, :w]
        out = None
        for r in range(rows):
            for c in range(cols):
                tile = self._net(padded[..., r * th : r * th + th + 2 * m, c * tw : c * tw + tw + 2 * m])
                if out is None:
                    out = tile.new_empty(*tile.shape[:2], rows * th, cols * tw)
                out[..., r * th : (r + 1) * th, c * tw : (c + 1) * tw] = tile
        return out[..., :h, :w]


@register_model
def unet(
    *,
    num_classes: int,
    in_channels: int = 3,
    base_channels: int = 64,
    depth: int = 4,
    padding: Literal["same", "valid"] = "same",
    batch_norm: bool = True,
    dropout: float = 0.0,
    tile_size: int | None = None,
) -> UNet:
    """U-Net (Ronneberger et al. 2015). The paper's net: ``padding="valid", batch_norm=False``."""
    return UNet(
        in_channels=in_channels,
        num_classes=num_classes,
        base_channels=base_channels,
        depth=depth,
        padding=padding,
        batch_norm=batch_norm,
        dropout=dropout,
        tile_size=tile_size,
    )


class EncoderUNet(nn.Module):
    """U-Net decoder on a pretrained-able classification encoder (as smp's ``Unet``): at each of the
    encoder's reductions 1/16, 1/8, 1/4, 1/2 the decoder upsamples 2x, concatenates the encoder
    feature of that reduction and applies two 3x3 conv-BN-ReLU; a last block reaches 1/1. Channels
    are read from the backbone's ``feature_info``."""

    def __init__(
        self, backbone: Backbone, *, num_classes: int, decoder_channels: Sequence[int] = (256, 128, 64, 32, 16)
    ) -> None:
        super().__init__()
        self.backbone = backbone
        features = sorted(backbone.feature_info, key=lambda f: f.reduction)  # 1/2 ... 1/32
        self.deepest = features[-1].name
        self.skips = [f.name for f in reversed(features[:-1])]  # 1/16, 1/8, 1/4, 1/2
        if len(decoder_channels) != len(self.skips) + 1:
            raise ValueError(f"decoder_channels needs {len(self.skips) + 1} entries, got {list(decoder_channels)}")
        channels = features[-1].channels
        skip_channels = [backbone.info(n).channels for n in self.skips] + [0]
        self.blocks = nn.ModuleList()
        for out, skip in zip(decoder_channels, skip_channels, strict=True):
            self.blocks.append(DoubleConv(channels + skip, out, padding=1, batch_norm=True))
            channels = out
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.backbone(x)
        y = f[self.deepest]  # 1/32
        for i, block in enumerate(self.blocks):
            target = f[self.skips[i]] if i < len(self.skips) else x  # 1/16 ... 1/2, then 1/1
            y = F.interpolate(y, size=target.shape[-2:], mode="nearest")
            y = block(torch.cat([y, target], dim=1) if i < len(self.skips) else y)
        return self.classifier(y)


def _register_encoder_unet(depth: str):
    def build(
        *,
        num_classes: int,
        in_channels: int = 3,
        decoder_channels: Sequence[int] = (256, 128, 64, 32, 16),
        pretrained_backbone: Pretrained = False,
    ) -> EncoderUNet:
        backbone = resnet(depth, in_channels=in_channels, pretrained=pretrained_backbone)
        return EncoderUNet(backbone, num_classes=num_classes, decoder_channels=decoder_channels)

    build.__name__ = f"unet_{depth}"
    build.__doc__ = f"U-Net decoder on a {depth} encoder."
    return register_model(build)


unet_resnet18 = _register_encoder_unet("resnet18")
unet_resnet34 = _register_encoder_unet("resnet34")
