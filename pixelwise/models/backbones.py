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
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import PixelwiseError
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
    """VGG-16 convolutional part in torchvision's layout (``features.N``), with features ``pool3``
    (1/8), ``pool4`` (1/16), ``pool5`` (1/32) and the variants of the segmentation papers:

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
                if pool >= 3:
                    self.taps[len(layers) - 1] = f"pool{pool}"
                    self.feature_info.append(FeatureInfo(f"pool{pool}", channels, reduction))
            else:
                padding = 100 if variant == "fcn" and not layers else dilation
                layers += [nn.Conv2d(channels, v, 3, padding=padding, dilation=dilation), nn.ReLU(inplace=True)]
                channels = v
        self.features = nn.Sequential(*layers)
        init_relu_convs(self)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        out = {}
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in self.taps and self._wanted(self.taps[i]):
                out[self.taps[i]] = x
        return out


# --- timm backbones ---------------------------------------------------------------------------
class TimmBackbone(Backbone):
    """A timm model with ``features_only=True``; features ``stage0..stageN`` with the channels and
    reductions of timm's ``feature_info``. ``pretrained=True`` downloads timm's weights through timm
    (Hugging Face hub); a path loads a local state dict of the timm model (``weights_only``)."""

    def __init__(
        self, model_name: str, *, in_channels: int = 3, output_stride: int = 32, pretrained: Pretrained = False
    ) -> None:
        super().__init__()
        import timm

        _dilations(output_stride)
        kwargs: dict = {"features_only": True, "output_stride": output_stride, "in_chans": in_channels}
        if pretrained is True:
            kwargs["pretrained"] = True
        try:
            self.body = timm.create_model(model_name, **kwargs)
        except Exception as e:
            reason = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
            if pretrained is True:
                raise PixelwiseError(
                    f"could not get timm's pretrained weights for {model_name} ({reason}); "
                    f"offline, pass a local file: pretrained_backbone=/path/to/{model_name}.pth"
                ) from None
            raise
        fi = self.body.feature_info
        self.feature_info = [
            FeatureInfo(f"stage{i}", c, r) for i, (c, r) in enumerate(zip(fi.channels(), fi.reduction(), strict=True))
        ]
        if pretrained and pretrained is not True:
            state = timm_features_layout(read_pretrained(pretrained), self.body.state_dict())
            load_state(self.body, state, what=f"pretrained_backbone {pretrained}")

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {f.name: y for f, y in zip(self.feature_info, self.body(x), strict=True) if self._wanted(f.name)}


def vgg16_fc_weights(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """fc6/fc7 of an ImageNet VGG-16 as convolutions (FCN sec. 3.1, "convolutionalization"):
    ``fc6.weight`` 4096x512x7x7 and ``fc7.weight`` 4096x4096x1x1, from torchvision's
    ``classifier.0``/``classifier.3`` (linear) or timm's ``pre_logits.fc1``/``fc2`` (conv)."""
    out = {}
    for fc, tv, tm in (("fc6", "classifier.0", "pre_logits.fc1"), ("fc7", "classifier.3", "pre_logits.fc2")):
        if f"{tv}.weight" in state:
            w = state[f"{tv}.weight"]
            out[f"{fc}.weight"] = w.view(w.shape[0], -1, 7, 7) if fc == "fc6" else w[..., None, None]
            out[f"{fc}.bias"] = state[f"{tv}.bias"]
        elif f"{tm}.weight" in state:
            out[f"{fc}.weight"], out[f"{fc}.bias"] = state[f"{tm}.weight"], state[f"{tm}.bias"]
    return out
