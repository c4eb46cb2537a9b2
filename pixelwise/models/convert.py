"""Weights from other libraries, mapped onto pixelwise's models."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..checkpoint import load_weights
from ..errors import CheckpointError
from .registry import build_model

# torchvision DeepLabV3 -> pixelwise DeepLabV3 (built with head_conv=True), by key prefix
_TORCHVISION_PREFIXES = (
    ("classifier.0.", "aspp."),
    ("classifier.1.", "head_conv.0."),
    ("classifier.2.", "head_conv.1."),
    ("classifier.4.", "classifier."),
    ("aux_classifier.", "aux."),
    ("backbone.", "backbone."),
)
TORCHVISION_DEEPLABV3 = ("deeplabv3_resnet50", "deeplabv3_resnet101")


def is_torchvision_deeplabv3(state: dict[str, Any]) -> bool:
    return "classifier.0.convs.0.0.weight" in state and "backbone.layer4.0.conv1.weight" in state


def torchvision_deeplabv3_kwargs(state: dict[str, torch.Tensor]) -> dict[str, Any]:
    """The pixelwise builder arguments that reproduce torchvision's DeepLab v3: output stride 8 with
    its dilation pattern (no multi-grid), ASPP rates 12/24/36, the extra 3x3 head conv."""
    return {
        "num_classes": state["classifier.4.weight"].shape[0],
        "output_stride": 8,
        "multi_grid": None,
        "rates": (12, 24, 36),
        "head_conv": True,
        "aux_head": any(k.startswith("aux_classifier.") for k in state),
    }


def map_torchvision_deeplabv3(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """torchvision ``deeplabv3_resnet*`` state dict -> pixelwise key layout."""
    out = {}
    for key, value in state.items():
        for old, new in _TORCHVISION_PREFIXES:
            if key.startswith(old):
                out[new + key[len(old) :]] = value
                break
        else:
            raise CheckpointError(f"unexpected key {key!r} in a torchvision DeepLab v3 state dict")
    return out


def from_torchvision(
    model_or_state_dict: nn.Module | dict[str, torch.Tensor], name: str = "deeplabv3_resnet50"
) -> nn.Module:
    """A pixelwise DeepLab v3 with the weights of torchvision's ``deeplabv3_resnet50/101`` (a model
    or its state dict, e.g. the published COCO-with-VOC-labels weights). The result gives the same
    outputs as the torchvision model (``out``; ``aux`` too in training mode if it has one)."""
    if name not in TORCHVISION_DEEPLABV3:
        raise ValueError(f"from_torchvision supports {TORCHVISION_DEEPLABV3}, not {name!r}")
    state = model_or_state_dict.state_dict() if isinstance(model_or_state_dict, nn.Module) else model_or_state_dict
    if not is_torchvision_deeplabv3(state):
        raise CheckpointError("not a torchvision DeepLab v3 state dict (no classifier.0.convs / backbone.layer4)")
    model = build_model(name, **torchvision_deeplabv3_kwargs(state))
    load_weights(model, map_torchvision_deeplabv3(state), f"torchvision {name} weights")
    return model.eval()
