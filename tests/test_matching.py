"""Instance metrics (pixelwise.metrics.matching): hand-computed cases, invariances, empty cases, the exact
assignment, data-set pooling, and agreement with pycocotools (COCO mask AP) and torchmetrics (panoptic quality)."""

from __future__ import annotations

import contextlib
import io
import logging
import math

import numpy as np
import pytest
import torch
from scipy import ndimage
from scipy.optimize import linear_sum_assignment

from pixelwise.metrics import MATCHING_THRESHOLDS, InstanceMetrics, instance_metrics
from pixelwise.metrics import matching as matching_module

from .conftest import run_in_processes

KEYS = ["0.50", "0.55", "0.60", "0.65", "0.70", "0.75", "0.80", "0.85", "0.90"]


def six_by_six() -> tuple[np.ndarray, np.ndarray]:
    """Three true and three predicted instances on a 6x6 grid (ids arbitrary on purpose)."""
    true = np.zeros((6, 6), np.uint16)
    true[0:3, 0:3] = 1  # area 9
    true[0:3, 4:6] = 2  # area 6
    true[4:6, 0:2] = 3  # area 4
    pred = np.zeros((6, 6), np.int32)
    pred[0:3, 0:3] = 5  # = true 1: IoU 1
    pred[0:3, 3:6] = 7  # area 9 covering true 2 (6 px): IoU 6/9 = 0.667
    pred[4:6, 3:6] = 9  # overlaps nothing: a false positive; true 3 is missed
    return true, pred


def same_results(a: dict, b: dict) -> bool:
    """Equal result dicts, NaN equal to NaN, floats to 1e-12."""
    if a.keys() != b.keys():
        return False
    for k in a:
        x, y = a[k], b[k]
        if isinstance(x, dict):
            if not same_results(x, y):
                return False
        elif isinstance(x, float) and math.isnan(x):
            if not (isinstance(y, float) and math.isnan(y)):
                return False
        elif x != pytest.approx(y, abs=1e-12):
            return False
    return True


# ----------------------------------------------------------------------------------------------- hand-computed


def test_hand_computed_six_by_six():
    true, pred = six_by_six()
    m = instance_metrics(true, pred)
    assert list(m) == ["ap", "precision", "recall", "f1", "mean_ap", "pq", "sq", "rq", "tp", "fp", "fn"] + [
        "num_true",
        "num_pred",
    ]
    assert list(m["ap"]) == KEYS
    assert m["num_true"] == 3 and m["num_pred"] == 3
    # tau <= 0.65: matches (1, 5) IoU 1 and (2, 7) IoU 2/3 -> TP 2, FP 1 (pred 9), FN 1 (true 3)
    # AP = 2 / (2 + 1 + 1) = 0.5, precision = recall = F1 = 2/3
    for k in ["0.50", "0.55", "0.60", "0.65"]:
        assert (m["tp"][k], m["fp"][k], m["fn"][k]) == (2, 1, 1)
        assert m["ap"][k] == pytest.approx(0.5)
        assert m["precision"][k] == m["recall"][k] == m["f1"][k] == pytest.approx(2 / 3)
    # tau >= 0.70: only (1, 5) -> TP 1, FP 2, FN 2; AP = 1/5, precision = recall = F1 = 1/3
    for k in ["0.70", "0.75", "0.80", "0.85", "0.90"]:
        assert (m["tp"][k], m["fp"][k], m["fn"][k]) == (1, 2, 2)
        assert m["ap"][k] == pytest.approx(0.2)
        assert m["precision"][k] == m["recall"][k] == m["f1"][k] == pytest.approx(1 / 3)
    assert m["mean_ap"] == pytest.approx((4 * 0.5 + 5 * 0.2) / 9)
    # PQ (IoU > 0.5): TP 2 with IoUs 1 and 2/3, FP 1, FN 1 -> SQ = 5/6, RQ = 2 / (2 + 1/2 + 1/2) = 2/3, PQ = 5/9
    assert m["sq"] == pytest.approx(5 / 6)
    assert m["rq"] == pytest.approx(2 / 3)
    assert m["pq"] == pytest.approx(5 / 9)


def test_hand_computed_coco_ap():
    true, pred = six_by_six()
    m = instance_metrics(true, pred, scores={5: 0.9, 7: 0.8, 9: 0.7})
    # ranked 5 (TP at every t), 7 (TP for t <= 0.65: IoU 2/3), 9 (FP); 3 true instances.
    # t <= 0.65: recall 1/3, 2/3, 2/3 at precision 1, 1, 2/3 -> the recall points 0.00..0.66 (67 of 101) read 1.
    # t >= 0.70: recall 1/3 at precision 1 -> points 0.00..0.33 (34 of 101) read 1.
    assert m["coco_ap50"] == pytest.approx(67 / 101)
    assert m["coco_ap75"] == pytest.approx(34 / 101)
    assert m["coco_ap"] == pytest.approx((4 * 67 + 6 * 34) / 1010)
    # the false positive ranked first: (recall, precision) = (0, 0), (1/3, 1/2), (2/3, 2/3); the envelope (best
    # precision at this or a higher recall) is 2/3 at all 67 recall points up to 0.66
    m = instance_metrics(true, pred, scores={5: 0.9, 7: 0.8, 9: 0.95})
    assert m["coco_ap50"] == pytest.approx(67 * (2 / 3) / 101)


