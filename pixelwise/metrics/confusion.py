"""Segmentation metrics, all derived from one streaming confusion matrix.

Rows of the matrix are ground-truth classes, columns predicted classes. Pixels whose target is
``ignore_index`` are skipped. Per class ``c`` with ``TP`` the diagonal, ``GT`` the row sum and
``PR`` the column sum:

- ``iou = TP / (GT + PR - TP)``, ``recall`` (= per-class accuracy) ``= TP / GT``,
  ``precision = TP / PR``, ``f1`` (= Dice) ``= 2 TP / (GT + PR)``.
- A ratio whose denominator is 0 is NaN. So a class absent from both prediction and target has
  NaN IoU, F1, precision and recall; a class absent from the target but predicted somewhere has
  IoU 0, F1 0, precision 0 and NaN recall.
- Means (``miou``, ``mean_accuracy``, ``mean_f1``) average over the non-NaN classes.
- ``pixel_accuracy = sum TP / sum GT``; ``fwiou = sum_c (GT_c / sum GT) * iou_c`` (frequency-weighted
  IoU, Long et al. 2015), over the classes present in the target.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.distributed as dist

from ..argmax import class_argmax


def _class_dim(pred: torch.Tensor, target: torch.Tensor) -> int | None:
    """The dim of ``pred`` holding class scores (``N x C x ...`` or ``C x ...``), None for indices. Where both
    fit (``C x H x W`` scores of an ``H x W`` image with C = H, or a batch of N = C images), a 2-D target is one
    image (dim 0) and any other a batch (dim 1); so ``N x C x L`` scores of 1-D signals need N != C."""
    if pred.dim() != target.dim() + 1:
        return None
    fits = [d for d in (1, 0) if d < pred.dim() and pred.shape[:d] + pred.shape[d + 1 :] == target.shape]
    if not fits:
        return None
    dim = fits[0] if len(fits) == 1 else (0 if target.dim() == 2 else 1)
    if pred.shape[dim] == 1:
        # an argmax over one channel is class 0 everywhere: a sigmoid output needs its threshold first
        raise ValueError(
            f"prediction shape {tuple(pred.shape)} has one score channel for target {tuple(target.shape)}: give "
            "class indices shaped like the target (a one-channel sigmoid output: (p > 0.5).long().squeeze(1)) or "
            "one score per class"
        )
    return dim


def as_class_indices(pred: torch.Tensor, target: torch.Tensor, num_classes: int | None = None) -> torch.Tensor:
    """``pred`` as class indices shaped like ``target``: scores with one extra class dim
    (``N x C x ...`` or ``C x ...``) are arg-maxed; a shape mismatch is an error, and so are floating-point
    values shaped like the target that are not whole numbers (probabilities, which a cast would floor to 0), and,
    with ``num_classes``, scores of another number of classes."""
    dim = _class_dim(pred, target)
    if dim is not None:
        if num_classes is not None and pred.shape[dim] != num_classes:
            raise ValueError(
                f"prediction shape {tuple(pred.shape)} has {pred.shape[dim]} score channels for "
                f"num_classes={num_classes}: give one score per class ({num_classes} channels) or class indices "
                f"shaped like the target {tuple(target.shape)}"
            )
        return class_argmax(pred, dim)
    if pred.shape != target.shape:
        raise ValueError(f"prediction shape {tuple(pred.shape)} does not match target {tuple(target.shape)}")
    if pred.is_floating_point() and bool((pred != pred.round()).any()):
        raise ValueError(
            f"prediction shape {tuple(pred.shape)} holds fractions, not class indices: threshold a probability map "
            "first ((p > 0.5).long()) or give one score per class (N x C x H x W)"
        )
    return pred


def check_class_range(num_classes: int, ignore_index: int | None, **labelled: torch.Tensor) -> None:
    """ValueError naming the first tensor (keyword) that holds a class outside ``0..num_classes-1``."""
    for name, values in labelled.items():
        if values.numel() and (values.min() < 0 or values.max() >= num_classes):
            bad = values[(values < 0) | (values >= num_classes)][0].item()
            raise ValueError(f"{name} holds class {bad}, outside 0..{num_classes - 1} (ignore_index={ignore_index})")


class ConfusionMatrix:
    """Streaming ``num_classes x num_classes`` confusion matrix (int64, on ``device``)."""

    def __init__(self, num_classes: int, ignore_index: int | None = 255, device: torch.device | str = "cpu"):
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.matrix = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)

    def reset(self) -> None:
        self.matrix.zero_()

    @torch.no_grad()
    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """Add a batch. ``pred`` holds class indices shaped like ``target`` (any shape), or scores
        (logits/probabilities) with one extra class dim (``N x C x H x W`` for ``N x H x W``)."""
        pred = as_class_indices(pred, target, self.num_classes).reshape(-1).to(self.matrix.device, torch.int64)
        target = target.reshape(-1).to(self.matrix.device, torch.int64)
        if self.ignore_index is not None:
            keep = target != self.ignore_index
            pred, target = pred[keep], target[keep]
        n = self.num_classes
        check_class_range(n, self.ignore_index, target=target, prediction=pred)
        self.matrix += torch.bincount(target * n + pred, minlength=n * n).reshape(n, n)

    def all_reduce(self) -> None:
        """Sum the matrix over all processes of the default group (no-op when not distributed)."""
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(self.matrix, op=dist.ReduceOp.SUM)

    def compute(self) -> dict[str, Any]:
        """All metrics as plain Python numbers/lists (NaN where undefined, see module docstring)."""
        m = self.matrix.double().cpu()
        tp = m.diag()
        gt = m.sum(1)
        pr = m.sum(0)
        total = gt.sum()

        def ratio(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
            return torch.where(den > 0, num / den.clamp(min=1), torch.full_like(num, math.nan))

        iou = ratio(tp, gt + pr - tp)
        recall = ratio(tp, gt)
        precision = ratio(tp, pr)
        f1 = ratio(2 * tp, gt + pr)
        present = gt > 0
        fwiou = float((gt[present] / total * iou[present]).sum()) if total > 0 else math.nan
        return {
            "pixel_accuracy": float(tp.sum() / total) if total > 0 else math.nan,
            "mean_accuracy": float(recall.nanmean()),
            "miou": float(iou.nanmean()),
            "fwiou": fwiou,
            "mean_f1": float(f1.nanmean()),
            "iou": iou.tolist(),
            "accuracy": recall.tolist(),
            "recall": recall.tolist(),
            "precision": precision.tolist(),
            "f1": f1.tolist(),
            "confusion_matrix": self.matrix.cpu().tolist(),
        }
