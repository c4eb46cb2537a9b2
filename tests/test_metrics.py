import math

import pytest
import torch

from pixelwise.metrics import ConfusionMatrix

from .conftest import run_in_processes


def test_hand_computed_three_classes_with_ignore():
    # target row / prediction column; one pixel ignored (its prediction must not count)
    target = torch.tensor([[0, 0, 1, 1], [1, 2, 2, 255]])
    pred = torch.tensor([[0, 1, 1, 1], [2, 2, 0, 2]])
    cm = ConfusionMatrix(3, ignore_index=255)
    cm.update(pred, target)
    assert cm.matrix.tolist() == [[1, 1, 0], [0, 2, 1], [1, 0, 1]]
    m = cm.compute()
    # TP = 1, 2, 1; GT = 2, 3, 2; PR = 2, 3, 2
    assert m["iou"] == pytest.approx([1 / 3, 2 / 4, 1 / 3])
    assert m["miou"] == pytest.approx((1 / 3 + 1 / 2 + 1 / 3) / 3)
    assert m["pixel_accuracy"] == pytest.approx(4 / 7)
    assert m["recall"] == pytest.approx([1 / 2, 2 / 3, 1 / 2])
    assert m["accuracy"] == m["recall"]
    assert m["mean_accuracy"] == pytest.approx((1 / 2 + 2 / 3 + 1 / 2) / 3)
    assert m["precision"] == pytest.approx([1 / 2, 2 / 3, 1 / 2])
    assert m["f1"] == pytest.approx([2 / 4, 4 / 6, 2 / 4])
    assert m["mean_f1"] == pytest.approx((0.5 + 2 / 3 + 0.5) / 3)
    assert m["fwiou"] == pytest.approx(2 / 7 * 1 / 3 + 3 / 7 * 1 / 2 + 2 / 7 * 1 / 3)


def test_class_absent_from_both_is_nan_and_excluded_from_means():
    target = torch.tensor([0, 0, 1, 1])
    pred = torch.tensor([0, 1, 1, 1])
    cm = ConfusionMatrix(3)
    cm.update(pred, target)
    m = cm.compute()
    assert math.isnan(m["iou"][2]) and math.isnan(m["f1"][2])
    assert math.isnan(m["precision"][2]) and math.isnan(m["recall"][2])
    assert m["miou"] == pytest.approx((1 / 2 + 2 / 3) / 2)
    assert m["mean_f1"] == pytest.approx((2 / 3 + 4 / 5) / 2)
    assert m["fwiou"] == pytest.approx(0.5 * 0.5 + 0.5 * 2 / 3)


def test_class_predicted_but_absent_from_target_counts_zero():
    target = torch.tensor([0, 0, 0, 1])
    pred = torch.tensor([0, 2, 0, 1])
    cm = ConfusionMatrix(3)
    cm.update(pred, target)
    m = cm.compute()
    assert m["iou"][2] == 0.0 and m["f1"][2] == 0.0 and m["precision"][2] == 0.0
    assert math.isnan(m["recall"][2])
    assert m["miou"] == pytest.approx((2 / 3 + 1 + 0) / 3)
    assert m["mean_accuracy"] == pytest.approx((2 / 3 + 1) / 2)


def test_logits_equal_indices_and_streaming_equals_one_batch():
    torch.manual_seed(0)
    logits = torch.randn(3, 4, 7, 5)
    target = torch.randint(0, 4, (3, 7, 5))
    target[0, :2] = 255
    a, b, c = ConfusionMatrix(4), ConfusionMatrix(4), ConfusionMatrix(4)
    a.update(logits, target)
    b.update(logits.argmax(1), target)
    for i in range(3):  # streamed, and unbatched C x H x W scores
        c.update(logits[i], target[i])
    assert torch.equal(a.matrix, b.matrix) and torch.equal(a.matrix, c.matrix)
    assert a.matrix.sum() == 3 * 7 * 5 - 2 * 5


