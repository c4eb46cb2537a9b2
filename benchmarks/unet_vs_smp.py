"""pixelwise U-Net against segmentation_models_pytorch's Unet (ResNet-34 encoder, no pretrained
weights), trained with the same data, crops, augmentation, optimizer, schedule and evaluation, on
about the same CPU budget. Superseded by ``peer_same_budget.py``, which gives both sides the same
``train.max_minutes``.

The budget is matched only approximately: both models' step time is measured once each, back to back, on one
preloaded batch with SGD and plain cross entropy (not the config's optimizer, loss and loader), and smp gets
``iters * t_pixelwise / t_smp`` iterations; in the published runs that gave smp 13-15 % more training time. Each
side is scored with its ``best.pt``, chosen by the validation it ran on the val split: for ISBI, whose reported
split is val, that choice favours both sides alike.
Both are trained by pixelwise's own engine (smp's Unet is registered as a model), evaluated on
whole images with the same confusion matrix.

    pip install -e '.[bench]'
    python benchmarks/unet_vs_smp.py configs/isbi2012_unet.yaml --split val --data-root ../shared/datasets
    python benchmarks/unet_vs_smp.py configs/camvid_unet.yaml --split test --data-root ../shared/datasets

``--reuse-pixelwise RUN_DIR`` takes the pixelwise side from an existing run of the same config
(e.g. the README's main command) instead of training it again.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from pixelwise.config import load_config, validate_config
from pixelwise.data import DatasetInfo, SegmentationDataset, build_transforms, resolve_data_root
from pixelwise.data.transforms import AUGMENTATION_KEYS
from pixelwise.device import autocast, training_amp
from pixelwise.engine import evaluate_checkpoint, image_mode, model_spec, train
from pixelwise.losses import build_loss
from pixelwise.models import build_model, input_channels
from pixelwise.models.weights import load_checkpoint, model_from_checkpoint

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import machine_info  # noqa: E402
from peers_smp import print_table, register_smp_peers, scores  # noqa: E402

register_smp_peers()


def step_time(config: dict, root: Path, steps: int = 8) -> float:
    """Median seconds per training step (forward, loss, backward, SGD step) on real augmented batches."""
    data, tr = config["data"], config["train"]
    info = DatasetInfo.load(root, data["dataset"])
    spec = model_spec(config, info)
    tf = build_transforms(
        train=True,
        mean=data["mean"],
        std=data["std"],
        ignore_index=info.ignore_index,
        **{k: data[k] for k in AUGMENTATION_KEYS},
    )
    ds = SegmentationDataset(
        root, info.name, data["train_split"], transforms=tf, image_mode=image_mode(input_channels(spec))
    )
    torch.manual_seed(0)
    items = [ds[(i % len(ds), i)] for i in range(data["batch_size"])]
    fmt = torch.channels_last if tr["channels_last"] else torch.contiguous_format
    images = torch.stack([x for x, _ in items]).to(memory_format=fmt)
    masks = torch.stack([y for _, y in items])
    model = build_model(**spec).to(memory_format=fmt).train()
    opt = torch.optim.SGD(model.parameters(), lr=1e-4)
    loss_fn = build_loss("cross_entropy", ignore_index=info.ignore_index)
    device = torch.device("cpu")
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        with autocast(device, training_amp(tr["amp"], device)):
            logits = model(images)
        loss = loss_fn(logits, masks)
        opt.zero_grad()
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t)
    return statistics.median(times[2:])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("config")
    ap.add_argument("--split", default="val", help="split to report (CamVid: test)")
    ap.add_argument("--data-root")
    ap.add_argument("--out-dir", default="runs/bench", help="run directories go here")
    ap.add_argument("--results", help="JSON results file (default benchmarks/results/<config>_vs_smp.json)")
    ap.add_argument("--reuse-pixelwise", help="an existing pixelwise run dir of this config")
    ap.add_argument("--set", action="append", default=[], help="config overrides, for both models")
    args = ap.parse_args()

    base = load_config(args.config, args.set)
    root = resolve_data_root(args.data_root, base["data"]["root"])
    in_ch = input_channels(base["model"])
    smp_cfg = validate_config({**base, "model": {"name": "smp_unet_resnet34", "in_channels": in_ch}})
    name = Path(args.config).stem
    out_dir = Path(args.out_dir) / name

    t_pw = step_time(base, root)
    t_smp = step_time(smp_cfg, root)
    smp_iters = int(round(base["train"]["iters"] * t_pw / t_smp))
    scale = smp_iters / base["train"]["iters"]
    smp_cfg["train"]["iters"] = smp_iters
    smp_cfg["train"]["eval_interval"] = max(1, int(round(base["train"]["eval_interval"] * scale)))
    smp_cfg["train"]["warmup_iters"] = int(round(base["train"]["warmup_iters"] * scale))
    print(
        f"step time: pixelwise {t_pw:.3f}s, smp {t_smp:.3f}s -> smp trains {smp_iters} iterations "
        f"for pixelwise's {base['train']['iters']}",
        flush=True,
    )

    runs = {}
    for label, cfg, run_dir in (
        ("pixelwise unet", base, out_dir / "pixelwise"),
        ("smp Unet(resnet34)", smp_cfg, out_dir / "smp"),
    ):
        if label.startswith("pixelwise") and args.reuse_pixelwise:
            run_dir = Path(args.reuse_pixelwise)
            ckpt = load_checkpoint(run_dir / "last.pt")
            if ckpt["config"] != base:
                print(f"warning: {run_dir} was trained with another config than {args.config}", file=sys.stderr)
            seconds = ckpt["train_state"]["train_seconds"]
        else:
            t = time.perf_counter()
            res = train(cfg, run_dir=run_dir, data_root=root, progress=False, resume=(run_dir / "last.pt").exists())
            seconds = res["train_seconds"]
            print(f"{label}: trained in {(time.perf_counter() - t) / 60:.1f} min", flush=True)
        ev = evaluate_checkpoint(run_dir / "best.pt", split=args.split, data_root=root, progress=False)
        model = model_from_checkpoint(load_checkpoint(run_dir / "best.pt"))
        runs[label] = {
            "run_dir": str(run_dir),
            "iters": cfg["train"]["iters"],
            "train_minutes": seconds / 60,
            "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
            **scores(ev),
        }

    results = {
        "config": args.config,
        "overrides": args.set,
        "split": args.split,
        "step_seconds": {"pixelwise unet": t_pw, "smp Unet(resnet34)": t_smp},
        "machine": {
            **machine_info(),
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
        },
        "runs": runs,
    }
    path = Path(args.results or f"benchmarks/results/{name}_vs_smp.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2))
    print_table(runs, args.split, "iters", digits=2)
    print(f"results in {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
