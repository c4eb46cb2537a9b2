import math

import numpy as np
import pytest
import torch

from pixelwise.metrics import BoundaryF1, disk_offsets, label_boundaries

from .conftest import run_in_processes


def _square(shift: tuple[int, int] = (0, 0), size: int = 10) -> torch.Tensor:
    """Background 0 with a 4 x 4 square of class 1 at rows 2-5, cols 2-5, moved by ``shift``."""
    m = torch.zeros(size, size, dtype=torch.int64)
    r, c = 2 + shift[0], 2 + shift[1]
    m[r : r + 4, c : c + 4] = 1
    return m


def _counts(metric: BoundaryF1) -> list[list[int]]:
    """Per class: [matched predicted, predicted, matched GT, GT]."""
    return metric.counts.t().tolist()


def _reference_counts(pred: np.ndarray, target: np.ndarray, n: int, ignore: int | None, width: int) -> np.ndarray:
    """Brute force straight from the definition: 4 x n counts for one H x W image."""
    h, w = target.shape
    valid = np.ones_like(target, bool) if ignore is None else target != ignore

    def boundary(lab: np.ndarray) -> list[tuple[int, int, int]]:
        out = []
        for y in range(h):
            for x in range(w):
                if not valid[y, x]:
                    continue
                for dy, dx in ((-1, 0), (1, 0), (0, -1), (0, 1)):
                    yy, xx = y + dy, x + dx
                    if 0 <= yy < h and 0 <= xx < w and valid[yy, xx] and lab[yy, xx] != lab[y, x]:
                        out.append((int(lab[y, x]), y, x))
                        break
        return out

    bp, bg = boundary(pred), boundary(target)

    def near(p: tuple[int, int, int], others: list[tuple[int, int, int]]) -> bool:
        return any(c == p[0] and (y - p[1]) ** 2 + (x - p[2]) ** 2 <= width**2 for c, y, x in others)

    counts = np.zeros((4, n), np.int64)
    for p in bp:
        counts[0, p[0]] += near(p, bg)
        counts[1, p[0]] += 1
    for g in bg:
        counts[2, g[0]] += near(g, bp)
        counts[3, g[0]] += 1
    return counts


def test_disk_offsets_form_a_disk():
    assert disk_offsets(0) == [(0, 0)]
    assert sorted(disk_offsets(1)) == [(-1, 0), (0, -1), (0, 0), (0, 1), (1, 0)]  # no diagonals at radius 1
    d2 = set(disk_offsets(2))
    assert len(d2) == 13  # 5 x 5 square minus the 4 x 3 corner pixels farther than 2
    assert (1, 1) in d2 and (2, 0) in d2 and (2, 1) not in d2 and (2, 2) not in d2
    assert len(disk_offsets(5)) == 81


def test_boundary_definition_on_a_square():
    b = label_boundaries(_square())
    # class 1: the 12 perimeter pixels of the 4 x 4 square; class 0: the 16 pixels 4-adjacent to it
    assert b[_square() == 1].sum() == 12 and b[_square() == 0].sum() == 16
    assert not b[0].any() and not b[:, 0].any()  # image border is not a boundary
    assert not b[3:5, 3:5].any()  # square interior


def test_square_one_pixel_off_width_0_and_1():
    target, pred = _square(), _square((0, 1))  # prediction one column to the right
    m0 = BoundaryF1(2, width=0)
    m0.update(pred, target)
    # class 1: GT perimeter cols 2-5, predicted cols 3-6; shared: rows 2 and 5, cols 3-5 -> 6 of 12 both ways.
    # class 0: 16 pixels each; shared: rows 1 and 6, cols 3-5 -> 6 of 16 both ways.
    assert _counts(m0) == [[6, 16, 6, 16], [6, 12, 6, 12]]
    r0 = m0.compute()
    assert r0["precision"] == pytest.approx([6 / 16, 0.5]) and r0["recall"] == pytest.approx([6 / 16, 0.5])
    assert r0["f1"][1] == pytest.approx(0.5) and r0["f1"][1] < 1
    m1 = BoundaryF1(2, width=1)
    m1.update(pred, target)
    # every boundary pixel has a same-class boundary pixel at distance 1 in the other map
    assert _counts(m1) == [[16, 16, 16, 16], [12, 12, 12, 12]]
    assert m1.compute()["f1"] == [1.0, 1.0] and m1.compute()["mean_f1"] == 1.0


