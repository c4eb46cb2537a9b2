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
    return "\n".join(lines)
