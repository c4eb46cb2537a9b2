"""Boundary F1 per class, a streaming accumulator like :class:`pixelwise.metrics.ConfusionMatrix`.

The boundary F1 (BF) score of G. Csurka, D. Larlus and F. Perronnin, "What is a good evaluation measure for
semantic segmentation?", BMVC 2013, with the distance-tolerant boundary matching of D. Martin, C. Fowlkes and
J. Malik, "Learning to detect natural image boundaries using local brightness, color, and texture cues", TPAMI
2004. Two aggregations over a data set are reported (see **Aggregation**): the paper's BF score is the
*per-image* one, ``bf_score``; ``mean_f1`` pools the counts over the data set first. Conventions:

- **Boundary.** In a label map, the boundary of class ``c`` is the set of pixels of class ``c`` that have a
  4-neighbour (up, down, left, right) holding another label. Pixels outside the image are not neighbours, so
  the image border is not a boundary. Boundaries are computed per image, never across the batch dim.
- **Matching.** A predicted boundary pixel of class ``c`` is *matched* if a ground-truth boundary pixel of
  class ``c`` lies within Euclidean distance ``width`` of it, the distance *included* (a disk:
  ``dy**2 + dx**2 <= width**2``; with ``width=1`` a diagonal neighbour, at distance sqrt(2), does not match).
  Likewise a ground-truth boundary pixel is matched if a predicted boundary pixel of the same class lies within
  ``width``. ``width=0`` demands the very same pixel. Matching is many-to-many (no one-to-one assignment, unlike
  BSDS). Tolerance convention: the paper and MATLAB's ``bfscore`` match at distance ``d < theta`` (strict), so
  the same number is a slightly looser tolerance here: ``width=w`` matches exactly what ``theta`` slightly above
  ``w`` (any ``theta`` in ``(w, sqrt(w**2 + 1)]``) does there, while ``theta=w`` there leaves out the pixels
  at distance exactly ``w`` that ``width=w`` matches (``theta=1`` there is ``width=0`` here).
- **Counts.** Per class and image, four integers: matched predicted boundary pixels, all predicted boundary
  pixels, matched ground-truth boundary pixels, all ground-truth boundary pixels. From four such counts:
  ``precision = matched_pred / pred``, ``recall = matched_gt / gt``, ``f1 = 2PR / (P + R)``.
- **Aggregation.**

  - ``f1``, ``precision``, ``recall`` (per class) and their means ``mean_f1``, ``mean_precision``,
    ``mean_recall`` are *data-set level*: the counts are summed over all images, then one F1 is computed per
    class, then averaged over the classes. Images weigh by their boundary length, so a small object missed in
    one image barely moves them. (These are the numbers of earlier pixelwise releases, unchanged.)
  - ``bf_score`` is the *per-image* BF score of Csurka et al., the paper's measure: for each image, each
    class's F1 from that image's counts alone (NaN where the class has no boundary pixel in either map of the
    image), the image's score the mean over its non-NaN classes, and ``bf_score`` the mean of the image scores
    over the images that have one (an image without any boundary pixel, e.g. one class everywhere or all
    ignored, is left out). Every image weighs the same, so a missed small object costs its image's score.
  - ``bf_score_per_class``: per class, its per-image F1 averaged over the images where it is not NaN (MATLAB's
    ``ClassMetrics.MeanBFScore``); NaN for a class without a boundary pixel in any image. Its mean over classes
    is in general not ``bf_score``.

  Example (width 2, two 40 x 40 images): image A's 30 x 30 square is predicted exactly; image B's 2 x 2
  ground-truth square at (10, 10) is predicted at (30, 30). Pooled: ``mean_f1`` 0.952; per image: A scores
  1 and B 0, ``bf_score`` 0.5.
- **Ignore.** Pixels whose target is ``ignore_index`` are cut out of the image for *both* maps: they are
  treated exactly like pixels outside the image. So (a) a predicted boundary pixel lying on an ignored pixel
  is not counted, (b) a ground-truth pixel is *not* a boundary merely because it touches an ignore region
  (the class behind the ignore label is unknown, and the prediction cannot know where the ignore region
  begins), and (c) symmetrically, a predicted pixel is not a boundary merely because the predicted label
  changes across the edge of an ignore region. Only adjacencies between two non-ignored pixels can create
  boundary pixels. Distances for matching are still measured in the full image plane. Caveat: where every
  object is outlined by an ignore band (Pascal VOC's 5-pixel void border) this leaves few ground-truth
  boundaries to score.
- **NaN.** As in :mod:`pixelwise.metrics`, a ratio whose denominator is 0 is NaN. A class with no boundary
  pixels in either prediction or target has NaN precision, recall and F1 and is left out of the means. A class
  with boundary pixels on one side only has F1 0 (its precision or recall is 0, the other NaN). This holds for
  the pooled counts and for each image's counts alike. ``mean_f1``, ``mean_precision`` and ``mean_recall``
  average over the non-NaN classes; ``bf_score`` is NaN when no image has a score.

Implementation: boundaries by comparing each label map with its shifted neighbours. The disk matching is done
without one-hot maps: the ground-truth boundary pixels are written as one label map (class id on a boundary, -1
elsewhere), and a predicted boundary pixel of class ``c`` is matched if that map, shifted by one of the disk's
offsets, holds ``c`` there (and vice versa). This is an exact disk dilation of every class at once, costs
``len(disk_offsets(width))`` comparisons per pixel whatever the number of classes, and needs only ``N x H x W``
memory. Per-image, per-class counts are then bincounts over ``image * num_classes + class``; their sum over the
images goes into ``counts``, and the per-image F1s into running sums (``image_f1``, ``image_scores``), so
``bf_score`` streams and is summed over processes like the counts. Works on CPU and CUDA tensors.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.distributed as dist

from .confusion import as_class_indices, check_class_range


def disk_offsets(width: int) -> list[tuple[int, int]]:
    """The ``(dy, dx)`` offsets with ``dy**2 + dx**2 <= width**2`` (a digital disk of radius ``width``)."""
    r = range(-width, width + 1)
    return [(dy, dx) for dy in r for dx in r if dy * dy + dx * dx <= width * width]


def label_boundaries(labels: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """Bool mask of the pixels of ``labels`` (``... x H x W``) having a 4-neighbour with another label.

    Where ``valid`` (same shape) is given, only pairs of neighbours that are both valid count, so invalid
    pixels are never boundaries and do not make their neighbours boundaries (like the image border).
    """
    out = torch.zeros(labels.shape, dtype=torch.bool, device=labels.device)
    dh = labels[..., :, 1:] != labels[..., :, :-1]
    dv = labels[..., 1:, :] != labels[..., :-1, :]
    if valid is not None:
        dh &= valid[..., :, 1:] & valid[..., :, :-1]
        dv &= valid[..., 1:, :] & valid[..., :-1, :]
    out[..., :, 1:] |= dh
    out[..., :, :-1] |= dh
    out[..., 1:, :] |= dv
    out[..., :-1, :] |= dv
    return out


def _scores(
    matched_pred: torch.Tensor, pred: torch.Tensor, matched_gt: torch.Tensor, gt: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Precision, recall and F1 (float64, elementwise) from the four boundary counts, NaN as in the module
    docstring: precision NaN without predicted boundary pixels, recall NaN without ground-truth ones, F1 NaN
    without either, else 0 where one side is missing."""

    def ratio(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
        return torch.where(den > 0, num / den.clamp(min=1), torch.full_like(num, math.nan))

    precision = ratio(matched_pred, pred)
    recall = ratio(matched_gt, gt)
    p, r = precision.nan_to_num(0.0), recall.nan_to_num(0.0)
    f1 = torch.where(p + r > 0, 2 * p * r / (p + r).clamp(min=1e-300), torch.zeros_like(p))
    f1 = torch.where(pred + gt > 0, f1, torch.full_like(f1, math.nan))
    return precision, recall, f1


class BoundaryF1:
    """Streaming per-class boundary precision/recall/F1 with a ``width``-pixel (Euclidean) tolerance.

    ``counts`` is an int64 ``4 x num_classes`` tensor on ``device``: rows are matched predicted, predicted,
    matched ground-truth and ground-truth boundary pixels, summed over the images. For the per-image BF score,
    ``image_f1`` (float64, ``2 x num_classes``) holds per class the sum of the per-image F1s and the number of
    images where that F1 is defined, and ``image_scores`` (float64, ``2``) the sum of the image scores and the
    number of images scored. See the module docstring for the conventions.
    """

    def __init__(
        self,
        num_classes: int,
        ignore_index: int | None = 255,
        width: int = 2,
        device: torch.device | str = "cpu",
    ):
        if width < 0 or int(width) != width:
            raise ValueError(f"width must be a non-negative integer, got {width}")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.width = int(width)
        self.counts = torch.zeros(4, num_classes, dtype=torch.int64, device=device)
        # Csurka et al.'s per-image BF score, streamed: per class, the sum of the per-image F1s and the number of
        # images where the class's F1 is defined; the sum of the per-image scores and the number of images scored
        self.image_f1 = torch.zeros(2, num_classes, dtype=torch.float64, device=device)
        self.image_scores = torch.zeros(2, dtype=torch.float64, device=device)
        self._offsets = disk_offsets(self.width)

    def reset(self) -> None:
        self.counts.zero_()
        self.image_f1.zero_()
        self.image_scores.zero_()

    @torch.no_grad()
    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """Add a batch. ``target`` is ``N x H x W`` or ``H x W``; ``pred`` holds class indices of the same
        shape, or scores with one extra class dim (``N x C x H x W`` / ``C x H x W``)."""
        pred = as_class_indices(pred, target, self.num_classes)
        if target.dim() not in (2, 3):
            raise ValueError(f"expected H x W or N x H x W label maps, got shape {tuple(target.shape)}")
        device = self.counts.device
        pred = pred.to(device, torch.int64).reshape(-1, *target.shape[-2:])
        target = target.to(device, torch.int64).reshape(-1, *target.shape[-2:])
        valid = target != self.ignore_index if self.ignore_index is not None else None
        n = self.num_classes
        checked = (target, pred) if valid is None else (target[valid], pred[valid])
        check_class_range(n, self.ignore_index, target=checked[0], prediction=checked[1])

        pred_b = label_boundaries(pred, valid)
        gt_b = label_boundaries(target, valid)
        matched_pred = pred_b & self._near(target, gt_b, pred)
        matched_gt = gt_b & self._near(pred, pred_b, target)
        # per-image counts: one bincount over image * C + class per row, N x C
        images = pred.shape[0]
        offset = (torch.arange(images, device=device) * n).view(-1, 1, 1)
        pred_i, target_i = pred + offset, target + offset
        rows = ((pred_i, matched_pred), (pred_i, pred_b), (target_i, matched_gt), (target_i, gt_b))
        per_image = torch.stack(
            [torch.bincount(labels[where], minlength=images * n).view(images, n) for labels, where in rows]
        )
        self.counts += per_image.sum(1)
        _, _, f1 = _scores(*per_image.double())  # images x C, NaN where the class has no boundary in the image
        defined = ~f1.isnan()
        self.image_f1[0] += f1.nan_to_num(0.0).sum(0)
        self.image_f1[1] += defined.sum(0)
        scored = defined.any(1)
        image_score = f1[scored].nanmean(1)
        self.image_scores[0] += image_score.sum()
        self.image_scores[1] += scored.sum()

    def _near(self, labels: torch.Tensor, boundary: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
        """Bool ``N x H x W``: a ``boundary`` pixel of ``labels`` with class ``query[y, x]`` lies within the disk
        around ``(y, x)``."""
        r = self.width
        dtype = torch.int16 if self.num_classes < 2**15 else torch.int32
        h, w = labels.shape[-2:]
        marked = torch.full((labels.shape[0], h + 2 * r, w + 2 * r), -1, dtype=dtype, device=labels.device)
        marked[:, r : r + h, r : r + w] = torch.where(boundary, labels, -1).to(dtype)
        query = query.to(dtype)
        near = torch.zeros(query.shape, dtype=torch.bool, device=query.device)
        for dy, dx in self._offsets:
            near |= marked[:, r + dy : r + dy + h, r + dx : r + dx + w] == query
        return near

    def all_reduce(self) -> None:
        """Sum the counts and the per-image sums over all processes of the default group (no-op when not
        distributed)."""
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(self.counts, op=dist.ReduceOp.SUM)
            dist.all_reduce(self.image_f1, op=dist.ReduceOp.SUM)
            dist.all_reduce(self.image_scores, op=dist.ReduceOp.SUM)

    def compute(self) -> dict[str, Any]:
        """Data-set level (pooled counts) per-class ``precision``, ``recall``, ``f1`` lists and their NaN-skipping
        means ``mean_precision``, ``mean_recall``, ``mean_f1``; the per-image BF score of Csurka et al.,
        ``bf_score``, and its per-class form ``bf_score_per_class``; and the raw ``counts``. See "Aggregation" in
        the module docstring."""
        precision, recall, f1 = _scores(*self.counts.double().cpu())
        counts = self.counts.cpu().tolist()
        f1_sum, f1_images = self.image_f1.cpu()
        score_sum, scored_images = self.image_scores.cpu()
        bf_per_class = torch.where(f1_images > 0, f1_sum / f1_images.clamp(min=1), torch.full_like(f1_sum, math.nan))
        return {
            "mean_f1": float(f1.nanmean()),
            "mean_precision": float(precision.nanmean()),
            "mean_recall": float(recall.nanmean()),
            "f1": f1.tolist(),
            "precision": precision.tolist(),
            "recall": recall.tolist(),
            "bf_score": float(score_sum / scored_images) if scored_images > 0 else math.nan,
            "bf_score_per_class": bf_per_class.tolist(),
            "counts": {
                "pred_matched": counts[0],
                "pred": counts[1],
                "gt_matched": counts[2],
                "gt": counts[3],
            },
        }
