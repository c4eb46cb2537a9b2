"""Instance-segmentation metrics: the StarDist matching (AP, precision, recall, F1 over IoU thresholds), panoptic
quality, and COCO-style mask AP, for 2-D instance label maps.

Label maps are 2-D non-negative integer arrays (numpy, or CPU/GPU torch tensors): 0 is background, every other value
one instance. Ids are arbitrary (not necessarily consecutive) and only their equality matters: relabelling or
permuting them changes no result (except the order of equally scored predictions in COCO AP, see below). All areas
and overlaps come from the pair-count table of the two label maps, one ``np.bincount`` over ``(true id, pred id)``
pairs (ids made consecutive first when they are too large for a dense table, and ``np.unique`` when even that would
be too large), never from per-instance masks: the cost is a few passes over the pixels plus work proportional to
the number of overlapping pairs.

**StarDist matching** (U. Schmidt, M. Weigert, C. Broaddus, G. Myers, "Cell Detection with Star-convex Polygons",
MICCAI 2018; the metric of its Table 1 on DSB2018, whose Kaggle challenge averaged the same ratio per image instead).
At threshold ``tau`` a true and a predicted instance may match when their IoU is >= ``tau``; the matching is
one-to-one and maximises the number of matches (exact assignment, ``scipy.optimize.linear_sum_assignment``, the IoU
breaking ties between maximal matchings as in ``stardist.matching``). For ``tau > 0.5`` each instance has at most one
candidate (IoU > 0.5 means an overlap of more than half of each of the two instances, which two disjoint instances
cannot both have with a third), so the candidates already form the matching, and the assignment only runs where an
instance has several candidates (``tau <= 0.5``). With TP the matches, FP the unmatched predictions and FN the
unmatched true instances, **summed over the data set** (not averaged per image):

- ``ap = TP / (TP + FP + FN)`` (what StarDist and the DSB2018 challenge call "average precision"; it is not COCO's
  AP), ``precision = TP / (TP + FP)``, ``recall = TP / (TP + FN)``, ``f1 = 2 TP / (2 TP + FP + FN)``;
- at ``tau = 0.50, 0.55, ..., 0.90`` (the paper's thresholds; :data:`MATCHING_THRESHOLDS`), and ``mean_ap``, the
  mean of ``ap`` over the thresholds. The matching itself is class-agnostic, as in StarDist.

**Panoptic quality** (A. Kirillov, K. He, R. Girshick, C. Rother, P. Dollar, "Panoptic Segmentation", CVPR 2019).
A true and a predicted instance of the same class match when their IoU is > 0.5 (unique by the argument above).
Per class, summed over the data set: ``pq = sum IoU / (TP + FP/2 + FN/2)``, ``sq = sum IoU / TP`` (mean IoU of the
matches), ``rq = TP / (TP + FP/2 + FN/2)``, so ``pq = sq * rq`` (where TP > 0). The overall ``pq``, ``sq``, ``rq``
are the means over the (thing) classes where they are defined. An instance's class is the majority class of a
semantic map under it (ties go to the smaller class id; ``ignore_index`` pixels do not vote), or is given per
instance, or is one class for all (class-agnostic, the default). Void, as in the panopticapi's ``pq_compute``: where
the true classes are a semantic map, its ``ignore_index`` pixels are void; a predicted instance's void pixels are
left out of its IoU's union, and an unmatched prediction that lies more than half on void is not a false positive.
There are no crowd regions.

**COCO mask AP** (T.-Y. Lin et al., "Microsoft COCO: Common Objects in Context", ECCV 2014; computed as
``pycocotools.cocoeval.COCOeval`` with ``iouType="segm"``, ``iscrowd=0`` and area range "all"). Needs a score per
predicted instance. Per image and class, the predictions sorted by decreasing score (equal scores in increasing id
order, as pycocotools keeps the order of its input) are cut to the ``max_detections`` best; each, in that order,
takes the unmatched true instance of its class with the highest IoU >= t (greedy, not optimal). Over the data set
the predictions of a class are ranked by score (equal scores in image order, ``image_id``), precision is made
monotone and read at the 101 recall points 0, 0.01, ..., 1; ``coco_ap`` is the mean over t = 0.50, 0.55, ..., 0.95
(:data:`COCO_IOU_THRESHOLDS`) and over the classes that have true instances; ``coco_ap50`` and ``coco_ap75`` are
those at t = 0.5 and 0.75.

**Empty cases** (following :class:`~pixelwise.metrics.ConfusionMatrix`): an image with no true and no predicted
instances contributes nothing. A ratio whose denominator is 0 over the whole data set is NaN: no predictions at all
gives NaN precision, no true instances NaN recall and NaN COCO AP, no instances at all NaN everywhere. A class with
predictions or true instances but no match has ``pq = rq = 0`` and NaN ``sq``; the class means skip NaN. (pycocotools
reports -1 instead of NaN; the panopticapi and torchmetrics set such a class's ``sq`` to 0 and average it in, so their
overall ``sq`` can be lower than ours, never their ``pq`` or ``rq``.)
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch.distributed as dist
from scipy.optimize import linear_sum_assignment
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

logger = logging.getLogger(__name__)

#: The StarDist paper's IoU thresholds 0.50, 0.55, ..., 0.90 (rounded, so an IoU of exactly 11/20 passes 0.55).
MATCHING_THRESHOLDS: tuple[float, ...] = tuple(round(0.5 + 0.05 * i, 2) for i in range(9))
#: COCO's IoU thresholds, built exactly as pycocotools builds them (``np.linspace``), so equal IoUs compare equally.
COCO_IOU_THRESHOLDS: np.ndarray = np.linspace(0.5, 0.95, int(np.round((0.95 - 0.5) / 0.05)) + 1, endpoint=True)
#: COCO's 101 recall points at which precision is read.
COCO_RECALL_POINTS: np.ndarray = np.linspace(0.0, 1.00, int(np.round((1.00 - 0.0) / 0.01)) + 1, endpoint=True)
#: The class of every instance when no classes are given.
AGNOSTIC_CLASS = 1

# A pair-count table (or id lookup table) up to this many entries is counted densely with np.bincount; larger ones
# (huge ids or thousands of instances) go through np.unique, which sorts but needs no memory per possible pair.
_DENSE_LIMIT = 1 << 22

LabelMap = Any  # a 2-D integer np.ndarray or torch.Tensor
ClassSpec = Any  # a semantic map (a LabelMap-like class map) or a Mapping {instance id: class}


def _threshold_key(tau: float) -> str:
    return f"{tau:.2f}"


def _as_numpy(x: Any, name: str) -> np.ndarray:
    if hasattr(x, "detach"):  # a torch tensor, wherever it lives
        x = x.detach().cpu().numpy()
    a = np.asarray(x)
    if a.dtype.kind not in "iu":
        raise ValueError(f"{name} must hold integers, got dtype {a.dtype}")
    return a


def _ratio(num: float, den: float) -> float:
    return num / den if den > 0 else math.nan


def _nanmean(values: Iterable[float]) -> float:
    kept = [v for v in values if not math.isnan(v)]
    return sum(kept) / len(kept) if kept else math.nan


@dataclass
class _Instances:
    """The instances of one label map: ``ids`` (ascending, background excluded), their pixel counts ``areas``, and
    the raveled map ``flat``. Everything else refers to an instance by its position in ``ids``."""

    flat: np.ndarray
    ids: np.ndarray
    areas: np.ndarray


def _max_id(flat: np.ndarray, name: str) -> int:
    if flat.size == 0:
        return 0
    if flat.dtype.kind == "i" and flat.min() < 0:
        raise ValueError(f"{name} holds negative ids ({int(flat.min())}); 0 is background, instances are > 0")
    return int(flat.max())


def _relabel(flat: np.ndarray, top: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Ids made consecutive: (index map with 0 = background and i = ``ids[i - 1]``, ids, areas)."""
    if top < _DENSE_LIMIT:
        counts = np.bincount(flat.astype(np.intp, copy=False), minlength=1)
        ids = np.flatnonzero(counts[1:]) + 1
        lut = np.zeros(top + 1, np.intp)
        lut[ids] = np.arange(1, ids.size + 1)
        return lut[flat], ids, counts[ids]
    uniq, inverse, counts = np.unique(flat, return_inverse=True, return_counts=True)
    inverse = inverse.reshape(-1)
    if uniq[0] == 0:
        return inverse, uniq[1:], counts[1:]
    return inverse + 1, uniq, counts


