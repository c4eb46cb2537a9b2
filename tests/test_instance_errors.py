"""benchmarks/instance_errors.py sorts each unmatched instance into a kind: one hand-built case of each."""

from __future__ import annotations

import numpy as np

from .conftest import load_benchmark

instance_errors = load_benchmark("instance_errors")


def test_each_kind_of_error_once():
    truth, pred = np.zeros((24, 20), np.int32), np.zeros((24, 20), np.int32)
    truth[0:4, 0:4], pred[0:4, 0:4] = 1, 1  # matched
    truth[0:4, 6:10], truth[0:4, 10:14], pred[0:5, 6:14] = 2, 3, 2  # two touching nuclei, one prediction (IoUs 0.4)
    truth[6:10, 0:9] = 4  # one nucleus cut in three
    pred[6:10, 0:3], pred[6:10, 3:6], pred[6:10, 6:9] = 3, 4, 5
    truth[12:16, 0:4] = 5  # nothing predicted on it
    pred[12:16, 10:14] = 6  # a prediction on background
    truth[16:20, 0:4], pred[16:20, 1:7] = 6, 7  # 12 of 16 pixels covered, IoU 12 / 28
    truth[20:24, 0:8], pred[20:24, 0:4], pred[20:24, 4:8] = 7, 8, 9  # halves: IoU 0.5 each, one match (as eval)
    gt, fp, tp = instance_errors.classify(instance_errors.pair_table(truth, pred), 0.5)
    assert tp == 2
    assert gt == {"missed": [16], "merged": [16, 16], "split": [36], "outline": [16]}
    assert fp == {"spurious": 1, "fragment": 4, "merge": 1, "outline": 1}


def test_empty_maps():
    empty, one = np.zeros((4, 4), np.int32), np.zeros((4, 4), np.int32)
    one[1:3, 1:3] = 7
    assert instance_errors.classify(instance_errors.pair_table(empty, empty), 0.5)[2] == 0
    gt, fp, tp = instance_errors.classify(instance_errors.pair_table(one, empty), 0.5)
    assert (gt["missed"], sum(fp.values()), tp) == ([4], 0, 0)
    gt, fp, tp = instance_errors.classify(instance_errors.pair_table(empty, one), 0.5)
    assert (sum(map(len, gt.values())), fp["spurious"], tp) == (0, 1, 0)
