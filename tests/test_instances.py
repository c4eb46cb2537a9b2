import math

import numpy as np
import pytest
import torch

from pixelwise.inference import label_instances
from pixelwise.metrics import CHALLENGE_THRESHOLDS, ChallengePixelError, ISBIScores, isbi_scores, pixel_error

KEYS = ("v_rand", "v_rand_split", "v_rand_merge", "v_info", "v_info_split", "v_info_merge")


def _approx_equal(a: dict, b: dict) -> bool:
    return all(a[k] == pytest.approx(b[k], abs=1e-12) for k in KEYS)


def _two_touching_disks() -> np.ndarray:
    yy, xx = np.mgrid[:40, :60]
    disks = ((yy - 20) ** 2 + (xx - 20) ** 2 <= 100) | ((yy - 20) ** 2 + (xx - 37) ** 2 <= 100)
    return disks.astype(np.uint8)  # class 1 = the cells, 0 = background


# ---------------------------------------------------------------- label_instances


def test_touching_disks_one_component_two_watershed_instances():
    semantic = _two_touching_disks()
    cc = label_instances(semantic, 1)
    assert cc.max() == 1 and (cc > 0).sum() == semantic.sum()
    ws = label_instances(semantic, 1, watershed=True)
    assert ws.max() == 2 and set(np.unique(ws)) == {0, 1, 2}
    assert ((ws > 0) == (semantic == 1)).all()  # every cell pixel labelled, nothing else
    assert ws[20, 20] != ws[20, 37]  # the two centres are in different instances
    sizes = np.bincount(ws.ravel())[1:]
    assert abs(int(sizes[0]) - int(sizes[1])) <= 2  # symmetric shapes, split at the neck
    assert set(np.unique(ws[:, :28])) == {0, ws[20, 20]} and set(np.unique(ws[:, 30:])) == {0, ws[20, 37]}


def test_label_instances_four_connectivity_and_foreground_class():
    semantic = np.array([[2, 0, 0], [0, 2, 2], [1, 0, 2]])
    # diagonal neighbours are separate: {(0,0)} and {(1,1),(1,2),(2,2)}; class 1 is not the foreground here
    assert label_instances(semantic, 2).tolist() == [[1, 0, 0], [0, 2, 2], [0, 0, 2]]
    assert label_instances(semantic, 1).tolist() == [[0, 0, 0], [0, 0, 0], [1, 0, 0]]
    assert label_instances(semantic, 7, watershed=True).max() == 0


def test_watershed_keeps_separate_objects_and_does_not_split_convex_ones():
    semantic = np.zeros((30, 40), np.uint8)
    semantic[3:15, 3:15] = 1  # a square
    semantic[20:27, 3:37] = 1  # a long bar: a ridge of equal maxima, one marker
    semantic[3:5, 17:19] = 1  # a small blob within min_distance of the square: no local max of its own
    cc = label_instances(semantic, 1)
    ws = label_instances(semantic, 1, watershed=True, min_distance=4)
    assert cc.max() == 3 and ws.max() == 3
    # same partition up to the ids
    assert len(set(zip(cc[cc > 0].tolist(), ws[ws > 0].tolist(), strict=True))) == 3


# ---------------------------------------------------------------- isbi_scores


def test_identical_segmentations_score_one():
    gt = label_instances(_two_touching_disks(), 1, watershed=True)
    s = isbi_scores(gt, gt)
    assert all(s[k] == pytest.approx(1.0) for k in KEYS)
    single = np.ones((4, 4), np.int64)  # one segment each: H(S) = H(T) = 0, still a perfect match
    assert all(isbi_scores(single, single)[k] == 1.0 for k in KEYS)


