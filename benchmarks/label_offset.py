"""Do a split's masks sit where its images are? The pixel error of a checkpoint's predictions moved by
fractions of a pixel.

A network trained with flips (and evaluated with flip averaging) predicts edges symmetrically about the image's
own edges; if the masks were drawn a fraction of a pixel off their images, moving the predicted class
probabilities by that offset lowers the pixel error, and by the opposite offset raises it. This sweeps the
offsets ``(dy, dx)`` on a grid, moving the run's class probabilities (its inference protocol and precision, as
``pixelwise eval``) with :func:`pixelwise.data.shift_image`, and reports each one's pixel error (the fraction of
labelled pixels whose argmax differs from the mask). Estimate it on the training split and set the best offset
as ``data.image_shift`` (the images are then moved by it, so that image and mask line up for training). For a
run trained with an image shift, the data set here already moves the images by it, so what this finds is the
offset left over, to be added to the run's. ``--no-flip`` drops the mirror image from the protocol: an offset that
the network itself makes (rather than the masks) then shows up along x as well, where flip averaging cancels it.

    python benchmarks/label_offset.py runs/isbi2012_cpu/last.pt --split train --data-root ../shared/datasets \
        --json benchmarks/results/isbi2012_label_offset_train_xeon.json
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent))
from checkpoint_options import add_checkpoint_options  # noqa: E402
from machine import machine_info  # noqa: E402
from peers_smp import register_smp_peers  # noqa: E402

from pixelwise.argmax import class_argmax  # noqa: E402
from pixelwise.data import shift_image  # noqa: E402
from pixelwise.engine.evaluator import checkpoint_dataset  # noqa: E402
from pixelwise.engine.predictor import Predictor  # noqa: E402
from pixelwise.engine.video import batch_probabilities  # noqa: E402
from pixelwise.fileio import write_json  # noqa: E402

DEFAULT_STEPS = (-1.0, -0.75, -0.5, -0.25, 0.0, 0.25, 0.5, 0.75, 1.0)


def offset_errors(
    probs: torch.Tensor, target: torch.Tensor, ignore: int, steps: list[float]
) -> dict[tuple[float, float], int]:
    """For every ``(dy, dx)`` on the grid ``steps`` x ``steps``: how many labelled pixels of ``target`` (``H x W``)
    the argmax of ``probs`` (``K x H x W``) moved by that offset gets wrong."""
    counted = target != ignore
    wrong = {}
    for dy in steps:
        rows = shift_image(probs, (dy, 0))  # shift_image moves rows, then columns: the rows once per dy
        for dx in steps:
            pred = class_argmax(shift_image(rows, (0, dx))[None])[0]
            wrong[(dy, dx)] = int(((pred != target) & counted).sum())
    return wrong


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint")
    add_checkpoint_options(ap, split="train")
    ap.add_argument("--steps", type=float, nargs="+", default=list(DEFAULT_STEPS), help="offsets tried on each axis")
    ap.add_argument(
        "--flip",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="average with the mirror image or not (default: the run's protocol); without it, an offset the network "
        "itself makes shows in dx as well",
    )
    args = ap.parse_args()
    if 0.0 not in args.steps:
        args.steps = sorted({*args.steps, 0.0})  # the unmoved probabilities are the reference
    torch.set_num_threads(args.threads)
    register_smp_peers()  # the smp peers' checkpoints (benchmarks/peer_same_budget.py) load too

    overrides = None if args.flip is None else {"flip": args.flip}
    predictor = Predictor(args.checkpoint, amp=args.amp, inference=overrides)
    dataset = checkpoint_dataset(predictor.ckpt, args.checkpoint, args.split, args.data_root)
    ignore = dataset.info.ignore_index
    offsets = [(dy, dx) for dy in args.steps for dx in args.steps]
    wrong = dict.fromkeys(offsets, 0)
    labelled = 0
    for i in tqdm(range(len(dataset)), desc=args.split, unit="image"):
        image, target = dataset[i][:2]
        with torch.inference_mode():
            probs = batch_probabilities(predictor, image[None])[0].cpu()
        labelled += int((target != ignore).sum())
        for offset, n in offset_errors(probs, target, ignore, args.steps).items():
            wrong[offset] += n

    errors = {f"{dy:g},{dx:g}": wrong[(dy, dx)] / labelled for dy, dx in offsets}
    best = min(offsets, key=lambda o: (wrong[o], abs(o[0]) + abs(o[1])))
    print(f"{args.split}: {len(dataset)} images; pixel error by offset (rows dy, columns dx), best {best}")
    print("dy \\ dx " + " ".join(f"{dx:>7g}" for dx in args.steps))
    for dy in args.steps:
        print(f"{dy:>7g} " + " ".join(f"{wrong[(dy, dx)] / labelled:7.4f}" for dx in args.steps))
    print(f"no offset {wrong[(0.0, 0.0)] / labelled:.4f}; best {best}: {wrong[best] / labelled:.4f}")
    if args.json:
        result = {
            **machine_info(),
            "checkpoint": args.checkpoint,
            "split": args.split,
            "amp": predictor.amp,
            "flip": predictor.inference.flip if predictor.inference is not None else False,
            "images": len(dataset),
            "pixel_error_by_offset_dy_dx": errors,
            "best_offset_dy_dx": list(best),
            "best_pixel_error": wrong[best] / labelled,
            "pixel_error_without_offset": wrong[(0.0, 0.0)] / labelled,
        }
        write_json(args.json, result)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
