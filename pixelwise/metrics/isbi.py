"""ISBI 2012 segmentation scores (V_rand, V_info) of an instance labelling, and the pixel error.

Reference: I. Arganda-Carreras, S. C. Turaga, D. R. Berger et al., "Crowdsourcing the creation of image
segmentation algorithms for connectomics", Frontiers in Neuroanatomy 9:142, 2015 (the ISBI 2012 EM
segmentation challenge). The challenge was scored with Fiji's Trainable Weka Segmentation
(``trainableSegmentation.metrics.RandError`` / ``VariationOfInformation``): V_rand here agrees with it, V_info
follows the paper's definition and differs from Fiji's normalisation on slices with background (see "V_info and
Fiji" below).

The instance labelling can come from any method (:func:`pixelwise.inference.label_instances` makes one
from a semantic map).

**Scores.** S is the predicted instance labelling, T the ground truth; both are integer maps with 0 meaning
background. Everything is restricted to the ground-truth foreground (pixels with ``T > 0``); there are ``n`` of
them. ``p_ij`` is the fraction of those pixels lying in predicted segment i and ground-truth segment j,
``s_i = sum_j p_ij`` and ``t_j = sum_i p_ij`` the marginals.

- Rand: ``v_rand_split = sum p_ij^2 / sum t_j^2`` and ``v_rand_merge = sum p_ij^2 / sum s_i^2``;
  ``v_rand`` is their harmonic mean (the paper's V^Rand with alpha = 1/2; 1 - v_rand is the "adapted Rand
  error" of SNEMI3D).
- Information: ``v_info_split = I(S;T) / H(S)`` and ``v_info_merge = I(S;T) / H(T)``; ``v_info`` is their
  harmonic mean (V^Info with alpha = 1/2). Natural logarithms (the base cancels).
- **Split/merge naming** (checked against the paper and Fiji): a *split* error (one GT cell cut into several
  predicted segments) lowers the split scores and leaves the merge scores at 1; a *merge* error (several GT
  cells in one predicted segment) lowers the merge scores and leaves the split scores at 1. The split score
  is the Rand/information "recall" (normalised by the GT marginals for Rand, by H(S) for information); the
  merge score is the "precision".
- **Predicted background inside GT foreground** (``S == 0`` where ``T > 0``): every such pixel is its own
  singleton segment. It adds ``(1/n)^2`` to both ``sum p_ij^2`` and ``sum s_i^2`` (and nothing to
  ``sum t_j^2``), and ``-(1/n) log(1/n)`` to both H(S) and H(S,T) (Fiji's singletons too, on its own scale: see
  "V_info and Fiji"). So leaving cell pixels unassigned costs split score, as fragmenting them would.
  (SNEMI3D's Python ``adapted_rand`` adds only ``c / n`` in pixel-count units for the ``c`` unassigned pixels,
  not ``c``: with many unassigned pixels its Rand scores are lower than these, as both the split and the merge
  score grow with what is added; with none, the two agree.)
- Ground-truth background pixels (``T == 0``) are ignored whatever S says there.
- **V_info and Fiji.** V_info follows the paper's definition: the ``p_ij`` above are probabilities over the
  ``n`` ground-truth foreground pixels. Fiji's ``VariationOfInformation`` (the ISBI scorer) sums over the same
  foreground rows but divides the counts by *all* ``N`` pixels of the slice, background included, so on a slice
  with background (``N > n``) its "entropies" are of a measure of total ``n / N``, not of a distribution. With
  ``L = ln(N / n)`` its parts are ``(I + L) / (H + L)`` where these are ``I / H`` (H = H(S) or H(T) > 0):
  closer to 1 than this module's (e.g. a slice ``T = [1, 1, 0, 2, 2]``, ``S = [1, 1, 1, 1, 1]``: here
  ``v_info_merge`` 0, in Fiji 0.244). On slices without ground-truth background the two agree. So V_info here
  does not equal the leaderboard's V_info on ISBI slices (whose membranes are background); V_rand does agree
  with Fiji (its ratios of squared sums do not depend on the normalisation).
- Degenerate cases: with no GT foreground every score is NaN. If H(S) = 0 (one predicted segment, nothing can
  be split) ``v_info_split`` is 1; if H(T) = 0 (one GT segment, nothing can be merged) ``v_info_merge`` is 1
  (Fiji sets that part to 0 instead, so it scores an exact one-segment match 0). A harmonic mean of two zeros
  is 0.
- Label ids are arbitrary integers (permuting them changes nothing); negative ids are rejected.

**Stacks.** The challenge scores 2-D slices. :class:`ISBIScores` accumulates slices: ``mode="pooled"`` (default)
scores the whole stack's contingency table with label ids made disjoint between slices, which only needs seven
additive sums per slice (``n``, ``sum n_ij^2``, ``sum n_i^2``, ``sum n_j^2`` and the ``sum x log x`` of the same
counts); ``mode="mean"`` averages the per-slice scores over slices that have GT foreground. Fiji does both:
its stack Rand statistics sum the per-slice pair counts (pooled), its stack V_info averages per-slice scores.
Pooling weights slices by their foreground area and is independent of how the data are split into batches,
which is why it is the default. Note that the leaderboard values were the maxima over binarisation
thresholds after thinning the predicted membranes (Fiji's "after thinning" variants); this module scores one
given instance labelling and does neither the threshold sweep nor the thinning.

:func:`pixel_error` is the plain pixel error of a class map: the fraction of pixels whose class differs from the
target, i.e. the normalised Hamming distance. The challenge's tables (and the U-Net paper's 0.0611) report
another "pixel error", Fiji's: 1 - the maximal F-score of the pixel classification over binarisation thresholds
of the submitted probability map, :class:`ChallengePixelError`. The same errors weigh less there:
``1 - F = (FP + FN) / (2 TP + FP + FN)`` against ``(FP + FN) / n``, and on ISBI slices, where about 80 % of the
pixels are the positive class ("cell"), ``2 TP + FP + FN`` is about 1.6 n; compare each only with its own kind.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import numpy as np
import torch
import torch.distributed as dist

_KEYS = ("v_rand", "v_rand_split", "v_rand_merge", "v_info", "v_info_split", "v_info_merge")


def _xlogx(counts: np.ndarray) -> float:
    c = counts[counts > 0].astype(np.float64)
    return float(np.sum(c * np.log(c)))


def _slice_stats(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """The seven additive sums (float64) for one labelling pair: n, sum n_ij^2, sum n_i^2, sum n_j^2,
    sum n_ij log n_ij, sum n_i log n_i, sum n_j log n_j, over GT foreground with S == 0 pixels as singletons."""
    pred, gt = np.asarray(pred), np.asarray(gt)
    if pred.shape != gt.shape:
        raise ValueError(f"prediction shape {pred.shape} does not match ground truth {gt.shape}")
    for name, a in (("prediction", pred), ("ground truth", gt)):
        if not np.issubdtype(a.dtype, np.integer) and a.dtype != bool:
            raise ValueError(f"{name} must hold integer instance ids, got dtype {a.dtype}")
        if a.size and a.min() < 0:
            raise ValueError(f"{name} holds negative instance ids")
    fg = gt > 0
    s = pred[fg].astype(np.int64)
    t = gt[fg].astype(np.int64)
    n = t.size
    singles = int(np.count_nonzero(s == 0))
    _, t_counts = np.unique(t, return_counts=True)
    keep = s != 0
    _, s_inv, s_counts = np.unique(s[keep], return_inverse=True, return_counts=True)
    t_ids, t_inv = np.unique(t[keep], return_inverse=True)
    _, joint_counts = np.unique(s_inv.astype(np.int64) * len(t_ids) + t_inv, return_counts=True)

    def sq(c: np.ndarray) -> float:
        return float(np.sum(c.astype(np.float64) ** 2))

    # each singleton adds 1 to the squared sums and 1 * log 1 = 0 to the x log x sums
    return np.array(
        [
            n,
            sq(joint_counts) + singles,
            sq(s_counts) + singles,
            sq(t_counts),
            _xlogx(joint_counts),
            _xlogx(s_counts),
            _xlogx(t_counts),
        ],
        np.float64,
    )


def _harmonic(a: float, b: float) -> float:
    if math.isnan(a) or math.isnan(b):
        return math.nan
    return 2 * a * b / (a + b) if a + b > 0 else 0.0


def _scores(stats: np.ndarray) -> dict[str, float]:
    """The six scores from the seven sums of :func:`_slice_stats` (summed over slices or not)."""
    n, j2, s2, t2, jl, sl, tl = (float(v) for v in stats)
    if n == 0:
        return dict.fromkeys(_KEYS, math.nan)
    rand_split, rand_merge = j2 / t2, j2 / s2
    # H = -sum (c/n) log(c/n) = log n - (1/n) sum c log c
    log_n = math.log(n)
    h_s, h_t, h_st = log_n - sl / n, log_n - tl / n, log_n - jl / n
    mutual = h_s + h_t - h_st
    eps = 1e-12
    info_split = mutual / h_s if h_s > eps else 1.0
    info_merge = mutual / h_t if h_t > eps else 1.0
    return {
        "v_rand": _harmonic(rand_split, rand_merge),
        "v_rand_split": rand_split,
        "v_rand_merge": rand_merge,
        "v_info": _harmonic(info_split, info_merge),
        "v_info_split": info_split,
        "v_info_merge": info_merge,
    }


def isbi_scores(pred_instances: np.ndarray, gt_instances: np.ndarray) -> dict[str, float]:
    """Foreground-restricted V_rand and V_info (with split and merge parts) of one labelling pair.

    The arrays are treated as a single labelling of any dimensionality (an id shared by two slices of a 3-D
    array is one segment); use :class:`ISBIScores` to score a stack of independent 2-D slices.
    """
    return _scores(_slice_stats(pred_instances, gt_instances))


class ISBIScores:
    """Accumulates :func:`isbi_scores` over 2-D slices (see "Stacks" in the module docstring)."""

    def __init__(self) -> None:
        self.slice_stats: list[np.ndarray] = []

    def reset(self) -> None:
        self.slice_stats = []

    def update(self, pred_instances: np.ndarray, gt_instances: np.ndarray) -> None:
        """Add one ``H x W`` slice or an ``N x H x W`` stack; ids are per slice (never shared across slices)."""
        pred, gt = np.asarray(pred_instances), np.asarray(gt_instances)
        if pred.shape != gt.shape:
            raise ValueError(f"prediction shape {pred.shape} does not match ground truth {gt.shape}")
        if gt.ndim == 2:
            pred, gt = pred[None], gt[None]
        elif gt.ndim != 3:
            raise ValueError(f"expected H x W or N x H x W instance maps, got shape {gt.shape}")
        self.slice_stats.extend(_slice_stats(p, g) for p, g in zip(pred, gt, strict=True))

    def all_reduce(self) -> None:
        """Join the slices of all processes of the default group, in rank order, on every process (no-op when not
        distributed)."""
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            shares: list[list[np.ndarray] | None] = [None] * dist.get_world_size()
            dist.all_gather_object(shares, self.slice_stats)
            self.slice_stats = [s for share in shares for s in share]

    def compute(self, mode: Literal["pooled", "mean"] = "pooled") -> dict[str, Any]:
        """Scores over all slices added so far, plus ``num_slices``.

        ``pooled``: the stack's contingency table (per-slice ids kept disjoint); ``mean``: the average of the
        per-slice scores over slices with GT foreground. NaN when no slice has GT foreground.
        """
        if mode == "pooled":
            total = np.sum(self.slice_stats, axis=0) if self.slice_stats else np.zeros(7)
            out: dict[str, Any] = _scores(total)
        elif mode == "mean":
            per = [_scores(s) for s in self.slice_stats if s[0] > 0]
            out = {k: float(np.mean([p[k] for p in per])) if per else math.nan for k in _KEYS}
        else:
            raise ValueError(f"mode must be 'pooled' or 'mean', got {mode!r}")
        out["num_slices"] = len(self.slice_stats)
        return out


def pixel_error(pred: np.ndarray, target: np.ndarray, ignore_index: int | None = 255) -> float:
    """Fraction of pixels whose class in ``pred`` differs from ``target``, over the pixels whose target is not
    ``ignore_index`` (NaN if there are none)."""
    pred, target = np.asarray(pred), np.asarray(target)
    if pred.shape != target.shape:
        raise ValueError(f"prediction shape {pred.shape} does not match target {target.shape}")
    keep = target != ignore_index if ignore_index is not None else np.ones(target.shape, bool)
    total = int(np.count_nonzero(keep))
    if total == 0:
        return math.nan
    return int(np.count_nonzero((pred != target) & keep)) / total


def _fiji_thresholds() -> tuple[float, ...]:
    # Fiji's loop ``for (th = 0.0; th <= 1.0; th += 0.1)`` in doubles, whose last value is 0.9999999999999999:
    # the same sums in Python floats give the same eleven thresholds (so a probability of exactly 1 counts
    # as positive at the last one, as in Fiji).
    thresholds, th = [], 0.0
    while th <= 1.0:
        thresholds.append(th)
        th += 0.1
    return tuple(thresholds)


CHALLENGE_THRESHOLDS = _fiji_thresholds()


class ChallengePixelError:
    """The ISBI 2012 challenge's pixel error: ``1 - max_t F(t)``, the F-score of class ``positive`` (ISBI's
    "cell", index 1: the nonzero value of Fiji's binary labels) when its probability map is binarised at
    ``p > t``, with the counts pooled over all slices, maximised over Fiji's thresholds 0, 0.1, ..., 1
    (``trainableSegmentation.metrics.PixelError.getPixelErrorMaximalFScore(0, 1, 0.1)``, the value the
    challenge's leaderboard and the U-Net paper report; like Fiji's ``ClassificationStatistics``, whose precision
    is 1 without false positives and recall 1 without false negatives, F = 1 at a threshold with no true positive,
    false positive or false negative; revisions of Fiji before that divided 0 by 0 there and passed the threshold
    over). Pixels whose target is ``ignore_index`` are left out (Fiji has no ignore
    label). Counts stay on ``device``; :meth:`all_reduce` sums them over DDP processes."""

    def __init__(
        self,
        *,
        positive: int = 1,
        ignore_index: int = 255,
        thresholds: tuple[float, ...] = CHALLENGE_THRESHOLDS,
        device: torch.device | str = "cpu",
    ) -> None:
        self.positive, self.ignore_index, self.thresholds = positive, ignore_index, tuple(thresholds)
        # per threshold: TP, FP, FN; and the number of pixels counted
        self.counts = torch.zeros(len(self.thresholds), 3, dtype=torch.float64, device=device)
        self.pixels = torch.zeros((), dtype=torch.float64, device=device)

    def update(self, probability: torch.Tensor, target: torch.Tensor) -> None:
        """Add ``N x H x W`` probabilities of the positive class and the ``N x H x W`` class-index targets."""
        if probability.shape != target.shape:
            shapes = f"{tuple(probability.shape)} and target {tuple(target.shape)}"
            raise ValueError(f"probability shape {shapes} differ")
        device = self.counts.device
        p, target = probability.to(device).double(), target.to(device)
        valid = target != self.ignore_index
        truth = (target == self.positive) & valid
        positives = truth.sum()
        self.pixels += valid.sum()
        for i, th in enumerate(self.thresholds):
            pred = (p > th) & valid
            tp = (pred & truth).sum()
            self.counts[i, 0] += tp
            self.counts[i, 1] += pred.sum() - tp
            self.counts[i, 2] += positives - tp

    def all_reduce(self) -> None:
        """Sum the counts over all processes of the default group (no-op when not distributed)."""
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(self.counts, op=dist.ReduceOp.SUM)
            dist.all_reduce(self.pixels, op=dist.ReduceOp.SUM)

    def compute(self) -> dict[str, Any]:
        """``pixel_error`` (1 - the maximal F-score; NaN before any pixel was counted), ``f_score``, the
        ``threshold`` that reaches it (the lowest on a tie, as Fiji keeps the first), ``positive`` and the
        F-score at every threshold (``f_scores``)."""
        tp, fp, fn = self.counts.cpu().unbind(1)
        den = 2 * tp + fp + fn
        f = torch.where(den > 0, 2 * tp / den.clamp(min=1), torch.ones_like(tp))
        best = int(f.argmax())
        counted = float(self.pixels) > 0
        return {
            "pixel_error": float(1 - f[best]) if counted else math.nan,
            "f_score": float(f[best]) if counted else math.nan,
            "threshold": self.thresholds[best],
            "positive": self.positive,
            "f_scores": [float(v) for v in f],
        }
