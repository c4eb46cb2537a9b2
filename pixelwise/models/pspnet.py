"""Pyramid pooling head: PSPNet (and the SPP bins of SPPNet).

H. Zhao, J. Shi, X. Qi, X. Wang, J. Jia, "Pyramid Scene Parsing Network", CVPR 2017
(arXiv:1612.01105); K. He, X. Zhang, S. Ren, J. Sun, "Spatial Pyramid Pooling in Deep Convolutional
Networks for Visual Recognition", ECCV 2014.

Dilated ResNet (output stride 8), the pyramid pooling module on its last features (bins 1, 2, 3, 6;
``bins=(1, 2, 4)`` gives an SPPNet-style pyramid), a 3x3 conv with 512 channels, dropout 0.1, a 1x1
classifier, bilinear upsampling to the input. ``aux_head=True`` adds PSPNet's deep-supervision
branch on layer3 (returned as ``{"out", "aux"}`` in training mode).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .backbones import resnet
from .modules import ConvNormAct, FCNHead, resize_to
from .pyramid_pooling import PyramidPooling
from .registry import register_model
from .weights import Pretrained


class PSPNet(nn.Module):
    def __init__(
        self,
        *,
        num_classes: int,
        depth: str = "resnet50",
        in_channels: int = 3,
        output_stride: int = 8,
        bins: Sequence[int] = (1, 2, 3, 6),
        aux_head: bool = False,
        dropout: float = 0.1,
        pretrained_backbone: Pretrained = False,
    ) -> None:
        super().__init__()
        self.backbone = resnet(
            depth, in_channels=in_channels, output_stride=output_stride, pretrained=pretrained_backbone
        )
        self.backbone.keep("layer4", "layer3" if aux_head else None)
        channels = self.backbone.info("layer4").channels
        self.ppm = PyramidPooling(channels, bins)
        self.bottleneck = ConvNormAct(self.ppm.out_channels, 512, 3, padding=1)
        self.drop = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(512, num_classes, 1)
        self.aux = FCNHead(self.backbone.info("layer3").channels, num_classes) if aux_head else None

    def forward(self, x: torch.Tensor, *, return_aux: bool | None = None) -> torch.Tensor | dict[str, torch.Tensor]:
        """Logits; ``{"out", "aux"}`` when ``return_aux`` (default: in training mode, if there is an aux head)."""
        f = self.backbone(x)
        y = self.bottleneck(self.ppm(f["layer4"]))  # 1/8: 2048 + 4 x 512 -> 512 channels
        out = resize_to(self.classifier(self.drop(y)), x.shape[-2:])
        if self.aux is not None and (self.training if return_aux is None else return_aux):
            return {"out": out, "aux": resize_to(self.aux(f["layer3"]), x.shape[-2:])}
        return out


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
    return PSPNet(
        num_classes=num_classes,
        in_channels=in_channels,
        output_stride=output_stride,
        bins=bins,
        aux_head=aux_head,
        pretrained_backbone=pretrained_backbone,
    )
