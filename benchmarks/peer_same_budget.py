"""A pixelwise config against smp's model with the same minutes of training on the same machine, in one run.

Both sides are trained by pixelwise's engine from the same config (data, crops, augmentation, optimizer,
schedule, precision), the peer with ``model.name`` swapped for one of smp's models (``peers_smp.py``; random
initialisation), each with ``train.max_minutes = --minutes`` so that the poly schedule follows the clock. By
default the two train at the same time, each pinned to its own core with one thread, so that both see the same
machine (whatever else runs on it slows both); ``--sequential`` trains them one after the other with
``--threads``. Each side is then evaluated at the end of its budget (``last.pt``; no checkpoint selection on the
reported split) on whole images with the same confusion matrix, with the same ``--flip``/``--scales``.
Several ``--peer`` names train two at a time (one per core); with ``--no-recipe`` only the peers: a search for
smp's best model at a budget, whose winner then meets the recipe.

    pip install -e '.[bench]'
    python benchmarks/peer_same_budget.py configs/isbi2012_cpu.yaml --minutes 30 --split val
    python benchmarks/peer_same_budget.py configs/camvid_cpu_deeplabv3plus.yaml --minutes 60 --split test --flip
    python benchmarks/peer_same_budget.py configs/camvid_cpu.yaml --minutes 10 --split val \
        --peer smp_fpn_mobilenetv3 smp_unet_resnet18 --no-recipe
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import machine_info  # noqa: E402
from peers_smp import print_table, register_smp_peers, scores  # noqa: E402

from pixelwise.fileio import write_json  # noqa: E402


def child(args: argparse.Namespace) -> int:
    """Train and evaluate one side (in its own process, pinned by the parent)."""
    from pixelwise.config import load_config, validate_config
    from pixelwise.engine import evaluate_checkpoint, train
    from pixelwise.models import input_channels

    register_smp_peers()
    torch.set_num_threads(args.threads)
    config = load_config(args.config, args.set)
    if args.model:
        config = validate_config(
            {**config, "model": {"name": args.model, "in_channels": input_channels(config["model"])}}
        )
    config["train"]["max_minutes"] = args.minutes
    config["train"]["iters"] = 10**7
    run_dir = Path(args.run_dir)
    result = train(
        config, run_dir=run_dir, data_root=args.data_root, progress=False, resume=(run_dir / "last.pt").exists()
    )
    # the config's inference section (its scales) with --scales/--flip over it; the same for both sides
    overrides = {"scales": args.scales, "flip": args.flip or None}
    overrides = {k: v for k, v in overrides.items() if v is not None}
    ev = evaluate_checkpoint(
        run_dir / "last.pt", split=args.split, data_root=args.data_root, progress=False, inference=overrides or None
    )
    out = {
        "model": config["model"]["name"],
        "iterations": result["iterations"],
        "train_minutes": result["train_seconds"] / 60,
        **scores(ev),
        "inference": ev["inference"],  # the protocol used (None: whole image at scale 1, no flip)
    }
    (run_dir / "peer_result.json").write_text(json.dumps(out, indent=2) + "\n")
    return 0


def _all_succeeded(procs: dict[str, subprocess.Popen]) -> bool:
    """Wait for every side (so none outlives the script), then say whether all exited cleanly."""
    codes = [p.wait() for p in procs.values()]
    return all(code == 0 for code in codes)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("config")
    ap.add_argument(
        "--peer", nargs="+", default=["smp_unet_resnet34"], help="the peer model(s) (peers_smp.py); several: a search"
    )
    ap.add_argument("--no-recipe", action="store_true", help="train the peers only (e.g. to search smp's best)")
    ap.add_argument("--minutes", type=float, required=True, help="training minutes for each side")
    ap.add_argument("--split", default="val", help="split to report (CamVid: test)")
    ap.add_argument("--flip", action="store_true", help="evaluate both with horizontal-flip averaging")
    ap.add_argument("--scales", type=float, nargs="+", help="evaluation scales (default: the config's)")
    ap.add_argument("--data-root")
    ap.add_argument("--out-dir", default="runs/peer", help="run directories go here")
    ap.add_argument("--results", help="JSON results (default benchmarks/results/<config>_peer_<minutes>min.json)")
    ap.add_argument("--sequential", action="store_true", help="one after the other, with --threads each")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument(
        "--swap-cores",
        action="store_true",
        help="give the sides the cores in reverse order (the recipe the last): alternate it between seeds, so that "
        "a busier core (this process, other work) does not always fall to the same side",
    )
    ap.add_argument("--set", action="append", default=[], help="config overrides, for both sides")
    ap.add_argument("--model", help=argparse.SUPPRESS)  # child: the model swapped in
    ap.add_argument("--run-dir", help=argparse.SUPPRESS)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args)

    name = Path(args.config).stem
    out_dir = Path(args.out_dir) / f"{name}_{args.minutes:g}min"
    sides = {} if args.no_recipe else {"pixelwise": None}
    sides.update({peer: peer for peer in args.peer})
    # concurrently: one side per core, in waves of as many sides as there are cores
    cores = sorted(os.sched_getaffinity(0))  # the cores this process may use (not necessarily 0..n-1)
    wave = 1 if args.sequential else len(cores)
    order = cores[::-1] if args.swap_cores else cores
    procs, placed = {}, {}
    for i, (label, model) in enumerate(sides.items()):
        if i % wave == 0 and not _all_succeeded(procs):
            return 1
        core = order[i % wave]
        cmd = [
            sys.executable,
            __file__,
            args.config,
            "--child",
            "--minutes",
            str(args.minutes),
            "--split",
            args.split,
            "--run-dir",
            str(out_dir / label),
            "--threads",
            str(args.threads),
        ]
        cmd += ["--flip"] if args.flip else []
        cmd += ["--scales", *map(str, args.scales)] if args.scales else []
        cmd += ["--data-root", args.data_root] if args.data_root else []
        cmd += [x for s in args.set for x in ("--set", s)]
        cmd += ["--model", model] if model else []
        env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
        if not args.sequential:
            cmd = ["taskset", "-c", str(core), *cmd]
            placed[label] = core
        print("+", " ".join(cmd), flush=True)
        procs[label] = subprocess.Popen(cmd, env=env)
    if not _all_succeeded(procs):
        return 1

    runs = {label: json.loads((out_dir / label / "peer_result.json").read_text()) for label in sides}
    results = {
        "config": args.config,
        "overrides": args.set,
        "minutes": args.minutes,
        "split": args.split,
        "inference": next(iter(runs.values()))["inference"],  # the same protocol for every side
        "eval_precision": "fp32",  # evaluate_checkpoint's default amp "none", for every side
        "schedule": "sequential" if args.sequential else "concurrent, one core each",
        "cores": placed,
        "machine": {
            **machine_info(),
            "threads": args.threads,
            "torch": torch.__version__,
        },
        "runs": runs,
    }
    path = Path(args.results or f"benchmarks/results/{name}_peer_{args.minutes:g}min.json")
    write_json(path, results)
    labelled = {label if label == r["model"] else f"{label} ({r['model']})": r for label, r in runs.items()}
    print_table(labelled, args.split, "iterations", digits=1)
    print(f"results in {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
