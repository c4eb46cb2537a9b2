"""Inference: the protocol (whole image, sliding window, scales, flip), getting a model ready for it
(batch-norm folding, channels-last, compile), the onnxruntime backend, and instances from semantic maps."""

from .instances import label_instances
from .optimize import fold_batch_norm, optimize_for_inference
from .protocol import InferenceSettings, batch_scores, predict_probs
from .sliding_window import gaussian_window, slide_probs, window_starts

__all__ = [
    "InferenceSettings",
    "batch_scores",
    "fold_batch_norm",
    "gaussian_window",
    "label_instances",
    "optimize_for_inference",
    "predict_probs",
    "slide_probs",
    "window_starts",
]