def test_disk_not_square_at_a_diagonal_offset():
    target = torch.zeros(7, 7, dtype=torch.int64)
    pred = target.clone()
    target[2, 2] = 1
    pred[3, 3] = 1  # one pixel diagonally: distance sqrt(2)
    m1 = BoundaryF1(2, width=1)
    m1.update(pred, target)
    # class 1: a 3 x 3 square window would match, the radius-1 disk does not.
    # class 0: GT {(1,2),(3,2),(2,1),(2,3)}, predicted {(2,3),(4,3),(3,2),(3,4)}: the shared (2,3), (3,2)
    # match; (4,3), (3,4), (1,2), (2,1) are sqrt(2) or more from the other set.
    assert _counts(m1) == [[2, 4, 2, 4], [0, 1, 0, 1]]
    assert m1.compute()["f1"][1] == 0.0
    m2 = BoundaryF1(2, width=2)
    m2.update(pred, target)
    assert _counts(m2) == [[4, 4, 4, 4], [1, 1, 1, 1]]


def test_perfect_prediction_scores_one_and_scores_equal_indices():
    torch.manual_seed(0)
    target = torch.randint(0, 3, (2, 12, 9))
    logits = torch.nn.functional.one_hot(target, 3).permute(0, 3, 1, 2).float() + 0.1 * torch.rand(2, 3, 12, 9)
    for pred in (target, logits):
        m = BoundaryF1(3, width=0)
        m.update(pred, target)
        r = m.compute()
        assert r["f1"] == [1.0, 1.0, 1.0] and r["mean_f1"] == 1.0
        assert r["precision"] == [1.0, 1.0, 1.0] and r["recall"] == [1.0, 1.0, 1.0]


def test_absent_class_is_nan_and_excluded_from_mean():
    target, pred = _square(), _square((0, 1))
    m = BoundaryF1(3, width=0)
    m.update(pred, target)
    r = m.compute()
    assert math.isnan(r["f1"][2]) and math.isnan(r["precision"][2]) and math.isnan(r["recall"][2])
    f0 = 6 / 16  # P = R = 6/16
    assert r["mean_f1"] == pytest.approx((f0 + 0.5) / 2)


def test_class_on_one_side_only_has_f1_zero():
    target = torch.zeros(6, 6, dtype=torch.int64)
    pred = target.clone()
    pred[2:4, 2:4] = 1  # class 1 predicted, absent from the target
    m = BoundaryF1(2, width=1)
    m.update(pred, target)
    r = m.compute()
    assert r["precision"][1] == 0.0 and math.isnan(r["recall"][1]) and r["f1"][1] == 0.0
    # class 0 boundaries exist only in the prediction too: 8 pixels around the 2 x 2 block
    assert _counts(m)[0] == [0, 8, 0, 0] and r["f1"][0] == 0.0
    m2 = BoundaryF1(2, width=1)
    m2.update(target, pred)  # the other way round: recall 0, precision NaN
    r2 = m2.compute()
    assert r2["recall"][1] == 0.0 and math.isnan(r2["precision"][1]) and r2["f1"][1] == 0.0


def test_ignore_region_edges_are_not_boundaries():
    # target: class 1 on the left, ignore on the right; prediction puts class 0 where the target is ignored
    target = torch.ones(4, 6, dtype=torch.int64)
    target[:, 3:] = 255
    pred = torch.ones(4, 6, dtype=torch.int64)
    pred[:, 3:] = 0
    m = BoundaryF1(2, width=2)
    m.update(pred, target)
    # GT pixels touching the ignore region are not boundaries; the predicted 1|0 edge lies on the ignore edge
    # (col 2 | col 3): col 3 is ignored, and the pair (col 2, col 3) is not a valid adjacency, so no counts.
    assert m.counts.sum() == 0
    assert all(math.isnan(v) for v in m.compute()["f1"])
    # without ignore handling the same maps (255 -> class 0) give boundaries on both sides
    m_no = BoundaryF1(2, ignore_index=None, width=0)
    m_no.update(pred, torch.where(target == 255, 0, target))
    assert _counts(m_no) == [[4, 4, 4, 4], [4, 4, 4, 4]]


