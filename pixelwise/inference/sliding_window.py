"""Sliding-window inference: overlapping windows blended uniformly or with a Gaussian weight
(centre pixels count more, as nnU-Net). Windows are processed ``window_batch`` at a time, so the network's
memory is bounded by the window size; the blended probabilities (``N x K x H x W`` float32) are the image's."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..models import model_logits


def gaussian_window(height: int, width: int, device: torch.device | None = None) -> torch.Tensor:
    """``H x W`` weights of a Gaussian with sigma = 1/8 of each side, peak 1, floored at 1e-3."""

    def axis(n: int) -> torch.Tensor:
        x = torch.arange(n, dtype=torch.float32, device=device) - (n - 1) / 2
        return torch.exp(-(x**2) / (2 * (n / 8) ** 2))

    return (axis(height)[:, None] * axis(width)[None, :]).clamp(min=1e-3)


def window_starts(size: int, crop: int, stride: int) -> list[int]:
    """Window origins covering ``size``: every ``stride``, the last one flush with the end."""
    if size <= crop:
        return [0]
    starts = list(range(0, size - crop, stride))
    return starts + [size - crop]


def slide_probs(
    model: nn.Module,
    image: torch.Tensor,
    num_classes: int,
    crop: tuple[int, int],
    stride: tuple[int, int],
    blend: str = "uniform",
    window_batch: int = 4,
) -> torch.Tensor:
    """Softmax probabilities ``N x K x H x W`` by sliding ``crop`` windows with ``stride``."""
    n, _, h, w = image.shape
    ch, cw = min(crop[0], h), min(crop[1], w)
    weight = gaussian_window(ch, cw, image.device) if blend == "gaussian" else torch.ones(ch, cw, device=image.device)
    probs = image.new_zeros(n, num_classes, h, w, dtype=torch.float32)
    norm = image.new_zeros(1, 1, h, w, dtype=torch.float32)
    boxes = [(y, x) for y in window_starts(h, ch, stride[0]) for x in window_starts(w, cw, stride[1])]
    for i in range(0, len(boxes), window_batch):
        chunk = boxes[i : i + window_batch]
        windows = torch.cat([image[..., y : y + ch, x : x + cw] for y, x in chunk])
        p = F.softmax(model_logits(model, windows).float(), dim=1) * weight
        for j, (y, x) in enumerate(chunk):
            probs[..., y : y + ch, x : x + cw] += p[j * n : (j + 1) * n]
            norm[..., y : y + ch, x : x + cw] += weight
    return probs.div_(norm)  # in place: a second image-sized buffer is what windows are meant to spare
