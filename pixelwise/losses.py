"""Losses: ``build_loss(name, **kwargs)`` returns a module called as ``loss(logits, target)``.

``logits`` is ``N x C x H x W``, ``target`` ``N x H x W`` class indices; pixels whose target is
``ignore_index`` contribute nothing (neither to the sum nor to the normaliser), so changing the
logits there changes neither the loss nor any gradient.

Names: ``cross_entropy`` (optionally class-weighted), ``focal`` (Lin et al. 2017), ``dice`` (soft
multi-class Dice), ``lovasz`` (Lovász-softmax, Berman et al. 2018), ``ohem`` (online hard example
mining cross entropy), ``unet_weighted`` (cross entropy with the U-Net border weight map,
Ronneberger et al. 2015 eq. 2), and ``sum`` (a weighted sum of any of these).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from torch import nn

from .errors import ConfigError

_LOSSES: dict[str, Callable[..., nn.Module]] = {}


def register_loss(name: str) -> Callable[[type[nn.Module]], type[nn.Module]]:
    def wrap(cls: type[nn.Module]) -> type[nn.Module]:
        _LOSSES[name] = cls
        return cls

    return wrap


def list_losses() -> list[str]:
    return sorted(_LOSSES)


def loss_arguments(name: str) -> list[str]:
    if name not in _LOSSES:
        raise ConfigError(f"unknown loss {name!r}; available: {', '.join(list_losses())}")
    return [p for p in inspect.signature(_LOSSES[name].__init__).parameters if p != "self"]


def build_loss(name: str, **kwargs: Any) -> nn.Module:
    """Build a loss by name; unknown names or arguments raise ConfigError listing the valid ones."""
    valid = loss_arguments(name)
    unknown = sorted(set(kwargs) - set(valid))
    if unknown:
        raise ConfigError(f"loss {name!r} has no argument(s) {', '.join(unknown)}; valid: {', '.join(valid)}")
    return _LOSSES[name](**kwargs)


def _valid(target: torch.Tensor, ignore_index: int) -> torch.Tensor:
    return target != ignore_index


def _zero(logits: torch.Tensor) -> torch.Tensor:
    return logits.sum() * 0.0  # no labelled pixel: 0 with a (zero) gradient, not 0/0 = NaN


def _as_weight(weight: Sequence[float] | None) -> torch.Tensor | None:
    return None if weight is None else torch.as_tensor(list(weight), dtype=torch.float32)


@register_loss("cross_entropy")
class CrossEntropyLoss(nn.Module):
    """Pixel-wise cross entropy, averaged over the non-ignored pixels; with ``weight`` (one per
    class) the average is weighted, as ``torch.nn.functional.cross_entropy``."""

    def __init__(
        self, *, ignore_index: int = 255, weight: Sequence[float] | None = None, label_smoothing: float = 0.0
    ) -> None:
        super().__init__()
        self.ignore_index = ignore_index
        self.label_smoothing = label_smoothing
        self.register_buffer("weight", _as_weight(weight))

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if not _valid(target, self.ignore_index).any():
            return _zero(logits)
        return F.cross_entropy(
            logits.float(),
            target.long(),
            weight=self.weight,
            ignore_index=self.ignore_index,
            label_smoothing=self.label_smoothing,
        )


@register_loss("focal")
class FocalLoss(nn.Module):
    """Focal loss (Lin et al. 2017): ``-alpha_t (1 - p_t)^gamma log p_t`` averaged over the
    non-ignored pixels. ``alpha`` is one weight per class (or one number for all); ``gamma=0`` and
    no ``alpha`` is plain cross entropy."""

    def __init__(self, *, gamma: float = 2.0, alpha: float | Sequence[float] | None = None, ignore_index: int = 255):
        super().__init__()
        self.gamma, self.ignore_index = gamma, ignore_index
        alpha_t = None if alpha is None else torch.as_tensor(alpha, dtype=torch.float32).reshape(-1)
        self.register_buffer("alpha", alpha_t)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        valid = _valid(target, self.ignore_index)
        if not valid.any():
            return _zero(logits)
        logp = F.log_softmax(logits.float(), dim=1)
        t = target.long().clamp(min=0, max=logits.shape[1] - 1).unsqueeze(1)
        logp_t = logp.gather(1, t).squeeze(1)[valid]
        loss = -((1 - logp_t.exp()) ** self.gamma) * logp_t
        if self.alpha is not None:
            loss = loss * (self.alpha if self.alpha.numel() > 1 else self.alpha.expand(logits.shape[1]))[target[valid]]
        return loss.mean()


@register_loss("dice")
class DiceLoss(nn.Module):
    """Soft multi-class Dice loss: ``1 - mean_c (2 sum p_c g_c + smooth) / (sum p_c + sum g_c + smooth)``
    with softmax probabilities ``p``, one-hot targets ``g``, sums over the batch's non-ignored pixels,
    the mean over the classes present in the target (``classes="present"``) or all."""

    def __init__(self, *, smooth: float = 1.0, classes: str = "present", ignore_index: int = 255) -> None:
        super().__init__()
        if classes not in ("present", "all"):
            raise ConfigError(f"dice: classes must be 'present' or 'all', got {classes!r}")
        self.smooth, self.classes, self.ignore_index = smooth, classes, ignore_index

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        valid = _valid(target, self.ignore_index)
        if not valid.any():
            return _zero(logits)
        num_classes = logits.shape[1]
        probs = F.softmax(logits.float(), dim=1).movedim(1, -1)[valid]  # P x C
        onehot = F.one_hot(target[valid].long(), num_classes).float()
        inter = (probs * onehot).sum(0)
        denom = probs.sum(0) + onehot.sum(0)
        dice = (2 * inter + self.smooth) / (denom + self.smooth)
        if self.classes == "present":
            dice = dice[onehot.sum(0) > 0]
        return 1 - dice.mean()


def _lovasz_grad(gt_sorted: torch.Tensor) -> torch.Tensor:
    """Gradient of the Lovász extension of the Jaccard loss w.r.t. sorted errors (Berman et al. alg. 1)."""
    gts = gt_sorted.sum()
    intersection = gts - gt_sorted.cumsum(0)
    union = gts + (1 - gt_sorted).cumsum(0)
    jaccard = 1.0 - intersection / union
    jaccard[1:] = jaccard[1:] - jaccard[:-1].clone()
    return jaccard


@register_loss("lovasz")
class LovaszSoftmaxLoss(nn.Module):
    """Lovász-softmax (Berman, Rannen Triki, Blaschko 2018): the convex surrogate of the per-class
    Jaccard loss, ``mean_c <sorted errors of class c, Lovász gradient>``, over the classes present in
    the target (``classes="present"``) or all, over the whole batch or averaged per image."""

    def __init__(self, *, classes: str = "present", per_image: bool = False, ignore_index: int = 255) -> None:
        super().__init__()
        if classes not in ("present", "all"):
            raise ConfigError(f"lovasz: classes must be 'present' or 'all', got {classes!r}")
        self.classes, self.per_image, self.ignore_index = classes, per_image, ignore_index

    def _flat(self, probs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor | None:
        losses = []
        for c in range(probs.shape[1]):
            fg = (labels == c).float()
            if self.classes == "present" and fg.sum() == 0:
                continue
            errors, order = (fg - probs[:, c]).abs().sort(descending=True)
            losses.append(torch.dot(errors, _lovasz_grad(fg[order])))
        return torch.stack(losses).mean() if losses else None

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        probs = F.softmax(logits.float(), dim=1)
        if self.per_image:
            groups = [(probs[i : i + 1], target[i : i + 1]) for i in range(len(target))]
        else:
            groups = [(probs, target)]
        losses = []
        for p, t in groups:
            valid = _valid(t, self.ignore_index)
            loss = self._flat(p.movedim(1, -1)[valid], t[valid])
            if loss is not None:
                losses.append(loss)
        return torch.stack(losses).mean() if losses else _zero(logits)


@register_loss("ohem")
class OHEMCrossEntropy(nn.Module):
    """Online hard example mining cross entropy (as PSPNet's / mmsegmentation's OHEM): only the
    pixels whose probability of the true class is below ``thresh`` count, but at least the
    ``min_kept`` hardest non-ignored pixels (the threshold is raised to keep them)."""

    def __init__(
        self,
        *,
        thresh: float = 0.7,
        min_kept: int = 100_000,
        ignore_index: int = 255,
        weight: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        self.thresh, self.min_kept, self.ignore_index = thresh, min_kept, ignore_index
        self.register_buffer("weight", _as_weight(weight))

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        valid = _valid(target, self.ignore_index)
        if not valid.any():
            return _zero(logits)
        logits = logits.float()
        with torch.no_grad():
            t = target.long().clamp(min=0, max=logits.shape[1] - 1).unsqueeze(1)
            p_true = F.softmax(logits, dim=1).gather(1, t).squeeze(1)
            p_valid = p_true[valid]
            threshold = self.thresh
            k = min(self.min_kept, p_valid.numel())
            if k > 0:
                kth = p_valid.kthvalue(k).values.item()
                threshold = max(threshold, kth)
            keep = valid & (p_true <= threshold)
        hard = torch.where(keep, target.long(), torch.full_like(target.long(), self.ignore_index))
        return F.cross_entropy(logits, hard, weight=self.weight, ignore_index=self.ignore_index)


# --- U-Net border weights ---------------------------------------------------------------------
def unet_weight_map(
    mask: np.ndarray,
    w0: float = 10.0,
    sigma: float = 5.0,
    *,
    foreground: int = 1,
    class_balance: bool = True,
    ignore_index: int = 255,
) -> np.ndarray:
    """The U-Net weight map (Ronneberger et al. 2015, eq. 2) of an ``H x W`` label array:

    ``w(x) = w_c(x) + w0 * exp(-(d1(x) + d2(x))^2 / (2 sigma^2))``

    with ``d1``, ``d2`` the distances to the nearest and second-nearest object (4-connected
    component of the ``foreground`` class) and ``w_c`` balancing the class frequencies of this mask
    (``w_c = n / (k * n_c)`` for the ``k`` classes present, or 1 with ``class_balance=False``). As in
    the paper's Fig. 3d the border term is applied to the pixels between objects (not foreground);
    it is cut off where it falls below ``1e-4 * w0``, which bounds the distance computations to each
    object's neighbourhood. Ignored pixels get weight 0."""
    mask = np.asarray(mask)
    labelled = mask != ignore_index
    weights = np.ones(mask.shape, dtype=np.float32)
    if class_balance and labelled.any():
        values, counts = np.unique(mask[labelled], return_counts=True)
        lut = {v: labelled.sum() / (len(values) * c) for v, c in zip(values, counts, strict=True)}
        for v, w in lut.items():
            weights[mask == v] = w
    objects, count = ndimage.label(mask == foreground)
    if count >= 2 and w0 > 0:
        reach = int(math.ceil(sigma * math.sqrt(2 * math.log(1e4)))) + 1  # where the term is < 1e-4 w0
        d1 = np.full(mask.shape, np.inf, dtype=np.float32)
        d2 = np.full(mask.shape, np.inf, dtype=np.float32)
        for k, (rows, cols) in enumerate(ndimage.find_objects(objects), start=1):
            box = tuple(slice(max(s.start - reach, 0), s.stop + reach) for s in (rows, cols))
            dist = ndimage.distance_transform_edt(objects[box] != k).astype(np.float32)  # to object k
            a, b = d1[box], d2[box]
            d2[box] = np.minimum(b, np.maximum(a, dist))
            d1[box] = np.minimum(a, dist)
        border = w0 * np.exp(-((d1 + d2) ** 2) / (2 * sigma**2))
        between = labelled & (mask != foreground)
        weights[between] += border[between]
    weights[~labelled] = 0
    return weights