def test_predicted_boundary_on_ignored_pixel_is_not_counted():
    target = torch.zeros(5, 5, dtype=torch.int64)
    target[2, 2] = 255
    pred = torch.zeros(5, 5, dtype=torch.int64)
    pred[2, 2] = 1  # a one-pixel blob exactly on the ignored pixel
    m = BoundaryF1(2, width=1)
    m.update(pred, target)
    assert m.counts.sum() == 0  # neither the blob nor its 4 neighbours (their differing neighbour is ignored)
    pred2 = torch.zeros(5, 5, dtype=torch.int64)
    pred2[1, 1] = 1  # the same blob on a valid pixel is counted: 1 class-1 pixel, 4 class-0 pixels
    m.update(pred2, target)
    assert _counts(m) == [[0, 4, 0, 0], [0, 1, 0, 0]]


def test_ignored_border_row_equals_cropping_it():
    torch.manual_seed(1)
    target = torch.randint(0, 3, (3, 9, 8))
    pred = torch.randint(0, 3, (3, 9, 8))
    ignored = target.clone()
    ignored[:, -1] = 255
    a, b = BoundaryF1(3, width=2), BoundaryF1(3, width=2)
    a.update(pred, ignored)
    b.update(pred[:, :-1], target[:, :-1])
    assert torch.equal(a.counts, b.counts)


@pytest.mark.parametrize("width", [0, 1, 2, 3])
def test_matches_brute_force_reference(width):
    rng = np.random.default_rng(width)
    for _ in range(3):
        # blocky random maps (upsampled), so boundaries are sparse and matching is non-trivial
        target = np.kron(rng.integers(0, 4, (4, 5)), np.ones((3, 3), np.int64))[:11, :13]
        pred = np.kron(rng.integers(0, 4, (4, 5)), np.ones((3, 3), np.int64))[:11, :13]
        target[rng.random(target.shape) < 0.1] = 255
        m = BoundaryF1(4, ignore_index=255, width=width)
        m.update(torch.from_numpy(pred), torch.from_numpy(target))
        assert m.counts.tolist() == _reference_counts(pred, target, 4, 255, width).tolist()


