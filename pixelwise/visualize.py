"""Pictures of predictions: colour masks and overlays."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def colorize(mask: np.ndarray, palette: Sequence[Sequence[int]], ignore_color: Sequence[int] = (0, 0, 0)) -> np.ndarray:
    """``H x W`` class indices -> ``H x W x 3`` uint8 RGB with the data set's palette; indices
    outside the palette (the ignore value) get ``ignore_color``."""
    lut = np.zeros((256, 3), dtype=np.uint8)
    lut[:] = ignore_color
    lut[: len(palette)] = np.asarray(palette, dtype=np.uint8)
    return lut[mask.astype(np.uint8)]


def overlay(image: np.ndarray, color: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Blend a colour mask over an image (``H x W x 1`` or ``H x W x 3`` uint8)."""
    if image.ndim == 2:
        image = image[..., None]
    if image.shape[-1] == 1:
        image = np.repeat(image, 3, axis=-1)
    out = (1 - alpha) * image.astype(np.float32) + alpha * color.astype(np.float32)
    return out.round().clip(0, 255).astype(np.uint8)
