"""The fully connected CRF (Krähenbühl & Koltun 2011): the mean-field filter on a permutohedral lattice,
its settings, its use as post-processing of a network's output, and the search of its parameters."""

from ..lazy_imports import lazy_exports

# imported on first use: the CLI's parser reads the settings without loading torch
_EXPORTS = {
    ".mean_field": ["dense_crf", "dense_crf_batch"],
    ".lattice": ["PermutohedralLattice", "permutohedral_filter"],
    ".postprocess": ["apply_crf", "rgb_uint8"],
    ".settings": ["CRFSettings", "settings_for"],
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
__all__ = sorted(name for names in _EXPORTS.values() for name in names)
