"""Training throughput of each config, and of smp's models as the peer, in one run.

For each entry (a config, or a config with its model swapped for a peer's), a fresh process builds the
config's real training pipeline (data set, augmentation, DataLoader with the config's workers, model, optimizer,
the config's loss, autocast as ``train.amp`` resolves on this machine, channels-last; for an instance method its
targets built in the loader, its boundary class or Panoptic-DeepLab branch and loss, as the trainer does) and
times ``--steps`` optimisation steps after ``--warmup``. It reports:

- images per second (batch size / median step time, data wait included);
- the share of a step spent waiting for the next batch (``next(loader)``) rather than computing;
- GFLOP/s of the compute part: the FLOPs of one forward + backward pass counted by ``torch.utils.flop_counter`` on
  the same batch shape (grouped convolutions' backward corrected: ``flops.py``), divided by the compute time, and
  that rate as a share of this CPU's measured peak in the entry's precision (``roofline.py``'s largest
  convolutions and matrix products, same threads; fp32, and bf16 under autocast for bf16 entries);
- peak memory of the training (the process and its loader workers, proportional set size so that pages the
  workers share with it count once; sampled every 0.2 s over the warm-up and timed steps, from /proc; for the
  compiled entries the warm-up includes torch.compile's compilation), beside the
  process's own maximum resident set size.

Entries run in turns: ``--rounds`` rounds, each entry once per round in a fresh process; each figure is the median
over the rounds (the host's speed drifts between minutes, so entries timed back to back in one round compare).

    pip install -e '.[bench]'
    python benchmarks/train_throughput.py --threads 2 --out benchmarks/results/train_throughput.json
    python benchmarks/train_throughput.py configs/isbi2012_cpu.yaml configs/isbi2012_cpu.yaml@smp_unet_resnet34

An entry ``CONFIG@MODEL`` trains ``CONFIG`` with ``model.name`` set to ``MODEL`` (its other model keys dropped):
the smp peers of ``peers_smp.py`` are registered (``smp_unet_resnet34``, ``smp_fpn_mobilenetv3``, ...); ``#key=value``
appended (repeatable) overrides a config key as ``--set`` does:
``configs/camvid_cpu.yaml#train.channels_last=false``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from flops import step_flops  # noqa: E402
from machine import machine_info  # noqa: E402
from peers_smp import register_smp_peers  # noqa: E402

DEFAULT_ENTRIES = (
    "configs/camvid_cpu.yaml",
    "configs/camvid_cpu.yaml#train.channels_last=false",
    "configs/camvid_cpu.yaml@smp_unet_resnet34",
    "configs/camvid_cpu.yaml@smp_deeplabv3plus_mobilenet_v2",
    "configs/camvid_cpu_deeplabv3plus.yaml",
    "configs/camvid_unet.yaml",
    "configs/camvid_deeplabv3plus_mobilenetv2_os16.yaml",
    "configs/isbi2012_cpu.yaml",
    "configs/isbi2012_cpu.yaml@smp_unet_resnet34",
    "configs/isbi2012_unet.yaml",
)


def load_entry(entry: str, data_root: str | None) -> dict:
    from pixelwise.config import load_config
    from pixelwise.models import input_channels

    entry, *overrides = entry.split("#")
    path, _, peer = entry.partition("@")
    config = load_config(path, overrides)
    if peer:
        config["model"] = {"name": peer, "in_channels": input_channels(config["model"])}
    if data_root:
        config["data"]["root"] = data_root
    return config


def _pss_kib(pid: int) -> int:
    """Proportional set size of a process in KiB (resident pages, shared ones divided among their users)."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def _children(pid: int) -> list[int]:
    kids = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            kids += [int(k) for k in (task / "children").read_text().split()]
        except OSError:
            continue
    return kids


class TreeMemory:
    """The largest total PSS of this process and its descendants (loader workers) seen while it runs."""

    def __init__(self, interval: float = 0.2) -> None:
        self.interval, self.peak_kib = interval, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def sample(self) -> None:
        pids, todo = [], [os.getpid()]
        while todo:
            pid = todo.pop()
            pids.append(pid)
            todo += _children(pid)
        self.peak_kib = max(self.peak_kib, sum(_pss_kib(pid) for pid in pids))

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def __enter__(self) -> TreeMemory:
        self.sample()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()


