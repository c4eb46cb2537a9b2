"""The dense CRF as a post-processing step of a network's output (``pixelwise eval/predict --crf``).

The CRF needs the RGB image: it is recovered from the normalised network input
(``round((x * std + mean) * 255)``, exact for 8-bit images); a grayscale image is repeated to 3
channels (the colour distance then is sqrt(3) times the grey-level distance).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .mean_field import dense_crf_batch
from .settings import CRFSettings


def rgb_uint8(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """Normalised ``N x C x H x W`` network input back to ``N x H x W x 3`` uint8 RGB."""
    m = torch.as_tensor(mean, device=images.device, dtype=torch.float32).view(1, -1, 1, 1)
    s = torch.as_tensor(std, device=images.device, dtype=torch.float32).view(1, -1, 1, 1)
    rgb = ((images.float() * s + m) * 255).round().clamp(0, 255).to(torch.uint8)
    if rgb.shape[1] == 1:
        rgb = rgb.expand(-1, 3, -1, -1)
    return rgb.permute(0, 2, 3, 1).contiguous()


def apply_crf(
    probs: torch.Tensor, images: torch.Tensor, mean: Sequence[float], std: Sequence[float], settings: CRFSettings
) -> torch.Tensor:
    """Refined ``N x K x H x W`` probabilities (``probs``: softmax output, ``images``: normalised input)."""
    return dense_crf_batch(rgb_uint8(images, mean, std), probs, settings)
