"""Panoptic-DeepLab's centre heatmap and offsets in bf16 against float32: the instance AP one checkpoint reaches
when its model runs (a) in float32, (b) under bf16 with the centre/offset prediction convs in bf16 too (what
pixelwise did before those convs were made float32), (c) under bf16 with those convs in float32 (what eval and
predict do now). Decoding as the run trained it; the StarDist matching on a labelled split.

    python benchmarks/heatmap_precision.py RUN/best.pt --data-root ../shared/datasets --split val \\
        [--flip --rot90] [--json F]

A bf16 heatmap keeps 8 significant bits: the pixels of a flat-topped peak round to equal values and the keypoint
NMS keeps each of them, so one nucleus gets several centres (precision falls). Also decodes (b)'s semantic map,
centres and offsets each swapped for (a)'s, to show which output carries the loss.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import machine_info  # noqa: E402

from pixelwise.engine.evaluator import MAX_DETECTIONS, checkpoint_dataset  # noqa: E402
from pixelwise.engine.instance_methods import decode  # noqa: E402
from pixelwise.engine.predictor import Predictor  # noqa: E402
from pixelwise.inference import InferenceSettings  # noqa: E402
from pixelwise.metrics import InstanceMetrics  # noqa: E402
from pixelwise.models.panoptic import PredictionConv  # noqa: E402

KEYS = ("out", "center", "offset")


@contextlib.contextmanager
def bf16_prediction_convs():
    """The centre/offset prediction convs as plain convolutions (bf16 under autocast), as before."""
    forward = PredictionConv.forward
    PredictionConv.forward = nn.Conv2d.forward
    try:
        yield
    finally:
        PredictionConv.forward = forward


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint", type=Path)
    ap.add_argument("--data-root", type=Path)
    ap.add_argument("--split", default="val")
    ap.add_argument("--flip", action="store_true")
    ap.add_argument("--rot90", action="store_true")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    machine = machine_info()  # /proc/cpuinfo read once: the results and the progress print

    views = InferenceSettings(flip=args.flip, rot90=args.rot90)
    fp32 = Predictor(args.checkpoint, amp="none", inference=InferenceSettings())
    bf16 = Predictor(args.checkpoint, amp="bf16", inference=InferenceSettings())
    method = fp32.instance_method
    if method.method != "panoptic":
        sys.exit(f"{args.checkpoint}: not a Panoptic-DeepLab model (instances.method is {method.method})")
    dataset = checkpoint_dataset(fp32.ckpt, args.checkpoint, args.split, args.data_root, instances=True)
    info = dataset.info
    # which outputs come from the float32 run, the rest from the bf16-heads run
    rows = {
        "float32": KEYS,
        "bf16, prediction convs in bf16 (before)": (),
        "bf16, prediction convs in float32 (now)": None,
        "bf16 heads, float32 semantic map": ("out",),
        "bf16 heads, float32 centres": ("center",),
        "bf16 heads, float32 offsets": ("offset",),
    }
    metrics = {r: InstanceMetrics(ignore_index=info.ignore_index, max_detections=MAX_DETECTIONS) for r in rows}
    seconds = {"float32": 0.0, "bf16 heads": 0.0, "bf16 now": 0.0}
    for i in tqdm(range(len(dataset)), desc=f"{args.split} images", unit="img"):
        image, mask, truth = dataset[i][:3]
        x = image[None].to(fp32.device)
        outputs = {}
        with torch.no_grad():
            for name, predictor, ctx in (
                ("float32", fp32, contextlib.nullcontext()),
                ("bf16 heads", bf16, bf16_prediction_convs()),
                ("bf16 now", bf16, contextlib.nullcontext()),
            ):
                start = time.perf_counter()
                with ctx:
                    outputs[name] = predictor.outputs_of(x, views)
                seconds[name] += time.perf_counter() - start
        for row, from_fp32 in rows.items():
            if from_fp32 is None:
                out = outputs["bf16 now"]
            else:
                out = {k: outputs["float32" if k in from_fp32 else "bf16 heads"][k] for k in KEYS}
            d = decode(method, {k: v.float() for k, v in out.items()}, info.num_classes, info.thing_classes)[0]
            d.add_to(metrics[row], truth.numpy(), mask.numpy())
    print(
        f"{args.checkpoint} on {args.split} ({len(dataset)} images), views {views.views}, CPU {machine['cpu']}, "
        f"{torch.get_num_threads()} threads"
    )
    print("| model run | AP@0.50 | precision@0.50 | recall@0.50 | mean AP | PQ |")
    print("|---|---:|---:|---:|---:|---:|")
    results = {}
    for row, m in metrics.items():
        r = m.compute()
        results[row] = {k: r[k] for k in ("ap", "precision", "recall", "mean_ap", "pq")}
        print(
            f"| {row} | {r['ap']['0.50']:.3f} | {r['precision']['0.50']:.3f} | {r['recall']['0.50']:.3f} | "
            f"{r['mean_ap']:.3f} | {r['pq']:.3f} |"
        )
    print("model seconds per image: " + ", ".join(f"{k} {v / len(dataset):.2f}" for k, v in seconds.items()))
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "checkpoint": str(args.checkpoint),
                    "split": args.split,
                    "views": [list(v) for v in views.views],
                    "decoding": {"center_threshold": method.center_threshold, "nms_kernel": method.nms_kernel},
                    **machine,
                    "threads": torch.get_num_threads(),
                    "torch": torch.__version__,
                    "results": results,
                    "model_seconds_per_image": {k: v / len(dataset) for k, v in seconds.items()},
                    "command": " ".join(sys.argv),
                },
                indent=2,
            )
            + "\n"
        )


if __name__ == "__main__":
    main()
