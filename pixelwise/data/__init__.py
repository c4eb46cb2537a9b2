"""Data sets in the native format, image/mask reading, the data check, and joint image/mask transforms."""

from ..lazy_imports import lazy_exports

# imported on first use: the CLI's parser lists the import formats without loading torch and torchvision
_EXPORTS = {
    ".check": ["DataCheckReport", "Problem", "SplitReport", "check_dataset", "dataset_splits", "require_valid"],
    ".dataset": ["SegmentationDataset", "SplitFiles", "list_split"],
    ".info": ["DATA_ROOT_ENV", "DatasetInfo", "default_palette", "resolve_data_root"],
    ".io": [
        "IMAGE_EXTENSIONS",
        "MOSTLY_IGNORE",
        "count_pages",
        "image_to_tensor",
        "image_to_uint8",
        "read_image",
        "read_image_stack",
        "read_instances",
        "read_mask",
        "write_image",
    ],
    ".transforms": [
        "ElasticDeformation",
        "ImageShift",
        "JointTransform",
        "RandomRot90",
        "RandomScale",
        "build_transforms",
        "shift_image",
    ],
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
__all__ = sorted(name for names in _EXPORTS.values() for name in names)
