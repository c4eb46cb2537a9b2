"""Pictures: colour masks, overlays of every image kind, instance colours, and the run report's choices."""

from __future__ import annotations

import colorsys
import json

import numpy as np

from pixelwise.report import write_report
from pixelwise.visualize import colorize, instance_colors, instance_overlay, overlay, overlay_palette


def test_colorize_gives_ids_outside_the_palette_the_ignore_colour():
    palette = [[10, 20, 30], [200, 100, 50]]
    out = colorize(np.array([[0, 1, 256, -1, 255]]), palette, ignore_color=(1, 2, 3))
    assert out[0].tolist() == [[10, 20, 30], [200, 100, 50], [1, 2, 3], [1, 2, 3], [1, 2, 3]]  # 256 wrapped to 0


def test_grey_palettes_get_a_distinct_colour_for_every_class():
    assert len({tuple(c) for c in overlay_palette([[i, i, i] for i in range(40)])}) == 40  # 15 before


def test_overlay_takes_rgba_16_bit_and_float_images():
    none = np.zeros((2, 3, 3), np.uint8)
    for image in (
        np.full((2, 3, 4), 204, np.uint8),  # RGBA: alpha dropped (was a broadcast error)
        np.full((2, 3, 1), 204 * 257, np.uint16),  # 16-bit: 0..65535 (was white)
        np.full((2, 3), 0.8, np.float32),  # float in [0, 1] (was black)
    ):
        assert overlay(image, none, 0.0).tolist() == np.full((2, 3, 3), 204).tolist()


def test_instance_colours_follow_the_ids_present_not_the_largest():
    expected = np.round(np.asarray(colorsys.hsv_to_rgb((4_999_999 * 0.618033988749895) % 1.0, 0.85, 1.0)) * 255)
    inst = np.zeros((6, 6), np.int64)
    inst[1:5, 1:5] = 5_000_000  # one object with a large id: colours for one id, not five million
    out = instance_overlay(np.zeros((6, 6, 3), np.uint8), inst, alpha=1.0)
    assert out[2, 2].tolist() == expected.tolist() and out[0, 0].tolist() == [0, 0, 0]
    assert (
        instance_colors(3)[2].tolist()
        == np.round(np.asarray(colorsys.hsv_to_rgb(0.618033988749895, 0.85, 1.0)) * 255).tolist()
    )
    assert instance_overlay(np.zeros((3, 3, 3), np.uint8), -np.ones((3, 3), int)).shape == (3, 3, 3)


def test_the_report_of_an_instance_run_picks_best_pt_s_iteration(tmp_path):
    """best.pt of an instance method is the best mean AP; the report chose the best mIoU, and drew null as 0."""
    records = [
        {"type": "train", "iter": 1, "loss": 1.0, "train_seconds": 1.0, "images_per_s": 2.0},
        {"type": "val", "iter": 1, "miou": 0.6, "pixel_accuracy": 0.9, "mean_f1": 0.7, "fwiou": 0.8,
         "iou": [0.7, 0.5], "instances": {"mean_ap": 0.1, "pq": 0.2}},
        {"type": "val", "iter": 2, "miou": 0.5, "pixel_accuracy": None, "mean_f1": 0.6, "fwiou": 0.7,
         "iou": [0.6, 0.4], "instances": {"mean_ap": 0.4, "pq": 0.3}},
    ]  # fmt: skip
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    text = write_report(tmp_path).read_text()
    assert "Best validation mean AP **40.00**, PQ 30.00, mIoU 50.00 at iteration 2 (pixel accuracy n/a" in text
