"""Region losses that optimise the overlap measures directly: soft Dice and Lovász-softmax (Berman, Rannen
Triki, Blaschko, CVPR 2018)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from .registry import _float, _valid, _zero, check_target, register_loss


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
        if not check_target("dice", logits, target, valid, self.ignore_index):
            return _zero(logits)
        num_classes = logits.shape[1]
        probs = F.softmax(_float(logits), dim=1).movedim(1, -1)[valid]  # P x C
        onehot = F.one_hot(target[valid].long(), num_classes).float()
        inter = (probs * onehot).sum(0)
        denom = probs.sum(0) + onehot.sum(0)
        dice = (2 * inter + self.smooth) / (denom + self.smooth)
        if self.classes == "present":
            dice = dice[onehot.sum(0) > 0]
        return 1 - dice.mean()


_SORT_ELEMENTS = 2**25  # Lovász: elements per batched sort (bounds the C x N temporaries)


def _lovasz_grad(gt_sorted: torch.Tensor) -> torch.Tensor:
    """Gradient of the Lovász extension of the Jaccard loss w.r.t. errors sorted along the last dimension
    (Berman et al. alg. 1), one row per class."""
    gts = gt_sorted.sum(-1, keepdim=True)
    intersection = gts - gt_sorted.cumsum(-1)
    union = gts + (1 - gt_sorted).cumsum(-1)
    jaccard = 1.0 - intersection / union
    return torch.cat([jaccard[..., :1], jaccard[..., 1:] - jaccard[..., :-1]], dim=-1)


@register_loss("lovasz")
class LovaszSoftmaxLoss(nn.Module):
    """Lovász-softmax (Berman, Rannen Triki, Blaschko 2018): the convex surrogate of the per-class
    Jaccard loss, ``mean_c <sorted errors of class c, Lovász gradient>``, over the classes present in
    the target (``classes="present"``) or all, over the whole batch or averaged per image (an image without
    labelled pixels counting 0, as in the authors' code)."""

    def __init__(self, *, classes: str = "present", per_image: bool = False, ignore_index: int = 255) -> None:
        super().__init__()
        if classes not in ("present", "all"):
            raise ConfigError(f"lovasz: classes must be 'present' or 'all', got {classes!r}")
        self.classes, self.per_image, self.ignore_index = classes, per_image, ignore_index

    def _flat(self, probs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor | None:
        # Classes sorted together, rows in parallel, instead of one sort per class (same values); in chunks of
        # rows so that the C x N temporaries stay near _SORT_ELEMENTS on large batches.
        fg = F.one_hot(labels.long(), probs.shape[1]).T.to(probs.dtype)  # C x N
        probs = probs.T
        if self.classes == "present":
            present = fg.sum(1) > 0
            fg, probs = fg[present], probs[present]
        if len(fg) == 0:
            return None
        rows = max(1, _SORT_ELEMENTS // max(1, fg.shape[1]))
        losses = []
        for fg_c, probs_c in zip(fg.split(rows), probs.split(rows), strict=True):
            errors, order = (fg_c - probs_c).abs().sort(dim=1, descending=True)
            losses.append((errors * _lovasz_grad(fg_c.gather(1, order))).sum(1))
        return torch.cat(losses).mean()

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if not check_target("lovasz", logits, target, _valid(target, self.ignore_index), self.ignore_index):
            return _zero(logits)  # as the per-image mean of images without labelled pixels
        probs = F.softmax(_float(logits), dim=1)
        if self.per_image:
            groups = [(probs[i : i + 1], target[i : i + 1]) for i in range(len(target))]
        else:
            groups = [(probs, target)]
        losses = []
        for p, t in groups:
            valid = _valid(t, self.ignore_index)
            loss = self._flat(p.movedim(1, -1)[valid], t[valid])
            # an image without labelled pixels counts 0 in the per-image mean, whatever ``classes`` says, as in
            # the authors' code (its lovasz_softmax_flat of no pixels)
            losses.append(_zero(logits) if loss is None else loss)
        return torch.stack(losses).mean() if losses else _zero(logits)