def test_merge_lowers_merge_scores_only():
    gt = np.array([[1, 1, 2, 2], [1, 1, 2, 2]])
    merged = np.ones_like(gt)  # the two GT cells in one predicted segment
    s = isbi_scores(merged, gt)
    assert s["v_rand_split"] == 1.0 and s["v_info_split"] == 1.0
    # sum p^2 = 4^2 + 4^2 = 32, sum s^2 = 8^2 = 64 -> 1/2; I = H(S) + H(T) - H(S,T) = 0 + log 2 - log 2 = 0
    assert s["v_rand_merge"] == pytest.approx(0.5) and s["v_info_merge"] == pytest.approx(0.0)
    assert s["v_rand"] == pytest.approx(2 / 3) and s["v_info"] == 0.0


def test_split_lowers_split_scores_only():
    gt = np.ones((2, 4), np.int64)
    split = np.array([[3, 3, 4, 4], [3, 3, 4, 4]])  # one GT cell cut in two
    s = isbi_scores(split, gt)
    assert s["v_rand_merge"] == 1.0 and s["v_info_merge"] == 1.0  # H(T) = 0: nothing can be merged
    assert s["v_rand_split"] == pytest.approx(0.5) and s["v_info_split"] == pytest.approx(0.0)
    # a partial split: GT cells of 4 and 4 pixels, the second cut 2 + 2
    gt2 = np.array([[1, 1, 2, 2], [1, 1, 2, 2]])
    pred2 = np.array([[1, 1, 2, 2], [1, 1, 3, 3]])
    s2 = isbi_scores(pred2, gt2)
    assert s2["v_rand_merge"] == 1.0 and s2["v_info_merge"] == pytest.approx(1.0)
    assert s2["v_rand_split"] == pytest.approx((16 + 4 + 4) / 32)  # sum p^2 / sum t^2
    # I = H(T) = log 2 (S refines T); H(S) = -(1/2 log 1/2 + 2 * 1/4 log 1/4) = 1.5 log 2
    assert s2["v_info_split"] == pytest.approx(1 / 1.5)


def test_hand_computed_contingency_table():
    gt = np.array([[1, 1, 1, 2], [1, 2, 2, 0]])
    pred = np.array([[5, 5, 7, 7], [0, 7, 7, 9]])
    # GT foreground: n = 7 pixels (the T = 0 pixel, predicted 9, is dropped). Pairs (S, T):
    #   (5,1) x2, (7,1) x1, (7,2) x3, and (0,1) x1 -> the S = 0 pixel is a singleton segment.
    # counts: joint {2, 1, 3, 1}, S marginals {5: 2, 7: 4, singleton: 1}, T marginals {1: 4, 2: 3}
    #   sum n_ij^2 = 4 + 1 + 9 + 1 = 15, sum s_i^2 = 4 + 16 + 1 = 21, sum t_j^2 = 16 + 9 = 25
    #   v_rand_split = 15/25 = 3/5, v_rand_merge = 15/21 = 5/7, v_rand = 2 (3/5)(5/7) / (3/5 + 5/7) = 15/23
    # entropies (natural log, probabilities c/7): H = log 7 - (1/7) sum c log c
    #   H(S) = log 7 - (2 log 2 + 4 log 4)/7 = log 7 - 10 log 2 / 7
    #   H(T) = log 7 - (4 log 4 + 3 log 3)/7 = log 7 - (8 log 2 + 3 log 3)/7
    #   H(S,T) = log 7 - (2 log 2 + 3 log 3)/7
    #   I = H(S) + H(T) - H(S,T) = log 7 - 16 log 2 / 7
    s = isbi_scores(pred, gt)
    l2, l3, l7 = math.log(2), math.log(3), math.log(7)
    info_split = (7 * l7 - 16 * l2) / (7 * l7 - 10 * l2)  # I / H(S) ~= 0.37834
    info_merge = (7 * l7 - 16 * l2) / (7 * l7 - 8 * l2 - 3 * l3)  # I / H(T) ~= 0.52946
    assert s["v_rand_split"] == pytest.approx(3 / 5)
    assert s["v_rand_merge"] == pytest.approx(5 / 7)
    assert s["v_rand"] == pytest.approx(15 / 23)
    assert s["v_info_split"] == pytest.approx(info_split) and info_split == pytest.approx(0.37834, abs=1e-5)
    assert s["v_info_merge"] == pytest.approx(info_merge) and info_merge == pytest.approx(0.52946, abs=1e-5)
    assert s["v_info"] == pytest.approx(2 * info_split * info_merge / (info_split + info_merge))


