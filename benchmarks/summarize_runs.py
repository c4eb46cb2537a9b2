"""Markdown table (and a JSON record) of finished training runs, side by side, from what
``pixelwise train`` and ``pixelwise eval --json`` wrote: the run's config and metrics log
(iterations, training time) and an eval JSON in the run directory.

    python benchmarks/summarize_runs.py --eval-json test.json --out benchmarks/results/camvid_models.json \\
        "U-Net=runs/camvid_unet" "DeepLab v3+ MobileNetV2=runs/camvid_deeplabv3plus_mobilenetv2_os16"

Columns: iterations, training minutes (the log's ``train_seconds``, evaluation excluded), mIoU, pixel
accuracy, mean boundary F1 and the ISBI 2012 scores when the eval computed them, then per-class IoU
(``--per-class``). Figures in %, except pixel error and the V scores (fractions, as the ISBI challenge).
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

import yaml

from pixelwise.report import read_log


def summarize(run_dir: Path, eval_json: str) -> dict[str, Any]:
    """The numbers of one run: its model and loss, length and time, and the eval's metrics."""
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    train_records, _ = read_log(run_dir)
    last = train_records[-1] if train_records else {}
    result = json.loads((run_dir / eval_json).read_text())
    m = result["metrics"]
    out: dict[str, Any] = {
        "run_dir": str(run_dir),
        "model": config["model"]["name"],
        "loss": config["train"]["loss"],
        "class_weights": config["train"].get("class_weights"),
        "iters": last.get("iter"),
        "train_minutes": last["train_seconds"] / 60 if "train_seconds" in last else None,
        "split": result.get("split"),
        "num_images": result.get("num_images"),
        "miou": m["miou"],
        "pixel_accuracy": m["pixel_accuracy"],
        "pixel_error": 1 - m["pixel_accuracy"],
        "iou": dict(zip(result["classes"], m["iou"], strict=True)),
    }
    if "boundary" in m:
        out["boundary_width"] = m["boundary"]["width"]
        out["boundary_f1"] = m["boundary"]["mean_f1"]
        out["boundary_f1_per_class"] = dict(zip(result["classes"], m["boundary"]["f1"], strict=True))
    if "instances" in m:
        out["instances"] = {k: v for k, v in m["instances"].items() if isinstance(v, (int, float, str, type(None)))}
    return out


def markdown(rows: dict[str, dict[str, Any]], per_class: bool) -> str:
    pct = lambda v: "n/a" if v is None or not math.isfinite(v) else f"{100 * v:.1f}"  # noqa: E731
    first = next(iter(rows.values()))
    cols = ["run", "iterations", "training (min)", "mIoU", "pixel acc."]
    has_bf = all("boundary_f1" in r for r in rows.values())
    has_inst = all("instances" in r for r in rows.values())
    if has_bf:
        cols.append(f"boundary F1 ({first['boundary_width']} px)")
    if has_inst:
        cols += ["pixel error", "V_rand", "V_info"]
    if per_class:
        cols += list(first["iou"])
    lines = ["| " + " | ".join(cols) + " |", "|---|" + "---:|" * (len(cols) - 1)]
    for label, r in rows.items():
        minutes = "n/a" if r["train_minutes"] is None else f"{r['train_minutes']:.1f}"
        cells = [label, str(r["iters"]), minutes, pct(r["miou"]), pct(r["pixel_accuracy"])]
        if has_bf:
            cells.append(pct(r["boundary_f1"]))
        if has_inst:
            cells += [f"{r['pixel_error']:.4f}", f"{r['instances']['v_rand']:.4f}", f"{r['instances']['v_info']:.4f}"]
        if per_class:
            cells += [pct(v) for v in r["iou"].values()]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", help="LABEL=RUN_DIR[:EVAL_JSON] (EVAL_JSON overrides --eval-json)")
    ap.add_argument("--eval-json", default="test.json", help="eval JSON file name inside each run directory")
    ap.add_argument("--per-class", action="store_true", help="add a column per class IoU")
    ap.add_argument("--out", help="write the numbers as JSON here")
    args = ap.parse_args()
    rows = {}
    for spec in args.runs:
        label, sep, where = spec.partition("=")
        if not sep:
            ap.error(f"{spec!r}: expected LABEL=RUN_DIR")
        run_dir, _, eval_json = where.partition(":")
        rows[label] = summarize(Path(run_dir), eval_json or args.eval_json)
    print(markdown(rows, args.per_class))
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=1) + "\n")
        print(f"written to {args.out}")


if __name__ == "__main__":
    main()
