"""Per-class IoU of a checkpoint on one split, for each group of images (by default each video sequence).

CamVid's test split mixes frames of a sequence the training split also holds (0001TP, later frames) with a
sequence it never shows (Seq05VD); a class that fails on test but not on val may fail on the unseen sequence
only. Groups are taken from the file stems with ``--group`` (a regular expression whose first group names
the image's group; default: everything before the last underscore, CamVid's sequence name). The run's own
inference protocol (scales, flip, class-weight correction) and precision are used, as ``pixelwise eval`` does.

    python benchmarks/per_group_iou.py runs/camvid_cpu/last.pt --split test --data-root ../shared/datasets \
        --json benchmarks/results/camvid_cpu_per_sequence.json
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import torch
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent))
from checkpoint_options import add_checkpoint_options  # noqa: E402
from machine import machine_info  # noqa: E402

from pixelwise.argmax import class_argmax  # noqa: E402
from pixelwise.engine.evaluator import checkpoint_dataset  # noqa: E402
from pixelwise.engine.predictor import Predictor  # noqa: E402
from pixelwise.fileio import write_json  # noqa: E402
from pixelwise.metrics import ConfusionMatrix  # noqa: E402

DEFAULT_GROUP = r"^(.*)_[^_]+$"  # CamVid's <sequence>_<frame> stems


def group_of(stem: str, pattern: re.Pattern) -> str:
    """The group an image belongs to: ``pattern``'s first group on its file stem, else the whole stem."""
    match = pattern.match(stem)
    return match.group(1) if match else stem


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint")
    add_checkpoint_options(ap, split="test")
    ap.add_argument("--group", default=DEFAULT_GROUP, help="regex on the file stem; its first group is the group")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    pattern = re.compile(args.group)

    predictor = Predictor(args.checkpoint, amp=args.amp)
    classes = predictor.classes
    dataset = checkpoint_dataset(predictor.ckpt, args.checkpoint, args.split, args.data_root)
    ignore = dataset.info.ignore_index
    matrices: dict[str, ConfusionMatrix] = {"all": ConfusionMatrix(len(classes), ignore)}
    counts: dict[str, int] = {"all": len(dataset)}
    for i in tqdm(range(len(dataset)), desc=args.split, unit="image"):
        image, target = dataset[i][:2]
        name = group_of(dataset.name_of(i), pattern)
        if name not in matrices:
            matrices[name] = ConfusionMatrix(len(classes), ignore)
        counts[name] = counts.get(name, 0) + 1
        with torch.inference_mode():
            pred = class_argmax(predictor.scores(image[None])).cpu()
        for key in ("all", name):
            matrices[key].update(pred, target[None])

    groups = {}
    for name, matrix in matrices.items():
        m = matrix.compute()
        groups[name] = {"images": counts[name], "miou": m["miou"]} | {
            key: dict(zip(classes, m[key], strict=True)) for key in ("iou", "precision", "recall")
        }
        groups[name]["pixels"] = dict(zip(classes, torch.tensor(m["confusion_matrix"]).sum(1).tolist(), strict=True))
    header = f"{'group':<12} {'images':>6} {'mIoU':>6} " + " ".join(f"{c[:10]:>10}" for c in classes)
    print(header)
    for name, g in groups.items():
        cells = " ".join(f"{100 * v:10.1f}" for v in g["iou"].values())
        print(f"{name:<12} {g['images']:>6} {100 * g['miou']:6.1f} {cells}")
    if args.json:
        result = {
            **machine_info(),
            "checkpoint": args.checkpoint,
            "split": args.split,
            "amp": predictor.amp,
            "group_pattern": args.group,
            "groups": groups,
        }
        write_json(args.json, result)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
