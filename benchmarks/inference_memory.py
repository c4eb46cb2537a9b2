"""Peak memory of ``Predictor.predict`` on one large image in sliding windows: what the switch to windows (taken
when free memory is short: ``--free-gib`` low enough that it is taken, high enough for the probabilities) still
needs, in units of the image's class probabilities (classes x H x W float32).

Each protocol runs in a fresh process, which resets its peak resident set (``VmHWM``) to the memory in use once
the model and the image are made, pretends the free memory given (``--free-gib``: the switch to windows is taken
from it) and reads the peak after one prediction (Linux).

    python benchmarks/inference_memory.py RUN/last.pt --size 2000 1500 --free-gib 0.6 --protocol plain --json F
    python benchmarks/inference_memory.py RUN/last.pt --size 2000 1500 --free-gib 1.5 --protocol averaged --json F
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import cpu_model  # noqa: E402

CHILD = """
import json, sys
import numpy as np, torch
import pixelwise.engine.predictor as predictor_module
checkpoint, protocol = sys.argv[1], sys.argv[5]
width, height, free = int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
torch.set_num_threads(1)
p = predictor_module.Predictor(checkpoint, device="cpu", amp="none", inference=json.loads(protocol))
image = np.random.default_rng(0).integers(0, 255, (height, width, 3), dtype=np.uint8)
predictor_module.available_memory = lambda device: int(free * 2**30)
def status(key):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(key + ":"))
with open("/proc/self/clear_refs", "w") as f:  # the peak so far: reset to the memory in use (Linux's clear_refs 5)
    f.write("5")
mode = (p.settings_for_size(height, width, "image") or p.inference).mode  # "slide" once the switch is taken
base = status("VmRSS")
p.predict(image, "image")
print(json.dumps({"classes": len(p.classes), "mode": mode, "extra_bytes": (status("VmHWM") - base) * 1024}))
"""

PROTOCOLS = {
    "plain": {"scales": [1.0], "flip": False, "rot90": False},
    "averaged": {"scales": [0.75, 1.0, 1.25], "flip": True, "rot90": False},  # camvid_cpu.yaml's
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint")
    ap.add_argument("--size", type=int, nargs=2, default=[4000, 3000], metavar=("W", "H"))
    ap.add_argument("--free-gib", type=float, default=4.0, help="the free memory pretended (the switch reads it)")
    ap.add_argument("--protocol", choices=list(PROTOCOLS), nargs="+", default=list(PROTOCOLS))
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args()
    width, height = args.size
    rows = []
    for name in args.protocol:
        protocol = PROTOCOLS[name]
        cmd = [sys.executable, "-c", CHILD, args.checkpoint, str(width), str(height), str(args.free_gib)]
        out = subprocess.run([*cmd, json.dumps(protocol)], capture_output=True, text=True, check=False)
        if out.returncode != 0:
            print(f"{name}: failed: {out.stderr.strip().splitlines()[-1]}", file=sys.stderr)
            continue
        result = json.loads(out.stdout.strip().splitlines()[-1])
        buffer = result["classes"] * width * height * 4
        rows.append({"protocol": name, **protocol, **result, "probability_buffers": result["extra_bytes"] / buffer})
        print(
            f"{name} ({result['mode']}): {result['extra_bytes'] / 2**30:.2f} GiB = "
            f"{rows[-1]['probability_buffers']:.1f} x the image's "
            f"class probabilities ({result['classes']} classes, {width}x{height} float32)"
        )
    if args.json:
        record = {
            "cpu": cpu_model(),
            "checkpoint": args.checkpoint,
            "size": [width, height],
            "free_gib": args.free_gib,
            "command": " ".join(sys.argv),
            "rows": rows,
        }
        Path(args.json).write_text(json.dumps(record, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
