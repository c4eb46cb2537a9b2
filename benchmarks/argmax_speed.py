"""Milliseconds of torch.argmax against class_argmax (torch.max(dim).indices) over the class dimension of
score tensors pixelwise meets: a CamVid batch and image, an ISBI tile, a Cityscapes-size image, DSB2018's
three-class maps.

    python benchmarks/argmax_speed.py --threads 2 --out benchmarks/results/argmax_speed.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import machine_info  # noqa: E402
from timing import best_ms  # noqa: E402

from pixelwise.argmax import class_argmax  # noqa: E402

CASES = [
    ("CamVid batch of 4, 11 x 360 x 480", (4, 11, 360, 480), 1),
    ("CamVid image, 11 x 360 x 480", (11, 360, 480), 0),
    ("ISBI tile, 2 x 512 x 512", (1, 2, 512, 512), 1),
    ("Cityscapes size, 19 x 1024 x 2048", (1, 19, 1024, 2048), 1),
    ("DSB2018 batch of 8, 3 x 520 x 696", (8, 3, 520, 696), 1),
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for name, shape, dim in CASES:
        x = torch.randn(shape)
        assert torch.equal(class_argmax(x, dim), x.argmax(dim))
        # in turns, so that both sides see the same machine state
        a, b = [], []
        for _ in range(3):
            a.append(best_ms(lambda x=x, dim=dim: x.argmax(dim), args.repeats, warmup=1))
            b.append(best_ms(lambda x=x, dim=dim: class_argmax(x, dim), args.repeats, warmup=1))
        row = {"case": name, "torch_argmax_ms": round(min(a), 2), "class_argmax_ms": round(min(b), 2)}
        row["speedup"] = round(row["torch_argmax_ms"] / row["class_argmax_ms"], 1)
        rows.append(row)
        print(
            f"{name:38s} argmax {row['torch_argmax_ms']:8.2f} ms   class_argmax {row['class_argmax_ms']:8.2f} ms"
            f"   {row['speedup']}x"
        )
    result = {
        "command": "python " + " ".join(sys.argv),
        **machine_info(),
        "torch": torch.__version__,
        "threads": args.threads,
        "rows": rows,
    }
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
