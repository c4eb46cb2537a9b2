"""Fully convolutional networks: FCN-32s, FCN-16s, FCN-8s.

J. Long, E. Shelhamer, T. Darrell, "Fully Convolutional Networks for Semantic Segmentation",
CVPR 2015 (arXiv:1411.4038), and the reference Caffe models (fcn.berkeleyvision.org).

VGG-16 with its fully connected layers cast as convolutions (fc6: 7x7, 4096; fc7: 1x1, 4096), a
1x1 class-score layer on fc7, and upsampling by transposed convolutions initialised to bilinear interpolation
(sec. 3.3): as sec. 4.3 says, "final layer deconvolutional filters are fixed to bilinear interpolation, while
intermediate upsampling layers [the 2x of FCN-16s/8s] are initialized to bilinear upsampling, and then learned"
(``learnable_upsampling=False`` fixes those too). FCN-16s adds the scores of pool4 to the 2x-upsampled fc7
scores; FCN-8s also those of pool3 (Fig. 3). As in the Caffe models, conv1_1 pads the input by
100 pixels so that fc6's valid 7x7 conv works on any input, and each fusion crops the larger map
with the offset that aligns both; here the offsets are derived from the layers' geometry (Caffe's
``coord_map``), giving the reference values 5/9/31 (8s), 5/27 (16s) and 19 (32s).

The family builders ``fcn8s``, ``fcn16s``, ``fcn32s`` take any backbone: ``vgg16`` is the paper's net above
(``fcn8s_vgg16`` etc. are these presets); on another backbone the same skip architecture reads its 1/32, 1/16 and
1/8 features (:class:`BackboneFCN`).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from .backbones import VGG16, Backbone, build_backbone, init_relu_convs, vgg16_fc_weights
from .modules import BilinearUpsample
from .registry import register_model
from .weights import Pretrained, load_state, read_pretrained


def coord_map(layers: Iterable[nn.Module]) -> tuple[float, float]:
    """``(a, b)`` such that output index ``y`` of the layer chain is centred on input coordinate
    ``a * y + b`` (layers that do not move pixels, e.g. ReLU, are skipped)."""
    a, b = 1.0, 0.0
    for m in layers:
        if isinstance(m, (nn.Conv2d, nn.MaxPool2d, nn.ConvTranspose2d)):
            k, s, p, d = (v if isinstance(v, int) else v[0] for v in (m.kernel_size, m.stride, m.padding, m.dilation))
            if isinstance(m, nn.ConvTranspose2d):  # inverse of a conv's map
                ga, gb = 1 / s, (p - d * (k - 1) / 2) / s
            else:
                ga, gb = s, -p + d * (k - 1) / 2
            a, b = a * ga, a * gb + b
    return a, b


def crop_offset(crop: tuple[float, float], reference: tuple[float, float]) -> int:
    """Offset that aligns a map with coordinate map ``crop`` to one with map ``reference``."""
    if abs(crop[0] - reference[0]) > 1e-9:
        raise ValueError(f"maps at different scales cannot be aligned: {crop} vs {reference}")
    offset = (reference[1] - crop[1]) / crop[0]
    if offset != int(offset) or offset < 0:
        raise ValueError(f"no integral non-negative crop offset: {offset}")
    return int(offset)


def _crop(x: torch.Tensor, offset: int, like: torch.Tensor | tuple[int, int]) -> torch.Tensor:
    h, w = like.shape[-2:] if isinstance(like, torch.Tensor) else like
    return x[..., offset : offset + h, offset : offset + w]


def score_in_fp32(conv: nn.Conv2d, h: torch.Tensor) -> torch.Tensor:
    """``conv(h)`` in fp32 under CPU autocast: oneDNN's bf16 weight gradient of a conv with 4096 inputs and under
    16 outputs corrupts the heap (PyTorch 2.14; tests/test_models.py). Costs ~nothing."""
    with torch.autocast("cpu", enabled=False):
        return conv(h.float() if h.device.type == "cpu" else h)


def upsample_to(up: nn.ConvTranspose2d, x: torch.Tensor, size: torch.Size | tuple[int, int]) -> torch.Tensor:
    """``up`` (a :class:`BilinearUpsample` by ``f``: kernel ``2f``, stride ``f``) on ``x`` replicate-padded by one
    pixel, cropped to ``size``: at initialisation exactly bilinear interpolation by ``f`` (``align_corners=False``,
    edges clamped), for any map size. Without the padding the border outputs would get half the kernel's weight."""
    f = up.stride[0]
    y = up(F.pad(x, (1, 1, 1, 1), mode="replicate"))
    offset = 3 * f // 2  # output y sits at input (y + 0.5) / f - 0.5, as bilinear interpolation's
    return y[..., offset : offset + size[0], offset : offset + size[1]]


