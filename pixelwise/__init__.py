"""pixelwise: semantic segmentation with the classic architectures built to their papers."""

from .errors import CheckpointError, ConfigError, DataError, PixelwiseError
from .lazy_imports import lazy_exports

__version__ = "0.1.0"

# torch loads with the first model built, not with the package (the CLI's --help stays quick)
__getattr__, __dir__ = lazy_exports(__name__, {".models": ["build_model", "list_models"]})

__all__ = [
    "CheckpointError",
    "ConfigError",
    "DataError",
    "PixelwiseError",
    "__version__",
    "build_model",
    "list_models",
]
