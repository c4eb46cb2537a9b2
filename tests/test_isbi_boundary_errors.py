"""benchmarks/isbi_boundary_errors.py: distances to the class boundary and the shifted ground truth, by hand."""

from __future__ import annotations

import numpy as np

from .conftest import load_benchmark

boundary_errors = load_benchmark("isbi_boundary_errors")


def test_distance_to_the_boundary_of_a_one_pixel_membrane():
    labels = np.ones((5, 7), np.int64)
    labels[:, 3] = 0  # a vertical membrane, one pixel wide
    dist = boundary_errors.boundary_distance(labels)
    assert (dist == np.array([3, 2, 1, 1, 1, 2, 3])[None, :]).all()


def test_shifted_ground_truth_errors():
    labels = np.ones((5, 7), np.int64)
    labels[:, 3] = 0
    # grown by 1: columns 2 and 4 turn to membrane (10 pixels); shrunk by 1: the one-pixel membrane vanishes (5)
    assert boundary_errors.shifted_errors(labels, 1) == (10, 5)
    assert boundary_errors.shifted_errors(labels, 2) == (20, 5)
    edge = np.ones((5, 7), np.int64)
    edge[:, :2] = 0  # a membrane along the image's left edge: the edge is not a boundary to erode from
    assert boundary_errors.shifted_errors(edge, 1) == (5, 5)


def test_one_class_slice_has_no_boundary():
    assert (boundary_errors.boundary_distance(np.ones((3, 4), np.int64)) == -1).all()
    assert (boundary_errors.boundary_distance(np.zeros((3, 4), np.int64)) == -1).all()


def test_shifted_errors_leave_out_uncounted_pixels():
    labels = np.ones((5, 7), np.int64)
    labels[:, 3] = 0
    counted = np.ones((5, 7), bool)
    counted[:, 2] = False  # e.g. the data set's ignore index: the grown membrane's left column is not counted
    assert boundary_errors.shifted_errors(labels, 1, counted) == (5, 5)
