"""Choose an instance model's test-time views and Panoptic-DeepLab decoding settings on a labelled split (val):
the model runs once per image and protocol (plain, flip, the 8 symmetries), and every decoding setting of the
grid is scored on those outputs by the StarDist matching (AP at IoU 0.5 and the mean AP over 0.50-0.90).

    python benchmarks/instance_decoding_search.py RUN/best.pt --data-root ../shared/datasets --split val \\
        [--thresholds 0.05 0.1 0.2 0.3] [--nms 3 5 7] [--amp auto|none|bf16|fp16] [--json F]

Decoding settings other than the method's ``center_threshold`` and ``nms_kernel`` stay as the run trained them;
a boundary or components model is scored per protocol only. ``--amp`` as eval's (default: the run's precision
where the machine runs it natively, as eval reads it). Choose on val, report on test with
``pixelwise eval RUN/best.pt --split test [--flip --rot90]``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import machine_info  # noqa: E402

from pixelwise.device import TRAIN_AMP_CHOICES  # noqa: E402
from pixelwise.engine.evaluator import MAX_DETECTIONS, checkpoint_dataset  # noqa: E402
from pixelwise.engine.instance_methods import decode  # noqa: E402
from pixelwise.engine.predictor import Predictor  # noqa: E402
from pixelwise.inference import InferenceSettings  # noqa: E402
from pixelwise.metrics import InstanceMetrics  # noqa: E402

PROTOCOLS = {
    "plain": InferenceSettings(),
    "flip": InferenceSettings(flip=True),
    "flip+rot90": InferenceSettings(flip=True, rot90=True),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--data-root", type=Path)
    parser.add_argument("--split", default="val")
    parser.add_argument("--protocols", nargs="+", default=list(PROTOCOLS), choices=list(PROTOCOLS))
    parser.add_argument("--thresholds", nargs="+", type=float, default=[0.05, 0.1, 0.2, 0.3])
    parser.add_argument("--nms", nargs="+", type=int, default=[3, 5, 7])
    parser.add_argument("--amp", default="auto", choices=TRAIN_AMP_CHOICES, help="precision (default: eval's)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    machine = machine_info()  # /proc/cpuinfo read once: the results and the progress print

    predictor = Predictor(args.checkpoint, amp=args.amp, inference=InferenceSettings())
    method = predictor.instance_method
    if not method.enabled:
        sys.exit(f"{args.checkpoint}: not an instance model (instances.method is none)")
    grid = [(None, None)]
    if method.method == "panoptic":
        grid = [(t, k) for t in args.thresholds for k in args.nms]
    dataset = checkpoint_dataset(predictor.ckpt, args.checkpoint, args.split, args.data_root, instances=True)
    info = dataset.info
    scores = {
        (p, t, k): InstanceMetrics(ignore_index=info.ignore_index, max_detections=MAX_DETECTIONS)
        for p in args.protocols
        for t, k in grid
    }
    seconds = dict.fromkeys(args.protocols, 0.0)
    for i in tqdm(range(len(dataset)), desc=f"{args.split} images", unit="img"):
        image, mask, truth = dataset[i][:3]
        x = image[None].to(predictor.device)
        for p in args.protocols:
            start = time.perf_counter()
            output = predictor.outputs_of(x, PROTOCOLS[p])
            seconds[p] += time.perf_counter() - start
            for t, k in grid:
                settings = method if t is None else dataclasses.replace(method, center_threshold=t, nms_kernel=k)
                d = decode(settings, output, info.num_classes, info.thing_classes)[0]
                d.add_to(scores[p, t, k], truth.numpy(), mask.numpy())
    rows = []
    threads = torch.get_num_threads()
    print(
        f"{args.checkpoint} on {args.split} ({len(dataset)} images), precision {predictor.amp}, "
        f"CPU {machine['cpu']}, {threads} threads"
    )
    print("| views | centre threshold | NMS kernel | AP@0.50 | mean AP | PQ | model s/image |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for (p, t, k), m in scores.items():
        r = m.compute()
        row = {
            "views": p,
            "center_threshold": t,
            "nms_kernel": k,
            "ap50": r["ap"]["0.50"],
            "mean_ap": r["mean_ap"],
            "pq": r["pq"],
            "model_s_per_image": seconds[p] / len(dataset),
        }
        rows.append(row)
        print(
            f"| {p} | {t if t is not None else '-'} | {k if k is not None else '-'} | {row['ap50']:.3f} | "
            f"{row['mean_ap']:.3f} | {row['pq']:.3f} | {row['model_s_per_image']:.2f} |"
        )
    if args.json:
        trained = {"center_threshold": method.center_threshold, "nms_kernel": method.nms_kernel}
        args.json.write_text(
            json.dumps(
                {
                    "checkpoint": str(args.checkpoint),
                    "split": args.split,
                    **machine,
                    "threads": threads,
                    "amp": predictor.amp,
                    "trained_decoding": trained,
                    "rows": rows,
                    "command": " ".join(sys.argv),
                },
                indent=2,
            )
            + "\n"
        )


if __name__ == "__main__":
    main()