def test_no_coco_keys_without_scores():
    true, pred = six_by_six()
    assert not any(k.startswith("coco") for k in instance_metrics(true, pred))


def test_relabelling_ids_changes_nothing():
    true, pred = six_by_six()
    scores = {5: 0.9, 7: 0.8, 9: 0.7}
    ref = instance_metrics(true, pred, scores=scores)
    # arbitrary, non-consecutive ids, other dtypes, ids beyond the dense lookup-table range
    t2 = np.select([true == 1, true == 2, true == 3], [70000, 3, 2**40], 0).astype(np.int64)
    newp = {5: 2**33, 7: 1, 9: 12}
    p2 = np.zeros_like(pred, dtype=np.uint64)
    for old, new in newp.items():
        p2[pred == old] = new
    got = instance_metrics(t2, p2, scores={newp[k]: v for k, v in scores.items()})
    assert same_results(got, ref)
    # torch tensors are accepted too
    without_coco = {k: v for k, v in ref.items() if not k.startswith("coco")}
    assert same_results(instance_metrics(torch.from_numpy(true.astype(np.int32)), torch.from_numpy(pred)), without_coco)


def test_random_relabelling_on_random_blobs():
    rng = np.random.default_rng(3)
    true, pred, _, _, scores = random_case(rng, (96, 120), 40)
    # distinct scores: among equal scores the ranking follows the ids (as pycocotools follows its input order)
    scores = {k: v + 1e-4 * i for i, (k, v) in enumerate(scores.items())}
    ref = instance_metrics(true, pred, scores=scores)
    perm_t = rng.permutation(5000)[: true.max() + 1] + 1
    perm_t[0] = 0
    perm_p = rng.permutation(10**6)[: pred.max() + 1] + 7
    perm_p[0] = 0
    got = instance_metrics(perm_t[true], perm_p[pred], scores={int(perm_p[k]): v for k, v in scores.items()})
    assert same_results(got, ref)


def test_swapping_true_and_pred_swaps_precision_and_recall():
    rng = np.random.default_rng(4)
    true, pred, _, _, _ = random_case(rng, (80, 80), 25)
    a, b = instance_metrics(true, pred), instance_metrics(pred, true)
    assert a["precision"] == b["recall"] and a["recall"] == b["precision"]
    assert a["tp"] == b["tp"] and a["fp"] == b["fn"] and a["fn"] == b["fp"]
    assert a["ap"] == b["ap"] and a["f1"] == b["f1"] and a["mean_ap"] == b["mean_ap"]
    assert a["pq"] == pytest.approx(b["pq"]) and a["sq"] == pytest.approx(b["sq"])
    assert a["precision"]["0.50"] != a["recall"]["0.50"]  # the case is not symmetric by accident


# ----------------------------------------------------------------------------------------------- empty cases


def test_empty_prediction():
    true, _ = six_by_six()
    m = instance_metrics(true, np.zeros_like(true), scores={})
    assert m["num_pred"] == 0 and m["num_true"] == 3
    for k in KEYS:
        assert (m["tp"][k], m["fp"][k], m["fn"][k]) == (0, 0, 3)
        assert m["ap"][k] == 0 and m["recall"][k] == 0 and m["f1"][k] == 0
        assert math.isnan(m["precision"][k])  # TP + FP = 0
    assert m["mean_ap"] == 0 and m["pq"] == 0 and m["rq"] == 0
    assert math.isnan(m["sq"])  # no match, no mean IoU
    assert m["coco_ap"] == 0


def test_empty_truth():
    _, pred = six_by_six()
    m = instance_metrics(np.zeros_like(pred), pred, scores={5: 0.5, 7: 0.5, 9: 0.5})
    for k in KEYS:
        assert (m["tp"][k], m["fp"][k], m["fn"][k]) == (0, 3, 0)
        assert m["ap"][k] == 0 and m["precision"][k] == 0 and m["f1"][k] == 0
        assert math.isnan(m["recall"][k])
    assert m["pq"] == 0 and math.isnan(m["sq"])
    assert math.isnan(m["coco_ap"])  # no true instance in any class: pycocotools' -1


def test_empty_both_is_nan_and_contributes_nothing():
    empty = np.zeros((5, 5), np.uint8)
    m = instance_metrics(empty, empty)
    assert m["num_true"] == m["num_pred"] == 0
    assert all(math.isnan(m[k]) for k in ("mean_ap", "pq", "sq", "rq"))
    assert all(math.isnan(v) for key in ("ap", "precision", "recall", "f1") for v in m[key].values())
    true, pred = six_by_six()
    acc = InstanceMetrics()
    acc.update(true, pred, scores={5: 0.9, 7: 0.8, 9: 0.7})
    acc.update(empty, empty)  # no scores needed for an image without predictions
    assert same_results(acc.compute(), instance_metrics(true, pred, scores={5: 0.9, 7: 0.8, 9: 0.7}))


