"""Data sets in the native format and joint image/mask transforms."""

from .dataset import DATA_ROOT_ENV, DatasetInfo, SegmentationDataset, resolve_data_root
from .transforms import ElasticDeformation, JointTransform, RandomScale, build_transforms

__all__ = [
    "DATA_ROOT_ENV",
    "DatasetInfo",
    "ElasticDeformation",
    "JointTransform",
    "RandomScale",
    "SegmentationDataset",
    "build_transforms",
    "resolve_data_root",
]