class FCN(nn.Module):
    """FCN-``stride``s (32, 16 or 8) on VGG-16. Returns logits at the input size."""

    def __init__(
        self,
        *,
        num_classes: int,
        stride: int = 8,
        in_channels: int = 3,
        learnable_upsampling: bool = True,
        dropout: float = 0.5,
        pretrained_backbone: Pretrained = False,
    ) -> None:
        super().__init__()
        if stride not in (32, 16, 8):
            raise ValueError(f"FCN stride must be 32, 16 or 8, got {stride}")
        self.stride = stride
        self.backbone = VGG16(in_channels=in_channels, variant="fcn")
        self.backbone.keep("pool5", "pool4" if stride <= 16 else None, "pool3" if stride == 8 else None)
        pool5 = self.backbone.info("pool5").channels
        self.fc6 = nn.Conv2d(pool5, 4096, 7)  # fc6 as a 7x7 valid conv
        self.fc7 = nn.Conv2d(4096, 4096, 1)
        self.relu, self.drop = nn.ReLU(inplace=True), nn.Dropout(dropout)  # Caffe's drop6/7: single values
        self.score_fr = nn.Conv2d(4096, num_classes, 1)
        up = dict(learnable=learnable_upsampling)  # the 2x ones; the last is fixed bilinear (sec. 4.3)
        if stride == 32:
            self.upscore = BilinearUpsample(num_classes, 32, learnable=False)
        else:
            self.upscore2 = BilinearUpsample(num_classes, 2, **up)
            self.score_pool4 = nn.Conv2d(self.backbone.info("pool4").channels, num_classes, 1)
            if stride == 16:
                self.upscore16 = BilinearUpsample(num_classes, 16, learnable=False)
            else:
                self.upscore_pool4 = BilinearUpsample(num_classes, 2, **up)
                self.score_pool3 = nn.Conv2d(self.backbone.info("pool3").channels, num_classes, 1)
                self.upscore8 = BilinearUpsample(num_classes, 8, learnable=False)
        init_relu_convs(nn.ModuleList([self.fc6, self.fc7]))
        # new score layers start at zero (the Caffe net surgery), so fusion starts from the coarser net
        for name in ("score_fr", "score_pool4", "score_pool3"):
            if hasattr(self, name):
                nn.init.zeros_(getattr(self, name).weight)
                nn.init.zeros_(getattr(self, name).bias)
        self.offsets = self._offsets()
        if pretrained_backbone:
            state = read_pretrained(pretrained_backbone, torchvision_name="vgg16")
            what = f"pretrained_backbone {pretrained_backbone}"
            load_state(self.backbone, state, what=what)
            load_state(self, vgg16_fc_weights(state, what), what=what, complete=False)

    def backbone_layers(self) -> list[nn.Module]:
        """fc6 and fc7, VGG's ImageNet classifier cast as convolutions: trained with the backbone at the base rate
        under ``train.head_lr_mult`` (only the new score layers are the head)."""
        return [self.fc6, self.fc7]

    def _offsets(self) -> dict[str, int]:
        features = list(self.backbone.features)
        taps = {name: i for i, name in self.backbone.taps.items()}
        pool = {n: coord_map(features[: taps[n] + 1]) for n in ("pool3", "pool4", "pool5")}
        chain = features[: taps["pool5"] + 1] + [self.fc6, self.fc7, self.score_fr]
        if self.stride == 32:
            return {"out": crop_offset(coord_map(chain + [self.upscore]), (1.0, 0.0))}
        up2 = chain + [self.upscore2]
        offsets = {"pool4": crop_offset(pool["pool4"], coord_map(up2))}
        if self.stride == 16:
            offsets["out"] = crop_offset(coord_map(up2 + [self.upscore16]), (1.0, 0.0))
            return offsets
        up4 = up2 + [self.upscore_pool4]
        offsets["pool3"] = crop_offset(pool["pool3"], coord_map(up4))
        offsets["out"] = crop_offset(coord_map(up4 + [self.upscore8]), (1.0, 0.0))
        return offsets

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        f = self.backbone(x)  # pool3 1/8, pool4 1/16, pool5 1/32 (of the 100-px padded input)
        h = self.drop(self.relu(self.fc6(f["pool5"])))  # 1/32, 6 px smaller (7x7 valid)
        h = self.drop(self.relu(self.fc7(h)))
        score = score_in_fp32(self.score_fr, h)  # 1/32, num_classes
        if self.stride == 32:
            return _crop(self.upscore(score), self.offsets["out"], size)
        up = self.upscore2(score)  # 1/16
        score = up + _crop(self.score_pool4(f["pool4"]), self.offsets["pool4"], up)
        if self.stride == 16:
            return _crop(self.upscore16(score), self.offsets["out"], size)
        up = self.upscore_pool4(score)  # 1/8
        score = up + _crop(self.score_pool3(f["pool3"]), self.offsets["pool3"], up)
        return _crop(self.upscore8(score), self.offsets["out"], size)  # 1/1