def test_image_without_predictions_counts_for_coco_ap_without_scores():
    true, pred = six_by_six()
    scores = {5: 0.9, 7: 0.8, 9: 0.7}
    results = []
    for first_scores in (None, {}):
        acc = InstanceMetrics()
        acc.update(true, np.zeros_like(pred), scores=first_scores)  # nothing predicted: scores are optional
        acc.update(true, pred, scores=scores)
        results.append(acc.compute())
    assert same_results(results[0], results[1])
    # its 3 missed nuclei halve the recall reached: the 67 recall points up to 0.66 become the 34 up to 0.33
    assert results[0]["coco_ap50"] == pytest.approx(34 / 101)
    assert results[0]["fn"]["0.50"] == 4


# ----------------------------------------------------------------------------------------------- the assignment


def test_one_prediction_over_two_truths_matches_one():
    # pred 1 covers true 1 and true 2, each exactly half of it: IoU 16/32 = 0.5 with both
    true = np.zeros((4, 8), np.uint8)
    true[:, :4], true[:, 4:] = 1, 2
    pred = np.zeros_like(true)
    pred[:, :] = 1
    m = instance_metrics(true, pred, thresholds=[0.5])
    assert (m["tp"]["0.50"], m["fp"]["0.50"], m["fn"]["0.50"]) == (1, 0, 1)
    assert m["ap"]["0.50"] == pytest.approx(1 / 2)
    # and the mirror case: two predictions over one truth
    m = instance_metrics(pred, true, thresholds=[0.5])
    assert (m["tp"]["0.50"], m["fp"]["0.50"], m["fn"]["0.50"]) == (1, 1, 0)
    # PQ needs IoU > 0.5: no match
    assert m["pq"] == 0
    # maps without background pixels, with huge ids, give the same
    big_true, big_pred = pred.astype(np.int64) * 2**35, true.astype(np.int64) * 2**36 + 3
    assert same_results(instance_metrics(big_true, big_pred, thresholds=[0.5]), m)


def test_assignment_maximises_matches_where_greedy_would_not():
    # a 1 x 14 strip: true 1 = [0, 10), true 2 = [10, 14); pred 1 = [2, 14), pred 2 = [0, 2)
    # IoU(t1, p1) = 8/14 = 0.571, IoU(t2, p1) = 4/12 = 0.333, IoU(t1, p2) = 2/10 = 0.2
    # at tau 0.2 greedy-by-IoU takes (t1, p1) and stops at 1 match; the optimum is (t1, p2) + (t2, p1) = 2
    true = np.array([[1] * 10 + [2] * 4])
    pred = np.array([[2] * 2 + [1] * 12])
    m = instance_metrics(true, pred, thresholds=[0.2, 0.5])
    assert m["tp"] == {"0.20": 2, "0.50": 1}
    assert m["ap"] == {"0.20": pytest.approx(1.0), "0.50": pytest.approx(1 / 3)}


