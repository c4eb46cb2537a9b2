"""How much of the class weights' prior shift to undo at inference, measured on labelled splits.

A model trained with class-weighted cross entropy (``train.class_weights``) predicts ``p(c | x)`` scaled by the
class weight ``w_c``: rare classes win pixels they should not (CamVid: Building pixels labelled SignSymbol,
Pedestrian, Fence), which costs their IoU. Dividing the probabilities by ``w_c ** tau`` before the argmax
(logit adjustment, Menon et al., ICLR 2021) undoes the shift fully at ``tau = 1`` and not at all at 0. The model
runs once per image (the run's inference protocol, ``--scales``/``--flip`` overriding it), every ``tau`` is scored
on those probabilities (:func:`pixelwise.inference.protocol.correct_class_weights`, as
``eval --class-weight-correction``).

    python benchmarks/class_weight_correction.py RUN/best.pt --data-root ../shared/datasets \\
        --splits val test --taus 0 0.25 0.5 0.75 1 [--scales 0.75] [--flip|--no-flip] [--json F]

Class weights: the checkpoint's (``meta.class_weights``; older runs: their config's list or the run directory's
``class_weights.json``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from tqdm.auto import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import machine_info  # noqa: E402

from pixelwise.engine.evaluator import checkpoint_dataset  # noqa: E402
from pixelwise.engine.predictor import Predictor, recorded_class_weights  # noqa: E402
from pixelwise.engine.video import batch_probabilities  # noqa: E402
from pixelwise.inference import InferenceSettings  # noqa: E402
from pixelwise.inference.protocol import correct_class_weights  # noqa: E402
from pixelwise.metrics import ConfusionMatrix  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--data-root", type=Path)
    parser.add_argument("--splits", nargs="+", default=["val"])
    parser.add_argument("--taus", nargs="+", type=float, default=[0.0, 0.25, 0.5, 0.75, 1.0])
    parser.add_argument(
        "--flip",
        action=argparse.BooleanOptionalAction,
        help="also average the flipped image; --no-flip turns the run's off (default: the run's)",
    )
    parser.add_argument("--scales", nargs="+", type=float, help="image scales (default: the run's)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    machine = machine_info()  # /proc/cpuinfo read once: the results and the progress print

    # the run's protocol without its own correction: each tau below is the whole correction
    overrides = {"class_weight_correction": 0.0, **({"flip": args.flip} if args.flip is not None else {})}
    if args.scales:
        overrides["scales"] = args.scales
    predictor = Predictor(args.checkpoint, inference=overrides)
    weights = recorded_class_weights(predictor.meta, args.checkpoint, predictor.ckpt.get("config"))
    if weights is None:
        sys.exit(f"{args.checkpoint}: the run records no class weights (trained without train.class_weights)")
    corrections = {tau: InferenceSettings(class_weight_correction=tau, class_weights=weights) for tau in args.taus}
    classes = predictor.classes
    protocol = (
        None
        if predictor.inference is None
        else {"scales": list(predictor.inference.scales), "flip": predictor.inference.flip}
    )
    result = {
        "checkpoint": str(args.checkpoint),
        **machine,
        "inference": protocol,
        "class_weights": weights,
        "splits": {},
    }
    for split in args.splits:
        dataset = checkpoint_dataset(predictor.ckpt, args.checkpoint, split, args.data_root)
        info = dataset.info
        cms = {tau: ConfusionMatrix(info.num_classes, info.ignore_index) for tau in args.taus}
        for i in tqdm(range(len(dataset)), desc=split, unit="img"):
            image, mask = dataset[i][:2]
            probs = batch_probabilities(predictor, image[None])
            for tau, cm in cms.items():
                cm.update(correct_class_weights(probs, corrections[tau]).argmax(1).cpu(), mask[None])
        rows = {}
        print(f"{split} ({len(dataset)} images), CPU {machine['cpu']}")
        print("| tau | mIoU | " + " | ".join(classes) + " |")
        print("|---:|---:|" + "---:|" * len(classes))
        for tau, cm in cms.items():
            m = cm.compute()
            # the matrix too (rows: true class, columns: predicted), for where a class's pixels go
            rows[str(tau)] = {"miou": m["miou"], "iou": m["iou"], "confusion": cm.matrix.tolist()}
            print(f"| {tau} | {100 * m['miou']:.1f} | " + " | ".join(f"{100 * v:.1f}" for v in m["iou"]) + " |")
        result["splits"][split] = rows
    if args.json:
        result["command"] = " ".join(sys.argv)
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
