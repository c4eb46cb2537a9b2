"""Export every registered model to ONNX and check it with onnxruntime (random weights).

    python benchmarks/export_all.py --size 256 --out benchmarks/results/export_all.json

For each model: whether the graph takes any batch/height/width (checked by running onnxruntime at
a second, odd size), and the largest |onnxruntime - PyTorch| of the logits.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import machine_info  # noqa: E402

from pixelwise import build_model, list_models
from pixelwise.export import export_onnx
from pixelwise.models.weights import save_checkpoint


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--num-classes", type=int, default=11)
    ap.add_argument("--opset", type=int, default=17)
    ap.add_argument("--out", default="benchmarks/results/export_all.json")
    args = ap.parse_args()
    rows = []
    print("| model | dynamic size | max abs diff (ORT vs PyTorch) | relative to max logit | export s |")
    print("|---|---|---|---|---|")
    for name in list_models():
        torch.manual_seed(0)
        model = build_model(name, num_classes=args.num_classes).eval()
        with torch.no_grad():  # zero-initialised layers (FCN's score layers) would make every logit 0
            for p in model.parameters():
                if p.abs().max() == 0:
                    p.normal_(0, 0.01)
        meta = {
            "model": {"name": name, "num_classes": args.num_classes},
            "classes": [str(i) for i in range(args.num_classes)],
            "palette": [[0, 0, 0]] * args.num_classes,
            "ignore_index": 255,
            "mean": [0.5] * 3,
            "std": [0.25] * 3,
            "dataset": "none",
        }
        with tempfile.TemporaryDirectory() as tmp:
            ckpt = Path(tmp) / "m.pt"
            save_checkpoint(ckpt, {"model": model.state_dict(), "meta": meta})
            t = time.perf_counter()
            try:
                report = export_onnx(ckpt, Path(tmp) / "m.onnx", height=args.size, width=args.size, opset=args.opset)
                row = {
                    "model": name,
                    "ok": True,
                    "dynamic": report["dynamic"],
                    "max_abs_diff": max(v for k, v in report["max_abs_diff"].items() if k != "relative"),
                    "max_rel_diff": report["max_abs_diff"]["relative"],
                    "exporter": report["exporter"],
                    "opset": report["opset"],
                    "failures": report.get("failures", []),
                    "seconds": time.perf_counter() - t,
                }
            except Exception as e:  # recorded, reported
                row = {"model": name, "ok": False, "error": f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"}
        rows.append(row)
        if row["ok"]:
            print(
                f"| {name} | {'yes' if row['dynamic'] else 'no'} | {row['max_abs_diff']:.1e} | "
                f"{row['max_rel_diff']:.1e} | {row['seconds']:.0f} |",
                flush=True,
            )
        else:
            print(f"| {name} | export failed: {row['error']} | | | |", flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    results = {**machine_info(), "opset": args.opset, "size": args.size, "models": rows}
    Path(args.out).write_text(json.dumps(results, indent=2))
    return 0 if all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
