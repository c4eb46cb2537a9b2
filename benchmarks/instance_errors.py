"""What the unmatched instances are: each false negative and false positive of the StarDist matching at one IoU
threshold (default 0.5) sorted into a kind, so that a shortfall in AP points at its cause (detection, merging,
splitting, or the outline).

    python benchmarks/instance_errors.py RUN/best.pt --data-root ../shared/datasets --split test [--tau 0.5] [--json F]

The checkpoint runs with its own protocol (its views, decoding and precision, as ``pixelwise eval``); the
matching is ``pixelwise.metrics``' (the largest one-to-one set of pairs at IoU >= tau), so TP, FN and FP add up to
eval's AP at tau. A true nucleus left unmatched is

- ``missed``: less than half of it lies inside predicted instances (all of them together);
- ``merged``: the prediction overlapping it most covers at least half of it and half of another true nucleus;
- ``split``: two or more predictions each cover at least a fifth of it;
- ``outline``: the rest (mostly one prediction over most of it, but their IoU under the threshold).

A prediction left unmatched is ``spurious`` (less than half of it on true nuclei), ``fragment`` (the true nucleus
under most of it is matched to another prediction, or is split; a fragment that also spans two nuclei counts
here), ``merge`` (it covers at least half of two or more true nuclei) or ``outline``. Kinds are tested in this
order. Sizes are pixel areas at the image's resolution. Classes and ignore pixels play no part (DSB2018 has one
thing class and none).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import machine_info  # noqa: E402

from pixelwise.engine.evaluator import checkpoint_dataset  # noqa: E402
from pixelwise.engine.predictor import Predictor  # noqa: E402
from pixelwise.inference import InferenceSettings  # noqa: E402
from pixelwise.metrics.matching import _max_matching  # noqa: E402

GT_KINDS = ("missed", "merged", "split", "outline")
PRED_KINDS = ("spurious", "fragment", "merge", "outline")


def pair_table(truth: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """Pixel counts of every (true instance, predicted instance) pair, row and column 0 the background; ids are
    renumbered 1..K first, so gaps in them cost nothing."""
    t = np.unique(np.concatenate([[0], truth.ravel()]), return_inverse=True)[1][1:]
    p = np.unique(np.concatenate([[0], pred.ravel()]), return_inverse=True)[1][1:]
    width = int(p.max()) + 1
    return np.bincount(t * width + p, minlength=(int(t.max()) + 1) * width).reshape(-1, width)


def classify(table: np.ndarray, tau: float) -> tuple[dict[str, list[int]], dict[str, int], int]:
    """Unmatched true instances by kind (their areas), unmatched predictions by kind (counts), and the matches."""
    t_area, p_area = table.sum(1)[1:], table.sum(0)[1:]
    inter = table[1:, 1:].astype(np.float64)
    union = t_area[:, None] + p_area[None, :] - inter
    iou = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
    rows, cols = np.nonzero(iou >= tau)
    rows, cols = _max_matching(rows, cols, iou[rows, cols])  # the metric's own matching
    matched = np.zeros(iou.shape, bool)
    matched[rows, cols] = True
    t_matched, p_matched = matched.any(1), matched.any(0)
    t_cover = inter / np.maximum(t_area[:, None], 1)  # share of each true instance under each prediction
    p_cover = inter / np.maximum(p_area[None, :], 1)  # share of each prediction on each true instance
    gt: dict[str, list[int]] = {k: [] for k in GT_KINDS}
    split = (t_cover >= 0.2).sum(1) >= 2
    for i in np.flatnonzero(~t_matched):
        best = int(np.argmax(inter[i])) if inter.shape[1] else -1
        if best < 0 or t_cover[i].sum() < 0.5:
            kind = "missed"
        elif ((t_cover[:, best] >= 0.5).sum() >= 2) and t_cover[i, best] >= 0.5:
            kind = "merged"
        elif split[i]:
            kind = "split"
        else:
            kind = "outline"
        gt[kind].append(int(t_area[i]))
    pred: dict[str, int] = dict.fromkeys(PRED_KINDS, 0)
    for j in np.flatnonzero(~p_matched):
        best = int(np.argmax(inter[:, j])) if inter.shape[0] else -1
        if best < 0 or p_cover[:, j].sum() < 0.5:
            kind = "spurious"
        elif (t_matched[best] and not matched[best, j]) or split[best]:
            kind = "fragment"
        elif (t_cover[:, j] >= 0.5).sum() >= 2:
            kind = "merge"
        else:
            kind = "outline"
        pred[kind] += 1
    return gt, pred, int(matched.sum())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint", type=Path)
    ap.add_argument("--data-root", type=Path)
    ap.add_argument("--split", default="test")
    ap.add_argument("--tau", type=float, default=0.5, help="IoU threshold of the matching")
    ap.add_argument("--amp", default="auto", help="as eval's --amp (auto: the run's precision where native)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    predictor = Predictor(args.checkpoint, amp=args.amp)
    method = predictor.instance_method
    if not method.enabled:
        sys.exit(f"{args.checkpoint}: not an instance model")
    dataset = checkpoint_dataset(predictor.ckpt, args.checkpoint, args.split, args.data_root, instances=True)
    gt: dict[str, list[int]] = {k: [] for k in GT_KINDS}
    pred: Counter[str] = Counter()
    areas: list[int] = []
    tp = 0
    for i in tqdm(range(len(dataset)), desc=f"{args.split} images", unit="img"):
        image, _, truth = dataset[i][:3]
        result = predictor.instances_of(image[None].to(predictor.device))  # as predict and serve decode it
        table = pair_table(truth.numpy(), result.instances)
        areas += [int(a) for a in table.sum(1)[1:] if a > 0]
        g, p, m = classify(table, args.tau)
        for k in GT_KINDS:
            gt[k] += g[k]
        pred.update(p)
        tp += m
    fn, fp = sum(len(v) for v in gt.values()), sum(pred.values())
    summary = {
        "checkpoint": str(args.checkpoint),
        "split": args.split,
        "tau": args.tau,
        "true_instances": len(areas),
        "tp": tp,
        "fn": fn,
        "fp": fp,
        "ap": tp / max(tp + fn + fp, 1),
        "median_true_area": float(np.median(areas)) if areas else None,
        "false_negatives": {
            k: {"count": len(v), "median_area": float(np.median(v)) if v else None} for k, v in gt.items()
        },
        "false_positives": dict(pred),
        "amp": predictor.amp,
        "views": [list(v) for v in (predictor.inference or InferenceSettings()).views],
        "instances": dataclasses.asdict(method),
        **machine_info(),
        "torch": torch.__version__,
        "command": " ".join(sys.argv),
    }
    print(
        f"{args.checkpoint} on {args.split}: {len(areas)} true instances, TP {tp}, FN {fn}, FP {fp}, "
        f"AP@{args.tau:.2f} {summary['ap']:.3f}; median true area {summary['median_true_area']} px"
    )
    print("| unmatched true nuclei | count | share of FN | median area (px) |")
    print("|---|---:|---:|---:|")
    for k, v in summary["false_negatives"].items():
        print(f"| {k} | {v['count']} | {v['count'] / max(fn, 1):.0%} | {v['median_area']} |")
    print("| unmatched predictions | count | share of FP | |")
    print("|---|---:|---:|---|")
    for k in PRED_KINDS:
        print(f"| {k} | {pred[k]} | {pred[k] / max(fp, 1):.0%} | |")
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
