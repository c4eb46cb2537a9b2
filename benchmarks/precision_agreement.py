"""How many pixels a checkpoint labels differently in bf16 and in float32 (what an exported ONNX graph, float32,
gives): every ``--every``-th image of a split, with the run's own protocol and with one plain scale.

    python benchmarks/precision_agreement.py runs/s46/camvid_20/last.pt --split test --every 23 \
        --data-root ../shared/datasets --json benchmarks/results/precision_agreement_camvid20_test.json
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from checkpoint_options import write_figures  # noqa: E402

from pixelwise.data import list_split, resolve_data_root  # noqa: E402
from pixelwise.engine import Predictor  # noqa: E402

PLAIN = {"scales": [1.0], "flip": False, "rot90": False, "class_weight_correction": 0}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint")
    ap.add_argument("--split", default="test")
    ap.add_argument("--every", type=int, default=1, help="every N-th image of the split")
    ap.add_argument("--data-root")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", help="write the figures here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    logging.disable(logging.WARNING)  # the memory switch's notes, not wanted here
    fp32 = Predictor(args.checkpoint, amp="none")
    root = resolve_data_root(args.data_root, fp32.ckpt["config"]["data"]["root"])
    files = list_split(root, fp32.meta["dataset"], args.split).images
    images = [files[stem] for stem in sorted(files)][:: args.every]
    rows = {}
    for name, inference in (("run's protocol", None), ("plain", PLAIN)):
        full = Predictor(args.checkpoint, amp="none", inference=inference)
        half = Predictor(args.checkpoint, amp="bf16", inference=inference)
        differ = total = 0
        for image in images:
            a, b = full.predict(image), half.predict(image)
            differ, total = differ + int((a != b).sum()), total + a.size
        rows[name] = {"pixels": total, "differ": differ, "share": differ / total}
        print(f"{name:>15}: {differ} of {total} pixels differ ({100 * differ / total:.2f} %)", flush=True)
    write_figures(args, rows, images=len(images))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
