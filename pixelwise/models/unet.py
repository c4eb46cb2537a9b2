"""U-Net.

O. Ronneberger, P. Fischer, T. Brox, "U-Net: Convolutional Networks for Biomedical Image
Segmentation", MICCAI 2015 (arXiv:1505.04597).

Contracting path: four levels of two 3x3 convs + ReLU, each followed by 2x2 max pooling (stride 2),
doubling the channels 64-128-256-512, and a 1024-channel bottom block. Expansive path: 2x2 "up-
convolution" halving the channels, concatenation with the (cropped) feature map of the same level,
two 3x3 convs. A 1x1 conv maps the 64 channels to the classes. The paper's net uses unpadded
("valid") convs, so a 572x572 input gives a 388x388 output, and predicts large images tile by tile
with the missing context mirrored (overlap-tile, Fig. 2). Its weights start from a Gaussian of standard deviation
sqrt(2 / N), N the incoming nodes of a neuron (sec. 3: 9 x 64 for a 3x3 conv on 64 channels), so that each map has
about unit variance; with ``batch_norm=True`` (not the paper's) PyTorch's default initialisation is kept.

``instance_head="panoptic"`` adds Panoptic-DeepLab's class-agnostic instance branch (B. Cheng et al., CVPR 2020;
:mod:`.panoptic`) as a second expansive path of the same shape, on the shared contracting path, ending in 1x1
convs to the centre heatmap (1 channel) and the offsets (2 channels, dy and dx in input pixels); the model then
returns ``{"out": logits, "center", "offset"}`` at the input size.

``unet(backbone=...)`` puts the U-Net decoder on a classification encoder instead (:class:`EncoderUNet`, as
segmentation_models_pytorch's ``Unet``): one of pixelwise's backbones or any timm model (``timm/<model>``);
``unet_resnet18`` and ``unet_resnet34`` are its presets. Without a backbone ``unet`` is the paper's network.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from .backbones import Backbone, build_backbone
from .modules import DoubleConv, center_crop, mirror_pad
from .panoptic import PredictionConv, check_instance_head, prediction_conv
from .registry import register_model
from .weights import Pretrained


class InstanceDecoder(nn.Module):
    """Panoptic-DeepLab's instance branch on a U-Net: a second decoder (``modules``: the same layers as the
    semantic decoder's, under the same names) ending in the centre (1 channel) and offset (2 channels) 1x1 convs
    instead of the classifier."""

    def __init__(self, channels: int, **modules: nn.Module) -> None:
        super().__init__()
        for name, module in modules.items():
            self.add_module(name, module)
        self.center = prediction_conv(channels, 1)
        self.offset = prediction_conv(channels, 2)

    def predict(self, y: torch.Tensor) -> torch.Tensor:
        """Centre and offsets as one ``N x 3 x H x W`` tensor (the overlap-tile assembles it like logits)."""
        return torch.cat([self.center(y), self.offset(y)], dim=1)


def _instance_outputs(logits: torch.Tensor, instance: torch.Tensor) -> dict[str, torch.Tensor]:
    return {"out": logits, "center": instance[:, :1], "offset": instance[:, 1:]}


def paper_init(module: nn.Module) -> None:
    """U-Net sec. 3: every conv's weights from N(0, 2 / N), N its incoming nodes (a transposed conv's output pixel
    takes one tap of each input channel per stride cell), zero biases. The centre and offset predictors keep
    detectron2's near-zero start (:func:`~pixelwise.models.panoptic.prediction_conv`)."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)) and not isinstance(m, PredictionConv):
            kh, kw = m.kernel_size
            if isinstance(m, nn.ConvTranspose2d):
                n = m.in_channels * max(kh // m.stride[0], 1) * max(kw // m.stride[1], 1)
            else:
                n = m.in_channels // m.groups * kh * kw
            nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / n))
            if m.bias is not None:
                nn.init.zeros_(m.bias)


