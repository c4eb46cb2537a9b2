"""Metrics: the confusion matrix and everything derived from it, boundary F1, the ISBI 2012 instance
scores, instance matching (StarDist AP, panoptic quality, COCO mask AP), and the table ``pixelwise eval`` prints."""

from .boundary import BoundaryF1, disk_offsets, label_boundaries
from .confusion import ConfusionMatrix, as_class_indices, check_class_range
from .isbi import CHALLENGE_THRESHOLDS, ChallengePixelError, ISBIScores, isbi_scores, pixel_error
from .matching import COCO_IOU_THRESHOLDS, MATCHING_THRESHOLDS, InstanceMetrics, instance_metrics
from .table import SUMMARY_KEYS, format_metrics_table

__all__ = [
    "CHALLENGE_THRESHOLDS",
    "COCO_IOU_THRESHOLDS",
    "MATCHING_THRESHOLDS",
    "SUMMARY_KEYS",
    "BoundaryF1",
    "ChallengePixelError",
    "ConfusionMatrix",
    "ISBIScores",
    "InstanceMetrics",
    "as_class_indices",
    "check_class_range",
    "disk_offsets",
    "format_metrics_table",
    "instance_metrics",
    "isbi_scores",
    "label_boundaries",
    "pixel_error",
]
