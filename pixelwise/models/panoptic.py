"""Panoptic-DeepLab's class-agnostic instance branch, an option (``instance_head="panoptic"``) of the DeepLab v3+
and U-Net builders.

B. Cheng, M. D. Collins, Y. Zhu, T. Liu, T. S. Huang, H. Adam, L.-C. Chen, "Panoptic-DeepLab: A Simple, Strong,
and Fast Baseline for Bottom-Up Panoptic Segmentation", CVPR 2020 (arXiv:1911.10194).

Beside the semantic branch, the instance branch predicts at every pixel (Fig. 2):

- ``center``: ``N x 1 x H x W``, a heatmap regressed (MSE, no activation) onto 2-D Gaussians at the instances'
  centres of mass;
- ``offset``: ``N x 2 x H x W``, ``(dy, dx)`` from the pixel to its instance's centre, in pixels of the input
  (L1 on the pixels of instances).

A model with the branch returns ``{"out": logits, "center": ..., "offset": ...}``, all at the input size, in
training and in eval mode; :func:`~pixelwise.models.registry.model_logits` takes ``"out"``, so code that only
wants logits runs unchanged. The losses are :class:`pixelwise.losses.PanopticLoss`.

On DeepLab v3+ the branch is the paper's dual-ASPP, dual-decoder design: its own ASPP on the backbone's
output-stride features, and its own, narrower decoder (128 channels against the semantic 256) that recovers
resolution by 2x steps through the 1/8 and the 1/4 features, each reduced by a 1x1 conv (64 and 32 channels) and
fused by one 5x5 depthwise-separable conv; then one prediction head per output (a 5x5 depthwise-separable conv
with 32 channels and a 1x1 conv). Channel counts as detectron2's ``projects/Panoptic-DeepLab`` configs.
Deviations: the ASPP's image pooling is global (ours, shared with the semantic ASPP; detectron2 pools over a
window of the training crop's size); without a 1/8 feature in the backbone's ``feature_info`` the decoder has
the 1/4 stage only; the U-Net's branch is a second U-Net decoder ending in 1x1 convs (:mod:`.unet`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import torch
from torch import nn

from ..device import active_autocast_dtype
from ..errors import ConfigError
from .aspp import ASPP
from .modules import ConvNormAct, SeparableConv2d, on_stride_grid, resize_to, upsample

INSTANCE_HEADS = ("panoptic",)


def check_instance_head(value: str | None) -> str | None:
    """``value`` if it names an instance head (or is ``None``: no head); else a one-line ConfigError."""
    if value is None or value in INSTANCE_HEADS:
        return value
    raise ConfigError(f"instance_head must be one of: {', '.join(INSTANCE_HEADS)} (or null for none); got {value!r}")


class PredictionConv(nn.Conv2d):
    """The final 1x1 conv of a centre or offset head, computed in float32 whatever the precision around it
    (autocast, or weights stored in bf16 for inference). A bf16 heatmap keeps 8 significant bits, so the pixels of
    a flat-topped peak round to equal values and the keypoint NMS, which keeps every pixel equal to its window's
    maximum, finds several centres in one object: on DSB2018 val a bf16 heatmap decoded to AP 0.67 at IoU 0.5
    against 0.83 from the float32 one of the same weights (one view). Its cost is a few channels per pixel."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = None if self.bias is None else self.bias.float()
        device = x.device.type
        leave_autocast = active_autocast_dtype(device) is not None
        with torch.autocast(device, enabled=False) if leave_autocast else contextlib.nullcontext():
            return self._conv_forward(x.float(), self.weight.float(), bias)


def prediction_conv(in_channels: int, out_channels: int) -> PredictionConv:
    """The final 1x1 conv of a centre or offset head, initialised as detectron2's predictors (normal, std
    0.001, zero bias): training starts from an empty heatmap and zero offsets."""
    conv = PredictionConv(in_channels, out_channels, 1)
    nn.init.normal_(conv.weight, std=0.001)
    nn.init.zeros_(conv.bias)
    return conv


def upsample_offsets(offset: torch.Tensor, factor: int | None, size: torch.Size | tuple[int, int]) -> torch.Tensor:
    """A ``(dy, dx)`` offset map at stride ``factor`` upsampled to ``size`` (:func:`~.modules.upsample`), each
    vector multiplied by ``factor`` so that it stays in pixels of the new resolution (detectron2 multiplies by its
    common stride 4 the same way). A map of another cell count (a backbone that rounds its sizes down) is resized,
    and its vectors scaled by the ratio of the sizes on each axis."""
    h, w = offset.shape[-2:]
    if (h, w) == tuple(size):
        return offset
    if on_stride_grid(offset, factor, size):
        return upsample(offset, factor, size) * factor
    up = resize_to(offset, size)
    # scalar factors, not a tensor built from them: exporters with symbolic sizes keep them symbolic
    return torch.cat([up[:, :1] * (size[0] / h), up[:, 1:] * (size[1] / w)], dim=1)


