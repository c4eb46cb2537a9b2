"""Are a split's remaining pixel errors the models' own, or shared by every model? Several checkpoints on one split.

Each checkpoint predicts the split with its run's inference protocol and precision (as ``pixelwise eval``). The
script reports each one's pixel error (the fraction of labelled pixels whose argmax differs from the mask), the
error of their ensemble (the average of their class probabilities), and how many of the models get each pixel
wrong: errors made by one model only are what more seeds, an ensemble or a better optimiser could remove; errors
made by every model, of different seeds and architectures, point at what the models are all taught (the masks
themselves). For a two-class data set the pixels every model gets wrong are split by their city-block distance to
the ground truth's class boundary, as ``isbi_boundary_errors.py`` does. Per image, each checkpoint's error.

    python benchmarks/shared_errors.py RUN_A/last.pt RUN_B/last.pt RUN_C/last.pt --split val \
        --data-root ../shared/datasets --json benchmarks/results/isbi2012_shared_errors_val_epyc_avx512.json
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent))
from checkpoint_options import add_checkpoint_options  # noqa: E402
from isbi_boundary_errors import boundary_distance, distance_counts  # noqa: E402
from machine import machine_info  # noqa: E402
from peers_smp import register_smp_peers  # noqa: E402

from pixelwise.argmax import class_argmax  # noqa: E402
from pixelwise.engine.evaluator import checkpoint_dataset  # noqa: E402
from pixelwise.engine.predictor import Predictor  # noqa: E402
from pixelwise.engine.video import batch_probabilities  # noqa: E402
from pixelwise.fileio import write_json  # noqa: E402


def wrong_counts(
    probs: list[torch.Tensor], target: torch.Tensor, ignore: int
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Per model, its wrong pixels (``H x W`` bool) of ``target``; and the ensemble's (mean of ``probs``, each
    ``K x H x W``). Ignored pixels are never wrong."""
    counted = target != ignore
    per_model = [(class_argmax(p[None])[0] != target) & counted for p in probs]
    ensemble = (class_argmax(torch.stack(probs).mean(0)[None])[0] != target) & counted
    return per_model, ensemble


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoints", nargs="+")
    add_checkpoint_options(ap, split="val")
    args = ap.parse_args()
    if len(args.checkpoints) < 2:
        print("error: give at least two checkpoints to compare", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    register_smp_peers()  # the smp peers' checkpoints (benchmarks/peer_same_budget.py) load too

    predictors = [Predictor(c, amp=args.amp) for c in args.checkpoints]
    # each checkpoint reads the split through its own run's settings (its image shift, normalisation)
    datasets = [
        checkpoint_dataset(p.ckpt, c, args.split, args.data_root)
        for c, p in zip(args.checkpoints, predictors, strict=True)
    ]
    dataset = datasets[0]
    for c, p in zip(args.checkpoints[1:], predictors[1:], strict=True):
        if p.classes != predictors[0].classes:
            print(f"error: {c} has classes {p.classes}, {args.checkpoints[0]} {predictors[0].classes}", file=sys.stderr)
            return 2
    two_class = len(predictors[0].classes) == 2
    ignore = dataset.info.ignore_index
    n = len(predictors)
    pixels = 0
    model_wrong = [0] * n
    ensemble_wrong = 0
    by_count = [0] * (n + 1)  # pixels wrong in exactly k models
    all_by_distance = {"1": 0, "2": 0, "3+": 0}
    per_image = []
    for i in tqdm(range(len(dataset)), desc=args.split, unit="image"):
        probs, target = [], None
        for p, data in zip(predictors, datasets, strict=True):
            image, target = data[i][:2]
            with torch.inference_mode():
                probs.append(batch_probabilities(p, image[None])[0].float().cpu())
        per_model, ensemble = wrong_counts(probs, target, ignore)
        counted = target != ignore
        labelled = int(counted.sum())
        pixels += labelled
        for m, w in enumerate(per_model):
            model_wrong[m] += int(w.sum())
        ensemble_wrong += int(ensemble.sum())
        count = torch.stack(per_model).sum(0)
        for k in range(n + 1):
            by_count[k] += int(((count == k) & counted).sum())
        if two_class:
            dist = boundary_distance(torch.where(counted, target, 1).numpy())
            for b, v in distance_counts((count == n).numpy(), dist).items():
                all_by_distance[b] += v
        per_image.append([int(w.sum()) / labelled for w in per_model])

    result = {
        **machine_info(),
        "split": args.split,
        "amp": predictors[0].amp,  # the precision that ran (args.amp "auto" resolved)
        "images": len(dataset),
        "pixels": pixels,
        "checkpoints": args.checkpoints,
        "pixel_error": {c: w / pixels for c, w in zip(args.checkpoints, model_wrong, strict=True)},
        "ensemble_pixel_error": ensemble_wrong / pixels,
        "share_of_pixels_wrong_in_exactly_k_models": {str(k): v / pixels for k, v in enumerate(by_count)},
        "pixel_error_per_image": per_image,
    }
    if two_class:
        result["wrong_in_every_model_by_boundary_distance"] = {b: v / pixels for b, v in all_by_distance.items()}
    print(f"{args.split}: {len(dataset)} images, {pixels} pixels")
    for c, w in zip(args.checkpoints, model_wrong, strict=True):
        print(f"  {w / pixels:.4f}  {c}")
    mean = sum(model_wrong) / n / pixels
    print(f"  {ensemble_wrong / pixels:.4f}  ensemble of the {n} (their mean {mean:.4f})")
    print("  wrong in exactly k models: " + ", ".join(f"{k}: {v / pixels:.4f}" for k, v in enumerate(by_count)))
    if two_class:
        print(
            "  wrong in every model, by distance to the true boundary: "
            + ", ".join(f"{b} px: {v / pixels:.4f}" for b, v in all_by_distance.items())
        )
    if args.json:
        write_json(args.json, result)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