def measure(entry: str, data_root: str | None, steps: int, warmup: int) -> dict:
    """Times one entry in this process (run through ``--one``)."""
    from pixelwise.data import DatasetInfo, resolve_data_root
    from pixelwise.device import autocast, training_amp
    from pixelwise.engine import build_optimizer, image_mode, model_spec
    from pixelwise.engine.builders import build_criterion
    from pixelwise.engine.instance_methods import build_loss as build_instance_loss
    from pixelwise.engine.instance_methods import model_arguments
    from pixelwise.engine.trainer import step_loss, train_dataset
    from pixelwise.inference import InstanceSettings
    from pixelwise.models import build_model, input_channels

    register_smp_peers()
    config = load_entry(entry, data_root)
    data, tr = config["data"], config["train"]
    root = resolve_data_root(data["root"])
    info = DatasetInfo.load(root, data["dataset"])
    method = InstanceSettings.from_dict(config["instances"])
    spec = {**model_spec(config, info), **model_arguments(method, info)}  # + the instance branch or boundary class
    # the trainer's training split: augmentation and the instance method's targets
    ds = train_dataset(config, info, root, image_mode(input_channels(spec)), method)
    loader = torch.utils.data.DataLoader(
        ds,
        batch_size=data["batch_size"],
        shuffle=True,
        num_workers=data["num_workers"],
        drop_last=True,
        persistent_workers=data["num_workers"] > 0,
    )
    device = torch.device("cpu")
    amp = training_amp(tr["amp"], device)
    fmt = torch.channels_last if tr["channels_last"] else torch.contiguous_format
    model = build_model(**spec).to(memory_format=fmt).train()
    optimizer = build_optimizer(model, tr)
    # the config's criterion; class weights of 1 stand in for the run's (their values do not change the cost)
    weights = None if tr["class_weights"] is None else [1.0] * info.num_classes
    loss_fn = build_instance_loss(method, build_criterion(tr, info.ignore_index, weights))

    # train.compile: torch.compile as the trainer applies it (the first warm-up step compiles)
    net = torch.compile(model) if tr["compile"] else model

    def step(images: torch.Tensor, targets, module: torch.nn.Module = net) -> None:
        with autocast(device, amp):
            out = module(images.to(memory_format=fmt))
        loss = step_loss(loss_fn, out, targets, tr["aux_weight"])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    def batches():
        while True:
            yield from loader

    it = batches()
    waits, computes = [], []
    # the warm-up and timed steps (compilation included for compiled entries); the FLOP count below builds its own graph
    with TreeMemory() as memory:
        for i in range(warmup + steps):
            t0 = time.perf_counter()
            images, targets = next(it)
            t1 = time.perf_counter()
            step(images, targets)
            t2 = time.perf_counter()
            if i >= warmup:
                waits.append(t1 - t0)
                computes.append(t2 - t1)
    rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    flops = step_flops(lambda: step(images, targets, model))  # eager: the counter sees each operator
    totals = [w + c for w, c in zip(waits, computes, strict=True)]
    step_s = statistics.median(totals)
    compute_s = statistics.median(computes)
    return {
        "entry": entry,
        "model": spec["name"],
        "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
        "batch_size": data["batch_size"],
        "crop_size": data["crop_size"],
        "num_workers": data["num_workers"],
        "amp": amp,
        "channels_last": tr["channels_last"],
        "compile": tr["compile"],
        "step_s": step_s,
        "images_per_s": data["batch_size"] / step_s,
        "data_wait_share": sum(waits) / sum(totals),
        "gflop_per_step": flops / 1e9,
        "gflops": flops / compute_s / 1e9,
        "peak_rss_mib": rss_mib,  # this process only, loader workers not counted
        "peak_tree_pss_mib": memory.peak_kib / 1024,  # this process and its loader workers
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("entries", nargs="*", default=list(DEFAULT_ENTRIES), help="CONFIG or CONFIG@MODEL")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3, help="each entry once per round, in turns; medians")
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.one:
        print(json.dumps(measure(args.entries[0], args.data_root, args.steps, args.warmup)))
        return 0

    from roofline import conv_peak

    peaks = {"none": max(conv_peak().values())}
    rounds: dict[str, list[dict]] = {entry: [] for entry in args.entries}
    for r in range(args.rounds):
        for entry in args.entries:  # in turns: every entry once per round
            cmd = [
                sys.executable,
                __file__,
                "--one",
                entry,
                "--threads",
                str(args.threads),
                "--steps",
                str(args.steps),
                "--warmup",
                str(args.warmup),
            ] + (["--data-root", args.data_root] if args.data_root else [])
            env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
            out = subprocess.run(cmd, capture_output=True, text=True, env=env)
            if out.returncode != 0:
                print(f"{entry}: failed\n{out.stderr[-2000:]}", file=sys.stderr)
                continue
            row = json.loads(out.stdout.strip().splitlines()[-1])
            rounds[entry].append(row)
            print(f"round {r + 1}: {entry}: {row['images_per_s']:.2f} img/s", flush=True)
    rows = []
    for runs in rounds.values():
        if not runs:
            continue
        row = dict(runs[0])
        for key in ("step_s", "images_per_s", "data_wait_share", "gflops", "peak_rss_mib", "peak_tree_pss_mib"):
            row[key] = statistics.median(run[key] for run in runs)
        row["images_per_s_rounds"] = [run["images_per_s"] for run in runs]
        if row["amp"] not in peaks:
            peaks[row["amp"]] = max(conv_peak(row["amp"]).values())
        row["peak_gflops"] = peaks[row["amp"]]
        row["peak_share"] = row["gflops"] / row["peak_gflops"]
        rows.append(row)
    print(
        "\n| entry | model | params (M) | batch x crop | precision | images/s | data wait | GFLOP/step | GFLOP/s | "
        "of peak | peak memory (MiB) |\n|---|---|---:|---|---|---:|---:|---:|---:|---:|---:|"
    )
    for r in rows:
        precision = "fp32" if r["amp"] == "none" else r["amp"]
        print(
            f"| {r['entry']} | {r['model']} | {r['params_m']:.1f} | {r['batch_size']} x {r['crop_size']} | "
            f"{precision} | {r['images_per_s']:.2f} | {100 * r['data_wait_share']:.0f} % | {r['gflop_per_step']:.0f} | "
            f"{r['gflops']:.0f} | {100 * r['peak_share']:.0f} % of {precision} {r['peak_gflops']:.0f} | "
            f"{r['peak_tree_pss_mib']:.0f} |"
        )
    result = {
        **machine_info(),
        "torch": torch.__version__,
        "threads": args.threads,
        "peak_gflops": {("fp32" if k == "none" else k): v for k, v in peaks.items()},
        "steps": args.steps,
        "rounds": args.rounds,
        "rows": rows,
    }
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