def test_predicted_background_pixels_are_singletons():
    gt = np.array([[1, 1, 0], [1, 1, 0]])
    unassigned = np.zeros_like(gt)  # the whole cell predicted as background
    s = isbi_scores(unassigned, gt)
    # 4 singletons: sum p^2 = 4, sum s^2 = 4, sum t^2 = 16; I = H(S) + H(T) - H(S,T) = log 4 + 0 - log 4 = 0
    assert s["v_rand_split"] == pytest.approx(0.25) and s["v_rand_merge"] == 1.0
    assert s["v_info_split"] == pytest.approx(0.0) and s["v_info_merge"] == 1.0
    # exactly as if each of those pixels had its own predicted id
    fragmented = np.array([[11, 12, 0], [13, 14, 0]])
    assert _approx_equal(isbi_scores(fragmented, gt), s)
    # and a partly unassigned cell: 2 pixels in segment 5, 2 predicted background
    partly = np.array([[5, 5, 0], [0, 0, 0]])
    p = isbi_scores(partly, gt)
    assert p["v_rand_split"] == pytest.approx((4 + 1 + 1) / 16) and p["v_rand_merge"] == 1.0
    assert _approx_equal(p, isbi_scores(np.array([[5, 5, 0], [8, 9, 0]]), gt))


def test_relabelling_predicted_ids_changes_nothing():
    rng = np.random.default_rng(0)
    gt = label_instances(_two_touching_disks(), 1, watershed=True)
    pred = rng.integers(0, 6, gt.shape)  # includes predicted background (0) pixels
    perm = np.concatenate([[0], rng.permutation(np.arange(1, 6)) + 100])  # 0 stays 0, others permuted
    base = isbi_scores(pred, gt)
    assert _approx_equal(isbi_scores(perm[pred], gt), base)
    gt_perm = np.concatenate([[0], rng.permutation(np.arange(1, gt.max() + 1)) * 7])
    assert _approx_equal(isbi_scores(pred, gt_perm[gt]), base)


def test_ground_truth_background_does_not_matter():
    rng = np.random.default_rng(1)
    gt = np.kron(rng.integers(0, 4, (5, 5)), np.ones((3, 3), np.int64))  # 0 = GT background
    pred = np.kron(rng.integers(0, 4, (5, 5)), np.ones((3, 3), np.int64))
    base = isbi_scores(pred, gt)
    scribbled = pred.copy()
    scribbled[gt == 0] = rng.integers(0, 50, int((gt == 0).sum()))
    assert _approx_equal(isbi_scores(scribbled, gt), base)
    padded = isbi_scores(np.pad(pred, 4, constant_values=3), np.pad(gt, 4))  # more GT background
    assert _approx_equal(padded, base)
    assert all(math.isnan(v) for v in isbi_scores(pred, np.zeros_like(gt)).values())


def _dense_reference(pred: np.ndarray, gt: np.ndarray) -> dict:
    """Straight from the paper's formulas on a dense p_ij table; S == 0 pixels become fresh singleton ids."""
    fg = gt > 0
    s, t = pred[fg].copy(), gt[fg]
    zeros = np.flatnonzero(s == 0)
    s[zeros] = s.max() + 1 + np.arange(zeros.size)
    _, si = np.unique(s, return_inverse=True)
    _, ti = np.unique(t, return_inverse=True)
    p = np.zeros((si.max() + 1, ti.max() + 1))
    np.add.at(p, (si, ti), 1.0 / t.size)
    ps, pt = p.sum(1), p.sum(0)

    def h(x: np.ndarray) -> float:
        x = x[x > 0]
        return float(-(x * np.log(x)).sum())

    mi = h(ps) + h(pt) - h(p.ravel())
    rs, rm = (p**2).sum() / (pt**2).sum(), (p**2).sum() / (ps**2).sum()
    i_s, i_m = mi / h(ps), mi / h(pt)
    return {
        "v_rand": 2 * rs * rm / (rs + rm),
        "v_rand_split": rs,
        "v_rand_merge": rm,
        "v_info": 2 * i_s * i_m / (i_s + i_m),
        "v_info_split": i_s,
        "v_info_merge": i_m,
    }


