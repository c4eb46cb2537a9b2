"""``pixelwise report RUN_DIR``: pictures and a Markdown summary of a training run."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import yaml

from .errors import DataError
from .fileio import load_yaml, read_jsonl
from .visualize import _pyplot, _save, plot_confusion_matrix, plot_per_class


def read_log(run_dir: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        raise DataError(f"{run_dir} is not a run directory: {path} does not exist")
    records = read_jsonl(path)
    return [r for r in records if r.get("type") == "train"], [r for r in records if r.get("type") == "val"]


def _fmt(v: float | None) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.2f}"


def write_report(run_dir: str | os.PathLike, out_dir: str | os.PathLike | None = None) -> Path:
    """Write ``loss.png``, ``val.png``, ``per_class_iou.png``, ``confusion.png`` and ``summary.md``
    (into ``RUN_DIR/report`` by default); returns the summary's path."""
    run_dir = Path(run_dir)
    out = Path(out_dir) if out_dir else run_dir / "report"
    out.mkdir(parents=True, exist_ok=True)
    train, val = read_log(run_dir)
    config = load_yaml((run_dir / "config.yaml").read_text()) if (run_dir / "config.yaml").exists() else {}
    classes = _class_names(run_dir, config, val)
    plt = _pyplot()

    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=110)
    ax.plot([r["iter"] for r in train], [r["loss"] for r in train], color="#4878a8")
    ax.set_xlabel("iteration")
    ax.set_ylabel("training loss")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    _save(fig, out / "loss.png")

    lines = [f"# Run report: {run_dir}", ""]
    if val:
        fig, ax = plt.subplots(figsize=(6, 3.5), dpi=110)
        for key, label in (("miou", "mIoU"), ("pixel_accuracy", "pixel accuracy"), ("mean_f1", "mean F1")):
            ax.plot([r["iter"] for r in val], [100 * (r[key] or 0) for r in val], marker="o", label=label)
        ax.set_xlabel("iteration")
        ax.set_ylabel("validation (%)")
        ax.grid(alpha=0.3)
        ax.legend()
        _save(fig, out / "val.png")
        best = max(val, key=lambda r: -1 if r["miou"] is None else r["miou"])
        plot_per_class(best["iou"], classes, out / "per_class_iou.png")
        if "confusion_matrix" in best:
            plot_confusion_matrix(
                best["confusion_matrix"],
                classes,
                out / "confusion.png",
                title=f"validation at iteration {best['iter']} (row-normalised)",
            )
        lines += [
            f"Best validation mIoU **{_fmt(best['miou'])}** at iteration {best['iter']} "
            f"(pixel accuracy {_fmt(best['pixel_accuracy'])}, mean F1 {_fmt(best['mean_f1'])}, "
            f"fwIoU {_fmt(best['fwiou'])}).",
            "",
            "| class | IoU (%) |",
            "|---|---:|",
            *[f"| {c} | {_fmt(v)} |" for c, v in zip(classes, best["iou"], strict=True)],
            "",
            "![validation](val.png) ![per-class IoU](per_class_iou.png)",
            "",
            "![confusion matrix](confusion.png)" if "confusion_matrix" in best else "",
        ]
    if train:
        last = train[-1]
        wait = f" ({100 * last['data_wait_share']:.0f} % of it waiting for data)" if "data_wait_share" in last else ""
        lines += [
            "",
            f"{last['iter']} iterations, {last['train_seconds'] / 60:.1f} min of training "
            f"(evaluation excluded), last {last['images_per_s']:.2f} images/s{wait}.",
            "",
            "![loss](loss.png)",
        ]
    if config:
        lines += ["", "## Config", "", "```yaml", yaml.safe_dump(config, sort_keys=False).strip(), "```"]
    summary = out / "summary.md"
    summary.write_text("\n".join(lines) + "\n")
    return summary


def _class_names(run_dir: Path, config: dict[str, Any], val: list[dict[str, Any]]) -> list[str]:
    from .models import load_checkpoint

    for name in ("best.pt", "last.pt"):
        if (run_dir / name).exists():
            return list(load_checkpoint(run_dir / name)["meta"]["classes"])
    n = len(val[0]["iou"]) if val else 0
    return [f"class {i}" for i in range(n)]
