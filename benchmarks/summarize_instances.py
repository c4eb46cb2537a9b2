"""Tabulate DSB2018 instance runs (``pixelwise eval RUN/best.pt --split test --json RUN/test.json``) beside the
StarDist paper's Table 1 (Schmidt et al., MICCAI 2018; the rows are in the data set's README.md).

    python benchmarks/summarize_instances.py runs/dsb2018_*_33min [--out benchmarks/results/NAME.json]

``--out`` also writes the rows as JSON: per run its AP at each threshold, PQ, COCO AP, mIoU, iterations, minutes,
the best.pt iteration and the CPU, with the paper's rows.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import machine_info  # noqa: E402

TAUS = ["0.50", "0.55", "0.60", "0.65", "0.70", "0.75", "0.80", "0.85", "0.90"]
# StarDist paper, Table 1: AP = TP / (TP + FP + FN) on the 50 test images, at IoU thresholds 0.50 ... 0.90
PAPER = {
    "U-Net (2 class) [paper]": [0.674, 0.630, 0.598, 0.565, 0.534, 0.482, 0.415, 0.325, 0.203],
    "U-Net (3 class) [paper]": [0.806, 0.775, 0.743, 0.701, 0.654, 0.578, 0.491, 0.374, 0.226],
    "Mask R-CNN [paper]": [0.832, 0.805, 0.773, 0.730, 0.684, 0.597, 0.489, 0.353, 0.189],
    "StarDist [paper]": [0.864, 0.836, 0.804, 0.755, 0.685, 0.586, 0.450, 0.287, 0.119],
}


def run_row(run: Path) -> tuple[str, list[float], dict]:
    result = json.loads((run / "test.json").read_text())
    scores = result["metrics"]["instances"]
    log = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in log if r["type"] == "train"]
    vals = [r for r in log if r["type"] == "val" and "instances" in r]
    best = max(vals, key=lambda r: r["instances"]["mean_ap"], default=None)  # best.pt: the best val mean AP
    info = {
        "best_iter": best["iter"] if best else None,
        "iters": train[-1]["iter"] if train else 0,
        "minutes": train[-1]["train_seconds"] / 60 if train else 0.0,
        "pq": scores["pq"],
        "coco_ap": scores.get("coco_ap"),
        "miou": result["metrics"]["miou"],
    }
    return f"{run.name} ({scores['method']})", [scores["ap"][t] for t in TAUS], info


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, help="also write the table as JSON here")
    args = parser.parse_args()
    rows = {}
    lines = [
        "| method | " + " | ".join(TAUS) + " | PQ | training (best.pt at) |",
        "|---|" + "---:|" * (len(TAUS) + 2),
    ]
    for name, values in PAPER.items():
        lines.append(f"| {name} | " + " | ".join(f"{v:.3f}" for v in values) + " | | |")
    for run in args.runs:
        if not (run / "test.json").is_file():
            continue
        name, values, info = run_row(run)
        rows[run.name] = {"label": name, "ap": dict(zip(TAUS, values, strict=True)), **info}
        lines.append(
            f"| {name} | "
            + " | ".join(f"{v:.3f}" for v in values)
            + f" | {info['pq']:.3f} | {info['iters']} it, {info['minutes']:.1f} min ({info['best_iter']}) |"
        )
    print("\n".join(lines))
    if args.out:
        paper = {name: dict(zip(TAUS, values, strict=True)) for name, values in PAPER.items()}
        result = {"command": "python " + " ".join(sys.argv), **machine_info()}
        args.out.write_text(json.dumps({**result, "paper": paper, "runs": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
