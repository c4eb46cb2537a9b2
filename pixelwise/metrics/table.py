"""The per-class metrics table that ``pixelwise eval`` prints."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

SUMMARY_KEYS = ("pixel_accuracy", "mean_accuracy", "miou", "fwiou", "mean_f1")


def format_metrics_table(metrics: dict[str, Any], class_names: Sequence[str]) -> str:
    """Per-class table (IoU, accuracy, F1, and boundary F1 if computed, in %) followed by the
    summary metrics and, if computed, the instance scores."""
    boundary = metrics.get("boundary")
    summary = [(k, metrics[k]) for k in SUMMARY_KEYS]
    if boundary:
        summary.append((f"boundary_f1@{boundary['width']}px", boundary["mean_f1"]))
        if "bf_score" in boundary:  # Csurka et al.'s per-image mean (the pooled F1 above weighs images by boundary)
            summary.append((f"bf_score@{boundary['width']}px", boundary["bf_score"]))
    if metrics.get("challenge_pixel_error"):
        summary.append(("pixel_error", 1 - metrics["pixel_accuracy"]))
        summary.append(("challenge_pixel_error", metrics["challenge_pixel_error"]["pixel_error"]))
    if metrics.get("instances"):
        summary += [(k, metrics["instances"][k]) for k in ("v_rand", "v_info")]
    width = max(len(k) for k in (*class_names, *(name for name, _ in summary)))
    pct = lambda v: "   n/a" if v is None or not math.isfinite(v) else f"{100 * v:6.2f}"  # noqa: E731
    header = f"{'class':<{width}}  {'IoU':>6}  {'Acc':>6}  {'F1':>6}" + ("  {:>6}".format("BF") if boundary else "")
    lines = [header]
    for i, name in enumerate(class_names):
        row = f"{name:<{width}}  {pct(metrics['iou'][i])}  {pct(metrics['accuracy'][i])}  {pct(metrics['f1'][i])}"
        lines.append(row + (f"  {pct(boundary['f1'][i])}" if boundary else ""))
    lines.append("")
    lines += [f"{name:<{width}}  {pct(value)}" for name, value in summary]
    if metrics.get("instances") and "ap" in metrics["instances"]:
        lines += ["", format_instance_table(metrics["instances"])]
    return "\n".join(lines)


def format_instance_table(scores: dict[str, Any]) -> str:
    """The matching scores per IoU threshold (AP = TP / (TP + FP + FN), precision, recall, F1; the StarDist
    paper's table) and the panoptic and COCO summaries, as :class:`~pixelwise.metrics.InstanceMetrics` gives
    them; values as fractions (3 decimals, as the StarDist paper prints them)."""
    taus = list(scores["ap"])
    num = lambda v: "  n/a" if v is None or not math.isfinite(v) else f"{v:.3f}"  # noqa: E731
    lines = [f"{'IoU':<10}" + " ".join(f"{t:>5}" for t in taus)]
    for key in ("ap", "precision", "recall", "f1"):
        lines.append(f"{key:<10}" + " ".join(f"{num(scores[key][t]):>5}" for t in taus))
    summary = [("mean AP", scores["mean_ap"]), ("PQ", scores["pq"]), ("SQ", scores["sq"]), ("RQ", scores["rq"])]
    summary += [
        (name, scores[key]) for name, key in (("COCO AP", "coco_ap"), ("COCO AP50", "coco_ap50")) if key in scores
    ]
    lines.append("  ".join(f"{name} {num(value)}" for name, value in summary))
    lines.append(f"{scores['num_true']} true and {scores['num_pred']} predicted instances")
    return "\n".join(lines)
