"""Pixel-wise classification losses: cross entropy (class-weighted), focal (Lin et al. 2017) and online hard
example mining (OHEM, as PSPNet's / mmsegmentation's)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from .registry import _as_weight, _float, _valid, _zero, check_target, register_loss


@register_loss("cross_entropy")
class CrossEntropyLoss(nn.Module):
    """Pixel-wise cross entropy, averaged over the non-ignored pixels; with ``weight`` (one per
    class) the average is weighted, as ``torch.nn.functional.cross_entropy``. ``forward``'s optional
    ``pixel_weights`` (``N x H x W``) multiply each pixel's term (Panoptic-DeepLab's heavier small instances); the
    sum is still divided by the (class-weighted) count of non-ignored pixels, so weights of 1 give the plain mean
    (detectron2's ``DeepLabCE`` divides by all pixels, ignored ones included).

    ``top_k_percent`` below 1 is Panoptic-DeepLab's bootstrapped cross entropy (sec. 3.3, after Wu et al. 2016;
    detectron2's ``DeepLabCE(top_k_percent_pixels=0.2)``): the mean of the largest (pixel-weighted) terms, that
    share of all the batch's pixels, ignored ones counting as 0 as there."""

    takes_pixel_weights = True  # forward accepts a weight map

    def __init__(
        self,
        *,
        ignore_index: int = 255,
        weight: Sequence[float] | None = None,
        label_smoothing: float = 0.0,
        top_k_percent: float = 1.0,
    ) -> None:
        super().__init__()
        number = isinstance(top_k_percent, (int, float)) and not isinstance(top_k_percent, bool)
        if not (number and 0 < top_k_percent <= 1):
            raise ConfigError(
                f"cross_entropy top_k_percent={top_k_percent!r}: the share of pixels kept, in (0, 1] (the paper's 0.2)"
            )
        self.ignore_index = ignore_index
        if not (isinstance(label_smoothing, (int, float)) and 0 <= label_smoothing <= 1):
            raise ConfigError(f"cross_entropy label_smoothing={label_smoothing!r}: must be in [0, 1]")
        self.label_smoothing = label_smoothing
        self.top_k_percent = float(top_k_percent)
        self.register_buffer("weight", _as_weight(weight))

    def forward(
        self, logits: torch.Tensor, target: torch.Tensor, pixel_weights: torch.Tensor | None = None
    ) -> torch.Tensor:
        valid = _valid(target, self.ignore_index)
        if not check_target("cross_entropy", logits, target, valid, self.ignore_index, self.weight):
            return _zero(logits)
        logits = _float(logits)
        weight = None if self.weight is None else self.weight.to(logits.dtype)  # float64 logits: float64 weights
        args = {"weight": weight, "ignore_index": self.ignore_index, "label_smoothing": self.label_smoothing}
        # the mean's denominator as F.cross_entropy's: the class weights of the non-ignored pixels; a crop holding
        # only classes of weight 0 has none, and its loss is 0 (F.cross_entropy's 0/0 would be NaN)
        if self.weight is not None:
            if not self.weight[target.long()[valid]].sum() > 0:
                return _zero(logits)
        if pixel_weights is None and self.top_k_percent == 1:
            return F.cross_entropy(logits, target.long(), **args)
        if pixel_weights is not None and pixel_weights.shape != target.shape:
            raise ValueError(f"pixel weights {tuple(pixel_weights.shape)} do not fit the target {tuple(target.shape)}")
        losses = F.cross_entropy(logits, target.long(), reduction="none", **args)  # 0 on ignored pixels
        if pixel_weights is not None:
            losses = losses * pixel_weights.float()
        if self.top_k_percent < 1:
            hardest = torch.topk(losses.reshape(-1), max(1, int(self.top_k_percent * losses.numel()))).values
            return hardest.mean()
        count = valid.sum() if self.weight is None else self.weight[target.long().where(valid, 0)][valid].sum()
        return losses.sum() / count


@register_loss("focal")
class FocalLoss(nn.Module):
    """Focal loss (Lin et al. 2017): ``-alpha_t (1 - p_t)^gamma log p_t`` averaged over the
    non-ignored pixels. ``alpha`` is one weight per class (or one number for all); ``gamma=0`` and
    no ``alpha`` is plain cross entropy."""

    def __init__(self, *, gamma: float = 2.0, alpha: float | Sequence[float] | None = None, ignore_index: int = 255):
        super().__init__()
        if not (isinstance(gamma, (int, float)) and not isinstance(gamma, bool) and 0 <= gamma < math.inf):
            raise ConfigError(f"loss 'focal': gamma {gamma!r} must be a number >= 0 (0: cross entropy)")
        self.gamma, self.ignore_index = gamma, ignore_index
        alpha_t = _as_weight(alpha, "'focal' alpha")
        self.register_buffer("alpha", alpha_t)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        valid = _valid(target, self.ignore_index)
        per_class = None if self.alpha is None or self.alpha.numel() == 1 else self.alpha  # one number: for all
        if not check_target("focal", logits, target, valid, self.ignore_index, per_class, "alpha"):
            return _zero(logits)
        num_classes = logits.shape[1]
        classes = target.long()[valid]
        logp = F.log_softmax(_float(logits), dim=1)
        t = target.long().where(valid, 0).unsqueeze(1)
        logp_t = logp.gather(1, t).squeeze(1)[valid]
        # 1 - p_t kept off 0: a gamma below 1 has an infinite slope there, and 0 x inf would be a NaN gradient
        one_minus = (-torch.expm1(logp_t)).clamp_min(1e-12)
        loss = -(one_minus**self.gamma) * logp_t
        if self.alpha is not None:
            loss = loss * self.alpha.expand(num_classes)[classes]
        return loss.mean()


@register_loss("ohem")
class OHEMCrossEntropy(nn.Module):
    """Online hard example mining cross entropy (as PSPNet's / mmsegmentation's OHEM): only the
    pixels whose probability of the true class is below ``thresh`` count, but at least the
    ``min_kept`` hardest non-ignored pixels per image of the batch (the threshold is raised to keep them; as
    mmsegmentation's ``OHEMPixelSampler``, ``min_kept`` times the batch size). Nothing kept (or only classes of
    weight 0) gives a loss of 0."""

    def __init__(
        self,
        *,
        thresh: float = 0.7,
        min_kept: int | float = 100_000,  # a whole number; YAML reads 1e5 as a float
        ignore_index: int = 255,
        weight: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        if isinstance(thresh, bool) or not isinstance(thresh, (int, float)) or not 0 <= thresh <= 1:
            raise ConfigError(f"loss 'ohem': thresh {thresh!r} must be a probability in [0, 1] (PSPNet's 0.7)")
        whole = isinstance(min_kept, (int, float)) and not isinstance(min_kept, bool) and float(min_kept).is_integer()
        if not whole or min_kept < 0:  # YAML reads 1e5 as a float: taken as the whole number it is
            raise ConfigError(f"loss 'ohem': min_kept {min_kept!r} must be a whole number >= 0 of pixels per image")
        self.thresh, self.min_kept, self.ignore_index = float(thresh), int(min_kept), ignore_index
        self.register_buffer("weight", _as_weight(weight))

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        valid = _valid(target, self.ignore_index)
        if not check_target("ohem", logits, target, valid, self.ignore_index, self.weight):
            return _zero(logits)
        logits = _float(logits)
        with torch.no_grad():
            t = target.long().clamp(min=0, max=logits.shape[1] - 1).unsqueeze(1)
            p_true = F.softmax(logits, dim=1).gather(1, t).squeeze(1)
            p_valid = p_true[valid]
            threshold = self.thresh
            k = min(self.min_kept * target.shape[0], p_valid.numel())
            if k > 0:
                kth = p_valid.kthvalue(k).values.item()
                threshold = max(threshold, kth)
            keep = valid & (p_true <= threshold)
        kept = target.long()[keep]
        if kept.numel() == 0 or (self.weight is not None and not self.weight[kept].sum() > 0):
            return _zero(logits)
        hard = torch.where(keep, target.long(), torch.full_like(target.long(), self.ignore_index))
        weight = None if self.weight is None else self.weight.to(logits.dtype)  # float64 logits: float64 weights
        return F.cross_entropy(logits, hard, weight=weight, ignore_index=self.ignore_index)