def _overlaps(true: np.ndarray, pred: np.ndarray) -> tuple[_Instances, _Instances, np.ndarray, np.ndarray, np.ndarray]:
    """Both maps' instances and the non-zero entries of their pair-count table, background excluded: positions of
    the true and predicted instances and their intersection areas (pixel counts)."""
    ft, fp = true.ravel(), pred.ravel()
    mt, mp = _max_id(ft, "true"), _max_id(fp, "pred")
    size = (mt + 1) * (mp + 1)
    if size <= max(_DENSE_LIMIT, ft.size):
        # the usual case (ids up to some thousands): one bincount over the raw id pairs gives areas and overlaps
        key = ft.astype(np.int64) * (mp + 1) + fp.astype(np.int64, copy=False)
        table = np.bincount(key, minlength=size).reshape(mt + 1, mp + 1)
        t_all, p_all = table.sum(1)[1:], table.sum(0)[1:]
        nz = np.flatnonzero(table)  # on the contiguous table: faster than np.nonzero of the [1:, 1:] view
        rows, cols = np.divmod(nz, mp + 1)
        both = (rows > 0) & (cols > 0)
        rows, cols, inter = rows[both] - 1, cols[both] - 1, table.ravel()[nz[both]]
        t_present, p_present = t_all > 0, p_all > 0
        # raw id i + 1 sits at position (number of present ids up to it) - 1
        ti, pi = (np.cumsum(t_present) - 1)[rows], (np.cumsum(p_present) - 1)[cols]
        t_ids, p_ids = np.flatnonzero(t_present) + 1, np.flatnonzero(p_present) + 1
        return _Instances(ft, t_ids, t_all[t_present]), _Instances(fp, p_ids, p_all[p_present]), ti, pi, inter
    # huge ids or very many instances: make the ids consecutive first, so the table only has rows and columns for
    # instances that exist, and count it sparsely (np.unique) if it is still too large
    t_index, t_ids, t_areas = _relabel(ft, mt)
    p_index, p_ids, p_areas = _relabel(fp, mp)
    tt, pp = _Instances(ft, t_ids, t_areas), _Instances(fp, p_ids, p_areas)
    nt, npr = t_ids.size, p_ids.size
    if nt == 0 or npr == 0:
        empty = np.zeros(0, np.intp)
        return tt, pp, empty, empty, np.zeros(0, np.int64)
    key = t_index.astype(np.int64) * (npr + 1) + p_index
    size = (nt + 1) * (npr + 1)
    if size <= max(_DENSE_LIMIT, key.size):
        table = np.bincount(key, minlength=size).reshape(nt + 1, npr + 1)[1:, 1:]
        ti, pi = np.nonzero(table)
        return tt, pp, ti, pi, table[ti, pi]
    uniq, counts = np.unique(key[(t_index > 0) & (p_index > 0)], return_counts=True)
    return tt, pp, uniq // (npr + 1) - 1, uniq % (npr + 1) - 1, counts


