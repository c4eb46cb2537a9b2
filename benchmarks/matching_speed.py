"""Speed of the instance metrics (pixelwise.metrics.matching) on nucleus label maps.

Data: the DSB2018 test split's ground-truth instance maps (``<data-root>/dsb2018/instances/test/*.png``, 16-bit, 50
images, 9 to 257 nuclei, 11 of them 520x696), each matched against a perturbed copy of itself: every nucleus
eroded by one pixel (4-neighbourhood), the whole map shifted by (1, 2) pixels, 5 % of the nuclei dropped, ids
shuffled, a random score per predicted nucleus. Without the data set, synthetic 520x696 maps of random elliptic
nuclei (100 to 250 per image) take their place.

Timed per image (the best of ``--repeats`` runs, one thread): ``InstanceMetrics.update`` without scores (the
StarDist matching at all 9 thresholds and PQ) and with scores (the same plus COCO mask AP's per-image matching);
per data set: all updates plus ``compute``. ms per 520x696 image are reported separately. For comparison, and as a
check of the values on real data, pycocotools (if installed) computes the same COCO mask AP, timed the same way
(after a warm-up, the best of ``--repeats``; its timing includes RLE-encoding every instance mask; ours needs no
masks).

    OMP_NUM_THREADS=1 python benchmarks/matching_speed.py --data-root ../shared/datasets
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import os
import platform
import shlex
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import scipy
from machine import machine_info  # noqa: E402  (benchmarks/ is on sys.path when run as a script)
from PIL import Image
from timing import best_ms  # noqa: E402

from pixelwise.fileio import write_json  # noqa: E402
from pixelwise.metrics import InstanceMetrics

COMMAND = "OMP_NUM_THREADS=1 python benchmarks/matching_speed.py --data-root ../shared/datasets"


def perturb(true: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, dict[int, float]]:
    """Erode every instance by one pixel, shift by (1, 2), drop 5 % of the instances, shuffle ids; random scores."""
    t = true.astype(np.int64)
    padded = np.pad(t, 1, mode="edge")
    interior = (padded[:-2, 1:-1] == t) & (padded[2:, 1:-1] == t) & (padded[1:-1, :-2] == t) & (padded[1:-1, 2:] == t)
    pred = np.roll(np.where(interior, t, 0), (1, 2), axis=(0, 1))
    top = int(pred.max())
    lut = np.zeros(top + 1, np.int64)
    lut[1:] = rng.permutation(top) + 1 + 1000  # other ids than the truth's
    lut[1:][rng.random(top) < 0.05] = 0
    pred = lut[pred]
    ids = np.unique(pred[pred > 0])
    return pred, {int(i): float(s) for i, s in zip(ids, rng.random(ids.size), strict=True)}


def synthetic(rng: np.random.Generator, count: int, shape: tuple[int, int] = (520, 696)) -> np.ndarray:
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    labels = np.zeros(shape, np.uint16)
    for i in range(1, count + 1):
        cy, cx = rng.uniform(0, shape[0]), rng.uniform(0, shape[1])
        ry, rx = rng.uniform(6, 14, size=2)
        # a bounding box keeps this generator fast; the metrics never see per-instance masks
        y0, y1 = int(max(cy - ry, 0)), int(min(cy + ry + 1, shape[0]))
        x0, x1 = int(max(cx - rx, 0)), int(min(cx + rx + 1, shape[1]))
        box = ((yy[y0:y1, x0:x1] - cy) / ry) ** 2 + ((xx[y0:y1, x0:x1] - cx) / rx) ** 2 <= 1
        labels[y0:y1, x0:x1][box] = i
    return labels


def pycocotools_ap(pairs, max_detections: int) -> tuple[dict[str, float], float] | None:
    try:
        from pycocotools import mask as mask_utils
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval
    except ImportError:
        return None
    start = time.perf_counter()
    images, annotations, results = [], [], []
    for image_id, (true, pred, scores) in enumerate(pairs, start=1):
        images.append({"id": image_id, "height": true.shape[0], "width": true.shape[1]})
        for i in np.unique(true[true > 0]).tolist():
            mask = true == i
            rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": 1,
                    "segmentation": rle,
                    "area": float(mask.sum()),
                    "bbox": mask_utils.toBbox(rle).tolist(),
                    "iscrowd": 0,
                }
            )
        for i in np.unique(pred[pred > 0]).tolist():
            rle = mask_utils.encode(np.asfortranarray((pred == i).astype(np.uint8)))
            results.append({"image_id": image_id, "category_id": 1, "segmentation": rle, "score": scores[i]})
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = {"images": images, "annotations": annotations, "categories": [{"id": 1}]}
        gt.createIndex()
        ev = COCOeval(gt, gt.loadRes(results), "segm")
        ev.params.maxDets = [max_detections]
        ev.evaluate()
        ev.accumulate()
    seconds = time.perf_counter() - start
    p = ev.eval["precision"][:, :, :, 0, 0]
    values = {"coco_ap": float(p[p > -1].mean()), "coco_ap50": float(p[0].mean()), "coco_ap75": float(p[5].mean())}
    return values, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", default="../shared/datasets")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default="benchmarks/results/matching_speed.json")
    parser.add_argument("--no-pycocotools", action="store_true", help="skip the pycocotools comparison")
    args = parser.parse_args()

    # images with more than 100 nuclei trip the max_detections warning at every repetition; it is reported once below
    logging.getLogger("pixelwise.metrics.matching").setLevel(logging.ERROR)
    rng = np.random.default_rng(0)
    files = sorted(Path(args.data_root, "dsb2018", "instances", "test").glob("*.png"))
    if files:
        source = f"DSB2018 test ground truth ({len(files)} images) vs its perturbed copy"
        truths = [np.array(Image.open(f)) for f in files]
    else:
        source = "synthetic 520x696 maps (DSB2018 not found)"
        truths = [synthetic(rng, int(rng.integers(100, 251))) for _ in range(20)]
    pairs = [(t, *perturb(t, rng)) for t in truths]

    rows = []
    for true, pred, scores in pairs:
        ms_match = best_ms(lambda t=true, p=pred: InstanceMetrics().update(t, p), args.repeats)
        ms_coco = best_ms(lambda t=true, p=pred, s=scores: InstanceMetrics().update(t, p, scores=s), args.repeats)
        rows.append(
            {
                "shape": list(true.shape),
                "num_true": int(np.unique(true[true > 0]).size),
                "num_pred": len(scores),
                "ms_matching": ms_match,
                "ms_matching_and_coco": ms_coco,
            }
        )

    def dataset(max_detections: int) -> tuple[dict, float]:
        start = time.perf_counter()
        acc = InstanceMetrics(max_detections=max_detections)
        for true, pred, scores in pairs:
            acc.update(true, pred, scores=scores)
        result = acc.compute()
        return result, time.perf_counter() - start

    dataset(100)  # warm-up
    result, seconds = min((dataset(100) for _ in range(args.repeats)), key=lambda r: r[1])
    result_all, _ = dataset(1000)
    big = [r for r in rows if r["shape"] == [520, 696]]

    def summary(selected: list[dict]) -> dict:
        return {
            "images": len(selected),
            "nuclei_per_image": statistics.mean(r["num_true"] for r in selected) if selected else None,
            "ms_matching_mean": statistics.mean(r["ms_matching"] for r in selected) if selected else None,
            "ms_matching_max": max(r["ms_matching"] for r in selected) if selected else None,
            "ms_matching_and_coco_mean": statistics.mean(r["ms_matching_and_coco"] for r in selected)
            if selected
            else None,
            "ms_matching_and_coco_max": max(r["ms_matching_and_coco"] for r in selected) if selected else None,
        }

    out = {
        "command": COMMAND,
        "argv": " ".join(shlex.quote(a) for a in sys.argv),
        **machine_info(),
        "cpu_count": os.cpu_count(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "source": source,
        "repeats": args.repeats,
        "per_image_520x696": summary(big),
        "per_image_all": summary(rows),
        "per_dataset": {
            "images": len(pairs),
            "seconds_with_coco_and_compute": seconds,
            "metrics_max_detections_100": {k: result[k] for k in ("mean_ap", "pq", "coco_ap", "coco_ap50")}
            | {"ap_0.50": result["ap"]["0.50"], "ap_0.90": result["ap"]["0.90"]},
            "images_over_100_nuclei": sum(len(scores) > 100 for _, _, scores in pairs),
            "coco_ap_max_detections_1000": result_all["coco_ap"],
        },
        "images": rows,
    }
    if not args.no_pycocotools:
        # timed as ours: a warm-up, then the best of --repeats
        ref = pycocotools_ap(pairs, 100)
        if ref is not None:
            values, _ = ref
            ref_seconds = min(pycocotools_ap(pairs, 100)[1] for _ in range(args.repeats))
            out["pycocotools_max_detections_100"] = {
                "seconds": ref_seconds,
                **values,
                "max_abs_difference": max(abs(values[k] - result[k]) for k in values),
            }
    write_json(args.out, out)

    print(f"{out['cpu']}, OMP_NUM_THREADS={out['omp_num_threads']}; {source}")
    print(f"command: {COMMAND}")
    for name, s in (("520x696 images", out["per_image_520x696"]), ("all images", out["per_image_all"])):
        if s["images"]:
            print(
                f"{name} ({s['images']}, {s['nuclei_per_image']:.0f} nuclei on average): matching (9 thresholds + PQ) "
                f"{s['ms_matching_mean']:.2f} ms/image (max {s['ms_matching_max']:.2f}), with COCO AP "
                f"{s['ms_matching_and_coco_mean']:.2f} ms/image (max {s['ms_matching_and_coco_max']:.2f})"
            )
    d = out["per_dataset"]
    print(f"data set ({d['images']} images, all updates + compute): {1000 * d['seconds_with_coco_and_compute']:.1f} ms")
    print(f"  {d['metrics_max_detections_100']}")
    print(
        f"  {d['images_over_100_nuclei']} images have more than 100 predicted nuclei; coco_ap with "
        f"max_detections=1000: {d['coco_ap_max_detections_1000']:.4f}"
    )
    if "pycocotools_max_detections_100" in out:
        r = out["pycocotools_max_detections_100"]
        print(
            f"pycocotools (encoding masks + evaluate): {1000 * r['seconds']:.0f} ms, coco_ap {r['coco_ap']:.6f}, "
            f"largest difference from ours {r['max_abs_difference']:.1e}"
        )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