def _random_batch(seed: int, n: int, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` random 4-class targets (image 1's top rows ignored) and scores."""
    torch.manual_seed(seed)
    target = torch.randint(0, 4, (n, height, width))
    target[1, : height // 3] = 255
    return target, torch.randn(n, 4, height, width)


def test_streaming_equals_one_batch():
    target, logits = _random_batch(2, 4, 10, 7)
    a, b = BoundaryF1(4, width=1), BoundaryF1(4, width=1)
    a.update(logits, target)
    b.update(logits[:2].argmax(1), target[:2])
    b.update(logits[2], target[2])  # unbatched C x H x W scores
    b.update(logits[3].argmax(0), target[3])  # unbatched H x W indices
    assert torch.equal(a.counts, b.counts) and a.counts[1].sum() > 0


def test_reset_and_errors():
    m = BoundaryF1(2)
    m.update(_square(), _square((1, 0)))
    assert m.counts.sum() > 0
    m.reset()
    assert m.counts.sum() == 0 and math.isnan(m.compute()["mean_f1"])
    with pytest.raises(ValueError, match="target holds class 5"):
        m.update(torch.zeros(3, 3, dtype=torch.int64), torch.full((3, 3), 5))
    with pytest.raises(ValueError, match="prediction holds class 2"):
        m.update(torch.full((3, 3), 2), torch.zeros(3, 3, dtype=torch.int64))
    with pytest.raises(ValueError, match="does not match"):
        m.update(torch.zeros(3, 4, dtype=torch.int64), torch.zeros(3, 3, dtype=torch.int64))
    with pytest.raises(ValueError, match="^width must be a non-negative integer, got -1$"):
        BoundaryF1(2, width=-1)


def _reduced_counts(rank: int) -> list:
    m = BoundaryF1(2, width=0)
    m.update(_square((0, rank)), _square())  # rank 0: perfect; rank 1: one column off
    m.all_reduce()
    return m.counts.tolist()


@pytest.mark.slow
def test_all_reduce_sums_over_processes():
    results = run_in_processes(_reduced_counts)
    # perfect: [16, 16, 16, 16] / [12, 12, 12, 12]; shifted: [6, 16, 6, 16] / [6, 12, 6, 12]
    assert results[0] == results[1] == [[22, 18], [32, 24], [22, 18], [32, 24]]


# --- Csurka et al.'s per-image BF score (bf_score), beside the pooled mean_f1 ---


def _two_images() -> tuple[torch.Tensor, torch.Tensor]:
    """The reviewer's example, 40 x 40, width 2. Image A: a 30 x 30 square of class 1, predicted exactly.
    Image B: a 2 x 2 ground-truth square at (10, 10), predicted as a 2 x 2 square at (30, 30)."""
    a = torch.zeros(40, 40, dtype=torch.int64)
    a[5:35, 5:35] = 1
    b = torch.zeros(40, 40, dtype=torch.int64)
    b[10:12, 10:12] = 1
    pb = torch.zeros(40, 40, dtype=torch.int64)
    pb[30:32, 30:32] = 1
    return torch.stack([a, pb]), torch.stack([a, b])


def test_bf_score_is_per_image_while_mean_f1_pools_the_data_set():
    pred, target = _two_images()
    m = BoundaryF1(2, width=2)
    m.update(pred, target)
    r = m.compute()
    # pooled: class 0 boundary 120 (A) + 8 (B) pixels on each side, 120 matched; class 1: 116 + 4, 116 matched
    assert _counts(m) == [[120, 128, 120, 128], [116, 120, 116, 120]]
    assert r["f1"] == pytest.approx([120 / 128, 116 / 120])
    assert r["mean_f1"] == pytest.approx((120 / 128 + 116 / 120) / 2)  # 0.952..., unchanged
    # per image: A scores 1 in both classes, B 0 in both (the small square is missed): (1 + 0) / 2
    assert r["bf_score"] == 0.5
    assert r["bf_score_per_class"] == [0.5, 0.5]


def test_bf_score_per_class_averages_over_the_images_where_the_class_is_defined():
    target1, pred1 = _square(), _square((0, 1))  # width 0: class 0 F1 6/16, class 1 F1 1/2, class 2 NaN
    target2 = pred2 = 2 * _square()  # perfect: class 0 and 2 F1 1, class 1 NaN
    m = BoundaryF1(3, width=0)
    m.update(torch.stack([pred1, pred2]), torch.stack([target1, target2]))
    r = m.compute()
    # image scores: (6/16 + 1/2) / 2 = 0.4375 and (1 + 1) / 2 = 1
    assert r["bf_score"] == pytest.approx((0.4375 + 1) / 2)
    # each class over the images where it has a boundary: class 0 in both, class 1 in the first, 2 in the second
    assert r["bf_score_per_class"] == pytest.approx([(6 / 16 + 1) / 2, 0.5, 1.0])
    # the image score is not the mean of the per-class averages (that would be 0.729...)
    assert r["bf_score"] != pytest.approx(sum(r["bf_score_per_class"]) / 3)


def test_image_without_boundaries_is_left_out_of_bf_score():
    pred, target = _two_images()
    blank = torch.zeros(1, 40, 40, dtype=torch.int64)  # one class everywhere: no boundary in either map
    ignored = torch.full((1, 40, 40), 255, dtype=torch.int64)  # all ignored: nothing counted
    m = BoundaryF1(2, width=2)
    m.update(torch.cat([pred, blank, blank]), torch.cat([target, blank, ignored]))
    r = m.compute()
    assert r["bf_score"] == 0.5 and r["bf_score_per_class"] == [0.5, 0.5]
    # an image whose only boundary is on one side scores 0 and does count
    m.update(pred[1:], blank)
    assert m.compute()["bf_score"] == pytest.approx(1 / 3)


def test_bf_score_is_nan_without_any_image_and_reset_clears_it():
    m = BoundaryF1(2, width=1)
    r = m.compute()
    assert math.isnan(r["bf_score"]) and all(math.isnan(v) for v in r["bf_score_per_class"])
    pred, target = _two_images()
    m.update(pred, target)
    assert m.compute()["bf_score"] == 0.5
    m.reset()
    r = m.compute()
    assert math.isnan(r["bf_score"]) and all(math.isnan(v) for v in r["bf_score_per_class"])
    assert m.counts.sum() == 0


def test_bf_score_streams_over_updates():
    pred, target = _two_images()
    one, two = BoundaryF1(2, width=2), BoundaryF1(2, width=2)
    one.update(pred, target)
    two.update(pred[1], target[1])  # image B first, unbatched
    two.update(pred[:1], target[:1])
    assert two.compute()["bf_score"] == one.compute()["bf_score"] == 0.5
    assert two.compute()["bf_score_per_class"] == one.compute()["bf_score_per_class"]


def test_bf_score_batch_of_n_equals_n_updates_and_the_per_image_definition():
    target, logits = _random_batch(3, 5, 10, 9)
    batch, single = BoundaryF1(4, width=1), BoundaryF1(4, width=1)
    batch.update(logits, target)
    scores, per_class = [], [[] for _ in range(4)]
    for i in range(5):
        single.update(logits[i], target[i])
        alone = BoundaryF1(4, width=1)  # one image: its per-image F1 is the pooled F1 of that image alone
        alone.update(logits[i], target[i])
        f1 = alone.compute()["f1"]
        scores.append(alone.compute()["mean_f1"])
        for c in range(4):
            if not math.isnan(f1[c]):
                per_class[c].append(f1[c])
    rb, rs = batch.compute(), single.compute()
    assert torch.equal(batch.counts, single.counts)
    assert rb["bf_score"] == pytest.approx(rs["bf_score"], rel=1e-12)
    assert rb["bf_score_per_class"] == pytest.approx(rs["bf_score_per_class"], rel=1e-12)
    assert rb["bf_score"] == pytest.approx(sum(scores) / 5, rel=1e-12)
    assert rb["bf_score_per_class"] == pytest.approx([sum(v) / len(v) for v in per_class], rel=1e-12)


def test_evaluator_reports_bf_score_beside_boundary_f1(tmp_path):
    from pixelwise.data import SegmentationDataset, build_transforms
    from pixelwise.engine.evaluator import evaluate
    from pixelwise.models import build_model

    from .conftest import write_dataset

    root = write_dataset(tmp_path / "data", splits={"val": 2}, num_classes=3).parent
    torch.manual_seed(0)
    model = build_model(name="unet", num_classes=3, base_channels=4, depth=2)
    ds = SegmentationDataset(root, "toy", "val", transforms=build_transforms(train=False, mean=[0.5], std=[0.25]))
    both = evaluate(model, ds, boundary_width=1, progress=False)["boundary"]
    # shard=(i, 2) outside a process group scores image i alone (all_reduce is a no-op)
    alone = [evaluate(model, ds, boundary_width=1, progress=False, shard=(i, 2))["boundary"] for i in range(2)]
    assert {"mean_f1", "f1", "bf_score", "bf_score_per_class", "width"} <= set(both) and "counts" not in both
    for a in alone:  # one image: the per-image score is that image's mean boundary F1
        assert a["bf_score"] == pytest.approx(a["mean_f1"]) and a["bf_score_per_class"] == pytest.approx(a["f1"])
    assert both["bf_score"] == pytest.approx((alone[0]["mean_f1"] + alone[1]["mean_f1"]) / 2)


def _reduced_bf_score(rank: int) -> dict:
    m = BoundaryF1(2, width=0)
    m.update(_square((0, rank)), _square())  # rank 0: perfect; rank 1: one column off
    m.all_reduce()
    r = m.compute()
    return {"bf_score": r["bf_score"], "per_class": r["bf_score_per_class"]}


@pytest.mark.slow
def test_all_reduce_averages_bf_score_over_the_images_of_all_processes():
    results = run_in_processes(_reduced_bf_score)
    # image scores 1 and (6/16 + 1/2) / 2 = 0.4375; class 0: (1 + 6/16) / 2, class 1: (1 + 1/2) / 2
    for r in results.values():
        assert r["bf_score"] == pytest.approx((1 + 0.4375) / 2)
        assert r["per_class"] == pytest.approx([0.6875, 0.75])


def test_the_eval_table_prints_the_bf_score_beside_the_pooled_boundary_f1():
    from pixelwise.metrics.table import format_metrics_table

    bf = BoundaryF1(2, width=2)
    target = torch.zeros(2, 40, 40, dtype=torch.long)
    target[0, 5:35, 5:35] = 1
    target[1, 10:12, 10:12] = 1
    pred = target.clone()
    pred[1] = 0
    pred[1, 30:32, 30:32] = 1
    bf.update(pred, target)
    metrics = {
        **{k: 0.5 for k in ("pixel_accuracy", "mean_accuracy", "miou", "fwiou", "mean_f1")},
        "iou": [0.5, 0.5], "accuracy": [0.5, 0.5], "f1": [0.5, 0.5],
        "boundary": {**bf.compute(), "width": 2},
    }  # fmt: skip
    lines = format_metrics_table(metrics, ["a", "b"]).splitlines()
    pooled = next(line for line in lines if line.startswith("boundary_f1@2px"))
    per_image = next(line for line in lines if line.startswith("bf_score@2px"))
    assert pooled.split() == ["boundary_f1@2px", "95.21"]  # the small square's miss weighs little, pooled
    assert per_image.split() == ["bf_score@2px", "50.00"]  # per image (Csurka et al.): 1.0 and 0.0
