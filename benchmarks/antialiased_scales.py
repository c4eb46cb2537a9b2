"""Inference scales below 1 with and without antialiasing, on one checkpoint. Training's random scale shrinks
images with torchvision's antialiased resize; inference shrank them by plain bilinear sampling until
``pixelwise.inference.protocol.rescale_image`` antialiased them too. This scores the checkpoint with the run's
own protocol (its scales, flips and turns) both ways, in turns, and a third time the first way (the figures are
deterministic: the first and third must agree).

    python benchmarks/antialiased_scales.py runs/camvid_cpu/last.pt --split test --data-root ../shared/datasets \
        --json benchmarks/results/antialiased_scales_camvid_zen5.json
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from checkpoint_options import add_checkpoint_options, score_in_turns, write_figures  # noqa: E402

import pixelwise.inference.protocol as protocol  # noqa: E402

ANTIALIASED = protocol.rescale_image


def plain_bilinear(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """The former resize: bilinear sampling, no antialiasing."""
    return F.interpolate(image, size=size, mode="bilinear", align_corners=False)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint")
    add_checkpoint_options(ap)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    def scaling_with(resize):
        def put_in_place() -> None:
            protocol.rescale_image = resize

        return put_in_place

    ways = [
        ("plain", scaling_with(plain_bilinear)),
        ("antialiased", scaling_with(ANTIALIASED)),
        ("plain again", scaling_with(plain_bilinear)),
    ]
    rows, inference = score_in_turns(args, ways)
    protocol.rescale_image = ANTIALIASED
    write_figures(args, rows, amp=args.amp, inference=inference)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
