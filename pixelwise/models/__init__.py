"""Model zoo: every architecture is registered by name; see :func:`build_model`."""

from . import deeplab, fcn, pspnet, unet  # noqa: F401  (registers the builders)
from .backbones import Backbone, FeatureInfo
from .convert import from_torchvision
from .registry import build_model, list_models, model_arguments, register_model
from .unet import UNet

__all__ = [
    "Backbone",
    "FeatureInfo",
    "UNet",
    "build_model",
    "from_torchvision",
    "list_models",
    "model_arguments",
    "register_model",
]
