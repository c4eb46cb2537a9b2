"""The class map of a score tensor: the index of the largest score along the class dimension.

On the CPU ``torch.argmax`` over a dimension that is not the innermost one (the class dimension of an
``N x K x H x W`` tensor) is not vectorised across pixels, while ``torch.max(dim)`` is: same indices (the first
maximum on ties, as both document), a several-fold difference on a class map of a 480x360 image
(``benchmarks/argmax_speed.py``). Every prediction in pixelwise is taken through :func:`class_argmax`.
"""

from __future__ import annotations

import torch


def class_argmax(scores: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """``scores.argmax(dim)`` (int64 indices, the first maximum on ties), computed as ``torch.max`` computes it."""
    return torch.max(scores, dim).indices
