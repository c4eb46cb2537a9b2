"""LR-ASPP: the Lite Reduced Atrous Spatial Pyramid Pooling head of MobileNetV3.

A. Howard, M. Sandler, G. Chu, L.-C. Chen, B. Chen, M. Tan, W. Wang, Y. Zhu, R. Pang, V. Vasudevan, Q. V. Le,
H. Adam, "Searching for MobileNetV3", ICCV 2019 (arXiv:1905.02244), sec. 6.4 and Fig. 10.

The head for real time on a CPU: it costs little beside the backbone (two 1x1 convs at 1/16 and two class
scorers), where DeepLab v3+'s ASPP and 256-channel decoder at 1/4 cost several times the MobileNet itself.

Deviation from the paper: the squeeze-and-excitation-like branch pools globally (as torchvision's
``lraspp_mobilenet_v3_large``) instead of a 49x49 average pool with stride (16, 20), which was sized for
Cityscapes' 1024x2048 images; at CamVid's or a video's size the 1/16 feature is smaller than that window.

Option beyond the paper: ``fine_reduction=4`` adds one more skip, the 1/4 feature scored by its own 1x1 conv and
added to the 1/8 scores upsampled to 1/4 (FCN-8s's skip fusion one level finer), for thin objects (poles, fences)
that a 1/8 score map blurs; off by default, as in the paper.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import ConfigError
from .backbones import Backbone, build_backbone
from .modules import ConvNormAct, upsample
from .registry import register_model
from .weights import Pretrained


class LRASPP(nn.Module):
    """Fig. 10: the 1/16 feature through a 1x1 conv (BN, ReLU) gated by a sigmoid of its globally pooled 1x1
    conv, upsampled to 1/8 and scored; the 1/8 feature scored by its own 1x1 conv; the two scores summed and
    upsampled to the input. With ``fine`` (a 1/4 feature's name), the sum is upsampled to 1/4 and that feature's
    own 1x1 scores added first."""

    def __init__(
        self, backbone: Backbone, *, num_classes: int, high: str, low: str, channels: int = 128, fine: str | None = None
    ) -> None:
        super().__init__()
        self.backbone, self.high, self.low, self.fine = backbone, high, low, fine
        backbone.keep(high, low, fine)
        high_channels = backbone.info(high).channels
        self.conv = ConvNormAct(high_channels, channels, 1)
        self.gate = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(high_channels, channels, 1), nn.Sigmoid())
        self.high_classifier = nn.Conv2d(channels, num_classes, 1)
        self.low_classifier = nn.Conv2d(backbone.info(low).channels, num_classes, 1)
        self.fine_classifier = None if fine is None else nn.Conv2d(backbone.info(fine).channels, num_classes, 1)
        maps = [name for name in (high, low, fine) if name is not None]
        self.factors = [backbone.stride_ratio(a, b) for a, b in zip(maps, maps[1:], strict=False)]  # 2: 1/16 -> 1/8
        self.reduction = backbone.stride_ratio(maps[-1])  # of the scores: 8, or 4 with the fine skip

    def head(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        """The class scores at 1/8 (1/4 with the fine skip) from the backbone's features."""
        high = features[self.high]  # 1/16 (1/OS)
        y = self.conv(high) * self.gate(high)  # 1/16, ``channels``
        low = features[self.low]  # 1/8
        y = upsample(y, self.factors[0], low.shape[-2:])  # 1/16 -> 1/8
        scores = self.high_classifier(y) + self.low_classifier(low)  # 1/8, classes
        if self.fine_classifier is None:
            return scores
        fine = features[self.fine]  # 1/4
        return upsample(scores, self.factors[1], fine.shape[-2:]) + self.fine_classifier(fine)  # 1/4, classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return upsample(self.head(self.backbone(x)), self.reduction, x.shape[-2:])  # 1/8 (1/4) -> 1/1


@register_model
def lraspp(
    *,
    num_classes: int,
    backbone: str = "timm/mobilenetv3_large_100",
    in_channels: int = 3,
    output_stride: int = 16,
    channels: int = 128,
    fine_reduction: int | None = None,
    pretrained_backbone: Pretrained = False,
) -> LRASPP:
    """LR-ASPP (Howard et al. 2019) on any backbone with a 1/8 feature: the head on its last feature (dilated to
    ``output_stride``, 16 in the paper) and its 1/8 feature; MobileNetV3-Large as in the paper by default.
    ``fine_reduction=4`` adds a skip from the 1/4 feature (not in the paper; see the module docstring)."""
    if fine_reduction not in (None, 4):
        raise ConfigError(f"model.fine_reduction must be 4 or null (no fine skip), got {fine_reduction!r}")
    net = build_backbone(backbone, in_channels=in_channels, output_stride=output_stride, pretrained=pretrained_backbone)
    return LRASPP(
        net,
        num_classes=num_classes,
        high=net.feature_info[-1].name,
        low=net.at_reduction(8, "LR-ASPP's 1/8 branch"),
        channels=channels,
        fine=None if fine_reduction is None else net.at_reduction(fine_reduction, "LR-ASPP's fine skip"),
    )