def test_matches_dense_reference_on_random_labellings():
    rng = np.random.default_rng(4)
    for _ in range(5):
        gt = np.kron(rng.integers(0, 6, (6, 7)), np.ones((3, 2), np.int64))
        pred = np.kron(rng.integers(0, 5, (9, 7)), np.ones((2, 2), np.int64))
        pred[rng.random(pred.shape) < 0.1] = 0
        got, want = isbi_scores(pred, gt), _dense_reference(pred, gt)
        assert all(got[k] == pytest.approx(want[k], rel=1e-10) for k in KEYS)


def test_input_errors():
    with pytest.raises(ValueError, match="does not match"):
        isbi_scores(np.zeros((2, 2), int), np.zeros((2, 3), int))
    with pytest.raises(ValueError, match="^prediction holds negative instance ids$"):
        isbi_scores(np.array([[-1, 1]]), np.array([[1, 1]]))
    with pytest.raises(ValueError, match="^prediction must hold integer instance ids, got dtype float64$"):
        isbi_scores(np.array([[0.5, 1.0]]), np.array([[1, 1]]))


# ---------------------------------------------------------------- stacks


def _random_slices(seed: int, n: int = 3) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    gt = np.stack([np.kron(rng.integers(0, 5, (4, 4)), np.ones((3, 3), np.int64)) for _ in range(n)])
    pred = np.stack([np.kron(rng.integers(0, 5, (6, 6)), np.ones((2, 2), np.int64)) for _ in range(n)])
    return pred, gt


def test_pooled_stack_equals_one_table_with_disjoint_ids():
    pred, gt = _random_slices(2)
    acc = ISBIScores()
    acc.update(pred[0], gt[0])  # a single slice, then a stack
    acc.update(pred[1:], gt[1:])
    pooled = acc.compute()
    assert pooled["num_slices"] == 3
    # the same slices side by side, ids offset so no id is shared between slices (0 stays 0)
    offset = 10 * np.arange(3)[:, None, None]
    wide_pred = np.concatenate(list(np.where(pred > 0, pred + offset, 0)), axis=1)
    wide_gt = np.concatenate(list(np.where(gt > 0, gt + offset, 0)), axis=1)
    assert _approx_equal(pooled, isbi_scores(wide_pred, wide_gt))
    # but not the same as one labelling with ids shared across slices
    assert not _approx_equal(pooled, isbi_scores(pred, gt))


def test_mean_mode_averages_slices_with_foreground():
    pred, gt = _random_slices(3)
    gt[2] = 0  # no GT foreground: skipped
    acc = ISBIScores()
    acc.update(pred, gt)
    mean = acc.compute("mean")
    per = [isbi_scores(p, g) for p, g in zip(pred[:2], gt[:2], strict=True)]
    assert all(mean[k] == pytest.approx((per[0][k] + per[1][k]) / 2) for k in KEYS)
    acc.reset()
    assert acc.compute()["num_slices"] == 0 and math.isnan(acc.compute()["v_rand"])
    assert math.isnan(acc.compute("mean")["v_info"])
    with pytest.raises(ValueError, match="^mode must be 'pooled' or 'mean', got 'median'$"):
        acc.compute("median")  # type: ignore[arg-type]


# ---------------------------------------------------------------- pixel_error


def test_pixel_error_with_ignore():
    target = np.array([[0, 1, 1], [255, 0, 1]])
    pred = np.array([[0, 0, 1], [1, 1, 1]])
    # 5 pixels scored (the 255 one is skipped, whatever is predicted there); 2 differ
    assert pixel_error(pred, target) == pytest.approx(2 / 5)
    assert pixel_error(pred, target, ignore_index=None) == pytest.approx(3 / 6)
    assert pixel_error(target, target) == 0.0
    assert math.isnan(pixel_error(pred, np.full_like(target, 255)))