def _fuse(in_channels: int, out_channels: int, separable: bool) -> nn.Module:
    """One 5x5 depthwise-separable conv (the paper), or the two 3x3 convs of the same receptive field that it
    replaces (detectron2's non-separable variant)."""
    if separable:
        return SeparableConv2d(in_channels, out_channels, 5)
    return nn.Sequential(
        ConvNormAct(in_channels, out_channels, 3, padding=1), ConvNormAct(out_channels, out_channels, 3, padding=1)
    )


class PredictionHead(nn.Sequential):
    """Panoptic-DeepLab's prediction head (Fig. 2): a 5x5 depthwise-separable conv with ``width`` (32) channels,
    BN and ReLU, then a 1x1 conv to ``out_channels``, no activation. Without ``separable``: two 3x3 convs
    (``in -> in -> width``), as detectron2's non-separable head."""

    def __init__(self, in_channels: int, out_channels: int, width: int = 32, *, separable: bool = True) -> None:
        if separable:
            body: nn.Module = SeparableConv2d(in_channels, width, 5)
        else:
            body = nn.Sequential(
                ConvNormAct(in_channels, in_channels, 3, padding=1), ConvNormAct(in_channels, width, 3, padding=1)
            )
        super().__init__(body, prediction_conv(width, out_channels))


class PanopticDeepLabInstanceBranch(nn.Module):
    """The instance branch of Panoptic-DeepLab (Fig. 2) on a DeepLab backbone: its own ASPP on the ``high``
    feature, a decoder that upsamples 2x at each low-level feature (given deepest first, e.g. 1/8 then 1/4),
    concatenates it after a 1x1 conv (``project`` channels: 64 at 1/8, 32 at 1/4) and fuses by a 5x5
    depthwise-separable conv with ``width`` (128) channels; then the centre (1) and offset (2) prediction heads."""

    def __init__(
        self,
        high_channels: int,
        low_channels: Sequence[int],
        rates: Sequence[int],
        *,
        factors: Sequence[int | None],
        project: Sequence[int] = (64, 32),
        aspp_channels: int = 256,
        width: int = 128,
        head_width: int = 32,
        separable: bool = True,
        aspp_dropout: float = 0.1,
    ) -> None:
        super().__init__()
        if len(project) < len(low_channels):
            raise ValueError(f"need {len(low_channels)} project widths, got {list(project)}")
        project = project[len(project) - len(low_channels) :]  # without a 1/8 feature: only the 1/4 stage's 32
        self.aspp = ASPP(high_channels, rates, aspp_channels, separable=separable, dropout=aspp_dropout)
        self.project = nn.ModuleList(ConvNormAct(c, p, 1) for c, p in zip(low_channels, project, strict=True))
        fuse, channels = [], aspp_channels
        for p in project:
            fuse.append(_fuse(channels + p, width, separable))
            channels = width
        self.fuse = nn.ModuleList(fuse)
        if len(factors) != len(low_channels) + 1:
            raise ValueError(f"need {len(low_channels) + 1} upsampling factors (one per low feature, then the input's)")
        self.factors = list(factors)  # Backbone.stride_ratio's: 2 at each low feature, then the last one's stride
        self.center = PredictionHead(width, 1, head_width, separable=separable)
        self.offset = PredictionHead(width, 2, head_width, separable=separable)

    def forward(
        self, high: torch.Tensor, lows: Sequence[torch.Tensor], size: torch.Size | tuple[int, int]
    ) -> dict[str, torch.Tensor]:
        """``{"center", "offset"}`` at ``size`` from the ``high`` feature and the low-level ones (deepest first)."""
        y = self.aspp(high)  # 1/OS, 256 channels
        for low, project, fuse, factor in zip(lows, self.project, self.fuse, self.factors, strict=False):
            low = project(low)  # 1/8: 64 channels, then 1/4: 32
            y = fuse(torch.cat([upsample(y, factor, low.shape[-2:]), low], dim=1))  # 2x up, 128 channels
        # 1/4 -> 1/1; offsets rescaled to input pixels
        last = self.factors[-1]
        return {"center": upsample(self.center(y), last, size), "offset": upsample_offsets(self.offset(y), last, size)}
