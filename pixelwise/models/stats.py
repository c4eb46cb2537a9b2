"""Parameter and FLOP counts of registered models."""

from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode

from .registry import build_model, input_channels


def model_stats(name: str, *, num_classes: int = 21, size: int = 512) -> tuple[int, int]:
    """``(parameters, FLOPs)`` of one forward pass on a ``size x size`` image (FLOPs = 2 x MACs),
    counted on the meta device: no memory or compute is spent on the activations."""
    with torch.device("meta"):
        model = build_model(name, num_classes=num_classes).eval()
        x = torch.empty(1, input_channels({"name": name}), size, size)
    params = sum(p.numel() for p in model.parameters())
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(x)
    return params, counter.get_total_flops()
