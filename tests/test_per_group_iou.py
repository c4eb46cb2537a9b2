"""benchmarks/per_group_iou.py: images grouped by their file stems (CamVid's sequences by default)."""

from __future__ import annotations

import re

from .conftest import load_benchmark

per_group_iou = load_benchmark("per_group_iou")


def test_default_groups_are_camvid_sequences():
    pattern = re.compile(per_group_iou.DEFAULT_GROUP)
    assert per_group_iou.group_of("0001TP_008550", pattern) == "0001TP"
    assert per_group_iou.group_of("Seq05VD_f00000", pattern) == "Seq05VD"
    assert per_group_iou.group_of("0016E5_07959", pattern) == "0016E5"
    assert per_group_iou.group_of("slice", pattern) == "slice"  # no match: the stem is its own group
