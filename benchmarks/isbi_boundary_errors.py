"""Where a two-class model's pixel errors lie: at the ground truth's class boundary, or away from it.

The ISBI 2012 membranes are a few pixels thick, so their boundary pixels are a large share of the image, and
an annotator's (or a model's) one-pixel disagreement about where a membrane ends costs plain pixel error
everywhere along it. This measures both sides of that on a labelled split:

- the ground truth against itself with its class-0 region (membrane) grown or shrunk by r pixels
  (4-connected dilation / erosion, r = 1, 2): the plain pixel error of a prediction that is right except for
  a uniform r-pixel shift of every boundary;
- a checkpoint's predictions (the run's inference protocol, e.g. its 8 symmetries), its errors split by
  their city-block distance to the nearest pixel of the other class in the ground truth (1: on the boundary).

Prints one table, writes a JSON:

    python benchmarks/isbi_boundary_errors.py runs/isbi2012_cpu/last.pt --split val --data-root ../shared/datasets \
        --json benchmarks/results/isbi2012_boundary_errors.json
"""

from __future__ import annotations

import argparse
import platform
import sys
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage as ndi

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import cpu_features, cpu_model  # noqa: E402

from pixelwise.engine.evaluator import checkpoint_dataset  # noqa: E402
from pixelwise.engine.predictor import Predictor  # noqa: E402
from pixelwise.fileio import write_json  # noqa: E402

FOUR = ndi.generate_binary_structure(2, 1)


def boundary_distance(labels: np.ndarray) -> np.ndarray:
    """Per pixel, the city-block distance to the nearest pixel of the other class (two-class ``labels``)."""
    first = labels == 0
    inside = ndi.distance_transform_cdt(first, metric="taxicab")  # class-0 pixels: distance to class 1
    outside = ndi.distance_transform_cdt(~first, metric="taxicab")
    return np.where(first, inside, outside)


def shifted_errors(labels: np.ndarray, radius: int) -> tuple[int, int]:
    """Wrong pixels of the ground truth with its class-0 region dilated, and eroded, by ``radius``."""
    first = labels == 0
    grown = ndi.binary_dilation(first, FOUR, iterations=radius)
    shrunk = ndi.binary_erosion(first, FOUR, iterations=radius, border_value=1)
    return int((grown != first).sum()), int((shrunk != first).sum())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint")
    ap.add_argument("--split", default="val")
    ap.add_argument("--data-root")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", help="write the figures here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    predictor = Predictor(args.checkpoint)
    if len(predictor.classes) != 2:
        print(
            f"error: {args.checkpoint} has {len(predictor.classes)} classes; this needs a two-class model",
            file=sys.stderr,
        )
        return 2
    dataset = checkpoint_dataset(predictor.ckpt, args.checkpoint, args.split, args.data_root)
    pixels = 0
    shifted = {r: [0, 0] for r in (1, 2)}
    by_distance = {"1": 0, "2": 0, "3+": 0}
    missed = false_first = 0
    for i in range(len(dataset)):
        image, target = dataset[i][:2]
        labels = target.numpy()
        with torch.inference_mode():
            pred = predictor.scores(image[None]).argmax(1)[0].cpu().numpy()
        wrong = pred != labels
        dist = boundary_distance(labels)
        by_distance["1"] += int((wrong & (dist == 1)).sum())
        by_distance["2"] += int((wrong & (dist == 2)).sum())
        by_distance["3+"] += int((wrong & (dist >= 3)).sum())
        missed += int((wrong & (labels == 0)).sum())
        false_first += int((wrong & (labels != 0)).sum())
        pixels += labels.size
        for r in shifted:
            grown, shrunk = shifted_errors(labels, r)
            shifted[r][0] += grown
            shifted[r][1] += shrunk

    errors = sum(by_distance.values())
    classes = predictor.classes
    result = {
        "cpu": cpu_model(),
        "cpu_features": cpu_features(),
        "machine": platform.machine(),
        "checkpoint": args.checkpoint,
        "split": args.split,
        "images": len(dataset),
        "pixels": pixels,
        "ground_truth_shifted": {f"{classes[0]} grown by {r} px": shifted[r][0] / pixels for r in shifted}
        | {f"{classes[0]} shrunk by {r} px": shifted[r][1] / pixels for r in shifted},
        "model_pixel_error": errors / pixels,
        f"model_missed_{classes[0]}": missed / pixels,
        f"model_false_{classes[0]}": false_first / pixels,
        "model_errors_by_boundary_distance": {k: v / pixels for k, v in by_distance.items()},
    }
    print(f"{args.split}: {len(dataset)} images, {pixels} pixels")
    for k, v in result["ground_truth_shifted"].items():
        print(f"  ground truth, {k:<24} pixel error {v:.4f}")
    print(
        f"  model ({args.checkpoint}): pixel error {errors / pixels:.4f} = {classes[0]} missed {missed / pixels:.4f} "
        f"+ false {classes[0]} {false_first / pixels:.4f}"
    )
    for k, v in by_distance.items():
        print(
            f"    at distance {k:>2} px from the true boundary: {v / pixels:.4f} "
            f"({v / max(errors, 1):.1%} of the errors)"
        )
    if args.json:
        write_json(args.json, result)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
