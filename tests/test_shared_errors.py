"""benchmarks/shared_errors.py: each model's wrong pixels and their ensemble's, by hand."""

from __future__ import annotations

import torch

from .conftest import load_benchmark

shared_errors = load_benchmark("shared_errors")


def _probs(cell: list[list[float]]) -> torch.Tensor:
    """Two-class probabilities from the cell probability of each pixel."""
    p = torch.tensor(cell)
    return torch.stack([1 - p, p])


def test_each_model_and_the_ensemble_are_scored_on_the_labelled_pixels():
    target = torch.tensor([[0, 1, 1], [1, 0, 255]])
    a = _probs([[0.1, 0.9, 0.4], [0.8, 0.7, 0.9]])  # wrong at (0,2) and (1,1)
    b = _probs([[0.3, 0.2, 0.9], [0.9, 0.6, 0.1]])  # wrong at (0,1) and (1,1)
    per_model, ensemble = shared_errors.wrong_counts([a, b], target, 255)
    assert per_model[0].tolist() == [[False, False, True], [False, True, False]]
    assert per_model[1].tolist() == [[False, True, False], [False, True, False]]
    # averages 0.2, 0.55, 0.65 / 0.85, 0.65, (ignored): only the pixel both get wrong stays wrong
    assert ensemble.tolist() == [[False, False, False], [False, True, False]]
    assert (torch.stack(per_model).sum(0) == 2).sum() == 1  # wrong in every model
