"""DeepLab v1, v2, v3 and v3+.

- v1: L.-C. Chen, G. Papandreou, I. Kokkinos, K. Murphy, A. L. Yuille, "Semantic Image Segmentation
  with Deep Convolutional Nets and Fully Connected CRFs", ICLR 2015 (arXiv:1412.7062).
- v2: same authors, "DeepLab: Semantic Image Segmentation with Deep Convolutional Nets, Atrous
  Convolution, and Fully Connected CRFs", TPAMI 2017 (arXiv:1606.00915).
- v3: L.-C. Chen, G. Papandreou, F. Schroff, H. Adam, "Rethinking Atrous Convolution for Semantic
  Image Segmentation", arXiv:1706.05587, 2017.
- v3+: L.-C. Chen, Y. Zhu, G. Papandreou, F. Schroff, H. Adam, "Encoder-Decoder with Atrous
  Separable Convolution for Semantic Image Segmentation", ECCV 2018 (arXiv:1802.02611).

All return logits at the input size (bilinear upsampling of the stride-8/16/4 scores). Models
built with ``aux_head=True`` return ``{"out": logits, "aux": aux_logits}`` in training mode, like
torchvision's, so that the engine can add the auxiliary loss; in eval mode they return logits.
DeepLab v3+ built with ``instance_head="panoptic"`` adds Panoptic-DeepLab's instance branch (Cheng et al.,
CVPR 2020; :mod:`.panoptic`) and returns ``{"out", "center", "offset"}`` in both modes.

``deeplabv3`` and ``deeplabv3plus`` take any backbone (``backbone="resnet101"``, ``"timm/convnext_tiny"``;
:func:`.backbones.build_backbone`); ``deeplabv3_resnet50``, ``deeplabv3plus_xception65`` etc. are their presets.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..errors import ConfigError
from .aspp import ASPP
from .atrous_conv import conv2d
from .backbones import RESNETS, VGG16, Backbone, build_backbone, init_relu_convs, resnet, vgg16_fc_weights
from .modules import ConvNormAct, FCNHead, SeparableConv2d, upsample
from .panoptic import PanopticDeepLabInstanceBranch, check_instance_head
from .registry import register_model
from .weights import Pretrained, load_state, read_pretrained


# --- DeepLab v1 / v2 on VGG-16 ------------------------------------------------------------------
class LargeFOV(nn.Sequential):
    """DeepLab-LargeFOV's head (v1 sec. 4.1, Table 2; one ASPP-L branch in v2): fc6 as a 3x3 conv
    with rate ``rate`` and 1024 channels, fc7 as a 1x1 conv with 1024, dropout after each, and fc8
    scoring the classes."""

    def __init__(self, in_channels: int, num_classes: int, rate: int, width: int = 1024, dropout: float = 0.5):
        super().__init__()
        self.fc6 = conv2d(in_channels, width, 3, padding=rate, dilation=rate)
        self.relu6, self.drop6 = nn.ReLU(inplace=True), nn.Dropout(dropout)
        self.fc7 = nn.Conv2d(width, width, 1)
        self.relu7, self.drop7 = nn.ReLU(inplace=True), nn.Dropout(dropout)
        self.fc8 = nn.Conv2d(width, num_classes, 1)
        init_relu_convs(nn.ModuleList([self.fc6, self.fc7]))
        nn.init.normal_(self.fc8.weight, std=0.01)  # DeepLab's prototxt: gaussian 0.01, bias 0
        nn.init.zeros_(self.fc8.bias)


def _decimated_fc(state: dict[str, torch.Tensor], width: int, what: str) -> dict[str, torch.Tensor]:
    """ImageNet fc6/fc7 subsampled for LargeFOV (v1 sec. 4.1): fc6's 7x7 kernel decimated to 3x3
    and both layers' 4096 channels to ``width`` (every 4th for 1024)."""
    fc = vgg16_fc_weights(state, what)
    step = fc["fc6.weight"].shape[0] // width
    return {
        "fc6.weight": fc["fc6.weight"][::step, :, ::3, ::3],
        "fc6.bias": fc["fc6.bias"][::step],
        "fc7.weight": fc["fc7.weight"][::step, ::step],
        "fc7.bias": fc["fc7.bias"][::step],
    }


