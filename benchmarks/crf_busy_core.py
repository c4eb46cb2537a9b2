"""Dense CRF with the other core busy: torch's threads fixed at the machine's core count against
``threads="auto"`` (pixelwise.cpu_threads: no more threads than the cores other processes leave idle), and
pydensecrf2 (one thread) where installed, timed in turns on the same CamVid test cases, first on a quiet machine,
then with a busy-looping process pinned to the last core. Run it on an otherwise quiet machine.

    python benchmarks/crf_busy_core.py --data-root ../shared/datasets --out benchmarks/results/crf_busy_core.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from crf_speed import PARAMS, camvid_cases, dcrf, run_pydensecrf  # noqa: E402
from machine import machine_info  # noqa: E402

from pixelwise import cpu_threads  # noqa: E402
from pixelwise.crf import dense_crf  # noqa: E402

SPIN = "while True: pass"


def pixelwise_runner(threads):
    def run(image, probs):
        with torch.inference_mode():
            return dense_crf(image, torch.from_numpy(probs), threads=threads, **PARAMS)

    return run


def timed_in_turns(runners: dict, cases: list, rounds: int) -> dict:
    times: dict[str, list[float]] = {name: [] for name in runners}
    cpu_threads._last = None  # decide afresh for this condition, not from the last one's probe
    for run in runners.values():  # warm-up: first calls allocate and pick kernels (and "auto" probes)
        run(cases[0][1], cases[0][2])
    for _ in range(rounds):
        for _, image, probs in cases:
            for name, run in runners.items():
                start = time.perf_counter()
                run(image, probs)
                times[name].append(time.perf_counter() - start)
    return {
        name: {"median_s": statistics.median(t), "mean_s": statistics.fmean(t), "runs": len(t)}
        for name, t in times.items()
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-root", default=os.environ.get("PIXELWISE_DATA", "../shared/datasets"))
    ap.add_argument("--images", type=int, default=6)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--out", default="benchmarks/results/crf_busy_core.json")
    args = ap.parse_args()
    cores = len(os.sched_getaffinity(0))
    torch.set_num_threads(cores)
    cases = camvid_cases(Path(args.data_root), args.images)
    runners = {
        f"pixelwise_threads_{cores}": pixelwise_runner(cores),
        "pixelwise_threads_auto": pixelwise_runner("auto"),
    }
    if dcrf is not None:
        runners["pydensecrf2"] = run_pydensecrf
    result = {
        "what": "seconds per CamVid test image (480x360, 11 classes, 10 iterations), quiet and with one core busy",
        "command": " ".join(["python", *sys.argv]),
        **machine_info(),
        "cores": cores,
        "torch": torch.__version__,
        "params": PARAMS,
        "quiet": timed_in_turns(runners, cases, args.rounds),
    }
    last = max(os.sched_getaffinity(0))
    spinner = subprocess.Popen(["taskset", "-c", str(last), sys.executable, "-c", SPIN])
    try:
        time.sleep(0.5)
        result["one_core_busy"] = timed_in_turns(runners, cases, args.rounds)
    finally:
        spinner.kill()
        spinner.wait()
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    for condition in ("quiet", "one_core_busy"):
        print(condition, {k: round(v["median_s"], 3) for k, v in result[condition].items()})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
