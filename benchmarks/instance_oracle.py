"""Which of a Panoptic-DeepLab model's outputs limits its instances: each of the foreground (semantic argmax),
the centres and the offsets replaced by the truth in turn, the rest as predicted, scored by the StarDist matching.

    python benchmarks/instance_oracle.py RUN/best.pt --data-root ../shared/datasets --split val [--json F]

The model runs with its own protocol (views, precision) and decoding (threshold, NMS, top-k), as ``pixelwise
eval``. True centres are the instances' centres of mass rounded to the nearest pixel; true offsets point every
pixel of an instance at its centre of mass (``panoptic_targets``); the true foreground is every instance pixel.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from tqdm.auto import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import machine_info  # noqa: E402

from pixelwise.data.instance_targets import instance_centers, panoptic_targets  # noqa: E402
from pixelwise.engine.evaluator import checkpoint_dataset  # noqa: E402
from pixelwise.engine.predictor import Predictor  # noqa: E402
from pixelwise.inference.panoptic import find_instance_centers, group_pixels  # noqa: E402
from pixelwise.metrics import InstanceMetrics  # noqa: E402

CASES = ("predicted", "true centres", "true foreground", "true offsets", "true centres and foreground")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint", type=Path)
    ap.add_argument("--data-root", type=Path)
    ap.add_argument("--split", default="val")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    predictor = Predictor(args.checkpoint)
    s = predictor.instance_method
    if s.method != "panoptic":
        sys.exit(f"{args.checkpoint}: not a Panoptic-DeepLab model (instances.method is {s.method})")
    dataset = checkpoint_dataset(predictor.ckpt, args.checkpoint, args.split, args.data_root, instances=True)
    scores = {case: InstanceMetrics() for case in CASES}
    with torch.inference_mode():
        for i in tqdm(range(len(dataset)), desc=f"{args.split} images", unit="img"):
            image, _, truth = dataset[i][:3]
            out = predictor.outputs_of(image[None].to(predictor.device))
            semantic, center, offset = (out[k][0].float().cpu() for k in ("out", "center", "offset"))
            thing = torch.zeros(semantic.shape[0], dtype=torch.bool)
            thing[predictor.thing_classes] = True
            foreground = thing[semantic.argmax(0)]
            true_foreground = truth > 0
            centres, _ = find_instance_centers(
                center, threshold=s.center_threshold, nms_kernel=s.nms_kernel, top_k=s.top_k
            )
            true_centres = torch.round(instance_centers(truth)[1]).long().reshape(-1, 2)
            true_offset = panoptic_targets(truth)["offset"]
            t = truth.numpy()
            for case, (c, o, m) in {
                "predicted": (centres, offset, foreground),
                "true centres": (true_centres, offset, foreground),
                "true foreground": (centres, offset, true_foreground),
                "true offsets": (centres, true_offset, foreground),
                "true centres and foreground": (true_centres, offset, true_foreground),
            }.items():
                scores[case].update(t, group_pixels(c, o, m).numpy())
    table = {case: m.compute() for case, m in scores.items()}
    print(f"{args.checkpoint} on {args.split} ({len(dataset)} images)")
    print("| outputs | AP@0.50 | mean AP | TP | FP | FN |")
    print("|---|---:|---:|---:|---:|---:|")
    for case, r in table.items():
        print(
            f"| {case} | {r['ap']['0.50']:.3f} | {r['mean_ap']:.3f} | {r['tp']['0.50']} | {r['fp']['0.50']} | "
            f"{r['fn']['0.50']} |"
        )
    if args.json:
        summary = {
            "checkpoint": str(args.checkpoint),
            "split": args.split,
            "decoding": s.decoding,
            "amp": predictor.amp,
            "cases": {c: {k: r[k] for k in ("ap", "mean_ap", "tp", "fp", "fn")} for c, r in table.items()},
            **machine_info(),
            "command": " ".join(sys.argv),
        }
        args.json.write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
