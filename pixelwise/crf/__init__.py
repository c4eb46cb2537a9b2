"""The fully connected CRF (Krähenbühl & Koltun 2011): the mean-field filter on a permutohedral lattice,
its settings, its use as post-processing of a network's output, and the search of its parameters."""

from .dense_crf import dense_crf, dense_crf_batch
from .lattice import PermutohedralLattice, permutohedral_filter
from .postprocess import apply_crf, rgb_uint8
from .settings import CRFSettings, settings_for

__all__ = [
    "CRFSettings",
    "PermutohedralLattice",
    "apply_crf",
    "dense_crf",
    "dense_crf_batch",
    "permutohedral_filter",
    "rgb_uint8",
    "settings_for",
]
