"""A bounded load test of ``pixelwise serve`` on loopback: throughput, latency, errors and the server's memory.

The server runs in a subprocess (``pixelwise.serve.run``, what ``pixelwise serve`` calls) on 127.0.0.1 at a free
port; ``--clients`` threads (default 8), each with its own keep-alive connection, send ``--requests`` (default 200)
``POST /v1/segment?output=mask`` requests in all, each a ``--size`` PNG (default 256x256, one of 8 generated
pictures), and stop at ``--max-seconds`` whatever is left. Nothing is sent anywhere but 127.0.0.1.

Without ``--checkpoint`` a tiny toy model (U-Net, 8 base channels, depth 3) is trained first on a generated data
set in a temporary folder (a few seconds): the figures then measure the server (decoding, queueing, encoding,
HTTP) far more than the model.

Reported: requests per second over the timed run, latency p50/p90/p99/max as the clients see it (queue wait
included) and the server's own ``time_ms`` (decode + predict + encode), errors by status (goal: none), and the
server's resident memory (VmRSS) after start-up, after ``--warmup`` untimed requests, and after the run (goal:
flat, within 10 % of the warmed-up figure). The clients run on the same CPUs as the server (pin both, as below).

    OMP_NUM_THREADS=1 taskset -c 0 python benchmarks/serve_load.py
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import shlex
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import torch
import yaml
from machine import machine_info  # noqa: E402  (benchmarks/ is on sys.path when run as a script)
from PIL import Image

import pixelwise
from pixelwise.config import load_config
from pixelwise.engine import train
from pixelwise.fileio import write_json


def _command_prefix() -> str:
    """How this run was started, as a command line: its thread setting and cores as they are, not as advised."""
    cores = ",".join(map(str, sorted(os.sched_getaffinity(0))))
    omp = os.environ.get("OMP_NUM_THREADS")
    return f"{f'OMP_NUM_THREADS={omp} ' if omp else ''}taskset -c {cores} python benchmarks/serve_load.py"


RESULTS = Path(__file__).resolve().parent / "results" / "serve_load.json"
HOST = "127.0.0.1"  # loopback only, whatever the options say


def toy_checkpoint(folder: Path) -> Path:
    """A tiny U-Net trained for 60 iterations on 8 generated 64x64 images of 3 classes (bands of grey levels)."""
    rng = np.random.default_rng(0)
    base = folder / "data" / "toy"
    for split, count in (("train", 8), ("val", 2)):
        (base / "images" / split).mkdir(parents=True)
        (base / "masks" / split).mkdir(parents=True)
        for i in range(count):
            mask = (np.arange(64)[None, :] * 3 // 64 + i).repeat(64, 0).astype(np.uint8) % 3
            image = (mask[..., None] * 60 + rng.integers(0, 30, (64, 64, 3))).astype(np.uint8)
            Image.fromarray(image).save(base / "images" / split / f"s{i:02d}.png")
            Image.fromarray(mask, mode="L").save(base / "masks" / split / f"s{i:02d}.png")
    (base / "classes.json").write_text(
        json.dumps({"classes": ["road", "car", "sky"], "palette": [[128, 64, 128], [64, 0, 128], [128, 128, 128]]})
    )
    config = folder / "toy.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "model": {"name": "unet", "base_channels": 8, "depth": 3},
                "data": {"dataset": "toy", "crop_size": 64, "batch_size": 4, "num_workers": 0},
                "train": {"iters": 60, "eval_interval": 60, "lr": 0.05},
            }
        )
    )
    train(load_config(config), run_dir=folder / "run", data_root=folder / "data", progress=False, check_data=False)
    return folder / "run" / "best.pt"


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def rss_mib(pid: int) -> float:
    """The process's resident set size (VmRSS), MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def pictures(size: tuple[int, int], count: int = 8) -> list[bytes]:
    rng = np.random.default_rng(1)
    w, h = size
    out = []
    for i in range(count):
        classes = ((np.arange(w)[None, :] * 3 // w + i) % 3).repeat(h, 0)
        image = (classes[..., None] * 60 + rng.integers(0, 30, (h, w, 3))).astype(np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, "PNG")
        out.append(buffer.getvalue())
    return out


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", help="the model to serve (default: train a tiny toy model first)")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=8, help="untimed requests before the run")
    parser.add_argument("--size", type=int, nargs=2, default=[256, 256], metavar=("W", "H"))
    parser.add_argument("--output", default="mask", help="?output= of each request (default mask)")
    parser.add_argument("--max-seconds", type=float, default=300.0, help="stop sending after this long")
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="serve_load_") as tmp:
        checkpoint = Path(args.checkpoint) if args.checkpoint else toy_checkpoint(Path(tmp))
        port = free_port()
        code = (
            "import logging, sys\n"
            "logging.basicConfig(level=logging.INFO)\n"
            "from pixelwise.serve import run\n"
            "run(sys.argv[1], sys.argv[2], int(sys.argv[3]), access_log=False, log_level='warning')\n"
        )
        server = subprocess.Popen(
            [sys.executable, "-c", code, str(checkpoint), HOST, str(port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        url = f"http://{HOST}:{port}"
        try:
            result = load(server, url, checkpoint, args)
        finally:
            server.terminate()
            try:
                _, err = server.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()
                _, err = server.communicate()
    result["server_exit_code"] = server.returncode
    result["server_log_tail"] = err.strip().splitlines()[-5:]
    write_json(args.out, result)
    print(json.dumps({k: v for k, v in result.items() if k != "server_log_tail"}, indent=2))
    print(f"written to {args.out}")
    return 0 if result["errors"]["total"] == 0 else 1


def load(server: subprocess.Popen, url: str, checkpoint: Path, args: argparse.Namespace) -> dict:
    deadline = time.monotonic() + 120
    while True:  # wait for the model to load and the port to answer
        if server.poll() is not None:
            raise SystemExit(f"the server exited with {server.returncode}: {server.stderr.read()[-2000:]}")
        try:
            if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                break
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            raise SystemExit("the server did not answer /healthz within 120 s")
        time.sleep(0.1)
    rss_start = rss_mib(server.pid)
    bodies = pictures(tuple(args.size))
    endpoint = f"{url}/v1/segment?output={args.output}"
    with httpx.Client(timeout=60) as c:
        for i in range(args.warmup):
            c.post(endpoint, content=bodies[i % len(bodies)]).raise_for_status()
    rss_warm = rss_mib(server.pid)

    latencies: list[float] = []
    server_ms: list[float] = []
    errors: dict[str, int] = {}
    lock = threading.Lock()
    counter = iter(range(args.requests))
    stop_at = time.monotonic() + args.max_seconds

    def client() -> None:
        with httpx.Client(timeout=60) as c:
            while time.monotonic() < stop_at:
                with lock:
                    i = next(counter, None)
                if i is None:
                    return
                start = time.perf_counter()
                try:
                    r = c.post(endpoint, content=bodies[i % len(bodies)])
                    ok, key = r.status_code == 200, str(r.status_code)
                    body = r.json() if ok else None
                except httpx.HTTPError as e:
                    ok, key, body = False, type(e).__name__, None
                elapsed = time.perf_counter() - start
                with lock:
                    if ok:
                        latencies.append(elapsed)
                        server_ms.append(body["time_ms"])
                    else:
                        errors[key] = errors.get(key, 0) + 1

    threads = [threading.Thread(target=client) for _ in range(args.clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    rss_end = rss_mib(server.pid)
    done = len(latencies) + sum(errors.values())
    ms = [1000 * x for x in latencies]
    return {
        "benchmark": "serve_load",
        "command": " ".join([_command_prefix(), *(shlex.quote(a) for a in sys.argv[1:])]),
        "machine": {
            **machine_info(),
            "cpus_allowed": sorted(os.sched_getaffinity(0)),
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "pixelwise": pixelwise.__version__,
        },
        "model": {
            "checkpoint": str(checkpoint) if args.checkpoint else "toy: U-Net, 8 base channels, depth 3, 3 classes",
            "parameters_note": "a tiny toy model: the figures measure the server more than the model",
        },
        "setup": {
            "host": HOST,
            "clients": args.clients,
            "requests": args.requests,
            "warmup": args.warmup,
            "image": f"{args.size[0]}x{args.size[1]} PNG",
            "output": args.output,
            "max_seconds": args.max_seconds,
        },
        "requests_done": done,
        "not_sent": args.requests - done,
        "wall_s": round(wall, 3),
        "throughput_rps": round(len(latencies) / wall, 2) if wall > 0 else None,
        "latency_ms": {
            "p50": round(percentile(ms, 50), 1),
            "p90": round(percentile(ms, 90), 1),
            "p99": round(percentile(ms, 99), 1),
            "max": round(max(ms), 1) if ms else None,
            "mean": round(statistics.fmean(ms), 1) if ms else None,
        },
        "server_time_ms": {"p50": round(percentile(server_ms, 50), 1), "p99": round(percentile(server_ms, 99), 1)},
        "errors": {"total": sum(errors.values()), **errors},
        "server_rss_mib": {
            "after_start": round(rss_start, 1),
            "after_warmup": round(rss_warm, 1),
            "after_run": round(rss_end, 1),
            "growth_after_warmup_pct": round(100 * (rss_end - rss_warm) / rss_warm, 2),
        },
    }


if __name__ == "__main__":
    sys.exit(main())