class UNet(nn.Module):
    """U-Net with ``padding="same"`` (output = input size at any size) or ``"valid"`` (the paper's).

    ``forward`` always returns logits ``N x num_classes x H x W`` at the input size (with an instance
    head: ``{"out": logits, "center", "offset"}``, each at the input size). With ``padding="valid"`` it
    does so by overlap-tile: the input is mirror-padded by the net's receptive-field margin (92 px per
    side for depth 4) and, if ``tile_size`` is set, predicted in output tiles of that size, so that
    memory stays bounded on large images. As with the paper's 388-pixel tiles, a valid output size is not a
    multiple of the net's total stride (388 = 24 x 16 + 4), so neighbouring tiles meet the 2x2 pooling grid at
    different phases and a tiled prediction is not exactly the one-tile prediction (``tile_size=None``).
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
        instance_head: str | None = None,
    ) -> None:
        super().__init__()
        if padding not in ("same", "valid"):
            raise ValueError(f"padding must be 'same' or 'valid', got {padding!r}")
        if base_channels < 1 or depth < 1:
            raise ValueError(f"base_channels ({base_channels}) and depth ({depth}) must be >= 1")
        if not 0 <= dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
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
        self.instance: InstanceDecoder | None = None
        if check_instance_head(instance_head) == "panoptic":
            self.instance = InstanceDecoder(
                widths[0],
                up=nn.ModuleList(
                    nn.ConvTranspose2d(widths[i + 1], widths[i], kernel_size=2, stride=2)
                    for i in reversed(range(depth))
                ),
                decoder=nn.ModuleList(
                    DoubleConv(2 * widths[i], widths[i], padding=pad, batch_norm=batch_norm)
                    for i in reversed(range(depth))
                ),
            )
        if not batch_norm:
            parts = [self.encoder, self.up, self.decoder, self.classifier]
            paper_init(nn.ModuleList(parts + ([self.instance] if self.instance is not None else [])))
        if padding == "valid":
            self.margin = self._valid_margin()
            if tile_size is not None and self.valid_output_size(tile_size + 2 * self.margin) != tile_size:
                raise ValueError(f"tile_size={tile_size} is not a valid output size for a depth-{depth} valid U-Net")

    # --- the network itself -------------------------------------------------------------------
    def _net(self, x: torch.Tensor) -> torch.Tensor:
        """Logits; with the instance branch, logits followed by the centre and offset channels."""
        skips = []
        for level, block in enumerate(self.encoder):
            x = block(x)  # level l: 1/2^l of the input
            if level < self.depth:
                skips.append(x)
                x = self.pool(x)
        x = self.dropout(x)  # bottom: 1/2^depth, widths[-1] channels
        logits = self.classifier(self._expand(x, skips, self.up, self.decoder))
        if self.instance is None:
            return logits
        # the second expansive path reads the same contracting path
        return torch.cat(
            [logits, self.instance.predict(self._expand(x, skips, self.instance.up, self.instance.decoder))], 1
        )

    def _expand(
        self, x: torch.Tensor, skips: list[torch.Tensor], ups: nn.ModuleList, blocks: nn.ModuleList
    ) -> torch.Tensor:
        """The expansive path: from the bottom ``x`` back to 1/1, ``widths[0]`` channels."""
        for up, block, skip in zip(ups, blocks, reversed(skips), strict=True):
            x = up(x)  # 2x up, half the channels
            if self.padding == "valid":
                skip = center_crop(skip, *x.shape[-2:])  # the paper's "cropping" (grey arrows)
            else:
                # odd size at this level: max pooling's floor lost a row/column; pad it back (a
                # no-op pad otherwise: unconditional, so that exported graphs take any size)
                dh, dw = skip.shape[-2] - x.shape[-2], skip.shape[-1] - x.shape[-1]
                x = F.pad(x, (dw // 2, dw - dw // 2, dh // 2, dh - dh // 2))
            x = block(torch.cat([skip, x], dim=1))
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor | dict[str, torch.Tensor]:
        y = self._net(x) if self.padding == "same" else self._overlap_tile(x)
        if self.instance is None:
            return y
        return _instance_outputs(y[:, :-3], y[:, -3:])  # offsets need no rescaling: the output is at 1/1

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


PAPER_UNET_DEFAULTS = {
    "base_channels": 64,
    "depth": 4,
    "padding": "same",
    "batch_norm": True,
    "dropout": 0.0,
    "tile_size": None,
}


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
    instance_head: str | None = None,
    backbone: str | None = None,
    decoder_channels: Sequence[int] | None = None,
    pretrained_backbone: Pretrained = False,
) -> UNet | EncoderUNet:
    """U-Net (Ronneberger et al. 2015). The paper's net: ``padding="valid", batch_norm=False``.
    ``instance_head="panoptic"``: Panoptic-DeepLab's centre and offset outputs on a second decoder.
    ``backbone``: the U-Net decoder on that encoder (``timm/<model>`` for timm's) at output stride 32, reading
    every level; ``decoder_channels`` default to 16 x the level's reduction, at most 256 (256, 128, 64, 32, 16 on
    a ResNet, as smp's)."""
    paper_args = dict(
        base_channels=base_channels,
        depth=depth,
        padding=padding,
        batch_norm=batch_norm,
        dropout=dropout,
        tile_size=tile_size,
    )
    if backbone is None:
        given = [
            k for k, v in (("decoder_channels", decoder_channels), ("pretrained_backbone", pretrained_backbone)) if v
        ]
        if given:
            raise ConfigError(f"unet takes {', '.join(given)} only with a backbone (e.g. backbone: resnet34)")
        return UNet(in_channels=in_channels, num_classes=num_classes, instance_head=instance_head, **paper_args)
    changed = [k for k, v in paper_args.items() if v != PAPER_UNET_DEFAULTS[k]]
    if changed:
        raise ConfigError(f"unet with backbone {backbone} takes no {', '.join(changed)} (the paper's U-Net's)")
    check_instance_head(instance_head)  # before building the backbone
    net = build_backbone(backbone, in_channels=in_channels, output_stride=32, pretrained=pretrained_backbone)
    if decoder_channels is None:
        levels = sorted(f.reduction for f in net.feature_info)[:-1]  # the skips, as EncoderUNet reads them
        decoder_channels = [min(16 * r, 256) for r in reversed(levels)] + [16]  # the last block at 1/1
    return EncoderUNet(net, num_classes=num_classes, decoder_channels=decoder_channels, instance_head=instance_head)


class EncoderUNet(nn.Module):
    """U-Net decoder on a pretrained-able classification encoder (as smp's ``Unet``): at each of the
    encoder's reductions 1/16, 1/8, 1/4, 1/2 the decoder upsamples 2x, concatenates the encoder
    feature of that reduction and applies two 3x3 conv-BN-ReLU; a last block reaches 1/1. Channels
    are read from the backbone's ``feature_info``. ``instance_head="panoptic"`` adds a second decoder of
    the same shape ending in the centre and offset convs (Panoptic-DeepLab, Cheng et al. 2020)."""

    def __init__(
        self,
        backbone: Backbone,
        *,
        num_classes: int,
        decoder_channels: Sequence[int] = (256, 128, 64, 32, 16),
        instance_head: str | None = None,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        features = sorted(backbone.feature_info, key=lambda f: f.reduction)  # 1/2 ... 1/32
        self.deepest = features[-1].name
        self.skips = [f.name for f in reversed(features[:-1])]  # 1/16, 1/8, 1/4, 1/2
        if len(decoder_channels) != len(self.skips) + 1:
            raise ValueError(f"decoder_channels needs {len(self.skips) + 1} entries, got {list(decoder_channels)}")
        skip_channels = [backbone.info(n).channels for n in self.skips] + [0]

        def decoder() -> nn.ModuleList:
            blocks, channels = nn.ModuleList(), features[-1].channels
            for out, skip in zip(decoder_channels, skip_channels, strict=True):
                blocks.append(DoubleConv(channels + skip, out, padding=1, batch_norm=True))
                channels = out
            return blocks

        self.blocks = decoder()
        self.classifier = nn.Conv2d(decoder_channels[-1], num_classes, 1)
        self.instance: InstanceDecoder | None = None
        if check_instance_head(instance_head) == "panoptic":
            self.instance = InstanceDecoder(decoder_channels[-1], blocks=decoder())

    def _decode(self, f: dict[str, torch.Tensor], x: torch.Tensor, blocks: nn.ModuleList) -> torch.Tensor:
        y = f[self.deepest]  # 1/32
        for i, block in enumerate(blocks):
            target = f[self.skips[i]] if i < len(self.skips) else x  # 1/16 ... 1/2, then 1/1
            y = F.interpolate(y, size=target.shape[-2:], mode="nearest")
            y = block(torch.cat([y, target], dim=1) if i < len(self.skips) else y)
        return y

    def forward(self, x: torch.Tensor) -> torch.Tensor | dict[str, torch.Tensor]:
        f = self.backbone(x)
        logits = self.classifier(self._decode(f, x, self.blocks))
        if self.instance is None:
            return logits
        return _instance_outputs(logits, self.instance.predict(self._decode(f, x, self.instance.blocks)))  # 1/1


def _register_encoder_unet(depth: str):
    def build(
        *,
        num_classes: int,
        in_channels: int = 3,
        decoder_channels: Sequence[int] = (256, 128, 64, 32, 16),
        instance_head: str | None = None,
        pretrained_backbone: Pretrained = False,
    ) -> EncoderUNet:
        return unet(
            num_classes=num_classes,
            in_channels=in_channels,
            backbone=depth,
            decoder_channels=decoder_channels,
            instance_head=instance_head,
            pretrained_backbone=pretrained_backbone,
        )

    build.__name__ = f"unet_{depth}"
    build.__doc__ = f'U-Net decoder on a {depth} encoder; instance_head="panoptic" adds a second decoder.'
    return register_model(build)


unet_resnet18 = _register_encoder_unet("resnet18")
unet_resnet34 = _register_encoder_unet("resnet34")
