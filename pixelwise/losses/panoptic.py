"""Panoptic-DeepLab's losses (B. Cheng et al., "Panoptic-DeepLab: A Simple, Strong, and Fast Baseline for
Bottom-Up Panoptic Segmentation", CVPR 2020, sec. 3.3): the semantic loss, plus MSE on the centre heatmap and
L1 on the offsets, ``L = L_sem + 200 L_heatmap + 0.01 L_offset``.

Normalisation as detectron2's ``projects/Panoptic-DeepLab``: each regression term is a weighted sum over the
batch divided by the sum of its weights (0, with a zero gradient, when all weights are 0):

- ``L_heatmap = sum(w_c (center - center_target)^2) / sum(w_c)``;
- ``L_offset = sum(w_o (|dy - dy_target| + |dx - dx_target|)) / sum(w_o)``: the two channels' L1 summed at a
  pixel, the weights counted once per pixel.

The weight maps come with the targets: ``center_weights`` is 0 on ignored pixels (1 elsewhere), ``offset_weights``
1 on the pixels of (thing) instances only; an optional ``semantic_weights`` map (the paper's weight 3 on the
pixels of small instances) goes to the semantic criterion, which must accept it (``CrossEntropyLoss``).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from .registry import _zero


def _per_pixel(weights: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A weight map ``N x H x W`` or ``N x 1 x H x W`` as ``N x 1 x H x W`` (float), checked against ``like``."""
    w = weights.unsqueeze(1) if weights.dim() == 3 else weights
    if w.shape[0] != like.shape[0] or w.shape[1] != 1 or w.shape[-2:] != like.shape[-2:]:
        raise ValueError(f"weight map of shape {tuple(weights.shape)} does not fit a prediction of {tuple(like.shape)}")
    return w.float()


def weighted_mean(loss: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """``sum(weights * loss) / sum(weights)`` (weights broadcast over ``loss``'s channels, counted once per
    pixel); 0 with a zero gradient where every weight is 0, instead of 0/0."""
    total = weights.sum()
    if not total > 0:
        return _zero(loss)
    return (loss * weights).sum() / total


class PanopticLoss(nn.Module):
    """``semantic(out, mask) + center_weight * L_heatmap + offset_weight * L_offset`` (Panoptic-DeepLab, sec.
    3.3; weights 200 and 0.01 as the paper). ``semantic`` is any of the semantic criteria; the paper's is the
    bootstrapped cross entropy with weight 3 on small instances' pixels: ``cross_entropy`` with ``top_k_percent:
    0.2``, ``instances.small_instance_area: 4096`` and ``small_instance_weight: 3``.

    ``forward(outputs, targets)`` takes the model's ``{"out", "center", "offset"}`` and the targets ``mask``
    (``N x H x W`` long), ``center`` (``N x 1 x H x W``; ``N x H x W`` is accepted), ``center_weights``,
    ``offset`` (``N x 2 x H x W``: dy, dx) and ``offset_weights`` (weights ``N x H x W`` or ``N x 1 x H x W``),
    and returns the total. ``last_parts`` holds the three weighted terms of the last call as floats, for logging
    (they sum to the total).
    """

    def __init__(self, semantic: nn.Module, *, center_weight: float = 200.0, offset_weight: float = 0.01) -> None:
        super().__init__()
        self.semantic = semantic
        self.center_weight, self.offset_weight = float(center_weight), float(offset_weight)
        self.last_parts: dict[str, float] = {}

    def forward(self, outputs: Mapping[str, torch.Tensor], targets: Mapping[str, torch.Tensor]) -> torch.Tensor:
        if "semantic_weights" in targets:  # Panoptic-DeepLab's heavier small instances
            semantic = self.semantic(outputs["out"], targets["mask"], targets["semantic_weights"])
        else:
            semantic = self.semantic(outputs["out"], targets["mask"])
        center = outputs["center"].float()
        center_target = targets["center"].float().reshape(center.shape)  # N x H x W -> N x 1 x H x W
        center_loss = weighted_mean(
            F.mse_loss(center, center_target, reduction="none"), _per_pixel(targets["center_weights"], center)
        )
        offset = outputs["offset"].float()
        if targets["offset"].shape != offset.shape:
            raise ValueError(
                f"offset target {tuple(targets['offset'].shape)} does not fit the prediction {tuple(offset.shape)}"
            )
        offset_loss = weighted_mean(
            F.l1_loss(offset, targets["offset"].float(), reduction="none"),
            _per_pixel(targets["offset_weights"], offset),
        )
        parts = {
            "semantic": semantic,
            "center": self.center_weight * center_loss,
            "offset": self.offset_weight * offset_loss,
        }
        self.last_parts = {k: float(v.detach()) for k, v in parts.items()}
        return parts["semantic"] + parts["center"] + parts["offset"]