@register_loss("unet_weighted")
class UNetWeightedCrossEntropy(nn.Module):
    """Cross entropy weighted per pixel by :func:`unet_weight_map`, computed from the (augmented)
    target of each batch: ``sum w(x) CE(x) / #labelled pixels``."""

    def __init__(
        self,
        *,
        w0: float = 10.0,
        sigma: float = 5.0,
        foreground: int = 1,
        class_balance: bool = True,
        ignore_index: int = 255,
    ) -> None:
        super().__init__()
        self.w0, self.sigma, self.foreground = w0, sigma, foreground
        self.class_balance, self.ignore_index = class_balance, ignore_index

    def weights(self, target: torch.Tensor) -> torch.Tensor:
        maps = [
            unet_weight_map(
                t,
                self.w0,
                self.sigma,
                foreground=self.foreground,
                class_balance=self.class_balance,
                ignore_index=self.ignore_index,
            )
            for t in target.detach().cpu().numpy()
        ]
        return torch.from_numpy(np.stack(maps)).to(target.device)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        valid = _valid(target, self.ignore_index)
        if not valid.any():
            return _zero(logits)
        ce = F.cross_entropy(logits.float(), target.long(), ignore_index=self.ignore_index, reduction="none")
        return (ce * self.weights(target)).sum() / valid.sum()


