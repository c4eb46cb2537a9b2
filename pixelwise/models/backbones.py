"""Backbones: feature extractors that return named features and declare, per feature, its channels
and reduction (stride relative to the input), like timm's ``feature_info``. Heads read channels
from there, never from a backbone's name. Output stride 8/16/32 is built in at construction by
replacing strides with dilation.

- ResNet-18/34/50/101 (He et al. 2016) are written here, in torchvision's module layout (so that
  torchvision and timm weights load as they are), because DeepLab v3's multi-grid (per-block rates
  in the last stage, Chen et al. 2017 sec. 3.2) is a construction option that neither library has.
- VGG-16 (Simonyan & Zisserman 2015) is written here in torchvision's layout, with the variants
  FCN and DeepLab need: Caffe's 100-pixel padding of conv1_1 (FCN), 3x3 stride-1 pool4/pool5 and
  dilated conv5 (DeepLab).
- Aligned Xception-65 and MobileNetV2 come from timm (``features_only``, ``output_stride``).
- Any timm model with ``features_only`` is a backbone under the name ``timm/<model>`` (R. Wightman,
  "PyTorch Image Models", github.com/huggingface/pytorch-image-models): channels and reductions from its
  ``feature_info``, output stride 8/16 through timm's ``output_stride`` where the model supports it.

:func:`build_backbone` resolves a ``backbone`` name of the family builders; :data:`TIMM_FAMILIES` is the
list of timm families checked to work (``pixelwise models --backbones``).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import CheckpointError, ConfigError, PixelwiseError
from .weights import Pretrained, load_state, read_pretrained, timm_features_layout


@dataclass(frozen=True)
class FeatureInfo:
    name: str
    channels: int
    reduction: int


class Backbone(nn.Module):
    """``forward(x) -> {name: feature}`` for every entry of ``feature_info``, or for those named in
    ``out_features`` once a head has called :meth:`keep`: the others are then freed as soon as the next
    stage is computed, which lowers the peak memory of inference (benchmarks/results/memory.md)."""

    feature_info: list[FeatureInfo]
    out_features: frozenset[str] | None = None
    name: str = "backbone"  # as given to build_backbone, for messages
    stride_grid: bool = True
    """Whether a feature at reduction ``r`` has ``ceil(H / r)`` cells ``r`` pixels apart, which heads upsample by
    the stride (:func:`~pixelwise.models.modules.upsample`); False for VGG's Caffe-style pooling in DeepLab, whose
    cells sit on another grid (resized instead)."""

    def stride_ratio(self, name: str, to: str | None = None) -> int | None:
        """How many times finer feature ``to``'s grid (the input's, by default) is than feature ``name``'s: the
        factor a head upsamples ``name``'s map by; None where the cells are not on the stride grid."""
        if not self.stride_grid:
            return None
        return self.info(name).reduction // (1 if to is None else self.info(to).reduction)

    def keep(self, *names: str | None) -> None:
        """Return only these features (``None`` entries are skipped: optional heads)."""
        wanted = [n for n in names if n is not None]
        for name in wanted:
            self.info(name)  # a KeyError naming the valid features
        self.out_features = frozenset(wanted)

    def _wanted(self, name: str) -> bool:
        return self.out_features is None or name in self.out_features

    def info(self, name: str) -> FeatureInfo:
        for f in self.feature_info:
            if f.name == name:
                return f
        raise KeyError(f"{type(self).__name__} has no feature {name!r}; it has {[f.name for f in self.feature_info]}")

    def at_reduction(self, reduction: int, purpose: str) -> str:
        """The backbone's own feature at this reduction (heads pick features by reduction, never by name): the
        deepest one, except at the output stride, where the stages after the first to reach it are dilated and
        only keep its reduction: there the first (LR-ASPP's 1/8 branch at output stride 8 is stage 2, as in
        torchvision, not the dilated last stage). A one-line ConfigError naming the reductions the backbone has
        if there is none."""
        names = [f.name for f in self.feature_info if f.reduction == reduction]
        if not names:
            have = ", ".join(f"1/{r}" for r in sorted({f.reduction for f in self.feature_info}))
            raise ConfigError(f"{purpose} needs the backbone's 1/{reduction} feature; {self.name} has {have}")
        return names[0] if reduction == self.feature_info[-1].reduction else names[-1]