class BackboneFCN(nn.Module):
    """FCN-``stride``s' skip architecture (Fig. 3) on any backbone at output stride 32: a 1x1 score layer on its 1/32
    feature (a classifier's pooling and linear layer cast as a convolution, as FCN casts VGG's fc layers), learned 2x
    upsampling initialised to bilinear with the scores of the 1/16 (FCN-16s) and then 1/8 (FCN-8s) features added,
    and a last upsampling to the input, fixed bilinear (as the paper's). Today's backbones pad their convolutions, so
    the maps need neither Caffe's 100-pixel padding nor crop offsets: each upsampling is fitted to the map it joins
    (:func:`upsample_to`). Score layers start at zero, as in the Caffe net surgery."""

    def __init__(
        self,
        backbone: Backbone,
        *,
        num_classes: int,
        stride: int = 8,
        learnable_upsampling: bool = True,
        dropout: float = 0.5,
    ) -> None:
        super().__init__()
        if stride not in (32, 16, 8):
            raise ValueError(f"FCN stride must be 32, 16 or 8, got {stride}")
        self.stride = stride
        self.backbone = backbone
        self.levels = [r for r in (32, 16, 8) if r >= stride]  # deepest first
        self.features = [backbone.at_reduction(r, f"FCN-{stride}s") for r in self.levels]
        backbone.keep(*self.features)
        self.drop = nn.Dropout(dropout)
        self.score = nn.ModuleList(nn.Conv2d(backbone.info(n).channels, num_classes, 1) for n in self.features)
        up = dict(learnable=learnable_upsampling)
        self.up2 = nn.ModuleList(BilinearUpsample(num_classes, 2, **up) for _ in self.features[1:])
        self.upscore = BilinearUpsample(num_classes, stride, learnable=False)
        for conv in self.score:
            nn.init.zeros_(conv.weight)
            nn.init.zeros_(conv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.backbone(x)
        score = score_in_fp32(self.score[0], self.drop(f[self.features[0]]))  # 1/32, num_classes
        for name, conv, up in zip(self.features[1:], self.score[1:], self.up2, strict=True):
            skip = score_in_fp32(conv, f[name])  # 1/16, then 1/8
            score = upsample_to(up, score, skip.shape[-2:]) + skip
        return upsample_to(self.upscore, score, x.shape[-2:])  # 1/stride -> 1/1


def _family(stride: int):
    def build(
        *,
        num_classes: int,
        backbone: str = "vgg16",
        in_channels: int = 3,
        learnable_upsampling: bool = True,
        dropout: float = 0.5,
        pretrained_backbone: Pretrained = False,
    ) -> FCN | BackboneFCN:
        if backbone == "vgg16":  # the paper's net: fc6/fc7 as convolutions, Caffe's padding and crops
            return FCN(
                num_classes=num_classes,
                stride=stride,
                in_channels=in_channels,
                learnable_upsampling=learnable_upsampling,
                dropout=dropout,
                pretrained_backbone=pretrained_backbone,
            )
        net = build_backbone(backbone, in_channels=in_channels, output_stride=32, pretrained=pretrained_backbone)
        return BackboneFCN(
            net, num_classes=num_classes, stride=stride, learnable_upsampling=learnable_upsampling, dropout=dropout
        )

    build.__name__ = f"fcn{stride}s"
    build.__doc__ = (
        f"FCN-{stride}s (Long et al. 2015) on any backbone (``timm/<model>`` for timm's; ``vgg16``: the paper's net); "
        "``learnable_upsampling=False`` fixes its 2x upsamplings bilinear too (the last one always is)."
    )
    return register_model(build)


def _preset(family):
    def build(
        *,
        num_classes: int,
        in_channels: int = 3,
        learnable_upsampling: bool = True,
        dropout: float = 0.5,
        pretrained_backbone: Pretrained = False,
    ) -> FCN:
        return family(
            num_classes=num_classes,
            backbone="vgg16",
            in_channels=in_channels,
            learnable_upsampling=learnable_upsampling,
            dropout=dropout,
            pretrained_backbone=pretrained_backbone,
        )

    stride = family.__name__.removeprefix("fcn").removesuffix("s")
    build.__name__ = f"{family.__name__}_vgg16"
    build.__doc__ = (
        f"FCN-{stride}s (Long et al. 2015) on VGG-16; ``learnable_upsampling=False`` fixes its 2x upsamplings "
        "bilinear too (the last one always is)."
    )
    return register_model(build)


fcn32s = _family(32)
fcn16s = _family(16)
fcn8s = _family(8)
fcn32s_vgg16 = _preset(fcn32s)
fcn16s_vgg16 = _preset(fcn16s)
fcn8s_vgg16 = _preset(fcn8s)
