"""Data sets in the native format, image/mask reading, the data check, and joint image/mask transforms."""

from .check import DataCheckReport, Problem, SplitReport, check_dataset, dataset_splits, require_valid
from .dataset import SegmentationDataset, SplitFiles, list_split
from .info import DATA_ROOT_ENV, DatasetInfo, default_palette, resolve_data_root
from .io import (
    IMAGE_EXTENSIONS,
    MOSTLY_IGNORE,
    count_pages,
    image_to_tensor,
    image_to_uint8,
    read_image,
    read_image_stack,
    read_instances,
    read_mask,
    write_image,
)
from .transforms import (
    ElasticDeformation,
    ImageShift,
    JointTransform,
    RandomRot90,
    RandomScale,
    build_transforms,
    shift_image,
)

__all__ = [
    "DATA_ROOT_ENV",
    "IMAGE_EXTENSIONS",
    "MOSTLY_IGNORE",
    "DataCheckReport",
    "DatasetInfo",
    "ElasticDeformation",
    "ImageShift",
    "JointTransform",
    "Problem",
    "RandomRot90",
    "RandomScale",
    "SegmentationDataset",
    "SplitFiles",
    "SplitReport",
    "build_transforms",
    "check_dataset",
    "require_valid",
    "count_pages",
    "dataset_splits",
    "default_palette",
    "image_to_tensor",
    "image_to_uint8",
    "write_image",
    "list_split",
    "read_image",
    "read_image_stack",
    "read_instances",
    "read_mask",
    "resolve_data_root",
    "shift_image",
]
