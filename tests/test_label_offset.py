"""benchmarks/label_offset.py: the offset that lines predictions up with masks drawn off their images."""

from __future__ import annotations

import torch

from .conftest import load_benchmark

label_offset = load_benchmark("label_offset")

STEPS = [-1.0, -0.5, 0.0, 0.5, 1.0]


def _probs_of(labels: torch.Tensor, classes: int) -> torch.Tensor:
    return torch.nn.functional.one_hot(labels, classes).permute(2, 0, 1).float()


def test_predictions_one_row_above_their_masks_are_moved_one_row_down():
    target = torch.zeros(12, 9, dtype=torch.long)
    target[5:8, :] = 1  # a horizontal band
    target[:, 6] = 2  # and a vertical line
    predicted = torch.roll(target, shifts=-1, dims=0)  # everything one row too high
    wrong = label_offset.offset_errors(_probs_of(predicted, 3), target, 255, STEPS)
    assert set(wrong) == {(dy, dx) for dy in STEPS for dx in STEPS}
    # moved one row down (the top row repeated): lined up again
    assert wrong[(1.0, 0.0)] == 0
    # unmoved: the rows above and at the band's bottom edge, on the 8 columns the vertical line does not cross
    assert wrong[(0.0, 0.0)] == 2 * 8
    assert wrong[(-1.0, 0.0)] == 4 * 8  # moved the wrong way: two rows off at each edge
    assert [o for o, n in wrong.items() if n == 0] == [(1.0, 0.0)]


def test_ignored_pixels_are_not_counted():
    target = torch.zeros(6, 6, dtype=torch.long)
    target[:, 3:] = 1
    predicted = torch.zeros_like(target)  # column 3 onwards all wrong
    assert label_offset.offset_errors(_probs_of(predicted, 2), target, 255, [0.0])[(0.0, 0.0)] == 18
    target[:, 3:] = 255
    assert label_offset.offset_errors(_probs_of(predicted, 2), target, 255, [0.0])[(0.0, 0.0)] == 0