def test_one_tie_does_not_make_one_assignment_over_every_instance(monkeypatch):
    """A grid of 400 instances predicted exactly, and one 2-pixel instance split into two halves (IoU exactly 0.5
    with each): the assignment sees only the tied pair's own component, not a 401 x 402 table of every instance
    (which for the 65 536 nuclei of a 2048 x 2048 image would be 32 GiB)."""
    side = 160
    true = (np.arange(side)[:, None] // 8) * (side // 8) + (np.arange(side)[None, :] // 8) + 1
    pred, k = true.copy(), int(true.max())
    true[0, 0:2], pred[0, 0], pred[0, 1] = k + 1, k + 1, k + 2
    shapes = []
    real = matching_module.linear_sum_assignment
    monkeypatch.setattr(
        matching_module, "linear_sum_assignment", lambda w, **kw: shapes.append(w.shape) or real(w, **kw)
    )
    m = instance_metrics(true, pred, thresholds=[0.5, 0.55])
    assert m["tp"] == {"0.50": k + 1, "0.55": k}
    assert shapes == [(1, 2)]


def stardist_reference_tp(true: np.ndarray, pred: np.ndarray, tau: float) -> int:
    """TP as stardist.matching computes it: the dense overlap table and the same assignment costs."""
    _, t = np.unique(true, return_inverse=True)
    _, p = np.unique(pred, return_inverse=True)
    t, p = t.reshape(-1), p.reshape(-1)
    if not (true == 0).any():
        t = t + 1
    if not (pred == 0).any():
        p = p + 1
    overlap = np.zeros((t.max() + 1, p.max() + 1))
    np.add.at(overlap, (t, p), 1)
    iou = overlap / (overlap.sum(0, keepdims=True) + overlap.sum(1, keepdims=True) - overlap)
    iou = iou[1:, 1:]
    n = min(iou.shape)
    if n == 0 or not (iou >= tau).any():
        return 0
    r, c = linear_sum_assignment(-(iou >= tau).astype(float) - iou / (2 * n))
    return int((iou[r, c] >= tau).sum())


def voronoi(seeds: np.ndarray, size: int, radius: float) -> np.ndarray:
    """Label map of the nearest seed (ids 1..n in seed order), background beyond ``radius`` from every seed."""
    yy, xx = np.mgrid[:size, :size]
    dist = np.hypot(yy[..., None] - seeds[:, 0], xx[..., None] - seeds[:, 1])
    return np.where(dist.min(-1) <= radius, dist.argmin(-1) + 1, 0)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("dense_limit", [None, 0])
def test_matching_agrees_with_the_stardist_algorithm(seed, dense_limit, monkeypatch):
    if dense_limit is not None:  # force the sparse paths (np.unique instead of np.bincount tables)
        monkeypatch.setattr(matching_module, "_DENSE_LIMIT", dense_limit)
    rng = np.random.default_rng(seed)
    # packed Voronoi cells, and a prediction from jittered, dropped and added seeds: many instances (more than a
    # 40 x 40 pair table has room for at the forced limit) and many overlapping pairs, so that low thresholds
    # exercise the assignment heavily
    seeds = rng.uniform(0, 40, (70, 2))
    pred_seeds = np.concatenate([(seeds + rng.normal(0, 1.5, seeds.shape))[10:], rng.uniform(0, 40, (10, 2))])
    true, pred = voronoi(seeds, 40, 3.5), voronoi(pred_seeds, 40, 3.0 + seed % 2)
    taus = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.75, 0.9]
    m = instance_metrics(true, pred, thresholds=taus)
    for tau in taus:
        assert m["tp"][f"{tau:.2f}"] == stardist_reference_tp(true, pred, tau)
    assert m["tp"]["0.10"] > m["tp"]["0.50"] > m["tp"]["0.90"]
    # huge ids (a table over raw ids would not fit) give the same, classes from semantic maps included
    big_true, big_pred = true * 1_000_003, pred * 7_919 + (pred > 0) * 2**40
    # noisy semantic maps, so that the majority under an instance is not unanimous
    sem_true = np.where(rng.random(true.shape) < 0.3, rng.integers(0, 3, true.shape), true % 3)
    sem_pred = np.where(rng.random(pred.shape) < 0.3, rng.integers(0, 4, pred.shape), pred % 4)
    assert same_results(instance_metrics(big_true, big_pred, thresholds=taus), m)
    assert same_results(
        instance_metrics(big_true, big_pred, true_classes=sem_true, pred_classes=sem_pred),
        instance_metrics(true, pred, true_classes=sem_true, pred_classes=sem_pred),
    )


# ----------------------------------------------------------------------------------------------- data sets


