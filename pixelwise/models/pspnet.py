"""Pyramid pooling head: PSPNet (and the SPP bins of SPPNet).

H. Zhao, J. Shi, X. Qi, X. Wang, J. Jia, "Pyramid Scene Parsing Network", CVPR 2017
(arXiv:1612.01105); K. He, X. Zhang, S. Ren, J. Sun, "Spatial Pyramid Pooling in Deep Convolutional
Networks for Visual Recognition", ECCV 2014.

Dilated ResNet (output stride 8), the pyramid pooling module on its last features (bins 1, 2, 3, 6;
``bins=(1, 2, 4)`` gives an SPPNet-style pyramid), a 3x3 conv with 512 channels, dropout 0.1, a 1x1
classifier, bilinear upsampling to the input. ``aux_head=True`` adds PSPNet's deep-supervision
branch on layer3 (returned as ``{"out", "aux"}`` in training mode). ``pspnet`` takes any backbone
(:func:`.backbones.build_backbone`), ``pspnet_resnet50`` is its ResNet-50 preset.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..errors import ConfigError
from .backbones import Backbone, build_backbone
from .modules import ConvNormAct, FCNHead, upsample
from .pyramid_pooling import PyramidPooling
from .registry import register_model
from .weights import Pretrained


class PSPNet(nn.Module):
    """Pyramid pooling on the backbone's last feature; ``aux_head`` on the feature before it (ResNet: layer3, where
    the paper's deep supervision sits, res4b22)."""

    def __init__(
        self,
        backbone: Backbone,
        *,
        num_classes: int,
        bins: Sequence[int] = (1, 2, 3, 6),
        aux_head: bool = False,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        names = [f.name for f in backbone.feature_info]  # shallow to deep
        self.high, self.aux_feature = names[-1], names[-2] if aux_head else None
        self.backbone.keep(self.high, self.aux_feature)
        channels = self.backbone.info(self.high).channels
        self.ppm = PyramidPooling(channels, bins)
        self.bottleneck = ConvNormAct(self.ppm.out_channels, 512, 3, padding=1)
        self.drop = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(512, num_classes, 1)
        self.aux = FCNHead(self.backbone.info(self.aux_feature).channels, num_classes) if aux_head else None

    def forward(self, x: torch.Tensor, *, return_aux: bool | None = None) -> torch.Tensor | dict[str, torch.Tensor]:
        """Logits; ``{"out", "aux"}`` when ``return_aux`` (default: in training mode, if there is an aux head)."""
        f = self.backbone(x)
        y = self.bottleneck(self.ppm(f[self.high]))  # 1/8 (ResNet-50: 2048 + 4 x 512 -> 512 channels)
        out = upsample(self.classifier(self.drop(y)), self.backbone.stride_ratio(self.high), x.shape[-2:])  # 1/1
        if self.aux is not None and (self.training if return_aux is None else return_aux):
            aux = self.aux(f[self.aux_feature])
            return {"out": out, "aux": upsample(aux, self.backbone.stride_ratio(self.aux_feature), x.shape[-2:])}
        return out


@register_model
def pspnet(
    *,
    num_classes: int,
    backbone: str = "resnet50",
    in_channels: int = 3,
    output_stride: int = 8,
    bins: Sequence[int] = (1, 2, 3, 6),
    aux_head: bool = False,
    pretrained_backbone: Pretrained = False,
) -> PSPNet:
    """PSPNet (Zhao et al. 2017) on any backbone (``timm/<model>`` for timm's), dilated to ``output_stride`` (the
    paper's 8); ``bins=(1, 2, 4)`` for SPPNet's pyramid."""
    values = list(bins) if isinstance(bins, (list, tuple)) else []
    if not values or not all(isinstance(b, int) and not isinstance(b, bool) and b >= 1 for b in values):
        raise ConfigError(
            f"model.bins must list at least one pooling grid size, each a whole number >= 1 "
            f"(the paper's [1, 2, 3, 6]), "
            f"got {bins!r}"
        )
    net = build_backbone(backbone, in_channels=in_channels, output_stride=output_stride, pretrained=pretrained_backbone)
    return PSPNet(net, num_classes=num_classes, bins=values, aux_head=aux_head)


@register_model
def pspnet_resnet50(
    *,
    num_classes: int,
    in_channels: int = 3,
    output_stride: int = 8,
    bins: Sequence[int] = (1, 2, 3, 6),
    aux_head: bool = False,
    pretrained_backbone: Pretrained = False,
) -> PSPNet:
    """PSPNet (Zhao et al. 2017) on a dilated ResNet-50; ``bins=(1, 2, 4)`` for SPPNet's pyramid."""
    return pspnet(
        num_classes=num_classes,
        backbone="resnet50",
        in_channels=in_channels,
        output_stride=output_stride,
        bins=bins,
        aux_head=aux_head,
        pretrained_backbone=pretrained_backbone,
    )
