"""Inference protocols: whole image, sliding window, multi-scale and flip, all composable.

``predict_probs`` averages softmax probabilities over the scales and flips; each scale is
predicted on the whole (rescaled) image or by sliding windows whose overlapping predictions are
blended uniformly or with a Gaussian weight (centre pixels count more, as nnU-Net). Windows are
processed ``window_batch`` at a time, so memory is bounded by the window size, not the image size.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from .errors import ConfigError


def _pair(v: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(v, (int, float)):
        return int(v), int(v)
    return int(v[0]), int(v[-1])  # [S] or [H, W]


@dataclass
class InferenceSettings:
    """How to turn a model into per-pixel probabilities.

    mode: ``whole`` or ``slide``; crop/stride: window size and step for ``slide`` (stride defaults
    to 2/3 of the crop); blend: ``uniform`` or ``gaussian``; scales: image scale factors (e.g.
    0.5-1.75 as DeepLab); flip: also predict the horizontally flipped image.
    """

    mode: str = "whole"
    crop: int | tuple[int, int] | None = None
    stride: int | tuple[int, int] | None = None
    blend: str = "uniform"
    scales: Sequence[float] = field(default_factory=lambda: (1.0,))
    flip: bool = False
    window_batch: int = 4

    def __post_init__(self) -> None:
        if self.mode not in ("whole", "slide"):
            raise ConfigError(f"inference mode {self.mode!r}; valid: whole, slide")
        if self.blend not in ("uniform", "gaussian"):
            raise ConfigError(f"inference blend {self.blend!r}; valid: uniform, gaussian")
        if self.mode == "slide" and self.crop is None:
            raise ConfigError("sliding-window inference needs a crop size")
        if not self.scales or any(s <= 0 for s in self.scales):
            raise ConfigError(f"inference scales must be positive, got {list(self.scales)}")

    @property
    def is_plain(self) -> bool:
        return self.mode == "whole" and list(self.scales) == [1.0] and not self.flip


def model_logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``model(x)`` as one tensor: the main output of models that return ``{"out", "aux"}``."""
    out = model(x)
    return out["out"] if isinstance(out, dict) else out


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
    return probs / norm


@torch.inference_mode()
def predict_probs(
    model: nn.Module, image: torch.Tensor, num_classes: int, settings: InferenceSettings | None = None
) -> torch.Tensor:
    """Softmax probabilities ``N x K x H x W`` for a normalised ``N x C x H x W`` batch, averaged
    over ``settings.scales`` and (if ``settings.flip``) horizontal flips."""
    s = settings or InferenceSettings()
    h, w = image.shape[-2:]
    total = None
    for scale in s.scales:
        size = (max(1, round(h * scale)), max(1, round(w * scale)))
        scaled = image if size == (h, w) else F.interpolate(image, size=size, mode="bilinear", align_corners=False)
        for flip in (False, True) if s.flip else (False,):
            x = scaled.flip(-1) if flip else scaled
            if s.mode == "slide":
                crop = _pair(s.crop)
                stride = _pair(s.stride) if s.stride is not None else tuple(max(1, c * 2 // 3) for c in crop)
                p = slide_probs(model, x, num_classes, crop, stride, s.blend, s.window_batch)
            else:
                p = F.softmax(model_logits(model, x).float(), dim=1)
            if flip:
                p = p.flip(-1)
            if p.shape[-2:] != (h, w):
                p = F.interpolate(p, size=(h, w), mode="bilinear", align_corners=False)
            total = p if total is None else total + p
    return total / (len(s.scales) * (2 if s.flip else 1))


def fold_batch_norm(model: nn.Module, example: torch.Tensor) -> int:
    """Fold every eval-mode ``BatchNorm2d`` whose input is the output of a ``Conv2d`` into that conv
    (and replace the norm by ``Identity``). The pairs are found by running ``example`` through the
    model, so any module layout works; the folded model is checked against the original on
    ``example`` and left unfolded if they disagree. Returns the number of folded pairs."""
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    model.eval()
    produced: dict[int, tuple[nn.Conv2d, torch.Tensor]] = {}
    pairs: list[tuple[nn.Conv2d, nn.BatchNorm2d]] = []
    convs, bns = set(), set()

    def after_conv(module: nn.Module, args: tuple, out: torch.Tensor) -> None:
        produced[id(out)] = (module, out)  # keep the tensor alive so that its id stays unique

    def before_bn(module: nn.Module, args: tuple) -> None:
        found = produced.get(id(args[0]))
        if found and found[0] not in convs and module not in bns:
            pairs.append((found[0], module))
            convs.add(found[0])
            bns.add(module)

    hooks = [m.register_forward_hook(after_conv) for m in model.modules() if isinstance(m, nn.Conv2d)]
    hooks += [m.register_forward_pre_hook(before_bn) for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    try:
        with torch.no_grad():
            reference = model_logits(model, example)
    finally:
        for h in hooks:
            h.remove()
        produced.clear()
    if not pairs:
        return 0
    parents = {id(child): (parent, name) for parent in model.modules() for name, child in parent.named_children()}
    saved = [(conv.weight, conv.bias) for conv, _ in pairs]
    for conv, bn in pairs:
        fused = fuse_conv_bn_eval(conv, bn)
        conv.weight, conv.bias = fused.weight, fused.bias
        parent, name = parents[id(bn)]
        # timm's BatchNormAct2d applies its activation (and drop) after normalising: keep those
        rest = [m for m in (getattr(bn, "drop", None), getattr(bn, "act", None)) if isinstance(m, nn.Module)]
        setattr(parent, name, (nn.Sequential(*rest) if rest else nn.Identity()).eval())
    with torch.no_grad():
        folded = model_logits(model, example)
    scale = reference.abs().max().clamp(min=1.0)
    if not torch.allclose(folded, reference, atol=1e-4 * float(scale), rtol=1e-4):  # a pair was not conv -> bn only
        for (conv, bn), (weight, bias) in zip(pairs, saved, strict=True):
            conv.weight, conv.bias = weight, bias
            parent, name = parents[id(bn)]
            setattr(parent, name, bn)
        return 0
    return len(pairs)


def optimize_for_inference(
    model: nn.Module,
    *,
    in_channels: int = 3,
    channels_last: bool = True,
    compile: bool = False,
    dtype: torch.dtype | None = None,
) -> nn.Module:
    """Eval mode, batch norm folded into the convolutions, channels-last weights: what ``pixelwise
    predict``/``eval`` run by default (identical outputs up to float rounding). ``compile=True`` adds
    ``torch.compile`` with Inductor's freezing (weights become constants, so convolutions are prepacked
    and fused with what follows): faster, at the cost of a compilation per new input size. ``dtype``
    (float16/bfloat16, for use under autocast) stores the folded weights in that precision, so that
    autocast does not cast every weight again on every call."""
    model.eval()
    try:
        device = next(model.parameters()).device
    except StopIteration:
        return model
    fold_batch_norm(model, torch.randn(1, in_channels, 64, 64, device=device))
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    if dtype is not None:
        model = model.to(dtype)
    if compile:
        # Freezing for this model only (not a global setting: a training net compiled in the same process
        # must not see its weights frozen by a no-grad validation pass).
        model = torch.compile(model, options={"freezing": True})
    return model
