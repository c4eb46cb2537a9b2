"""Where a two-class model's pixel errors lie: at the ground truth's class boundary, or away from it.

The ISBI 2012 membranes are a few pixels thick, so their boundary pixels are a large share of the image, and
an annotator's (or a model's) one-pixel disagreement about where a membrane ends costs plain pixel error
everywhere along it. This measures both sides of that on a labelled split:

- the ground truth against itself with its class-0 region (membrane) grown or shrunk by r pixels
  (4-connected dilation / erosion, r = 1, 2): the plain pixel error of a prediction that is right except for
  a uniform r-pixel shift of every boundary;
- a checkpoint's predictions (the run's inference protocol, e.g. its 8 symmetries, and precision as ``eval``),
  its errors, missed and false class 0 apart, split by their city-block distance to the nearest pixel of the
  other class in the ground truth (1: on the boundary; a slice holding one class has no boundary: "3+").
  Ignored pixels (the data set's ignore index) are left out of every count.

Prints one table, writes a JSON:

    python benchmarks/isbi_boundary_errors.py runs/isbi2012_cpu/last.pt --split val --data-root ../shared/datasets \
        --json benchmarks/results/isbi2012_boundary_errors_xeon.json
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage as ndi

sys.path.insert(0, str(Path(__file__).resolve().parent))
from checkpoint_options import add_checkpoint_options  # noqa: E402
from machine import machine_info  # noqa: E402

from pixelwise.argmax import class_argmax  # noqa: E402
from pixelwise.engine.evaluator import checkpoint_dataset  # noqa: E402
from pixelwise.engine.predictor import Predictor  # noqa: E402
from pixelwise.fileio import write_json  # noqa: E402

FOUR = ndi.generate_binary_structure(2, 1)


def boundary_distance(labels: np.ndarray) -> np.ndarray:
    """Per pixel, the city-block distance to the nearest pixel of the other class (two-class ``labels``); -1
    everywhere when only one class is present."""
    first = labels == 0
    inside = ndi.distance_transform_cdt(first, metric="taxicab")  # class-0 pixels: distance to class 1
    outside = ndi.distance_transform_cdt(~first, metric="taxicab")
    return np.where(first, inside, outside)


def distance_counts(wrong: np.ndarray, dist: np.ndarray) -> dict[str, int]:
    """How many ``wrong`` pixels lie 1, 2, or 3 or more (or no boundary: -1) pixels from the boundary (``dist``
    of :func:`boundary_distance`)."""
    return {
        "1": int((wrong & (dist == 1)).sum()),
        "2": int((wrong & (dist == 2)).sum()),
        "3+": int((wrong & ((dist >= 3) | (dist < 0))).sum()),
    }


def shifted_errors(labels: np.ndarray, radius: int, counted: np.ndarray | None = None) -> tuple[int, int]:
    """Wrong pixels of the ground truth with its class-0 region dilated, and eroded, by ``radius`` (among the
    ``counted`` pixels: default all)."""
    first = labels == 0
    grown = ndi.binary_dilation(first, FOUR, iterations=radius)
    shrunk = ndi.binary_erosion(first, FOUR, iterations=radius, border_value=1)
    keep = np.ones_like(first) if counted is None else counted
    return int(((grown != first) & keep).sum()), int(((shrunk != first) & keep).sum())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint")
    add_checkpoint_options(ap, split="val")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    predictor = Predictor(args.checkpoint, amp=args.amp)
    if len(predictor.classes) != 2:
        print(
            f"error: {args.checkpoint} has {len(predictor.classes)} classes; this needs a two-class model",
            file=sys.stderr,
        )
        return 2
    dataset = checkpoint_dataset(predictor.ckpt, args.checkpoint, args.split, args.data_root)
    ignore = dataset.info.ignore_index
    pixels = 0
    shifted = {r: [0, 0] for r in (1, 2)}
    bins = ("1", "2", "3+")
    by_distance = {kind: dict.fromkeys(bins, 0) for kind in ("missed", "false")}
    for i in range(len(dataset)):
        image, target = dataset[i][:2]
        labels = target.numpy()
        with torch.inference_mode():
            pred = class_argmax(predictor.scores(image[None]))[0].cpu().numpy()
        counted = labels != ignore
        dist = boundary_distance(np.where(counted, labels, 1))  # ignored pixels count as class 1 for the edges
        first = labels == 0
        for kind, wrong in (("missed", (pred != 0) & first), ("false", (pred == 0) & ~first & counted)):
            for b, v in distance_counts(wrong, dist).items():
                by_distance[kind][b] += v
        pixels += int(counted.sum())
        for r in shifted:
            grown, shrunk = shifted_errors(labels, r, counted)
            shifted[r][0] += grown
            shifted[r][1] += shrunk

    missed = sum(by_distance["missed"].values())
    false_first = sum(by_distance["false"].values())
    errors = missed + false_first
    classes = predictor.classes
    result = {
        **machine_info(),
        "checkpoint": args.checkpoint,
        "split": args.split,
        "amp": predictor.amp,
        "images": len(dataset),
        "pixels": pixels,
        "ground_truth_shifted": {f"{classes[0]} grown by {r} px": shifted[r][0] / pixels for r in shifted}
        | {f"{classes[0]} shrunk by {r} px": shifted[r][1] / pixels for r in shifted},
        "model_pixel_error": errors / pixels,
        f"model_missed_{classes[0]}": missed / pixels,
        f"model_false_{classes[0]}": false_first / pixels,
        "model_errors_by_boundary_distance": {
            b: (by_distance["missed"][b] + by_distance["false"][b]) / pixels for b in bins
        },
        f"model_missed_{classes[0]}_by_boundary_distance": {b: v / pixels for b, v in by_distance["missed"].items()},
        f"model_false_{classes[0]}_by_boundary_distance": {b: v / pixels for b, v in by_distance["false"].items()},
    }
    print(f"{args.split}: {len(dataset)} images, {pixels} pixels")
    for k, v in result["ground_truth_shifted"].items():
        print(f"  ground truth, {k:<24} pixel error {v:.4f}")
    print(
        f"  model ({args.checkpoint}, {predictor.amp}): pixel error {errors / pixels:.4f} = {classes[0]} missed "
        f"{missed / pixels:.4f} + false {classes[0]} {false_first / pixels:.4f}"
    )
    for b in bins:
        both = by_distance["missed"][b] + by_distance["false"][b]
        print(
            f"    at distance {b:>2} px from the true boundary: {both / pixels:.4f} ({both / max(errors, 1):.1%} of "
            f"the errors; missed {by_distance['missed'][b] / pixels:.4f}, false {by_distance['false'][b] / pixels:.4f})"
        )
    if args.json:
        write_json(args.json, result)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