def test_accumulation_sums_counts_instead_of_averaging_images():
    # image A: one nucleus, found exactly (AP 1); image B: nine nuclei, none found (AP 0)
    a = np.zeros((8, 8), np.uint8)
    a[2:5, 2:5] = 1
    b = np.zeros((12, 12), np.uint8)
    for i in range(9):
        b[(i // 3) * 4 : (i // 3) * 4 + 3, (i % 3) * 4 : (i % 3) * 4 + 3] = i + 1
    acc = InstanceMetrics()
    acc.update(a, a)
    acc.update(b, np.zeros_like(b))
    m = acc.compute()
    # mean of the per-image APs would be (1 + 0) / 2 = 0.5; pooled it is TP 1 / (TP 1 + FN 9) = 0.1
    assert m["ap"]["0.50"] == pytest.approx(0.1)
    assert m["mean_ap"] == pytest.approx(0.1)
    assert (m["tp"]["0.90"], m["fp"]["0.90"], m["fn"]["0.90"]) == (1, 0, 9)
    assert m["recall"]["0.50"] == pytest.approx(0.1) and m["precision"]["0.50"] == 1
    assert m["num_true"] == 10 and m["num_pred"] == 1
    # PQ is pooled too: TP 1 with IoU 1, FN 9 -> RQ = 1 / (1 + 4.5)
    assert m["rq"] == pytest.approx(1 / 5.5) and m["sq"] == 1
    # and reset empties it
    acc.reset()
    acc.update(a, a)
    assert acc.compute()["ap"]["0.50"] == 1


def test_classes_from_semantic_maps_by_majority_and_from_mappings():
    true = np.zeros((4, 6), np.uint8)
    true[:, :3] = 1
    true[:, 3:] = 2
    sem = np.zeros_like(true)
    sem[:, :3] = 2
    sem[0, :2] = 1  # instance 1: 10 pixels of class 2, 2 of class 1 -> class 2
    sem[:, 3:] = 255
    sem[3, 3:5] = 3  # instance 2: ignore pixels do not vote -> class 3
    pred = true.copy()
    pred[:, 5] = 0  # pred 2 shrinks to 8 pixels: IoU 8/12
    by_map = InstanceMetrics()
    by_map.update(true, pred, true_classes=sem, pred_classes={1: 2, 2: 1})
    per_class = by_map.per_class()
    # class 2: (t1, p1) match with IoU 1; class 3: t2 unmatched (pred 2 is class 1); class 1: p2 unmatched
    assert per_class[2] == {"pq": 1.0, "sq": 1.0, "rq": 1.0, "tp": 1, "fp": 0, "fn": 0}
    assert (per_class[3]["tp"], per_class[3]["fn"], per_class[3]["pq"]) == (0, 1, 0)
    assert (per_class[1]["tp"], per_class[1]["fp"], per_class[1]["pq"]) == (0, 1, 0)
    assert math.isnan(per_class[1]["sq"])
    m = by_map.compute()
    assert m["pq"] == pytest.approx(1 / 3) and m["rq"] == pytest.approx(1 / 3) and m["sq"] == 1
    # the StarDist matching ignores classes: both pairs match at 0.5 (IoUs 1 and 2/3)
    assert m["tp"]["0.50"] == 2
    by_dict = InstanceMetrics()
    by_dict.update(true, pred, true_classes={1: 2, 2: 3}, pred_classes={1: 2, 2: 1})
    assert same_results(by_dict.compute(), m)


def test_pq_leaves_void_out_as_the_panopticapi():
    true = np.zeros((6, 6), np.uint8)
    true[0:3, 0:3] = 1  # 9 pixels of class 1
    sem = np.zeros_like(true)
    sem[0:3, 0:3] = 1
    sem[0:3, 3:6] = 255  # void: 9 pixels beside the object
    sem[4:6, 4:6] = 255  # and 4 in the corner
    pred = np.zeros_like(true)
    pred[0:3, 0:5] = 4  # the object and 6 void pixels: IoU 9 / (9 + 15 - 9 - 6) = 1, not 9 / 15
    pred[4:6, 0:2] = 7  # on labelled background: a false positive
    pred[4:6, 3:6] = 8  # 4 of its 6 pixels void: not a false positive
    m = InstanceMetrics()
    m.update(true, pred, true_classes=sem, pred_classes={4: 1, 7: 1, 8: 1})
    assert m.per_class()[1] == {"pq": 2 / 3, "sq": 1.0, "rq": 2 / 3, "tp": 1, "fp": 1, "fn": 0}
    # without void (classes as a mapping), every pixel counts: IoU 9 / 15 and two false positives
    plain = InstanceMetrics()
    plain.update(true, pred, true_classes={1: 1}, pred_classes={4: 1, 7: 1, 8: 1})
    assert plain.per_class()[1] == {"pq": pytest.approx(0.6 / 2), "sq": 0.6, "rq": 0.5, "tp": 1, "fp": 2, "fn": 0}
    # the StarDist matching is not affected: IoU 9 / 15 = 0.6 matches up to 0.60
    assert m.compute()["tp"]["0.55"] == 1 and m.compute()["tp"]["0.60"] == 1 and m.compute()["tp"]["0.65"] == 0


def test_invalid_inputs_raise():
    true, pred = six_by_six()
    with pytest.raises(
        ValueError, match=r"^true and pred must be 2-D label maps of one shape, got \(6, 6\) and \(5, 6\)$"
    ):
        instance_metrics(true, pred[:5])
    with pytest.raises(ValueError, match=r"^true holds negative ids \(-1\); 0 is background, instances are > 0$"):
        instance_metrics(true.astype(np.int32) - 1, pred)
    with pytest.raises(ValueError, match="^true must hold integers, got dtype float64$"):
        instance_metrics(true.astype(float), pred)
    with pytest.raises(ValueError, match="^give classes for both true and pred instances, or for neither$"):
        instance_metrics(true, pred, true_classes={1: 1, 2: 1, 3: 1})
    with pytest.raises(ValueError, match="instance id 3"):
        instance_metrics(true, pred, true_classes={1: 1, 2: 1}, pred_classes={5: 1, 7: 1, 9: 1})
    with pytest.raises(ValueError, match="predicted instance 9"):
        instance_metrics(true, pred, scores={5: 0.1, 7: 0.2})
    with pytest.raises(ValueError, match="ignore pixels"):
        instance_metrics(true, pred, true_classes=np.full_like(true, 255), pred_classes=np.ones_like(pred))
    with pytest.raises(ValueError, match="thresholds"):
        InstanceMetrics(thresholds=[0.0, 0.5])
    acc = InstanceMetrics()
    acc.update(true, pred, scores={5: 0.1, 7: 0.2, 9: 0.3})
    with pytest.raises(ValueError, match="some images"):
        acc.update(true, pred)
    acc = InstanceMetrics()
    acc.update(true, pred)
    with pytest.raises(ValueError, match="classes were given for some images"):
        acc.update(true, pred, true_classes=np.ones_like(true), pred_classes=np.ones_like(pred))


def test_max_detections_caps_coco_ap_and_logs(caplog):
    true, pred = six_by_six()
    scores = {5: 0.5, 7: 0.9, 9: 0.7}  # ranked 7, 9, 5: a cap of 2 drops the perfect match
    capped = instance_metrics(true, pred, scores=scores, max_detections=2)
    full = instance_metrics(true, pred, scores=scores)
    assert capped["coco_ap"] < full["coco_ap"]
    with caplog.at_level(logging.WARNING, logger="pixelwise.metrics.matching"):
        acc = InstanceMetrics(max_detections=2)
        acc.update(true, pred, scores=scores)
        acc.compute()
    assert "max_detections=2" in caplog.text
    # the matching and PQ never drop predictions
    assert capped["tp"] == full["tp"] and capped["pq"] == full["pq"]


# ----------------------------------------------------------------------------------------------- against references


def random_case(
    rng: np.random.Generator, shape: tuple[int, int], count: int, num_classes: int = 1
) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[int, int], dict[int, float]]:
    """Random elliptic blobs (later ones paint over earlier ones) and a prediction made of perturbed copies
    (shifted, dilated, eroded, dropped, merged) plus spurious blobs. Returns the true map, the predicted map,
    a true semantic map, the predicted classes {id: class} and scores {id: score} (two decimals, so ties occur)."""
    h, w = shape
    yy, xx = np.mgrid[:h, :w]

    def blob() -> np.ndarray:
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        ry, rx = rng.uniform(2, 7, size=2)
        return ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1

    true = np.zeros(shape, np.int32)
    for i in range(1, count + 1):
        true[blob()] = i
    true_class = {i: int(rng.integers(1, num_classes + 1)) for i in range(1, count + 1)}
    sem = np.zeros(shape, np.int64)
    for i, c in true_class.items():
        sem[true == i] = c
    pred = np.zeros(shape, np.int32)
    pred_class = {}
    next_id = 1
    for i in rng.permutation(np.arange(1, count + 1)):
        mask = true == i
        if not mask.any():
            continue
        op = rng.choice(["keep", "shift", "dilate", "erode", "drop", "merge"], p=[0.2, 0.3, 0.15, 0.15, 0.1, 0.1])
        if op == "drop":
            continue
        if op == "shift":
            mask = np.roll(mask, tuple(rng.integers(-3, 4, size=2)), axis=(0, 1))
        elif op == "dilate":
            mask = ndimage.binary_dilation(mask, iterations=int(rng.integers(1, 3)))
        elif op == "erode":
            mask = ndimage.binary_erosion(mask)
        elif op == "merge":
            mask = ndimage.binary_dilation(mask, iterations=4) & (true > 0)
        if not mask.any():
            continue
        pred[mask] = next_id
        # mostly the true class, sometimes another
        pred_class[next_id] = true_class[int(i)] if rng.random() < 0.8 else int(rng.integers(1, num_classes + 1))
        next_id += 1
    for _ in range(max(1, count // 8)):
        pred[blob()] = next_id
        pred_class[next_id] = int(rng.integers(1, num_classes + 1))
        next_id += 1
    present = set(np.unique(pred).tolist()) - {0}
    pred_class = {k: v for k, v in pred_class.items() if k in present}
    scores = {k: round(float(rng.random()), 2) for k in sorted(present)}
    return true, pred, sem, pred_class, scores


def ties_case() -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[int, int], dict[int, float]]:
    """IoU exactly 0.5 with two candidates: one true instance split into two predictions (the better scored takes
    it), and one prediction covering two true instances."""
    true = np.zeros((8, 8), np.int32)
    true[0:2, 0:4] = 1
    true[4:6, 0:2], true[4:6, 2:4] = 2, 3
    pred = np.zeros_like(true)
    pred[0:2, 0:2], pred[0:2, 2:4] = 1, 2
    pred[4:6, 0:4] = 3
    sem = (true > 0).astype(np.int64)
    return true, pred, sem, {1: 1, 2: 1, 3: 1}, {1: 0.3, 2: 0.6, 3: 0.6}


def reference_coco(cases, max_detections: int | None) -> dict[str, float]:
    """pycocotools' segm AP, AP50, AP75 (area all, the given maxDets; None: its default parameters and its summary,
    ``stats[0:3]``) of a list of (true map, pred map, true semantic map, pred classes, scores)."""
    mask_utils = pytest.importorskip("pycocotools.mask")
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    def rle(mask: np.ndarray) -> dict:
        return mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))

    images, annotations, results, categories = [], [], [], set()
    for image_id, (true, pred, sem, pred_class, scores) in enumerate(cases, start=1):
        images.append({"id": image_id, "height": true.shape[0], "width": true.shape[1]})
        for i in np.unique(true[true > 0]).tolist():  # ascending ids, as ours
            mask = true == i
            c = int(np.bincount(sem[mask]).argmax())
            categories.add(c)
            r = rle(mask)
            annotations.append(
                {
                    "id": len(annotations) + 1,  # pycocotools treats annotation id 0 as "unmatched"
                    "image_id": image_id,
                    "category_id": c,
                    "segmentation": r,
                    "area": float(mask.sum()),
                    "bbox": mask_utils.toBbox(r).tolist(),
                    "iscrowd": 0,
                }
            )
        for i in np.unique(pred[pred > 0]).tolist():
            results.append(
                {"image_id": image_id, "category_id": pred_class[i], "segmentation": rle(pred == i), "score": scores[i]}
            )
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
        gt = COCO()
        gt.dataset = {"images": images, "annotations": annotations, "categories": [{"id": c} for c in categories]}
        gt.createIndex()
        dt = gt.loadRes(results)
        ev = COCOeval(gt, dt, "segm")
        if max_detections is not None:
            ev.params.maxDets = [max_detections]  # (pycocotools sorts the list and evaluates with the largest)
        ev.evaluate()
        ev.accumulate()
        if max_detections is None:
            ev.summarize()
            return {"coco_ap": ev.stats[0], "coco_ap50": ev.stats[1], "coco_ap75": ev.stats[2]}
    p = ev.eval["precision"][:, :, :, 0, 0]  # thresholds x recall points x classes, area "all", our maxDets

    def mean(x: np.ndarray) -> float:
        return float(x[x > -1].mean())

    return {"coco_ap": mean(p), "coco_ap50": mean(p[0]), "coco_ap75": mean(p[5])}


