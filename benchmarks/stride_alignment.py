"""Upsampling by the stride against resizing to the input, on one checkpoint. The heads of DeepLab, LR-ASPP,
PSPNet and Panoptic-DeepLab's branch resized each coarse map to the next size (``resize_to``): a stride-``s`` map
of an input ``H`` pixels high has ``ceil(H / s)`` rows, so where ``H`` is no multiple of ``s`` (CamVid's 360 rows
at 1/16; every inference scale) the rows were stretched apart and the scores moved off where the network computed
them. ``pixelwise.models.modules.upsample`` upsamples by the stride and cuts. This scores the checkpoint with the
run's own protocol both ways, in turns, and a third time the first way (the figures are deterministic: the first
and third must agree).

    python benchmarks/stride_alignment.py runs/s46/camvid_20/last.pt --split test --data-root ../shared/datasets \
        --json benchmarks/results/stride_alignment_camvid20_test.json
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from checkpoint_options import add_checkpoint_options  # noqa: E402
from machine import machine_info  # noqa: E402

from pixelwise.engine.evaluator import evaluate_checkpoint  # noqa: E402
from pixelwise.fileio import write_json  # noqa: E402
from pixelwise.models import deeplab, lraspp, modules, panoptic, pspnet  # noqa: E402

HEADS = (deeplab, lraspp, panoptic, pspnet)  # the model files that upsample coarse maps


def stretched(x: torch.Tensor, factor: int, size: tuple[int, int]) -> torch.Tensor:
    """The former upsampling: the map resized to ``size``, whatever its stride."""
    return modules.resize_to(x, size)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint")
    add_checkpoint_options(ap)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rows = {}
    for name, up in (("resized", stretched), ("by the stride", modules.upsample), ("resized again", stretched)):
        for module in HEADS:
            module.upsample = up
        start = time.perf_counter()
        result = evaluate_checkpoint(
            args.checkpoint, split=args.split, data_root=args.data_root, amp=args.amp, num_workers=0, progress=False
        )
        m = result["metrics"]
        rows[name] = {
            "miou": m["miou"],
            "pixel_error": 1 - m["pixel_accuracy"],
            "iou": m["iou"],
            "seconds": round(time.perf_counter() - start, 1),
        }
        print(f"{name:>14}: mIoU {100 * m['miou']:.2f}  min class IoU {100 * min(m['iou']):.1f}", flush=True)
    for module in HEADS:
        module.upsample = modules.upsample
    out = {
        **machine_info(),
        "checkpoint": str(args.checkpoint),
        "split": args.split,
        "amp": args.amp,
        "threads": args.threads,
        "inference": result["inference"],
        "rows": rows,
    }
    if args.json:
        write_json(args.json, out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
