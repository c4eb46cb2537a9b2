"""What ``train.amp: bf16`` costs on a CPU without native bf16 (no AVX-512 BF16, no AMX): one U-Net training
step (forward, cross entropy, backward, SGD update) in fp32 and under bf16 autocast, timed in turns in one
process, with the CPU's model and whether pixelwise counts bf16 as native there (``train.amp: auto`` then
trains in fp32).

    python benchmarks/amp_emulated.py --threads 1 --out benchmarks/results/amp_emulated.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from pixelwise.device import native_precisions, training_amp
from pixelwise.models import build_model

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import machine_info  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = build_model("unet", num_classes=2, in_channels=1, base_channels=32, depth=4).to(
        memory_format=torch.channels_last
    )
    opt = torch.optim.SGD(model.parameters(), lr=1e-4)
    x = torch.randn(args.batch, 1, args.size, args.size).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 2, (args.batch, args.size, args.size))

    def step(bf16: bool) -> float:
        t = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = torch.nn.functional.cross_entropy(model(x).float(), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        return time.perf_counter() - t

    step(False), step(True)  # warm-up
    times = {"fp32": [], "bf16": []}
    for _ in range(args.repeats):
        times["fp32"].append(step(False))
        times["bf16"].append(step(True))
    best = {k: min(v) for k, v in times.items()}
    cpu = torch.device("cpu")
    result = {
        **machine_info(),
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "native_precisions": list(native_precisions(cpu)),
        "train_amp_auto": training_amp("auto", cpu),
        "threads": args.threads,
        "input": [args.batch, 1, args.size, args.size],
        "step_seconds_best": best,
        "bf16_over_fp32": best["bf16"] / best["fp32"],
    }
    print(json.dumps(result, indent=2))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
