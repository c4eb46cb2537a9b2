"""pixelwise: semantic segmentation with the classic architectures built to their papers."""

from .errors import CheckpointError, ConfigError, DataError, PixelwiseError
from .models import build_model, list_models

__version__ = "0.1.0"

__all__ = [
    "CheckpointError",
    "ConfigError",
    "DataError",
    "PixelwiseError",
    "__version__",
    "build_model",
    "list_models",
]