class DeepLabVGG(nn.Module):
    """DeepLab v1 (one LargeFOV branch, rate 12) and v2-VGG (ASPP-L: branches with rates 6, 12, 18,
    24 on pool5, their class scores summed, v2 Fig. 4). VGG-16 with stride-1 pool4/pool5 and
    dilated conv5: output stride 8."""

    def __init__(
        self,
        *,
        num_classes: int,
        rates: Sequence[int],
        in_channels: int = 3,
        width: int = 1024,
        dropout: float = 0.5,
        pretrained_backbone: Pretrained = False,
    ) -> None:
        super().__init__()
        self.backbone = VGG16(in_channels=in_channels, variant="deeplab")
        self.backbone.keep("pool5")
        channels = self.backbone.info("pool5").channels
        self.branches = nn.ModuleList(LargeFOV(channels, num_classes, r, width, dropout) for r in checked_rates(rates))
        if pretrained_backbone:
            state = read_pretrained(pretrained_backbone, torchvision_name="vgg16")
            what = f"pretrained_backbone {pretrained_backbone}"
            load_state(self.backbone, state, what=what)
            for branch in self.branches:
                load_state(branch, _decimated_fc(state, width, what), what=what, complete=False)

    def backbone_layers(self) -> list[nn.Module]:
        """The head's layers made from VGG's ImageNet classifier (each branch's fc6, fc7): trained at the base
        rate with the backbone under ``train.head_lr_mult``, as DeepLab's prototxts (lr_mult 10 on fc8 only)."""
        return [layer for branch in self.branches for layer in (branch.fc6, branch.fc7)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pool5 = self.backbone(x)["pool5"]  # 1/8, 512 channels
        score = sum(branch(pool5) for branch in self.branches)  # 1/8, summed over ASPP-L branches
        # bilinear to 1/1; resized, as VGG's Caffe-style pooling puts its cells at 8 i (Backbone.stride_grid)
        return upsample(score, self.backbone.stride_ratio("pool5"), x.shape[-2:])


@register_model
def deeplabv1_vgg16_largefov(
    *,
    num_classes: int,
    in_channels: int = 3,
    rate: int = 12,
    dropout: float = 0.5,
    pretrained_backbone: Pretrained = False,
) -> DeepLabVGG:
    """DeepLab v1 LargeFOV (Chen et al. 2015): VGG-16, fc6 3x3 rate 12 with 1024 channels."""
    return DeepLabVGG(
        num_classes=num_classes,
        rates=(rate,),
        in_channels=in_channels,
        dropout=dropout,
        pretrained_backbone=pretrained_backbone,
    )


@register_model
def deeplabv2_vgg16(
    *,
    num_classes: int,
    in_channels: int = 3,
    rates: Sequence[int] = (6, 12, 18, 24),
    dropout: float = 0.5,
    pretrained_backbone: Pretrained = False,
) -> DeepLabVGG:
    """DeepLab v2 ASPP-L on VGG-16 (Chen et al. 2017): four LargeFOV branches, rates 6/12/18/24."""
    return DeepLabVGG(
        num_classes=num_classes,
        rates=rates,
        in_channels=in_channels,
        dropout=dropout,
        pretrained_backbone=pretrained_backbone,
    )


# --- DeepLab v2 on ResNet-101 -------------------------------------------------------------------
class DeepLabV2ResNet(nn.Module):
    """DeepLab v2 on ResNet (v2 sec. 4.1): output stride 8 (layer3 rate 2, layer4 rate 4) and ASPP-L
    as four 3x3 convs with rates 6/12/18/24 from layer4 straight to the classes, summed."""

    def __init__(
        self,
        *,
        num_classes: int,
        depth: str = "resnet101",
        rates: Sequence[int] = (6, 12, 18, 24),
        in_channels: int = 3,
        pretrained_backbone: Pretrained = False,
    ) -> None:
        super().__init__()
        self.backbone = resnet(depth, in_channels=in_channels, output_stride=8, pretrained=pretrained_backbone)
        self.backbone.keep("layer4")
        channels = self.backbone.info("layer4").channels
        self.aspp = nn.ModuleList(conv2d(channels, num_classes, 3, padding=r, dilation=r) for r in checked_rates(rates))
        for conv in self.aspp:
            nn.init.normal_(conv.weight, std=0.01)
            nn.init.zeros_(conv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.backbone(x)["layer4"]  # 1/8, 2048 channels
        return upsample(sum(conv(f) for conv in self.aspp), self.backbone.stride_ratio("layer4"), x.shape[-2:])


@register_model
def deeplabv2_resnet101(
    *,
    num_classes: int,
    in_channels: int = 3,
    rates: Sequence[int] = (6, 12, 18, 24),
    pretrained_backbone: Pretrained = False,
) -> DeepLabV2ResNet:
    """DeepLab v2 (Chen et al. 2017) on ResNet-101 with ASPP-L, output stride 8."""
    return DeepLabV2ResNet(
        num_classes=num_classes, rates=rates, in_channels=in_channels, pretrained_backbone=pretrained_backbone
    )


# --- DeepLab v3 / v3+ ---------------------------------------------------------------------------
def default_rates(output_stride: int) -> tuple[int, int, int]:
    """ASPP rates: (6, 12, 18) at output stride 16, doubled at 8 (v3 sec. 3.3)."""
    return {16: (6, 12, 18), 8: (12, 24, 36), 32: (3, 6, 9)}[output_stride]


def checked_rates(rates: Sequence[int] | None, output_stride: int | None = None) -> tuple[int, ...]:
    """``model.rates`` as given (a ConfigError unless a non-empty list of whole numbers >= 1), or the default for
    ``output_stride`` where None."""
    if rates is None and output_stride is not None:
        return default_rates(output_stride)
    values = list(rates) if isinstance(rates, (list, tuple)) else []
    if not values or not all(isinstance(r, int) and not isinstance(r, bool) and r >= 1 for r in values):
        raise ConfigError(
            f"model.rates must list at least one atrous rate, each a whole number >= 1 (e.g. [6, 12, 18]), "
            f"got {rates!r}"
        )
    return tuple(values)


class DeepLabV3(nn.Module):
    """DeepLab v3: backbone (``high`` feature at the output stride), ASPP with image pooling, a 1x1
    classifier, bilinear upsampling. ``head_conv=True`` adds the extra 3x3 conv (256, BN, ReLU) of
    torchvision's ``DeepLabHead`` (not in the paper), used to load torchvision's weights."""

    def __init__(
        self,
        backbone: Backbone,
        *,
        num_classes: int,
        high: str,
        rates: Sequence[int],
        aux: str | None = None,
        head_conv: bool = False,
        aspp_dropout: float = 0.1,
        separable: bool = False,
    ) -> None:
        super().__init__()
        self.backbone, self.high, self.aux_feature = backbone, high, aux
        backbone.keep(high, aux)
        self.aspp = ASPP(backbone.info(high).channels, rates, 256, separable=separable, dropout=aspp_dropout)
        self.head_conv = ConvNormAct(256, 256, 3, padding=1) if head_conv else nn.Identity()
        self.classifier = nn.Conv2d(256, num_classes, 1)
        self.aux = FCNHead(backbone.info(aux).channels, num_classes) if aux else None

    def forward(self, x: torch.Tensor, *, return_aux: bool | None = None) -> torch.Tensor | dict[str, torch.Tensor]:
        """Logits; ``{"out", "aux"}`` when ``return_aux`` (default: in training mode, if there is an aux head)."""
        f = self.backbone(x)
        scores = self.classifier(self.head_conv(self.aspp(f[self.high])))  # 1/OS
        out = upsample(scores, self.backbone.stride_ratio(self.high), x.shape[-2:])  # 1/OS -> 1/1
        if self.aux is not None and (self.training if return_aux is None else return_aux):
            aux = self.aux(f[self.aux_feature])
            return {"out": out, "aux": upsample(aux, self.backbone.stride_ratio(self.aux_feature), x.shape[-2:])}
        return out


class DeepLabV3Plus(nn.Module):
    """DeepLab v3+ (Fig. 2): the v3 encoder (ASPP with depthwise-separable atrous convs), and a
    decoder: the stride-4 low-level features reduced to 48 channels by a 1x1 conv, concatenated with
    the encoder output upsampled to stride 4, refined by two 3x3 (separable) convs with 256 channels,
    scored by a 1x1 conv and upsampled 4x to the input.

    ``instance_head="panoptic"``: Panoptic-DeepLab (Cheng et al., CVPR 2020, Fig. 2) with its dual ASPP and
    dual decoder: ``instance`` has its own ASPP on the ``high`` feature and its own decoder (128 channels)
    through the backbone's 1/8 feature (the first of ``feature_info`` with twice the reduction of ``low``, if
    any) and ``low`` (1/4), and the centre and offset heads. Deviation from the paper: the semantic branch stays
    the DeepLab v3+ decoder above (1/4 features only, 48 + 256 channels, no extra 5x5 head conv), so that the
    model without the branch is unchanged and the semantic half of a panoptic model is a plain v3+."""

    def __init__(
        self,
        backbone: Backbone,
        *,
        num_classes: int,
        high: str,
        low: str,
        rates: Sequence[int],
        separable: bool = True,
        aspp_dropout: float = 0.1,
        instance_head: str | None = None,
    ) -> None:
        super().__init__()
        self.backbone, self.high, self.low = backbone, high, low
        backbone.keep(high, low)
        self.aspp = ASPP(backbone.info(high).channels, rates, 256, separable=separable, dropout=aspp_dropout)
        self.reduce = ConvNormAct(backbone.info(low).channels, 48, 1)
        conv = (lambda i, o: SeparableConv2d(i, o, 3)) if separable else (lambda i, o: ConvNormAct(i, o, 3, padding=1))
        self.decoder = nn.Sequential(conv(256 + 48, 256), conv(256, 256))
        self.classifier = nn.Conv2d(256, num_classes, 1)
        self.instance: PanopticDeepLabInstanceBranch | None = None
        self.mid: str | None = None
        if check_instance_head(instance_head) == "panoptic":
            reduction = 2 * backbone.info(low).reduction
            self.mid = next((f.name for f in backbone.feature_info if f.reduction == reduction), None)
            lows = [n for n in (self.mid, low) if n is not None]  # deepest first: 1/8, 1/4
            backbone.keep(high, *lows)
            self.instance = PanopticDeepLabInstanceBranch(
                backbone.info(high).channels,
                [backbone.info(n).channels for n in lows],
                rates,
                # 2x at each low feature (1/16 -> 1/8 -> 1/4), then the last one's stride to the input
                factors=[backbone.stride_ratio(a, b) for a, b in zip((high, *lows), lows, strict=False)]
                + [backbone.stride_ratio(lows[-1])],
                separable=separable,
                aspp_dropout=aspp_dropout,
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor | dict[str, torch.Tensor]:
        """Logits; with the instance branch ``{"out": logits, "center", "offset"}``."""
        f = self.backbone(x)
        low = self.reduce(f[self.low])  # 1/4, 48 channels
        high = upsample(self.aspp(f[self.high]), self.backbone.stride_ratio(self.high, self.low), low.shape[-2:])
        # 1/OS -> 1/4, 256 channels
        y = self.decoder(torch.cat([high, low], dim=1))  # 1/4, 256 channels
        out = upsample(self.classifier(y), self.backbone.stride_ratio(self.low), x.shape[-2:])  # 1/4 -> 1/1
        if self.instance is None:
            return out
        lows = [f[n] for n in (self.mid, self.low) if n is not None]  # 1/8, 1/4
        return {"out": out, **self.instance(f[self.high], lows, x.shape[-2:])}  # 1/1


MULTI_GRID = (1, 2, 4)  # DeepLab v3's unit rates (sec. 3.2, Table 3: the best of the grids tried)


def resolve_multi_grid(backbone: str, multi_grid: Sequence[int] | str | None) -> Sequence[int] | None:
    """A family builder's ``multi_grid``: ``"auto"`` is DeepLab v3's (1, 2, 4) on the ResNets whose last stage
    has three blocks (timm's ``output_stride`` dilates every block of a stage alike, ResNet-18's last stage has two);
    ``None`` none (torchvision's pattern); a list the unit rates."""
    if multi_grid == "auto":
        three_blocks = isinstance(backbone, str) and backbone in RESNETS and RESNETS[backbone][1][3] == len(MULTI_GRID)
        return MULTI_GRID if three_blocks else None
    if isinstance(multi_grid, str):
        raise ConfigError(
            f"multi_grid must be 'auto', null or a list of unit rates such as [1, 2, 4]; got {multi_grid!r}"
        )
    return multi_grid


@register_model
def deeplabv3(
    *,
    num_classes: int,
    backbone: str = "resnet50",
    in_channels: int = 3,
    output_stride: int = 16,
    multi_grid: Sequence[int] | str | None = "auto",
    rates: Sequence[int] | None = None,
    aux_head: bool = False,
    head_conv: bool = False,
    pretrained_backbone: Pretrained = False,
) -> DeepLabV3:
    """DeepLab v3 (Chen et al. 2017) on any backbone (``pixelwise models --backbones``; ``timm/<model>`` for timm's):
    ASPP on its last feature, rates for the output stride unless given; ``aux_head`` on the feature before.
    ``head_conv=True`` is torchvision's ``DeepLabHead`` (its extra 3x3 conv, and its ASPP's dropout of 0.5 instead
    of 0.1), so that its weights train on as they would there."""
    net = build_backbone(
        backbone,
        in_channels=in_channels,
        output_stride=output_stride,
        multi_grid=resolve_multi_grid(backbone, multi_grid),
        pretrained=pretrained_backbone,
    )
    names = [f.name for f in net.feature_info]  # shallow to deep
    return DeepLabV3(
        net,
        num_classes=num_classes,
        high=names[-1],
        rates=checked_rates(rates, output_stride),
        aux=names[-2] if aux_head else None,
        head_conv=head_conv,
        aspp_dropout=0.5 if head_conv else 0.1,  # torchvision's head (head_conv) drops half, as its ASPP does
    )


@register_model
def deeplabv3plus(
    *,
    num_classes: int,
    backbone: str = "resnet50",
    in_channels: int = 3,
    output_stride: int = 16,
    multi_grid: Sequence[int] | str | None = "auto",
    rates: Sequence[int] | None = None,
    separable: bool = True,
    instance_head: str | None = None,
    pretrained_backbone: Pretrained = False,
) -> DeepLabV3Plus:
    """DeepLab v3+ (Chen et al. 2018) on any backbone (``timm/<model>`` for timm's): ASPP on its last feature,
    the decoder on its 1/4 feature; ``instance_head="panoptic"`` adds Panoptic-DeepLab's instance branch
    (Cheng et al. 2020)."""
    check_instance_head(instance_head)  # before building the backbone
    net = build_backbone(
        backbone,
        in_channels=in_channels,
        output_stride=output_stride,
        multi_grid=resolve_multi_grid(backbone, multi_grid),
        pretrained=pretrained_backbone,
    )
    return DeepLabV3Plus(
        net,
        num_classes=num_classes,
        high=net.feature_info[-1].name,
        low=net.at_reduction(4, "DeepLab v3+'s decoder"),  # ResNet layer1, Xception-65 entry-flow block 2 (256 ch.)
        rates=checked_rates(rates, output_stride),
        separable=separable,
        instance_head=instance_head,
    )


# --- presets: today's names, the family builders with one backbone ----------------------------------
def _register_resnet_v3(depth: str):
    def build(
        *,
        num_classes: int,
        in_channels: int = 3,
        output_stride: int = 16,
        multi_grid: Sequence[int] | None = MULTI_GRID,
        rates: Sequence[int] | None = None,
        aux_head: bool = False,
        head_conv: bool = False,
        pretrained_backbone: Pretrained = False,
    ) -> DeepLabV3:
        return deeplabv3(
            num_classes=num_classes,
            backbone=depth,
            in_channels=in_channels,
            output_stride=output_stride,
            multi_grid=multi_grid,
            rates=rates,
            aux_head=aux_head,
            head_conv=head_conv,
            pretrained_backbone=pretrained_backbone,
        )

    build.__name__ = f"deeplabv3_{depth}"
    build.__doc__ = f"DeepLab v3 (Chen et al. 2017) on {depth}: output stride 16 or 8, multi-grid (1, 2, 4)."
    return register_model(build)


def _register_resnet_v3plus(depth: str):
    def build(
        *,
        num_classes: int,
        in_channels: int = 3,
        output_stride: int = 16,
        multi_grid: Sequence[int] | None = MULTI_GRID,
        rates: Sequence[int] | None = None,
        separable: bool = True,
        instance_head: str | None = None,
        pretrained_backbone: Pretrained = False,
    ) -> DeepLabV3Plus:
        return deeplabv3plus(
            num_classes=num_classes,
            backbone=depth,
            in_channels=in_channels,
            output_stride=output_stride,
            multi_grid=multi_grid,
            rates=rates,
            separable=separable,
            instance_head=instance_head,
            pretrained_backbone=pretrained_backbone,
        )

    build.__name__ = f"deeplabv3plus_{depth}"
    build.__doc__ = (
        f"DeepLab v3+ (Chen et al. 2018) on {depth}, decoder on layer1 (1/4); "
        'instance_head="panoptic" adds Panoptic-DeepLab\'s instance branch (Cheng et al. 2020).'
    )
    return register_model(build)


def _register_timm_v3plus(backbone: str, note: str):
    def build(
        *,
        num_classes: int,
        in_channels: int = 3,
        output_stride: int = 16,
        rates: Sequence[int] | None = None,
        separable: bool = True,
        instance_head: str | None = None,
        pretrained_backbone: Pretrained = False,
    ) -> DeepLabV3Plus:
        return deeplabv3plus(
            num_classes=num_classes,
            backbone=backbone,
            in_channels=in_channels,
            output_stride=output_stride,
            multi_grid=None,
            rates=rates,
            separable=separable,
            instance_head=instance_head,
            pretrained_backbone=pretrained_backbone,
        )

    build.__name__ = f"deeplabv3plus_{backbone}"
    build.__doc__ = (
        f"DeepLab v3+ (Chen et al. 2018) on {note}; "
        'instance_head="panoptic" adds Panoptic-DeepLab\'s instance branch (Cheng et al. 2020).'
    )
    return register_model(build)


deeplabv3_resnet50 = _register_resnet_v3("resnet50")
deeplabv3_resnet101 = _register_resnet_v3("resnet101")
deeplabv3plus_resnet50 = _register_resnet_v3plus("resnet50")
deeplabv3plus_resnet101 = _register_resnet_v3plus("resnet101")
deeplabv3plus_xception65 = _register_timm_v3plus(
    "xception65", "aligned Xception-65 (timm ``xception65``), as in the paper"
)
deeplabv3plus_mobilenetv2 = _register_timm_v3plus("mobilenetv2", "MobileNetV2 (timm ``mobilenetv2_100``)")