def _is_one_to_one(rows: np.ndarray, cols: np.ndarray) -> bool:
    return np.unique(rows).size == rows.size and np.unique(cols).size == cols.size


def _max_matching(rows: np.ndarray, cols: np.ndarray, iou: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The largest one-to-one subset of the candidate pairs (rows[k], cols[k]), ties between largest subsets broken
    by the higher IoU sum. Returns the rows and columns of the chosen pairs."""
    if _is_one_to_one(rows, cols):
        return rows, cols
    ur, r = np.unique(rows, return_inverse=True)
    uc, c = np.unique(cols, return_inverse=True)
    # The candidates fall apart into connected components of the bipartite graph, each matched on its own: one
    # assignment over every instance of an image that holds a single tie would be a dense table of all of them.
    graph = coo_matrix((np.ones(r.size), (r, c + ur.size)), shape=(ur.size + uc.size,) * 2)
    _, component = connected_components(graph, directed=False)
    component = component[r]
    alone = np.bincount(component)[component] == 1  # a pair with no rival is in every largest matching
    keep_r, keep_c = [r[alone]], [c[alone]]
    order = np.flatnonzero(~alone)
    order = order[np.argsort(component[order], kind="stable")]
    for part in np.split(order, np.flatnonzero(np.diff(component[order])) + 1) if order.size else []:
        pr, sub_r = np.unique(r[part], return_inverse=True)
        pc, sub_c = np.unique(c[part], return_inverse=True)
        # every candidate weighs 1 plus a tie-breaking bonus of at most 1 / (2 n): over any matching (<= n pairs)
        # the bonuses add up to at most 1/2, so no extra pair is ever traded for IoU
        weight = np.zeros((pr.size, pc.size))
        weight[sub_r, sub_c] = 1.0 + iou[part] / (2.0 * min(pr.size, pc.size))
        ri, ci = linear_sum_assignment(weight, maximize=True)
        chosen = weight[ri, ci] > 0
        keep_r.append(pr[ri[chosen]])
        keep_c.append(pc[ci[chosen]])
    return ur[np.concatenate(keep_r)], uc[np.concatenate(keep_c)]


def _instance_classes(
    spec: ClassSpec | None, inst: _Instances, shape: tuple[int, ...], name: str, ignore_index: int | None
) -> np.ndarray:
    """The class of each instance (in ``inst.ids`` order)."""
    n = inst.ids.size
    if spec is None:
        return np.full(n, AGNOSTIC_CLASS, np.int64)
    if isinstance(spec, Mapping):
        missing = [int(i) for i in inst.ids if int(i) not in spec]
        if missing:
            raise ValueError(f"{name} gives no class for instance id {missing[0]} ({len(missing)} missing)")
        return np.array([int(spec[int(i)]) for i in inst.ids], np.int64)
    semantic = _as_numpy(spec, name)
    if semantic.shape != shape:
        raise ValueError(f"{name} has shape {semantic.shape}, the label map {shape}")
    if n == 0:
        return np.zeros(0, np.int64)
    sem = semantic.ravel()
    keep = inst.flat > 0
    if ignore_index is not None:
        keep &= sem != ignore_index
    ids, cls = inst.flat[keep].astype(np.int64), sem[keep].astype(np.int64)
    if cls.size and cls.min() < 0:
        raise ValueError(f"{name} holds negative classes ({int(cls.min())})")
    # majority vote from the (instance, class) pixel counts
    stride = int(cls.max(initial=0)) + 1
    key = ids * stride + cls
    if (int(inst.ids[-1]) + 1) * stride <= max(_DENSE_LIMIT, key.size):
        counts = np.bincount(key)
        pairs = np.flatnonzero(counts)
        counts = counts[pairs]
    else:
        pairs, counts = np.unique(key, return_counts=True)
    p_pos, p_cls = np.searchsorted(inst.ids, pairs // stride), pairs % stride
    # lexsort puts each instance's most frequent class (the smallest such class on ties) first
    order = np.lexsort((p_cls, -counts, p_pos))
    p_pos, p_cls = p_pos[order], p_cls[order]
    first = np.ones(p_pos.size, bool)
    first[1:] = p_pos[1:] != p_pos[:-1]
    classes = np.full(n, -1, np.int64)
    classes[p_pos[first]] = p_cls[first]
    if (classes < 0).any():
        bad = int(inst.ids[np.flatnonzero(classes < 0)[0]])
        raise ValueError(f"instance {bad} lies only on ignore pixels (ignore_index={ignore_index}) of {name}")
    return classes


@dataclass
class _PQCounts:
    tp: int = 0
    fp: int = 0
    fn: int = 0
    iou_sum: float = 0.0


class InstanceMetrics:
    """Instance-segmentation metrics accumulated over a data set: :meth:`update` once per image, :meth:`compute` at
    the end (see the module docstring for the definitions and the empty-case conventions).

    Args:
        thresholds: IoU thresholds of the StarDist matching, each in (0, 1]; default 0.50, 0.55, ..., 0.90 as in
            Schmidt et al. 2018. Below 0.5 an instance can have several candidates and the exact assignment decides.
        max_detections: COCO AP keeps at most this many predictions (the highest-scored) per image and class. The
            default, 100, is COCO's (``maxDets=100`` of pycocotools' AP) and makes results comparable with published
            COCO-style numbers, but images with several hundred nuclei then lose their lowest-scored predictions
            (a warning is logged); raise it to score them all. The matching and PQ never drop predictions.
        ignore_index: pixels of this class in semantic maps do not vote for an instance's class; in a semantic map
            of true classes, those outside every true instance are void for PQ.
    """

    def __init__(
        self,
        thresholds: Sequence[float] = MATCHING_THRESHOLDS,
        max_detections: int = 100,
        ignore_index: int | None = 255,
    ):
        taus = [float(t) for t in thresholds]
        if not taus or any(not 0.0 < t <= 1.0 for t in taus):
            raise ValueError(f"thresholds must be a non-empty list of IoUs in (0, 1], got {list(thresholds)}")
        if len({_threshold_key(t) for t in taus}) != len(taus):
            raise ValueError(f"thresholds must differ in their first two decimals, got {taus}")
        if max_detections < 1:
            raise ValueError(f"max_detections must be >= 1, got {max_detections}")
        self.thresholds = tuple(taus)
        self.max_detections = int(max_detections)
        self.ignore_index = ignore_index
        self.reset()

    def reset(self) -> None:
        self.tp = np.zeros(len(self.thresholds), np.int64)
        self.num_true = 0
        self.num_pred = 0
        self.num_images = 0
        self._pq: dict[int, _PQCounts] = {}
        # whether images come with scores (decided by the first image with predictions) and with classes (the first
        # image); mixing would silently change what is measured
        self._scored: bool | None = None
        self._classed: bool | None = None
        # COCO: per class, per image, the kept predictions' scores (in rank order) and whether each matched at each
        # COCO threshold; and the number of true instances per class
        self._coco_scores: dict[int, list[np.ndarray]] = {}
        self._coco_images: dict[int, list[np.ndarray]] = {}  # each kept prediction's image_id
        self._coco_matched: dict[int, list[np.ndarray]] = {}
        self._coco_num_true: dict[int, int] = {}
        self._coco_truncated = 0

    def update(
        self,
        true: LabelMap,
        pred: LabelMap,
        *,
        true_classes: ClassSpec | None = None,
        pred_classes: ClassSpec | None = None,
        scores: Mapping[int, float] | None = None,
        image_id: int | None = None,
    ) -> None:
        """Add one image.

        Args:
            true, pred: 2-D integer label maps of the same shape (0 = background, ids arbitrary).
            true_classes, pred_classes: the instances' classes for PQ and COCO AP, each either a semantic map of the
                label map's shape (an instance takes the majority class under it) or a mapping from instance id to
                class. Give both or neither (neither: one class for all).
            scores: a confidence per predicted instance id (higher = more confident), for COCO AP. Give them for all
                images or none; ids absent from ``pred`` are ignored.
            image_id: the image's place in the data set (default: the order of the updates), which orders equal
                scores of different images for COCO AP as pycocotools' image ids do; give it where images arrive in
                another order (shards of processes joined by :meth:`all_reduce`).
        """
        t = _as_numpy(true, "true")
        p = _as_numpy(pred, "pred")
        if t.ndim != 2 or t.shape != p.shape:
            raise ValueError(f"true and pred must be 2-D label maps of one shape, got {t.shape} and {p.shape}")
        if (true_classes is None) != (pred_classes is None):
            raise ValueError("give classes for both true and pred instances, or for neither")
        classed = true_classes is not None
        if self._classed is not None and self._classed != classed:
            raise ValueError("classes were given for some images and not for others; give them for all or none")
        tl, pl, ti, pi, inter = _overlaps(t, p)
        t_cls = _instance_classes(true_classes, tl, t.shape, "true_classes", self.ignore_index)
        p_cls = _instance_classes(pred_classes, pl, p.shape, "pred_classes", self.ignore_index)
        # an image without predictions fits either way (and still brings its missed true instances to COCO AP)
        scored = scores is not None if pl.ids.size else self._scored is not False
        if pl.ids.size and self._scored is not None and self._scored != scored:
            raise ValueError("scores were given for some images and not for others; give them for all or none")
        if scored:
            missing = [int(i) for i in pl.ids if int(i) not in scores]
            if missing:
                raise ValueError(f"scores has no entry for predicted instance {missing[0]} ({len(missing)} missing)")
            s = np.array([float(scores[int(i)]) for i in pl.ids], np.float64)
        # everything checked: from here on the state changes
        self._classed = classed
        if pl.ids.size or scores is not None:
            self._scored = scored if self._scored is None else self._scored
        # one division, so an IoU that equals a threshold exactly (e.g. 11/20) compares equal to it
        iou = inter / (tl.areas[ti] + pl.areas[pi] - inter)
        self.num_images += 1
        self.num_true += tl.ids.size
        self.num_pred += pl.ids.size
        for k, tau in enumerate(self.thresholds):
            cand = iou >= tau
            rows, _ = _max_matching(ti[cand], pi[cand], iou[cand])
            self.tp[k] += rows.size
        self._update_pq(ti, pi, inter, tl.areas, pl.areas, t_cls, p_cls, self._void_counts(true_classes, tl, pl))
        if scored:
            self._update_coco(ti, pi, iou, t_cls, p_cls, s, self.num_images - 1 if image_id is None else image_id)

    def _void_counts(self, true_classes: ClassSpec | None, true: _Instances, pred: _Instances) -> np.ndarray:
        """Per predicted instance (``pred.ids`` order), its pixels that are void: ``ignore_index`` in a semantic map
        of true classes and in no true instance (none for mappings or without classes)."""
        if self.ignore_index is None or true_classes is None or isinstance(true_classes, Mapping) or not pred.ids.size:
            return np.zeros(pred.ids.size, np.int64)
        void = (_as_numpy(true_classes, "true_classes").ravel() == self.ignore_index) & (true.flat == 0)
        ids = pred.flat[void]
        ids = ids[ids > 0]
        return np.bincount(np.searchsorted(pred.ids, ids), minlength=pred.ids.size)

    def _update_pq(
        self,
        ti: np.ndarray,
        pi: np.ndarray,
        inter: np.ndarray,
        t_areas: np.ndarray,
        p_areas: np.ndarray,
        t_cls: np.ndarray,
        p_cls: np.ndarray,
        p_void: np.ndarray,
    ) -> None:
        # the panopticapi's IoU: the prediction's void pixels are not part of the union; IoU > 0.5 makes the
        # matching unique, no assignment needed
        iou = inter / (t_areas[ti] + p_areas[pi] - inter - p_void[pi])
        hit = (iou > 0.5) & (t_cls[ti] == p_cls[pi])
        hit_cls, hit_iou = t_cls[ti[hit]], iou[hit]
        matched = np.zeros(p_cls.size, bool)
        matched[pi[hit]] = True
        # an unmatched prediction mostly on void is not counted against the model
        counted = matched | (p_void <= 0.5 * p_areas)
        for c in np.union1d(t_cls, p_cls).tolist():
            acc = self._pq.setdefault(c, _PQCounts())
            in_c = hit_cls == c
            tp = int(in_c.sum())
            acc.tp += tp
            acc.fp += int(((p_cls == c) & counted).sum()) - tp
            acc.fn += int((t_cls == c).sum()) - tp
            acc.iou_sum += float(hit_iou[in_c].sum())

    def _update_coco(
        self,
        ti: np.ndarray,
        pi: np.ndarray,
        iou: np.ndarray,
        t_cls: np.ndarray,
        p_cls: np.ndarray,
        s: np.ndarray,
        image_id: int,
    ) -> None:
        same = t_cls[ti] == p_cls[pi]
        thresholds = np.minimum(COCO_IOU_THRESHOLDS, 1 - 1e-10)  # pycocotools caps t below 1 the same way
        for c in np.union1d(t_cls, p_cls).tolist():
            gt = np.flatnonzero(t_cls == c)  # ascending id: pycocotools' order of the true annotations
            dt = np.flatnonzero(p_cls == c)
            dt = dt[np.argsort(-s[dt], kind="mergesort")]  # stable, as pycocotools sorts
            if dt.size > self.max_detections:
                self._coco_truncated += 1
                dt = dt[: self.max_detections]
            gt_pos = np.full(t_cls.size, -1)
            gt_pos[gt] = np.arange(gt.size)
            dt_rank = np.full(p_cls.size, -1)
            dt_rank[dt] = np.arange(dt.size)
            sel = same & (t_cls[ti] == c) & (dt_rank[pi] >= 0)
            rows, cols, vals = dt_rank[pi[sel]], gt_pos[ti[sel]], iou[sel]
            matched = np.zeros((thresholds.size, dt.size), bool)
            for k, thr in enumerate(thresholds):
                cand = vals >= thr
                r, g = rows[cand], cols[cand]
                if _is_one_to_one(r, g):
                    matched[k, r] = True
                else:
                    matched[k] = _coco_greedy(r, g, vals[cand], dt.size, gt.size)
            self._coco_scores.setdefault(c, []).append(s[dt])
            self._coco_matched.setdefault(c, []).append(matched)
            self._coco_images.setdefault(c, []).append(np.full(dt.size, image_id, np.int64))
            self._coco_num_true[c] = self._coco_num_true.get(c, 0) + gt.size

    def merge(self, other: InstanceMetrics) -> None:
        """Add the images ``other`` has counted (same thresholds and detection cap), as if they had been added here
        after this one's own: how data-parallel evaluation joins its processes' shares."""
        if (other.thresholds, other.max_detections, other.ignore_index) != (
            self.thresholds,
            self.max_detections,
            self.ignore_index,
        ):
            raise ValueError("merge needs the same thresholds, max_detections and ignore_index")
        for mine, theirs, what in ((self._scored, other._scored, "scores"), (self._classed, other._classed, "classes")):
            if mine is not None and theirs is not None and mine != theirs:
                raise ValueError(f"{what} were given for some images and not for others; give them for all or none")
        self._scored = other._scored if self._scored is None else self._scored
        self._classed = other._classed if self._classed is None else self._classed
        self.tp += other.tp
        self.num_true += other.num_true
        self.num_pred += other.num_pred
        self.num_images += other.num_images
        for c, acc in other._pq.items():
            mine = self._pq.setdefault(c, _PQCounts())
            mine.tp, mine.fp, mine.fn = mine.tp + acc.tp, mine.fp + acc.fp, mine.fn + acc.fn
            mine.iou_sum += acc.iou_sum
        for c in other._coco_num_true:
            self._coco_scores.setdefault(c, []).extend(other._coco_scores.get(c, []))
            self._coco_matched.setdefault(c, []).extend(other._coco_matched.get(c, []))
            self._coco_images.setdefault(c, []).extend(other._coco_images.get(c, []))
            self._coco_num_true[c] = self._coco_num_true.get(c, 0) + other._coco_num_true[c]
        self._coco_truncated += other._coco_truncated

    def all_reduce(self) -> None:
        """Join the counts of all processes of the default group, in rank order, on every process (no-op when not
        distributed)."""
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            shares: list[InstanceMetrics | None] = [None] * dist.get_world_size()
            dist.all_gather_object(shares, self)
            joined = InstanceMetrics(
                self.thresholds, max_detections=self.max_detections, ignore_index=self.ignore_index
            )
            for share in shares:
                joined.merge(share)
            self.__dict__.update(joined.__dict__)

    def per_class(self) -> dict[int, dict[str, float]]:
        """Panoptic quality per class, for every class that a true or predicted instance had:
        ``{class: {"pq", "sq", "rq", "tp", "fp", "fn"}}`` (NaN where undefined). Class-agnostic: the one class is
        :data:`AGNOSTIC_CLASS`."""
        out = {}
        for c in sorted(self._pq):
            a = self._pq[c]
            den = a.tp + 0.5 * a.fp + 0.5 * a.fn
            out[c] = {
                "pq": _ratio(a.iou_sum, den),
                "sq": _ratio(a.iou_sum, a.tp),
                "rq": _ratio(a.tp, den),
                "tp": a.tp,
                "fp": a.fp,
                "fn": a.fn,
            }
        return out

    def compute(self) -> dict[str, Any]:
        """All metrics as plain Python numbers: ``ap``, ``precision``, ``recall``, ``f1``, ``tp``, ``fp``, ``fn`` (each
        a dict from the threshold written with two decimals, ``"0.50"``, to its value), ``mean_ap``, ``pq``, ``sq``,
        ``rq``, ``num_true``, ``num_pred``; and ``coco_ap``, ``coco_ap50``, ``coco_ap75`` when scores were given.
        PQ per class: :meth:`per_class`."""
        keys = [_threshold_key(t) for t in self.thresholds]
        tp = dict(zip(keys, self.tp.tolist(), strict=True))
        fp = {k: self.num_pred - tp[k] for k in keys}
        fn = {k: self.num_true - tp[k] for k in keys}
        ap = {k: _ratio(tp[k], tp[k] + fp[k] + fn[k]) for k in keys}
        per_class = self.per_class().values()
        out: dict[str, Any] = {
            "ap": ap,
            "precision": {k: _ratio(tp[k], tp[k] + fp[k]) for k in keys},
            "recall": {k: _ratio(tp[k], tp[k] + fn[k]) for k in keys},
            "f1": {k: _ratio(2 * tp[k], 2 * tp[k] + fp[k] + fn[k]) for k in keys},
            # all NaN or none: TP + FP + FN = num_pred + FN is 0 only when there are no instances at all
            "mean_ap": sum(ap.values()) / len(ap),
            **{m: _nanmean(v[m] for v in per_class) for m in ("pq", "sq", "rq")},
            "tp": tp,
            "fp": fp,
            "fn": fn,
            "num_true": self.num_true,
            "num_pred": self.num_pred,
        }
        if self._scored:
            out.update(self._coco_compute())
        return out

    def _coco_compute(self) -> dict[str, float]:
        if self._coco_truncated:
            logger.warning(
                "COCO AP: %d (image, class) pairs had more than max_detections=%d predictions; the lowest-scored "
                "were left out, as pycocotools does (raise max_detections to score them all)",
                self._coco_truncated,
                self.max_detections,
            )
        precision = []  # one (thresholds x recall points) table per class with true instances
        for c in sorted(self._coco_num_true):
            num_true = self._coco_num_true[c]
            if num_true == 0:
                continue  # pycocotools leaves such a class out (-1)
            scores = np.concatenate(self._coco_scores[c])
            matched = np.concatenate(self._coco_matched[c], axis=1)
            images = np.concatenate(self._coco_images[c])
            in_image = np.concatenate([np.arange(a.size) for a in self._coco_images[c]])
            # equal scores in image order, then in the image's own rank order, as pycocotools (sorted image ids)
            order = np.lexsort((in_image, images, -scores))
            tps = matched[:, order]
            tp_sum = np.cumsum(tps, axis=1).astype(np.float64)
            fp_sum = np.cumsum(~tps, axis=1).astype(np.float64)
            table = np.zeros((COCO_IOU_THRESHOLDS.size, COCO_RECALL_POINTS.size))
            for k in range(COCO_IOU_THRESHOLDS.size):
                tp, fp = tp_sum[k], fp_sum[k]
                if tp.size == 0:
                    continue
                rc = tp / num_true
                pr = tp / (fp + tp + np.spacing(1))
                pr = np.maximum.accumulate(pr[::-1])[::-1]  # the precision envelope (best precision at >= recall)
                idx = np.searchsorted(rc, COCO_RECALL_POINTS, side="left")
                ok = idx < pr.size  # recall points beyond the reached recall keep precision 0
                table[k, ok] = pr[idx[ok]]
            precision.append(table)
        if not precision:
            return {"coco_ap": math.nan, "coco_ap50": math.nan, "coco_ap75": math.nan}
        p = np.stack(precision)  # classes x thresholds x recall points
        i50 = int(np.flatnonzero(np.isclose(COCO_IOU_THRESHOLDS, 0.5))[0])
        i75 = int(np.flatnonzero(np.isclose(COCO_IOU_THRESHOLDS, 0.75))[0])
        return {"coco_ap": float(p.mean()), "coco_ap50": float(p[:, i50].mean()), "coco_ap75": float(p[:, i75].mean())}


def _coco_greedy(rows: np.ndarray, cols: np.ndarray, iou: np.ndarray, num_dt: int, num_gt: int) -> np.ndarray:
    """pycocotools' greedy matching of one image and class at one threshold, for candidate pairs (detection rank,
    true position, IoU >= t): each detection, best score first, takes the still unmatched true instance of highest
    IoU (the last one in true order on equal IoU, as pycocotools' loop does). Returns which detections matched."""
    dense = np.full((num_dt, num_gt), -1.0)
    dense[rows, cols] = iou
    taken = np.zeros(num_gt, bool)
    matched = np.zeros(num_dt, bool)
    for d in np.unique(rows):
        row = np.where(taken, -1.0, dense[d])
        best = row.max()
        if best < 0:
            continue
        g = num_gt - 1 - int(np.argmax(row[::-1] == best))
        taken[g] = matched[d] = True
    return matched


def instance_metrics(
    true: LabelMap,
    pred: LabelMap,
    *,
    true_classes: ClassSpec | None = None,
    pred_classes: ClassSpec | None = None,
    scores: Mapping[int, float] | None = None,
    thresholds: Sequence[float] = MATCHING_THRESHOLDS,
    max_detections: int = 100,
    ignore_index: int | None = 255,
) -> dict[str, Any]:
    """:class:`InstanceMetrics` of a single pair of label maps (same arguments, same result dict)."""
    metrics = InstanceMetrics(thresholds, max_detections=max_detections, ignore_index=ignore_index)
    metrics.update(true, pred, true_classes=true_classes, pred_classes=pred_classes, scores=scores)
    return metrics.compute()
