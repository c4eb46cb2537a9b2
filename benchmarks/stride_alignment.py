"""Upsampling by the stride against resizing to the input, on one checkpoint. The heads of DeepLab, LR-ASPP,
PSPNet and Panoptic-DeepLab's branch resized each coarse map to the next size (``resize_to``): a stride-``s`` map
of an input ``H`` pixels high has ``ceil(H / s)`` rows, so where ``H`` is no multiple of ``s`` (CamVid's 360 rows
at 1/16; every inference scale) the rows were stretched apart and the scores moved off where the network computed
them. ``pixelwise.models.modules.upsample`` upsamples by the stride and cuts. This scores the checkpoint with the
run's own protocol both ways, in turns, and a third time the first way (the figures are deterministic: the first
and third must agree).

    python benchmarks/stride_alignment.py runs/s46/camvid_20/last.pt --split test --data-root ../shared/datasets \
        --json benchmarks/results/stride_alignment_camvid20_test.json
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from checkpoint_options import add_checkpoint_options, score_in_turns, write_figures  # noqa: E402

from pixelwise.models import deeplab, lraspp, modules, panoptic, pspnet  # noqa: E402

HEADS = (deeplab, lraspp, panoptic, pspnet)  # the model files that upsample coarse maps


def stretched(x: torch.Tensor, factor: int, size: tuple[int, int]) -> torch.Tensor:
    """The former upsampling: the map resized to ``size``, whatever its stride."""
    return modules.resize_to(x, size)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint")
    add_checkpoint_options(ap)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    def heads_with(up):
        def put_in_place() -> None:
            for module in HEADS:
                module.upsample = up

        return put_in_place

    ways = [
        ("resized", heads_with(stretched)),
        ("by the stride", heads_with(modules.upsample)),
        ("resized again", heads_with(stretched)),
    ]
    rows, inference = score_in_turns(args, ways)
    heads_with(modules.upsample)()
    write_figures(args, rows, amp=args.amp, inference=inference)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
