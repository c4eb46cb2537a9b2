"""How close the speed benchmark's fp32 CPU times are to what this CPU can do at all.

Counts each pair's FLOPs (torch.utils.flop_counter, one 512x512 forward pass), measures the CPU's fp32
convolution peak in this process (the best of a few large channels-last convolutions and matrix
products, same thread count), and reads ``benchmarks/results/speed.json`` (written by ``speed.py``) to
give each variant's achieved GFLOP/s and share of that peak, and the share that 1.5x the peer's speed
would need with the same FLOPs.

    python benchmarks/roofline.py --threads 2
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import machine_info  # noqa: E402
from speed import peers  # noqa: E402  (the same model pairs)

from pixelwise.fileio import write_json  # noqa: E402


def forward_flops(model: torch.nn.Module, size: int) -> int:
    model.eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.randn(1, 3, size, size))
    return counter.get_total_flops()


def best_rate(fn, flops: float, repeats: int = 5) -> float:
    """GFLOP/s of the fastest of ``repeats`` calls (after two warm-ups)."""
    for _ in range(2):
        fn()
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return flops / best / 1e9


def conv_peak(amp: str = "none") -> dict[str, float]:
    """GFLOP/s of large matrix products and convolutions: the compute peak a model's rate is compared with.
    ``amp="bf16"`` runs them under bf16 autocast, the peak of a bf16 training step (AVX-512 BF16 or AMX)."""
    rates = {}
    context = torch.autocast("cpu", dtype=torch.bfloat16) if amp == "bf16" else contextlib.nullcontext()
    with context:
        for n in (2048, 4096):
            a, b = torch.randn(n, n), torch.randn(n, n)
            rates[f"matmul {n}^3"] = best_rate(lambda a=a, b=b: a @ b, 2 * n**3)
        with torch.inference_mode():
            shapes = [(256, 256, 3, 128, 1), (256, 256, 3, 64, 1), (512, 512, 3, 64, 2), (1024, 1024, 1, 64, 1)]
            for cin, cout, k, hw, dil in shapes:
                conv = torch.nn.Conv2d(cin, cout, k, padding=dil * (k // 2), dilation=dil).eval()
                conv = conv.to(memory_format=torch.channels_last)
                x = torch.randn(1, cin, hw, hw).contiguous(memory_format=torch.channels_last)
                rates[f"conv {cin}->{cout} {k}x{k} rate {dil} at {hw}x{hw}"] = best_rate(
                    lambda conv=conv, x=x: conv(x), 2 * cin * cout * k * k * hw * hw
                )
    return rates


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--speed", default="benchmarks/results/speed.json")
    ap.add_argument("--out", default="benchmarks/results/roofline.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    speed = json.loads(Path(args.speed).read_text())
    size = speed["args"]["size"]
    if speed["args"].get("device", "cpu") != "cpu" or speed["args"]["threads"] != args.threads:
        raise SystemExit(f"{args.speed} is not a CPU run with {args.threads} threads")
    rates = conv_peak()
    peak = max(rates.values())
    print("fp32 peak measured here (GFLOP/s, best of 5): " + ", ".join(f"{k}: {v:.0f}" for k, v in rates.items()))
    rows = []
    print(
        "| architecture | GFLOP pixelwise / peer | peer fp32: GFLOP/s (% of peak) | pixelwise fp32 | "
        "pixelwise --compile | 1.5x the peer would need |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    for (arch, make_pw, _, make_peer), pair in zip(peers(speed["args"]["num_classes"]), speed["pairs"], strict=True):
        assert pair["architecture"] == arch
        f_pw, f_peer = forward_flops(make_pw(), size), forward_flops(make_peer(), size)
        t = pair["inference_s"]

        def cell(flops: float, seconds: float | None) -> str:
            if seconds is None:
                return "n/a"
            return f"{flops / seconds / 1e9:.0f} ({100 * flops / seconds / 1e9 / peak:.0f} %)"

        need = f_pw / (t["peer_eager_fp32"] / 1.5) / 1e9
        rows.append(
            {
                "architecture": arch,
                "gflop_pixelwise": f_pw / 1e9,
                "gflop_peer": f_peer / 1e9,
                "peer_gflops": f_peer / t["peer_eager_fp32"] / 1e9,
                "pixelwise_gflops": f_pw / t["pixelwise_fp32"] / 1e9,
                "needed_for_1_5x_gflops": need,
            }
        )
        print(
            f"| {arch} | {f_pw / 1e9:.1f} / {f_peer / 1e9:.1f} | {cell(f_peer, t['peer_eager_fp32'])} | "
            f"{cell(f_pw, t['pixelwise_fp32'])} | {cell(f_pw, t.get('pixelwise_compiled_fp32'))} | "
            f"{need:.0f} ({100 * need / peak:.0f} %) |",
            flush=True,
        )
    machine = machine_info()
    recorded = speed.get("machine", {}).get("cpu") or speed.get("cpu")
    if recorded != machine["cpu"]:  # the achieved rates and this peak must come from one machine
        print(f"warning: {args.speed} records the CPU {recorded!r}, this one is {machine['cpu']!r}", file=sys.stderr)
    result = {
        **machine,
        "threads": args.threads,
        "peak_gflops": rates,
        "pairs": rows,
        "speed_json": args.speed,
        "speed_json_cpu": recorded,
    }
    write_json(args.out, result)
    print(f"results in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
