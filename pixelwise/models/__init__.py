"""Model zoo: every architecture is registered by name; see :func:`build_model`."""

from . import deeplab, fcn, lraspp, pspnet, unet  # noqa: F401  (registers the builders)
from .backbones import Backbone, FeatureInfo
from .registry import (
    build_model,
    input_channels,
    list_models,
    model_arguments,
    model_defaults,
    model_logits,
    register_model,
)
from .unet import UNet
from .weights import from_torchvision, load_checkpoint, model_from_checkpoint, save_checkpoint

__all__ = [
    "Backbone",
    "FeatureInfo",
    "UNet",
    "build_model",
    "from_torchvision",
    "input_channels",
    "list_models",
    "load_checkpoint",
    "model_arguments",
    "model_defaults",
    "model_from_checkpoint",
    "model_logits",
    "register_model",
    "save_checkpoint",
]
