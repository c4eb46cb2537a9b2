"""Model zoo: every architecture is registered by name; see :func:`build_model`."""

from . import unet  # noqa: F401  (registers the builders)
from .registry import build_model, list_models, model_arguments, register_model
from .unet import UNet

__all__ = ["UNet", "build_model", "list_models", "model_arguments", "register_model"]
