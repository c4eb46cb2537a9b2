"""Peak memory of the dense CRF per pixel: the figure behind ``pixelwise.crf.dense_crf``'s memory check.

Each case runs in a fresh process, which resets its peak resident set (``VmHWM``) to the memory in use once the
inputs are made (their temporaries freed) and reads the peak after one ``dense_crf`` call (Linux): a flat image
(the appearance lattice's fewest vertices), CamVid and ISBI 2012 images scaled to the size asked, and uniform
colour noise (the most vertices). The check refuses what cannot fit by the least figure any image needs.

    python benchmarks/crf_memory.py --data-root ../shared/datasets --side 1024 \
        --json benchmarks/results/crf_memory_zen5.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import cpu_model  # noqa: E402

CHILD = """
import sys
import numpy as np, torch
from PIL import Image
from pixelwise.crf import dense_crf
kind, side, classes, path = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
if kind == "flat":
    image = torch.zeros(side, side, 3, dtype=torch.uint8)
elif kind == "noise":
    image = torch.randint(0, 256, (side, side, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
else:
    image = torch.from_numpy(np.asarray(Image.open(path).convert("RGB").resize((side, side), Image.BILINEAR)).copy())
probs = torch.softmax(torch.randn(classes, side, side, generator=torch.Generator().manual_seed(1)), 0)
def status(key):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(key + ":"))
# the peak so far holds the inputs' temporaries: reset it to the memory in use (Linux's clear_refs 5)
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")
base = status("VmRSS")
dense_crf(image, probs, threads=1, theta_alpha=float(sys.argv[5]), theta_beta=float(sys.argv[6]))
print((status("VmHWM") - base) * 1024 / side**2)
"""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-root", default=os.environ.get("PIXELWISE_DATA", "../shared/datasets"))
    ap.add_argument("--side", type=int, default=1024, help="images are scaled to side x side (default 1024)")
    ap.add_argument("--classes", type=int, nargs="+", default=[2, 19])
    ap.add_argument("--theta-alpha", type=float, default=80.0, help="appearance kernel's position width")
    ap.add_argument("--theta-beta", type=float, default=13.0, help="appearance kernel's colour width")
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args()
    root = Path(args.data_root)
    cases = {
        "flat": "",
        "camvid": str(sorted((root / "camvid" / "images" / "test").iterdir())[0]),
        "isbi2012": str(sorted((root / "isbi2012_membrane" / "images" / "train").iterdir())[0]),
        "noise": "",
    }
    rows = []
    for classes in args.classes:
        for kind, path in cases.items():
            cmd = [sys.executable, "-c", CHILD, kind, str(args.side), str(classes), path]
            cmd += [str(args.theta_alpha), str(args.theta_beta)]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
            per_pixel = float(out.split()[-1])
            rows.append(
                {"image": kind, "source": Path(path).name or None, "classes": classes, "bytes_per_pixel": per_pixel}
            )
            print(f"{kind:>8}  {classes:>3} classes  {per_pixel:7.0f} bytes per pixel")
    result = {
        "cpu": cpu_model(),
        "side": args.side,
        "theta_alpha": args.theta_alpha,
        "theta_beta": args.theta_beta,
        "threads": 1,
        "rows": rows,
    }
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
