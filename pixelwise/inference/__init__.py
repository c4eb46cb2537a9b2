"""Inference: the protocol (whole image, sliding window, scales, flip, quarter turns), getting a model ready for it
(batch-norm folding, channels-last, compile), the onnxruntime backend, instances from semantic maps and from
background/interior/boundary maps, and the Panoptic-DeepLab post-processing."""

from .instance_settings import METHODS as INSTANCE_METHODS
from .instance_settings import InstanceSettings
from .instances import instances_from_boundary, label_instances
from .optimize import fold_batch_norm, optimize_for_inference
from .panoptic import (
    PanopticPostProcess,
    PanopticResult,
    find_instance_centers,
    group_pixels,
    panoptic_postprocess,
)
from .protocol import InferenceSettings, batch_scores, predict_outputs, predict_probs
from .sliding_window import gaussian_window, slide_probs, window_starts

__all__ = [
    "INSTANCE_METHODS",
    "InferenceSettings",
    "InstanceSettings",
    "PanopticPostProcess",
    "PanopticResult",
    "batch_scores",
    "find_instance_centers",
    "fold_batch_norm",
    "gaussian_window",
    "group_pixels",
    "instances_from_boundary",
    "label_instances",
    "optimize_for_inference",
    "panoptic_postprocess",
    "predict_outputs",
    "predict_probs",
    "slide_probs",
    "window_starts",
]