def test_challenge_pixel_error_hand_computed():
    # positives (class 1) at p = .95, .35, .65; negatives at .25, .55; an ignored pixel at .99
    target = torch.tensor([[[1, 1, 0], [1, 0, 255]]])
    prob = torch.tensor([[[0.95, 0.35, 0.25], [0.65, 0.55, 0.99]]])
    metric = ChallengePixelError()
    metric.update(prob, target)
    r = metric.compute()
    # F = 2TP / (2TP + FP + FN): t 0-0.2 all five positive: 6/8; t 0.3: .95 .35 .65 .55: 6/7; t 0.4, 0.5:
    # .95 .65 .55: 4/6; t 0.6: .95 .65: 4/5; t 0.7-0.9: .95: 2/4; t ~1: none: 0
    expected = [6 / 8] * 3 + [6 / 7] + [4 / 6] * 2 + [4 / 5] + [2 / 4] * 3 + [0.0]
    assert r["f_scores"] == pytest.approx(expected)
    assert r["pixel_error"] == pytest.approx(1 / 7) and r["f_score"] == pytest.approx(6 / 7)
    assert r["threshold"] == pytest.approx(0.3) and r["positive"] == 1
    # the plain pixel error of the same map's argmax (p > 0.5) is 2/5: the .35 positive and the .55 negative
    assert pixel_error((prob > 0.5).long().numpy(), target.numpy()) == pytest.approx(2 / 5)
    # counts pool over updates: the same slice twice gives the same F-scores
    metric.update(prob, target)
    assert metric.compute()["f_scores"] == pytest.approx(expected)


def test_challenge_pixel_error_thresholds_are_fijis_and_bad_input():
    # Fiji: for (th = 0.0; th <= 1.0; th += 0.1), in doubles: 11 values, the last just under 1
    assert len(CHALLENGE_THRESHOLDS) == 11 and CHALLENGE_THRESHOLDS[0] == 0.0
    assert CHALLENGE_THRESHOLDS[3] == 0.30000000000000004 and CHALLENGE_THRESHOLDS[-1] == 0.9999999999999999
    metric = ChallengePixelError()
    metric.update(torch.ones(1, 2, 2), torch.ones(1, 2, 2, dtype=torch.long))
    assert metric.compute()["f_scores"][-1] == 1.0  # a probability of exactly 1 counts at the last threshold
    assert math.isnan(ChallengePixelError().compute()["pixel_error"])
    # no cell pixel and none predicted at t >= 0.1: Fiji's precision = recall = 1 there, F = 1, error 0
    empty = ChallengePixelError()
    empty.update(torch.full((1, 2, 2), 0.05), torch.tensor([[[0, 0], [0, 255]]]))
    r = empty.compute()
    assert r["f_scores"] == [0.0] + [1.0] * 10 and r["pixel_error"] == 0.0 and r["threshold"] == 0.1
    with pytest.raises(ValueError, match="differ"):
        metric.update(torch.ones(1, 2, 2), torch.ones(1, 2, 3, dtype=torch.long))


def test_watershed_never_merges_objects_that_touch_at_a_corner():
    """Seeds are grouped 8-connected, objects are 4-connected: diagonal seeds of three small squares touching at
    their corners were one marker, and the watershed painted all three with it (it should only ever split)."""
    m = np.zeros((8, 8), int)
    m[1:3, 1:3], m[3:5, 3:5], m[5:7, 5:8] = 1, 1, 1
    plain = label_instances(m, 1)
    split = label_instances(m, 1, watershed=True)
    assert plain.max() == 3
    for k in range(1, 4):  # each object its own instance, as without the watershed
        assert len(np.unique(split[plain == k])) == 1 and (split == split[plain == k][0]).sum() == (plain == k).sum()
    assert len(np.unique(split)) == 4