@pytest.mark.parametrize(("num_classes", "max_detections"), [(1, 100), (1, 12), (3, 100), (3, 5)])
def test_coco_ap_matches_pycocotools(num_classes, max_detections):
    pytest.importorskip("pycocotools")
    rng = np.random.default_rng(10 + num_classes + max_detections)
    cases = [random_case(rng, (64, 80), int(rng.integers(5, 40)), num_classes) for _ in range(6)]
    cases.append(ties_case())
    acc = InstanceMetrics(max_detections=max_detections)
    for true, pred, sem, pred_class, scores in cases:
        acc.update(true, pred, true_classes=sem, pred_classes=pred_class, scores=scores)
    got = acc.compute()
    ref = reference_coco(cases, max_detections)
    for key in ("coco_ap", "coco_ap50", "coco_ap75"):
        assert got[key] == pytest.approx(ref[key], abs=1e-6)
    assert 0 < got["coco_ap"] < 1  # neither trivially perfect nor empty


def test_coco_ap_default_matches_pycocotools_summary():
    # the default max_detections=100 is pycocotools' own AP (stats[0..2]) with the default parameters, also for an
    # image with more than 100 predictions
    pytest.importorskip("pycocotools")
    rng = np.random.default_rng(5)
    cases = [random_case(rng, (200, 200), 150), random_case(rng, (96, 96), 60), random_case(rng, (96, 96), 40)]
    assert len(cases[0][4]) > 100
    acc, uncapped = InstanceMetrics(), InstanceMetrics(max_detections=1000)
    for true, pred, _, _, scores in cases:
        acc.update(true, pred, scores=scores)
        uncapped.update(true, pred, scores=scores)
    got = acc.compute()
    ref = reference_coco(cases, None)
    assert [got["coco_ap"], got["coco_ap50"], got["coco_ap75"]] == pytest.approx(
        [ref["coco_ap"], ref["coco_ap50"], ref["coco_ap75"]], abs=1e-6
    )
    assert uncapped.compute()["coco_ap"] != pytest.approx(got["coco_ap"], abs=1e-6)


