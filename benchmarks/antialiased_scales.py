"""Inference scales below 1 with and without antialiasing, on one checkpoint. Training's random scale shrinks
images with torchvision's antialiased resize; inference shrank them by plain bilinear sampling until
``pixelwise.inference.protocol.rescale_image`` antialiased them too. This scores the checkpoint with the run's
own protocol (its scales, flips and turns) both ways, in turns, and a third time the first way (the figures are
deterministic: the first and third must agree).

    python benchmarks/antialiased_scales.py runs/camvid_cpu/last.pt --split test --data-root ../shared/datasets \
        --json benchmarks/results/antialiased_scales_camvid_zen5.json
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from checkpoint_options import add_checkpoint_options  # noqa: E402
from machine import machine_info  # noqa: E402

import pixelwise.inference.protocol as protocol  # noqa: E402
from pixelwise.engine.evaluator import evaluate_checkpoint  # noqa: E402
from pixelwise.fileio import write_json  # noqa: E402

ANTIALIASED = protocol.rescale_image


def plain_bilinear(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """The former resize: bilinear sampling, no antialiasing."""
    return F.interpolate(image, size=size, mode="bilinear", align_corners=False)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint")
    add_checkpoint_options(ap)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rows = {}
    for name, resize in (("plain", plain_bilinear), ("antialiased", ANTIALIASED), ("plain again", plain_bilinear)):
        protocol.rescale_image = resize
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
        print(f"{name:>12}: mIoU {100 * m['miou']:.2f}  pixel error {1 - m['pixel_accuracy']:.5f}", flush=True)
    protocol.rescale_image = ANTIALIASED
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