def test_scores_whose_class_dim_is_ambiguous_or_a_single_channel():
    # C x H x W scores of one image with C = H (3 x 3 x 2 against 3 x 2): the classes are dim 0, not the rows
    scores = torch.zeros(3, 3, 2)
    scores[2] = 1.0  # class 2 everywhere
    target = torch.full((3, 2), 2)
    cm = ConfusionMatrix(3)
    cm.update(scores, target)
    assert cm.matrix[2, 2] == 6 and cm.matrix.sum() == 6
    # a batch of N = C images (2 x 2 x 4 x 4 against 2 x 4 x 4): the classes are dim 1
    logits = torch.zeros(2, 2, 4, 4)
    logits[:, 1] = 1.0
    cm = ConfusionMatrix(2)
    cm.update(logits, torch.ones(2, 4, 4, dtype=torch.long))
    assert cm.matrix[1, 1] == 32
    # one sigmoid channel: an argmax would be class 0 everywhere
    with pytest.raises(ValueError) as e:
        cm.update(torch.rand(2, 1, 4, 4), torch.ones(2, 4, 4, dtype=torch.long))
    assert str(e.value) == (
        "prediction shape (2, 1, 4, 4) has one score channel for target (2, 4, 4): give class indices shaped like "
        "the target (a one-channel sigmoid output: (p > 0.5).long().squeeze(1)) or one score per class"
    )
    # the same output squeezed to the target's shape was cast to class 0 wherever p < 1: mIoU 0.25, not 1
    target = torch.tensor([[0, 1, 1, 0]])
    with pytest.raises(ValueError) as e:
        cm.update(torch.tensor([[0.1, 0.9, 0.8, 0.2]]), target)
    assert str(e.value) == (
        "prediction shape (1, 4) holds fractions, not class indices: threshold a probability map first "
        "((p > 0.5).long()) or give one score per class (N x C x H x W)"
    )
    cm.update(torch.tensor([[0.0, 1.0, 1.0, 0.0]]), target)  # whole numbers in a float tensor are classes
    assert cm.compute()["miou"] == 1.0


def test_reset_and_errors():
    cm = ConfusionMatrix(2)
    cm.update(torch.tensor([0, 1]), torch.tensor([0, 1]))
    cm.reset()
    assert cm.matrix.sum() == 0
    assert math.isnan(cm.compute()["miou"])
    with pytest.raises(ValueError, match="target holds class 5"):
        cm.update(torch.tensor([0]), torch.tensor([5]))
    with pytest.raises(ValueError, match="does not match"):
        cm.update(torch.tensor([0, 1]), torch.tensor([0]))


def _reduced_matrix(rank: int) -> list:
    cm = ConfusionMatrix(2)
    cm.update(torch.tensor([rank, 1]), torch.tensor([0, 1]))  # rank 0: both right; rank 1: one wrong
    cm.all_reduce()
    return cm.matrix.tolist()


@pytest.mark.slow
def test_all_reduce_sums_over_processes():
    results = run_in_processes(_reduced_matrix)
    assert results[0] == results[1] == [[1, 1], [0, 2]]


def test_scores_of_another_number_of_classes_are_refused():
    """Five score channels for a 3-class matrix were arg-maxed and counted: mIoU 0.183 without a word."""
    torch.manual_seed(0)
    scores = torch.randn(1, 5, 8, 8)
    scores[:, 3:] = -100.0
    cm = ConfusionMatrix(num_classes=3)
    with pytest.raises(ValueError) as e:
        cm.update(scores, torch.randint(0, 3, (1, 8, 8)))
    assert str(e.value) == (
        "prediction shape (1, 5, 8, 8) has 5 score channels for num_classes=3: give one score per class (3 "
        "channels) or class indices shaped like the target (1, 8, 8)"
    )
    assert cm.matrix.sum() == 0
    with pytest.raises(ValueError, match=r"^prediction shape \(1, 2, 8, 8\) has 2 score channels for num_classes=3"):
        cm.update(torch.randn(1, 2, 8, 8), torch.randint(0, 3, (1, 8, 8)))  # too few as well as too many
    from pixelwise.metrics.boundary import BoundaryF1

    boundary = BoundaryF1(num_classes=3)
    with pytest.raises(ValueError, match="has 5 score channels for num_classes=3"):
        boundary.update(scores, torch.randint(0, 3, (1, 8, 8)))
    assert boundary.counts.sum() == 0
