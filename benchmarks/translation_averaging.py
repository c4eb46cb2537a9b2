"""Does averaging over translations lower a checkpoint's pixel error? A U-Net with four poolings is not
shift-equivariant: the image moved by a few pixels meets another 1/16 pooling grid. This runs the run's own
protocol (its scales, flips and quarter turns, its precision, as ``pixelwise eval``) on each image moved down and
right by ``(sy, sx)`` pixels (reflected at the edges), moves the probabilities back, and averages them over sets
of shifts, then reports the plain pixel error (the fraction of labelled pixels whose argmax differs from the mask)
of each set. Pixels that a shift moves out of the image are averaged over the shifts that keep them.

    python benchmarks/translation_averaging.py runs/isbi2012_cpu/last.pt --split val --data-root ../shared/datasets \
        --json benchmarks/results/isbi2012_translation_averaging_zen5.json
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent))
from checkpoint_options import add_checkpoint_options  # noqa: E402
from machine import machine_info  # noqa: E402

from pixelwise.argmax import class_argmax  # noqa: E402
from pixelwise.engine.evaluator import checkpoint_dataset  # noqa: E402
from pixelwise.engine.predictor import Predictor  # noqa: E402
from pixelwise.engine.video import batch_probabilities  # noqa: E402
from pixelwise.fileio import write_json  # noqa: E402

SETS = {
    "none": [(0, 0)],
    "4: 0 and 8 px on each axis": [(a, b) for a in (0, 8) for b in (0, 8)],
    "16: 0, 4, 8, 12 px on each axis": [(a, b) for a in (0, 4, 8, 12) for b in (0, 4, 8, 12)],
}


def moved_back_probabilities(predictor: Predictor, image: torch.Tensor, sy: int, sx: int) -> torch.Tensor:
    """``K x H x W`` probabilities of ``image`` (``C x H x W``) moved down by ``sy`` and right by ``sx`` pixels,
    moved back; the ``sy`` last rows and ``sx`` last columns, which the moved image does not hold, are 0."""
    h, w = image.shape[-2:]
    moved = F.pad(image[None], (sx, 0, sy, 0), mode="reflect")[..., :h, :w] if sy or sx else image[None]
    probs = batch_probabilities(predictor, moved)[0].float().cpu()
    back = torch.zeros_like(probs)
    back[:, : h - sy, : w - sx] = probs[:, sy:, sx:]
    return back


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint")
    add_checkpoint_options(ap, split="val")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    predictor = Predictor(args.checkpoint, amp=args.amp)
    dataset = checkpoint_dataset(predictor.ckpt, args.checkpoint, args.split, args.data_root)
    ignore = dataset.info.ignore_index
    shifts = sorted({s for members in SETS.values() for s in members})
    wrong = dict.fromkeys(SETS, 0)
    labelled = 0
    start = time.perf_counter()
    for i in tqdm(range(len(dataset)), desc=args.split, unit="image"):
        image, target = dataset[i][:2]
        h, w = image.shape[-2:]
        with torch.inference_mode():
            probs = {s: moved_back_probabilities(predictor, image, *s) for s in shifts}
        counted = target != ignore
        labelled += int(counted.sum())
        for name, members in SETS.items():
            total = sum(probs[s] for s in members)
            covered = torch.zeros(h, w)
            for sy, sx in members:
                covered[: h - sy, : w - sx] += 1
            pred = class_argmax((total / covered)[None])[0]
            wrong[name] += int(((pred != target) & counted).sum())
    errors = {name: n / labelled for name, n in wrong.items()}
    protocol = predictor.inference.describe() if predictor.inference else "plain"
    print(f"{args.split}: {len(dataset)} images, protocol: {protocol}")
    for name, error in errors.items():
        print(f"  shifts {name:<34} pixel error {error:.4f}")
    if args.json:
        write_json(
            args.json,
            {
                **machine_info(),
                "checkpoint": args.checkpoint,
                "split": args.split,
                "amp": predictor.amp,
                "threads": args.threads,
                "protocol": protocol,
                "images": len(dataset),
                "shift_sets": {name: [list(s) for s in members] for name, members in SETS.items()},
                "pixel_error": errors,
                "seconds": time.perf_counter() - start,
            },
        )
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