@pytest.mark.parametrize("num_classes", [1, 3])
def test_pq_matches_torchmetrics(num_classes):
    pytest.importorskip("torchmetrics")
    from torchmetrics.detection import PanopticQuality

    rng = np.random.default_rng(20 + num_classes)
    cases = [random_case(rng, (64, 80), int(rng.integers(10, 40)), num_classes) for _ in range(5)]
    cases.append(ties_case())
    things = set(range(1, num_classes + 1))
    ref = PanopticQuality(things=things, stuffs={0}, return_per_class=True, return_sq_and_rq=True)
    acc = InstanceMetrics()
    for true, pred, sem, pred_class, _ in cases:
        pred_sem = np.zeros_like(sem)
        for i, c in pred_class.items():
            pred_sem[pred == i] = c
        acc.update(true, pred, true_classes=sem, pred_classes=pred_sem)
        # torchmetrics' input: (category, instance id) per pixel; background is the stuff class 0
        target = torch.from_numpy(np.stack([sem, true], -1)).long()[None]
        preds = torch.from_numpy(np.stack([pred_sem, pred], -1)).long()[None]
        ref.update(preds, target)
    table = ref.compute()  # rows: things (sorted), then stuffs; columns: pq, sq, rq
    per_class = acc.per_class()
    assert sorted(per_class) == sorted(c for c in things if c in per_class) and per_class
    for row, c in enumerate(sorted(things)):
        if c not in per_class:
            continue
        ours = per_class[c]
        assert ours["tp"] > 0  # so that sq is defined on both sides
        assert [ours["pq"], ours["sq"], ours["rq"]] == pytest.approx(table[row].tolist(), abs=1e-6)
    m = acc.compute()
    rows = [row for row, c in enumerate(sorted(things)) if c in per_class]
    assert [m["pq"], m["sq"], m["rq"]] == pytest.approx(table[rows].mean(0).tolist(), abs=1e-6)
    assert 0.2 < m["pq"] < 0.95