@register_loss("sum")
class WeightedSum(nn.Module):
    """``sum_i weight_i * loss_i``; ``terms`` is a list of ``{"name": ..., "weight": ..., **kwargs}``."""

    def __init__(self, *, terms: Sequence[dict[str, Any]], ignore_index: int = 255) -> None:
        super().__init__()
        if not terms:
            raise ConfigError("loss 'sum' needs at least one term")
        self.weights: list[float] = []
        modules = []
        for term in terms:
            term = dict(term)
            if "name" not in term:
                raise ConfigError(f"loss term {term} has no 'name'; available: {', '.join(list_losses())}")
            self.weights.append(float(term.pop("weight", 1.0)))
            name = term.pop("name")
            if "ignore_index" in loss_arguments(name):
                term.setdefault("ignore_index", ignore_index)
            modules.append(build_loss(name, **term))
        self.terms = nn.ModuleList(modules)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return sum(w * term(logits, target) for w, term in zip(self.weights, self.terms, strict=True))


# --- class weights from the training masks ----------------------------------------------------
def class_frequency_weights(
    counts: Sequence[int], image_counts: Sequence[int] | None = None, method: str = "median_frequency"
) -> list[float]:
    """Class weights from pixel counts.

    - ``median_frequency`` (Eigen & Fergus 2015, SegNet): ``freq_c = n_c / (pixels of the images
      where c occurs)``, ``w_c = median(freq) / freq_c``; needs ``image_counts`` (those pixel totals).
    - ``inverse_frequency``: ``w_c = n / (C * n_c)``, 1 on average over pixels.
    A class with no pixel gets weight 0."""
    n = np.asarray(counts, dtype=np.float64)
    present = n > 0
    weights = np.zeros_like(n)
    if method == "median_frequency":
        if image_counts is None:
            raise ValueError("median_frequency needs image_counts")
        freq = n[present] / np.asarray(image_counts, dtype=np.float64)[present]
        weights[present] = np.median(freq) / freq
    elif method == "inverse_frequency":
        weights[present] = n.sum() / (present.sum() * n[present])
    else:
        raise ConfigError(f"class weights {method!r}; valid: median_frequency, inverse_frequency, or a list")
    return weights.tolist()
