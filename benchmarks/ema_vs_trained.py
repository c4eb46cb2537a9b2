"""The moving average of the weights against the trained weights of the same run (``train.ema_decay``).

A run trained with ``train.ema_decay`` keeps both in its ``last.pt``: the average under ``"model"`` (what eval
reads) and the trained weights under ``"train_model"``. This evaluates each on the given splits with the run's
protocol, so the average's effect is measured on one training run, free of the run-to-run
and machine-to-machine variation of two separate trainings. Prints one table, writes a JSON.

    python benchmarks/ema_vs_trained.py runs/camvid_ema/last.pt --splits val test --data-root ../shared/datasets \
        --json benchmarks/results/camvid_ema_vs_trained.json
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import machine_info  # noqa: E402

from pixelwise.engine import evaluate_checkpoint  # noqa: E402
from pixelwise.engine.resume import weights_only  # noqa: E402
from pixelwise.fileio import write_json  # noqa: E402
from pixelwise.models.weights import load_checkpoint, save_checkpoint  # noqa: E402


def figures(evaluation: dict) -> dict:
    """mIoU, pixel error (ISBI 2012's plain pixel error) and per-class IoU; for instance models also the matching AP
    per threshold, mean AP and PQ."""
    m = evaluation["metrics"]
    out = {
        "miou": m["miou"],
        "pixel_error": 1.0 - m["pixel_accuracy"],
        "iou": dict(zip(evaluation["classes"], m["iou"], strict=True)),
    }
    inst = m.get("instances")
    if inst and "ap" in inst:
        out.update({k: inst[k] for k in ("ap", "mean_ap", "pq")})
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint", help="a last.pt trained with train.ema_decay")
    ap.add_argument("--splits", nargs="+", default=["val"])
    ap.add_argument("--data-root")
    ap.add_argument("--amp", default="auto", help="as eval --amp")
    ap.add_argument("--num-workers", type=int, default=1)
    ap.add_argument("--json", help="write the figures here")
    args = ap.parse_args()

    ckpt = load_checkpoint(args.checkpoint)
    if "train_model" not in ckpt:
        print(
            f"error: {args.checkpoint} holds no trained weights beside the average (train.ema_decay was off, or it is "
            "a best.pt): give the run's last.pt",
            file=sys.stderr,
        )
        return 2
    rows: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(dir=Path(args.checkpoint).parent) as tmp:
        trained = Path(tmp) / "trained.pt"
        save_checkpoint(trained, {**weights_only(ckpt), "model": ckpt["train_model"]})
        for label, path in (("average", args.checkpoint), ("trained", trained)):
            for split in args.splits:
                ev = evaluate_checkpoint(
                    path,
                    split=split,
                    data_root=args.data_root,
                    amp=args.amp,
                    num_workers=args.num_workers,
                    progress=False,
                )
                rows.setdefault(label, {})[split] = figures(ev)
                inference, amp = ev["inference"], ev["amp"]
    print(f"\n{args.checkpoint}: {ckpt['train_state']['iter']} iterations, ema {ckpt['ema']}")
    for split in args.splits:
        for label, by_split in rows.items():
            r = by_split[split]
            ap50 = f", AP@0.5 {r['ap']['0.50']:.3f}, mean AP {r['mean_ap']:.3f}, PQ {r['pq']:.3f}" if "ap" in r else ""
            print(
                f"{split:5s} {label:8s} mIoU {100 * r['miou']:.2f}, pixel error {r['pixel_error']:.4f}{ap50}  "
                + " ".join(f"{k} {100 * v:.1f}" for k, v in r["iou"].items())
            )
    if args.json:
        write_json(
            args.json,
            {
                "checkpoint": args.checkpoint,
                "iterations": ckpt["train_state"]["iter"],
                "train_seconds": ckpt["train_state"]["train_seconds"],
                "ema": ckpt["ema"],
                "inference": inference,
                "amp": amp,
                **machine_info(),
                "torch": torch.__version__,
                "results": rows,
                "command": " ".join(sys.argv),
            },
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