def test_default_thresholds_are_the_papers():
    assert [f"{t:.2f}" for t in MATCHING_THRESHOLDS] == KEYS
    assert MATCHING_THRESHOLDS[1] == 0.55  # exactly the float 0.55: an IoU of 11/20 passes
    true = np.zeros((1, 20), np.uint8)
    true[0, :11] = 1
    pred = np.zeros_like(true)
    pred[0, :20] = 1  # IoU 11/20
    assert instance_metrics(true, pred)["tp"]["0.55"] == 1
    assert instance_metrics(true, pred)["tp"]["0.60"] == 0


# ----------------------------------------------------------------------------------------------- data-parallel


def _two_images() -> list[tuple[np.ndarray, np.ndarray, dict[int, float]]]:
    """Image A: one nucleus, found (score 0.9) plus a false positive (0.2); image B: nine nuclei, one found
    (0.6)."""
    a_true = np.zeros((8, 8), np.uint8)
    a_true[2:5, 2:5] = 1
    a_pred = a_true.copy()
    a_pred[6:8, 6:8] = 2
    b_true = np.zeros((12, 12), np.uint8)
    for i in range(9):
        b_true[(i // 3) * 4 : (i // 3) * 4 + 3, (i % 3) * 4 : (i % 3) * 4 + 3] = i + 1
    b_pred = np.where(b_true == 5, 1, 0).astype(np.uint8)
    return [(a_true, a_pred, {1: 0.9, 2: 0.2}), (b_true, b_pred, {1: 0.6})]


def test_merged_shares_equal_one_pass_over_all_images():
    images = _two_images()
    whole, first, second = InstanceMetrics(), InstanceMetrics(), InstanceMetrics()
    for t, p, s in images:
        whole.update(t, p, scores=s)
    first.update(*images[0][:2], scores=images[0][2])
    second.update(*images[1][:2], scores=images[1][2])
    first.merge(second)
    m = first.compute()
    assert same_results(m, whole.compute())
    # by hand: TP 2, FP 1, FN 8 at every threshold; COCO AP50: ranked 0.9 (hit), 0.6 (hit), 0.2 (miss) of 10 true
    assert m["ap"]["0.50"] == pytest.approx(2 / 11) and m["num_true"] == 10 and m["num_pred"] == 3
    assert m["coco_ap50"] == pytest.approx(21 / 101)  # precision 1 at recall 0, 0.1, 0.2; 0 beyond
    unscored = InstanceMetrics()
    unscored.update(*images[0][:2])
    with pytest.raises(ValueError, match="scores were given for some images and not for others"):
        unscored.merge(second)


def _instance_shares(rank: int) -> dict:
    from pixelwise.metrics import ISBIScores

    t, p, s = _two_images()[rank]  # rank 0 image A, rank 1 image B
    matching, isbi = InstanceMetrics(), ISBIScores()
    matching.update(t, p, scores=s)
    isbi.update(p, t)
    matching.all_reduce()
    isbi.all_reduce()
    return {**matching.compute(), **{f"isbi_{k}": v for k, v in isbi.compute().items()}}


@pytest.mark.slow
def test_all_reduce_joins_instance_scores_over_processes():
    from pixelwise.metrics import ISBIScores

    results = run_in_processes(_instance_shares)
    whole, isbi = InstanceMetrics(), ISBIScores()
    for t, p, s in _two_images():
        whole.update(t, p, scores=s)
        isbi.update(p, t)
    expected = {**whole.compute(), **{f"isbi_{k}": v for k, v in isbi.compute().items()}}
    assert same_results(results[0], expected) and same_results(results[1], expected)
    assert results[0]["num_true"] == 10 and results[0]["isbi_num_slices"] == 2


def test_coco_ap_orders_equal_scores_by_image_whatever_the_shards():
    """Equal scores in two images: pycocotools ranks them in image-id order. Shards joined in rank order (images
    0, 2 then 1, 3) put the second image's true positive before the first's false positive: AP50 1.0, not 0.5."""
    empty = np.zeros((4, 4), np.int64)
    cell = empty.copy()
    cell[:2, :2] = 1
    other = empty.copy()
    other[2:, 2:] = 1
    images = [(cell, empty), (empty, other), (cell, cell), (empty, empty)]  # image 1: a false positive; 2: a hit

    def add(metrics, k):
        true, pred = images[k]
        metrics.update(true, pred, scores={1: 1.0} if pred.any() else {}, image_id=k)

    whole = InstanceMetrics()
    for k in range(4):
        add(whole, k)
    shards = [InstanceMetrics(), InstanceMetrics()]
    for k in range(4):
        add(shards[k % 2], k)
    shards[0].merge(shards[1])
    # image 0's cell is never found; the two predictions score 1.0: FP (image 1) then TP (image 2): precision 0.5
    # at recall 0.5, so 51 of the 101 recall points read 0.5
    assert whole.compute()["coco_ap50"] == pytest.approx(51 * 0.5 / 101)
    assert shards[0].compute()["coco_ap50"] == whole.compute()["coco_ap50"]
