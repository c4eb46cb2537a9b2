"""Speed of the instance decoders and of the instance targets, on DSB2018 test instance maps.

Decoders (ms per image; the headline is the 520 x 696 images):
  - ``boundary``: :func:`pixelwise.inference.instances_from_boundary` on 3 x H x W probabilities made from the
    exact background/interior/boundary targets (width 1): one-hot 0.8 + 0.1 on each class, so the argmax, the
    seeds, the growth and the scores all run as on a network's output;
  - ``panoptic``: :func:`pixelwise.inference.panoptic_postprocess` (threshold 0.1, NMS 7, top-k 200, the
    paper's) on 2-class logits of the true foreground and the exact centre heatmap and offsets;
  - ``connected_components``: :func:`pixelwise.inference.label_instances` of the foreground, today's method, for
    reference.
Each decoder also reports how well it reproduces the instance maps from these exact inputs (objects recovered
with IoU 1 and IoU >= 0.5): the ceiling the targets themselves put on each method.

Targets (ms per 256 x 256 crop, as the data loader builds them after augmentation): boundary_classes (width 1)
and panoptic_targets (sigma 8), on 256 x 256 crops of the test instance maps (every crop position on a grid).

Without the data set (``--data-root``/dsb2018/instances/test) the inputs are synthetic: touching discs cut by
their Voronoi cells, 520 x 696, about the density of the data set's crowded images.

    OMP_NUM_THREADS=1 python benchmarks/instance_postprocess_speed.py --threads 1
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import statistics
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from machine import machine_info  # noqa: E402  (benchmarks/ is on sys.path when run as a script)
from timing import call_seconds  # noqa: E402

from pixelwise.data.instance_targets import boundary_classes, panoptic_targets, relabel_consecutive
from pixelwise.data.io import read_instances
from pixelwise.inference import instances_from_boundary, label_instances, panoptic_postprocess


def synthetic_maps(count: int, h: int = 520, w: int = 696, n: int = 120) -> list[np.ndarray]:
    maps = []
    yy, xx = np.mgrid[:h, :w]
    for seed in range(count):
        rng = np.random.default_rng(seed)
        cy, cx = rng.uniform(0, h, n), rng.uniform(0, w, n)
        radius = rng.uniform(8, 20, n)
        best = np.full((h, w), np.inf)
        owner = np.zeros((h, w), np.int64)
        for i in range(n):  # the nearest centre, within its disc
            d = np.hypot(yy - cy[i], xx - cx[i])
            closer = d < best
            best[closer] = d[closer]
            owner[closer] = i
        maps.append(np.where(best <= radius[owner], owner + 1, 0))
    return maps


def timed(fn: Callable[[], object], repeats: int) -> float:
    """Median seconds of ``repeats`` calls after one warm-up call."""
    return statistics.median(call_seconds(fn, repeats, warmup=1))


def recovered(truth: np.ndarray, pred: np.ndarray) -> tuple[int, int, int]:
    """(true objects, recovered exactly, recovered with IoU >= 0.5) from the pair-count table."""
    g, kg = relabel_consecutive(torch.from_numpy(truth.astype(np.int64)))
    p, kp = relabel_consecutive(torch.from_numpy(np.asarray(pred).astype(np.int64)))
    table = torch.bincount(g.ravel() * (kp + 1) + p.ravel(), minlength=(kg + 1) * (kp + 1)).reshape(kg + 1, kp + 1)
    inter = table[1:, 1:].double()
    union = table.sum(1)[1:, None] + table.sum(0)[None, 1:] - inter
    best = (inter / union).max(1).values if kp else torch.zeros(kg, dtype=torch.float64)
    return kg, int((best == 1).sum()), int((best >= 0.5).sum())


def summary(ms: list[float]) -> dict[str, float]:
    return {
        "median_ms": round(statistics.median(ms), 2),
        "mean_ms": round(statistics.fmean(ms), 2),
        "max_ms": round(max(ms), 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", default="../shared/datasets")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per image (median)")
    parser.add_argument("--crop", type=int, default=256)
    parser.add_argument("--out", default="benchmarks/results/instance_postprocess_speed.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    folder = Path(args.data_root) / "dsb2018" / "instances" / "test"
    files = sorted(folder.glob("*.png"))
    if files:
        source = f"DSB2018 test instance maps ({folder})"
        maps = [read_instances(f).astype(np.int64) for f in files]
    else:
        source = "synthetic: touching discs cut by their Voronoi cells, 520 x 696, 120 per image"
        maps = synthetic_maps(6)

    decoders = ("boundary", "panoptic", "connected_components")
    ms: dict[str, dict[str, list[float]]] = {d: {"all": [], "520x696": []} for d in decoders}
    fidelity = {d: [0, 0, 0] for d in (*decoders, "panoptic_top_k_1000")}
    with torch.inference_mode():
        for m in maps:
            size = "520x696" if m.shape == (520, 696) else None
            inst = torch.from_numpy(m)
            classes = boundary_classes(inst, width=1)
            probs = F.one_hot(classes, 3).permute(2, 0, 1).float() * 0.7 + 0.1
            t = panoptic_targets(inst)
            logits = F.one_hot((inst > 0).long(), 2).permute(2, 0, 1).float().unsqueeze(0) * 5.0
            center, offset = t["center"].unsqueeze(0), t["offset"].unsqueeze(0)
            foreground = (m > 0).astype(np.uint8)
            runs = {
                "boundary": lambda p=probs: instances_from_boundary(p)[0],
                "panoptic": lambda s=logits, c=center, o=offset: panoptic_postprocess(s, c, o, [1])[
                    0
                ].instances.numpy(),
                "connected_components": lambda f=foreground: label_instances(f, 1),
            }
            for name, fn in runs.items():
                seconds = timed(fn, args.repeats)
                ms[name]["all"].append(1000 * seconds)
                if size:
                    ms[name][size].append(1000 * seconds)
                counts = recovered(m, fn())
                fidelity[name] = [a + b for a, b in zip(fidelity[name], counts, strict=True)]
            pred = panoptic_postprocess(logits, center, offset, [1], top_k=1000, label_divisor=10000)[0]
            counts = recovered(m, pred.instances.numpy())
            fidelity["panoptic_top_k_1000"] = [
                a + b for a, b in zip(fidelity["panoptic_top_k_1000"], counts, strict=True)
            ]

        # targets per crop, as the data loader builds them (every crop position on a grid of each map)
        crops = []
        for m in maps:
            h, w = m.shape
            for y in range(0, h - args.crop + 1, args.crop // 2):
                for x in range(0, w - args.crop + 1, args.crop // 2):
                    crops.append(torch.from_numpy(m[y : y + args.crop, x : x + args.crop].copy()))
        crops = crops[:: max(1, len(crops) // 60)]  # at most about 60 crops
        target_ms = {"boundary_classes": [], "panoptic_targets": []}
        for c in crops:
            target_ms["boundary_classes"].append(1000 * timed(lambda c=c: boundary_classes(c, width=1), args.repeats))
            target_ms["panoptic_targets"].append(1000 * timed(lambda c=c: panoptic_targets(c), args.repeats))
        objects_per_crop = statistics.fmean(int(relabel_consecutive(c)[1]) for c in crops)

    result = {
        "command": "OMP_NUM_THREADS=1 python " + shlex.join(sys.argv),
        "machine": {
            **machine_info(),
            "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "numpy": np.__version__,
            "python": platform.python_version(),
        },
        "source": source,
        "images": len(maps),
        "images_520x696": len(ms["boundary"]["520x696"]),
        "decoders": {
            name: {
                "per_image_520x696": summary(v["520x696"]) if v["520x696"] else None,
                "per_image_all": summary(v["all"]),
                "data_set_s": round(sum(v["all"]) / 1000, 3),
            }
            for name, v in ms.items()
        },
        "recovered_from_exact_inputs": {
            name: {"objects": n, "iou_1": exact, "iou_0.5": half, "fraction_iou_1": round(exact / max(n, 1), 4)}
            for name, (n, exact, half) in fidelity.items()
        },
        "targets_per_crop": {
            "crop": f"{args.crop}x{args.crop}",
            "crops": len(crops),
            "mean_objects_per_crop": round(objects_per_crop, 1),
            **{name: summary(v) for name, v in target_ms.items()},
        },
        "settings": {
            "boundary": "instances_from_boundary(probs), width-1 targets, connectivity 8, min_size 0",
            "panoptic": "panoptic_postprocess(threshold=0.1, nms_kernel=7, top_k=200), sigma 8 targets",
            "connected_components": "label_instances(foreground, 1), 4-connectivity",
            "timing": f"median of {args.repeats} calls after a warm-up call, per image",
        },
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