def _dilations(output_stride: int) -> list[bool]:
    """Which of the strided stages 2..4 (1/8, 1/16, 1/32) become dilated for ``output_stride``."""
    if output_stride not in (8, 16, 32):
        raise ValueError(f"output_stride must be 8, 16 or 32, got {output_stride}")
    return {32: [False, False, False], 16: [False, False, True], 8: [False, True, True]}[output_stride]


def init_relu_convs(module: nn.Module) -> None:
    """He initialisation (fan-out, ReLU) of every conv, zero biases: as torchvision's VGG/ResNet.
    Without it a plain 13-conv VGG trained from scratch starts with vanishing activations."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)


# --- ResNet -----------------------------------------------------------------------------------
class BasicBlock(nn.Module):
    expansion = 1

    def __init__(
        self, inplanes: int, planes: int, stride: int = 1, dilation: int = 1, downsample: nn.Module | None = None
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, padding=dilation, dilation=dilation, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=dilation, dilation=dilation, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += identity  # in place, as torchvision: no new tensor per block
        return self.relu(out)


class Bottleneck(nn.Module):
    """ResNet v1.5 bottleneck (stride on the 3x3 conv), as torchvision and timm."""

    expansion = 4

    def __init__(
        self, inplanes: int, planes: int, stride: int = 1, dilation: int = 1, downsample: nn.Module | None = None
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, padding=dilation, dilation=dilation, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        out += identity  # in place, as torchvision: no new tensor per block
        return self.relu(out)


RESNETS = {
    "resnet18": (BasicBlock, [2, 2, 2, 2]),
    "resnet34": (BasicBlock, [3, 4, 6, 3]),
    "resnet50": (Bottleneck, [3, 4, 6, 3]),
    "resnet101": (Bottleneck, [3, 4, 23, 3]),
}


class ResNet(Backbone):
    """ResNet with features ``stem`` (1/2), ``layer1`` (1/4) ... ``layer4`` (1/32, or 1/16, 1/8 when
    dilated). ``multi_grid`` sets the unit rates of layer4's blocks, multiplied by the stage's rate
    (DeepLab v3: (1, 2, 4) -> rates 2, 4, 8 at output stride 16). Without it, a dilated stage's first
    block keeps the previous rate and the others use the stage's, exactly as torchvision's
    ``replace_stride_with_dilation`` (so its DeepLab v3 weights give the same outputs)."""

    def __init__(
        self,
        depth: str = "resnet50",
        *,
        in_channels: int = 3,
        output_stride: int = 32,
        multi_grid: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        block, layers = RESNETS[depth]
        self.conv1 = nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.inplanes, self.dilation = 64, 1
        dilate = [False, *_dilations(output_stride)]
        reduction = 4
        self.feature_info = [FeatureInfo("stem", 64, 2)]
        for i, (planes, count) in enumerate(zip((64, 128, 256, 512), layers, strict=True)):
            grid = multi_grid if i == 3 else None
            stride = 1 if i == 0 else 2
            layer = self._make_layer(block, planes, count, stride, dilate[i], grid)
            self.add_module(f"layer{i + 1}", layer)
            if stride == 2 and not dilate[i]:
                reduction *= 2
            self.feature_info.append(FeatureInfo(f"layer{i + 1}", planes * block.expansion, reduction))
        init_relu_convs(self)

    def _make_layer(
        self,
        block: type[nn.Module],
        planes: int,
        blocks: int,
        stride: int,
        dilate: bool,
        multi_grid: Sequence[int] | None,
    ) -> nn.Sequential:
        previous = self.dilation
        if dilate:
            self.dilation *= stride
            stride = 1
        if multi_grid is not None:
            if len(multi_grid) != blocks:
                raise ValueError(f"multi_grid needs {blocks} unit rates for this stage, got {list(multi_grid)}")
            if not all(isinstance(g, int) and not isinstance(g, bool) and g >= 1 for g in multi_grid):
                raise ValueError(f"multi_grid {list(multi_grid)}: unit rates are whole numbers >= 1 (e.g. [1, 2, 4])")
            rates = [self.dilation * g for g in multi_grid]
        else:
            rates = [previous] + [self.dilation] * (blocks - 1)
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * block.expansion, 1, stride, bias=False),
                nn.BatchNorm2d(planes * block.expansion),
            )
        layers = [block(self.inplanes, planes, stride, rates[0], downsample)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes, 1, rate) for rate in rates[1:]]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        out = {}
        x = self.relu(self.bn1(self.conv1(x)))  # 1/2
        if self._wanted("stem"):
            out["stem"] = x
        x = self.maxpool(x)  # 1/4
        for name in ("layer1", "layer2", "layer3", "layer4"):
            x = getattr(self, name)(x)
            if self._wanted(name):
                out[name] = x
        return out


def resnet(
    depth: str,
    *,
    in_channels: int = 3,
    output_stride: int = 32,
    multi_grid: Sequence[int] | None = None,
    pretrained: Pretrained = False,
) -> ResNet:
    model = ResNet(depth, in_channels=in_channels, output_stride=output_stride, multi_grid=multi_grid)
    if pretrained:
        load_state(model, read_pretrained(pretrained, torchvision_name=depth), what=f"pretrained_backbone {pretrained}")
    return model


# --- VGG-16 -----------------------------------------------------------------------------------
VGG16_CFG = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]


class VGG16(Backbone):
    """VGG-16 convolutional part in torchvision's layout (``features.N``), with features ``pool1`` (1/2)
    ... ``pool5`` (1/32) and the variants of the segmentation papers:

    - ``variant="fcn"``: conv1_1 padded by 100 pixels and ceil-mode pooling, as the Caffe FCN
      models (so that any input size survives fc6's 7x7 valid conv; the heads crop back).
    - ``variant="deeplab"``: 3x3 pooling with padding 1 (Caffe DeepLab), pool4 and pool5 with stride
      1 and conv5 dilated by 2: output stride 8 (DeepLab v1 sec. 3.1).
    - ``variant="plain"``: torchvision's VGG-16 features.
    """

    def __init__(self, *, in_channels: int = 3, variant: str = "plain") -> None:
        super().__init__()
        if variant not in ("plain", "fcn", "deeplab"):
            raise ValueError(f"variant must be plain, fcn or deeplab, got {variant!r}")
        layers: list[nn.Module] = []
        channels, pool, dilation = in_channels, 0, 1
        reduction = 1
        self.feature_info, self.taps = [], {}
        for v in VGG16_CFG:
            if v == "M":
                pool += 1
                if variant == "deeplab":
                    stride = 1 if pool >= 4 else 2
                    layers.append(nn.MaxPool2d(3, stride, padding=1, ceil_mode=True))
                    if pool == 4:
                        dilation = 2  # conv5: stride 1 pool4 is compensated by rate 2
                else:
                    stride = 2
                    layers.append(nn.MaxPool2d(2, 2, ceil_mode=variant == "fcn"))
                reduction *= stride
                self.taps[len(layers) - 1] = f"pool{pool}"
                self.feature_info.append(FeatureInfo(f"pool{pool}", channels, reduction))
            else:
                padding = 100 if variant == "fcn" and not layers else dilation
                layers += [nn.Conv2d(channels, v, 3, padding=padding, dilation=dilation), nn.ReLU(inplace=True)]
                channels = v
        self.features = nn.Sequential(*layers)
        self.stride_grid = variant != "deeplab"  # 3x3 pooling with padding 1, rounding up: cells at 8 i
        init_relu_convs(self)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        out = {}
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in self.taps and self._wanted(self.taps[i]):
                out[self.taps[i]] = x
        return out


# --- timm backbones ---------------------------------------------------------------------------
TIMM_PREFIX = "timm/"
OUTPUT_STRIDES = (8, 16, 32)


def check_output_stride(output_stride: int) -> int:
    """``output_stride`` if it is 8, 16 or 32, else a one-line ConfigError."""
    if output_stride not in OUTPUT_STRIDES:
        raise ConfigError(f"output_stride must be one of {', '.join(map(str, OUTPUT_STRIDES))}; got {output_stride!r}")
    return output_stride


def stride_message(label: str, output_stride: int, supported: Sequence[int]) -> str:
    """The one-line error for a backbone asked for an output stride it is not built at."""
    if not supported:  # e.g. a plain ViT: one resolution throughout, no stages to dilate
        return (
            f"backbone {label} does not support output_stride {output_stride}; it supports none of "
            f"{', '.join(map(str, OUTPUT_STRIDES))}: it has no feature pyramid (stages at 1/8 to 1/32, which a plain "
            "ViT lacks); choose a convolutional or hierarchical one (e.g. timm/convnext_tiny, timm/resnet50)"
        )
    have = ", ".join(map(str, supported))
    return f"backbone {label} does not support output_stride {output_stride}; it supports {have}"


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0]}" if text else type(e).__name__


def _create_timm(model_name: str, *, in_channels: int, output_stride: int, pretrained: bool = False) -> nn.Module:
    """timm's ``features_only`` model. ``output_stride`` is passed only below 32: models that lack the argument
    (DenseNet, most ViT-like ones) then still build at their native stride."""
    import timm

    kwargs: dict = {"features_only": True, "in_chans": in_channels, "pretrained": pretrained}
    if output_stride != 32:
        kwargs["output_stride"] = output_stride
    return timm.create_model(model_name, **kwargs)


def _deepest_reduction(body: nn.Module) -> int:
    return max(body.feature_info.reduction())


@functools.lru_cache(maxsize=64)
def timm_output_strides(model_name: str) -> tuple[int, ...]:
    """The output strides (of 8, 16, 32) timm builds ``model_name`` at: built on the meta device (no memory, no
    weights) with each, it must accept the argument and its deepest feature must then have that reduction (so a
    model that silently ignores ``output_stride`` is not counted)."""
    supported = []
    for stride in OUTPUT_STRIDES:
        try:
            with torch.device("meta"):
                body = _create_timm(model_name, in_channels=3, output_stride=stride)
        except Exception:
            continue
        if _deepest_reduction(body) == stride:
            supported.append(stride)
    return tuple(supported)


def _timm_problem(model_name: str, label: str, output_stride: int) -> str | None:
    """Why timm's ``model_name`` cannot be a backbone at ``output_stride`` (one line), or ``None``."""
    import timm

    if not timm.is_model(model_name):
        return f"unknown backbone {label}: timm {timm.__version__} has no model {model_name!r} (see timm.list_models())"
    try:
        with torch.device("meta"):
            _create_timm(model_name, in_channels=3, output_stride=32)
    except Exception as e:
        return f"backbone {label}: timm cannot build {model_name} with features_only ({_first_line(e)})"
    supported = timm_output_strides(model_name)
    return None if output_stride in supported else stride_message(label, output_stride, supported)


class TimmBackbone(Backbone):
    """A timm model with ``features_only=True``; features ``stage0..stageN`` with the channels and
    reductions of timm's ``feature_info``. Output stride 8/16 through timm's ``output_stride`` (dilation), where
    the model has it; elsewhere a one-line ConfigError naming the strides it supports. ``pretrained=True``
    downloads timm's weights through timm (Hugging Face hub); a path loads a local state dict of the timm model
    (``weights_only``, :mod:`.weights`)."""

    def __init__(
        self,
        model_name: str,
        *,
        in_channels: int = 3,
        output_stride: int = 32,
        pretrained: Pretrained = False,
        label: str | None = None,
    ) -> None:
        super().__init__()
        check_output_stride(output_stride)
        self.name = label or TIMM_PREFIX + model_name
        if pretrained is True:  # the architecture first: no download for a model that cannot be built
            problem = _timm_problem(model_name, self.name, output_stride)
            if problem:
                raise ConfigError(problem)
        try:
            self.body = _create_timm(
                model_name, in_channels=in_channels, output_stride=output_stride, pretrained=pretrained is True
            )
        except Exception as e:
            problem = None if pretrained is True else _timm_problem(model_name, self.name, output_stride)
            if problem:
                raise ConfigError(problem) from None
            if pretrained is True:
                raise PixelwiseError(
                    f"could not get timm's pretrained weights for {model_name} ({_first_line(e)}); "
                    f"offline, pass a local file: pretrained_backbone=/path/to/{model_name}.pth"
                ) from None
            raise
        if _deepest_reduction(self.body) != output_stride:  # took the argument and ignored it
            raise ConfigError(stride_message(self.name, output_stride, timm_output_strides(model_name)))
        fi = self.body.feature_info
        self.feature_info = [
            FeatureInfo(f"stage{i}", c, r) for i, (c, r) in enumerate(zip(fi.channels(), fi.reduction(), strict=True))
        ]
        if pretrained and pretrained is not True:
            load_state(
                self.body,
                read_pretrained(pretrained),
                what=f"pretrained_backbone {pretrained}",
                layout=timm_features_layout,
            )

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {f.name: y for f, y in zip(self.feature_info, self.body(x), strict=True) if self._wanted(f.name)}


# --- backbones by name --------------------------------------------------------------------------
@dataclass(frozen=True)
class OwnBackbone:
    output_strides: tuple[int, ...]
    source: str


# the names a family builder's ``backbone`` takes besides timm/<model>
OWN_BACKBONES: dict[str, OwnBackbone] = {
    **{
        depth: OwnBackbone(OUTPUT_STRIDES, "pixelwise, torchvision's layout; DeepLab v3's multi_grid")
        for depth in RESNETS
    },
    # DeepLab's stride-1 pool4/pool5 and dilated conv5 (8) or torchvision's VGG (32): no 1/16 variant
    "vgg16": OwnBackbone((8, 32), "pixelwise, torchvision's layout; FCN's and DeepLab's variants"),
    "xception65": OwnBackbone(OUTPUT_STRIDES, "timm xception65 (aligned Xception-65, DeepLab v3+)"),
    "mobilenetv2": OwnBackbone(OUTPUT_STRIDES, "timm mobilenetv2_100"),
}
_FROM_TIMM = {"xception65": "xception65", "mobilenetv2": "mobilenetv2_100"}


def build_backbone(
    name: str,
    *,
    in_channels: int = 3,
    output_stride: int = 32,
    multi_grid: Sequence[int] | None = None,
    pretrained: Pretrained = False,
) -> Backbone:
    """The backbone ``name`` (one of :data:`OWN_BACKBONES`, or ``timm/<model>``) at ``output_stride``; an
    unknown name or an unsupported stride is a one-line ConfigError naming the valid ones. ``multi_grid``: the
    unit rates of the last stage's blocks (DeepLab v3 sec. 3.2), pixelwise's ResNets only."""
    check_output_stride(output_stride)
    timm_name = name.removeprefix(TIMM_PREFIX) if isinstance(name, str) and name.startswith(TIMM_PREFIX) else None
    if not timm_name and (not isinstance(name, str) or name not in OWN_BACKBONES):
        raise ConfigError(
            f"unknown backbone {name!r}; valid: {', '.join(OWN_BACKBONES)}, or timm/<model> for a timm model with "
            "features_only (pixelwise models --backbones)"
        )
    if multi_grid is not None:
        if name not in RESNETS:
            raise ConfigError(f"multi_grid applies to the backbones {', '.join(RESNETS)}, not to {name}")
        blocks = RESNETS[name][1][3]
        if not isinstance(multi_grid, Sequence) or len(multi_grid) != blocks:
            raise ConfigError(f"multi_grid needs {blocks} unit rates for {name}'s last stage, got {multi_grid!r}")
    if timm_name:
        return TimmBackbone(
            timm_name,
            in_channels=in_channels,
            output_stride=output_stride,
            pretrained=pretrained,
            label=name,
        )
    if output_stride not in OWN_BACKBONES[name].output_strides:
        raise ConfigError(stride_message(name, output_stride, OWN_BACKBONES[name].output_strides))
    if name in RESNETS:
        net: Backbone = resnet(
            name, in_channels=in_channels, output_stride=output_stride, multi_grid=multi_grid, pretrained=pretrained
        )
    elif name == "vgg16":
        net = VGG16(in_channels=in_channels, variant="deeplab" if output_stride == 8 else "plain")
        if pretrained:
            state = read_pretrained(pretrained, torchvision_name="vgg16")
            load_state(net, state, what=f"pretrained_backbone {pretrained}")
    else:
        net = TimmBackbone(
            _FROM_TIMM[name], in_channels=in_channels, output_stride=output_stride, pretrained=pretrained
        )
    net.name = name
    return net


@dataclass(frozen=True)
class TimmFamily:
    """A timm model family checked to work as a backbone: each of ``examples`` builds at each of
    ``output_strides`` and runs at an odd input size, and the other strides are refused
    (tests/test_backbones_timm.py)."""

    family: str
    examples: tuple[str, ...]
    output_strides: tuple[int, ...]
    note: str = ""


_BATCH2 = "training needs batches of 2 or more: batch norm on pooled vectors inside its blocks"
TIMM_FAMILIES: tuple[TimmFamily, ...] = (
    TimmFamily(
        "ResNet, ResNet-D, SE-ResNeXt", ("resnet10t", "resnet50", "resnet50d", "seresnext26d_32x4d"), OUTPUT_STRIDES
    ),
    TimmFamily("ResNeSt", ("resnest14d", "resnest50d"), OUTPUT_STRIDES, _BATCH2),
    TimmFamily("Res2Net", ("res2net50_14w_8s",), OUTPUT_STRIDES),
    TimmFamily("ResNet v2 (BiT)", ("resnetv2_50",), OUTPUT_STRIDES),
    TimmFamily(
        "EfficientNet, EfficientNetV2, EfficientNet-Lite",
        ("efficientnet_b0", "efficientnet_b3", "efficientnetv2_rw_t", "tf_efficientnet_lite0"),
        OUTPUT_STRIDES,
    ),
    TimmFamily(
        "MobileNetV2, V3, V4",
        ("mobilenetv2_100", "mobilenetv3_small_050", "mobilenetv3_large_100", "mobilenetv4_conv_small"),
        OUTPUT_STRIDES,
    ),
    TimmFamily("MNASNet, FBNetV3, LCNet", ("mnasnet_100", "fbnetv3_b", "lcnet_050"), OUTPUT_STRIDES),
    TimmFamily("RegNetX, RegNetY, RegNetZ", ("regnetx_002", "regnety_016", "regnetz_b16"), OUTPUT_STRIDES),
    TimmFamily("ConvNeXt", ("convnext_atto", "convnext_tiny"), OUTPUT_STRIDES),
    TimmFamily("Xception (aligned)", ("xception41", "xception65"), OUTPUT_STRIDES),
    TimmFamily("CSPNet, DarkNet", ("cspresnet50", "cspdarknet53", "darknet53"), OUTPUT_STRIDES),
    TimmFamily("NFNet", ("nfnet_l0",), OUTPUT_STRIDES),
    TimmFamily("RepVGG", ("repvgg_a0",), OUTPUT_STRIDES),
    TimmFamily("MobileViT", ("mobilevit_xxs",), OUTPUT_STRIDES),
    TimmFamily("ReXNet", ("rexnet_100",), OUTPUT_STRIDES, _BATCH2),
    TimmFamily("DenseNet", ("densenet121",), (32,)),
    TimmFamily("GhostNet", ("ghostnet_100",), (32,)),
    TimmFamily("DPN", ("dpn68",), (32,)),
    TimmFamily("HGNetV2", ("hgnetv2_b0",), (32,)),
    TimmFamily("EdgeNeXt", ("edgenext_xx_small",), (32,)),
    TimmFamily("FastViT", ("fastvit_t8",), (32,)),
    TimmFamily("PVT v2", ("pvt_v2_b0",), (32,)),
    TimmFamily("FocalNet", ("focalnet_tiny_srf",), (32,)),
    TimmFamily("MetaFormer (CAFormer, PoolFormer v2)", ("caformer_s18", "poolformerv2_s12"), (32,)),
    TimmFamily("TinyViT", ("tiny_vit_5m_224",), (32,)),
)
# families that build with features_only but do not work as backbones here (checked at a 65 x 97 input)
TIMM_NOT_WORKING = (
    "a fixed input size: ViT, DeiT, Swin, NesT, CoAtNet, LeViT, EfficientFormerV2; sizes not divisible by their "
    "stride or window fail: HRNet, DLA, MaxViT, TResNet"
)


def backbone_rows() -> list[dict]:
    """What ``pixelwise models --backbones`` lists: pixelwise's backbones (``kind="pixelwise"``), then the timm
    families known to work (``kind="timm"``), each with the output strides it is built at."""
    rows = [
        {"kind": "pixelwise", "name": name, "output_strides": list(own.output_strides), "details": own.source}
        for name, own in OWN_BACKBONES.items()
    ]
    for fam in TIMM_FAMILIES:
        examples = ", ".join(TIMM_PREFIX + e for e in fam.examples)
        rows.append(
            {
                "kind": "timm",
                "name": fam.family,
                "output_strides": list(fam.output_strides),
                "details": examples + (f" ({fam.note})" if fam.note else ""),
            }
        )
    return rows


def vgg16_fc_weights(state: dict[str, torch.Tensor], what: str = "pretrained_backbone") -> dict[str, torch.Tensor]:
    """fc6/fc7 of an ImageNet VGG-16 as convolutions (FCN sec. 3.1, "convolutionalization"):
    ``fc6.weight`` 4096x512x7x7 and ``fc7.weight`` 4096x4096x1x1, from torchvision's
    ``classifier.0``/``classifier.3`` (linear) or timm's ``pre_logits.fc1``/``fc2`` (conv); a file without them
    (``what`` names it) is an error."""
    out = {}
    for fc, tv, tm in (("fc6", "classifier.0", "pre_logits.fc1"), ("fc7", "classifier.3", "pre_logits.fc2")):
        if f"{tv}.weight" in state:
            w = state[f"{tv}.weight"]
            out[f"{fc}.weight"] = w.view(w.shape[0], -1, 7, 7) if fc == "fc6" else w[..., None, None]
            out[f"{fc}.bias"] = state[f"{tv}.bias"]
        elif f"{tm}.weight" in state:
            out[f"{fc}.weight"], out[f"{fc}.bias"] = state[f"{tm}.weight"], state[f"{tm}.bias"]
    if len(out) != 4:
        raise CheckpointError(
            f"{what} has no fc6/fc7 (torchvision's classifier.0/classifier.3 or timm's pre_logits.fc1/fc2): the "
            "VGG-16 nets start their fc6/fc7 from ImageNet's; give the whole VGG-16 state dict, not its features only"
        )
    return out
