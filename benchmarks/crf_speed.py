"""Dense CRF speed: pixelwise.crf.dense_crf against pydensecrf2 (Krähenbühl's C++ densecrf).

Cases, 10 mean-field iterations each, DeepLab's CRF parameters (pixelwise.crf's defaults):
  - CamVid test images (480x360, 11 classes): probabilities = the one-hot ground truth (void: uniform)
    mixed 40/60 with Dirichlet noise, as in tests/test_crf.py;
  - a synthetic 1024x2048 image with 19 classes (Cityscapes-sized): blocky regions, smooth shading and
    pixel noise (see synthetic_case), probabilities likewise.

The cost of both implementations grows with the number of appearance-lattice points per pixel (noisier
images have more); it is reported per case.

The time per image covers everything from the numpy image and probabilities to the refined
probabilities: pydensecrf2's DenseCRF2D setup (unary, both pairwise terms, lattice construction) and
inference, and pixelwise's dense_crf call (lattice construction included). pixelwise is timed with its
default exact-Gaussian smoothness filter and with smoothness_filter="lattice" (pydensecrf2's results to
~1e-5; its position-only lattice is cached per image size, so after the first image of a size it is not
rebuilt). Each configuration is warmed up on the first image before timing. pydensecrf2 runs on one
thread whatever --threads says (it is single-threaded); --threads sets torch.set_num_threads.

    pip install pydensecrf2   # optional (builds from source: needs a C++ compiler); else pixelwise only
    python benchmarks/crf_speed.py --threads 2 --data-root ../shared/datasets
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import machine_info  # noqa: E402

from pixelwise.crf import (  # noqa: E402
    CRFSettings,
    PermutohedralLattice,
    dense_crf,
)

try:
    import pydensecrf.densecrf as dcrf
except ImportError:
    dcrf = None

PARAMS = asdict(CRFSettings())  # DeepLab-v2's released settings, pixelwise's defaults


def noisy_probs(labels: np.ndarray, classes: int, seed: int) -> np.ndarray:
    """(C, H, W) float32: 0.4 one-hot(labels) (labels >= classes: uniform) + 0.6 Dirichlet(1) noise."""
    rng = np.random.default_rng(seed)
    valid = labels < classes
    onehot = np.where(valid, 0.0, 1.0 / classes).astype(np.float32)[None].repeat(classes, 0)
    rows, cols = np.nonzero(valid)
    onehot[labels[valid], rows, cols] = 1
    noise = rng.dirichlet(np.ones(classes), size=labels.shape).astype(np.float32).transpose(2, 0, 1)
    return np.ascontiguousarray(0.4 * onehot + 0.6 * noise)


def camvid_cases(root: Path, count: int, classes: int = 11) -> list[tuple[str, np.ndarray, np.ndarray]]:
    images = sorted((root / "camvid/images/test").glob("*.webp"))[:count]
    if not images:
        raise SystemExit(f"no CamVid test images under {root / 'camvid/images/test'}")
    cases = []
    for i, path in enumerate(images):
        image = np.ascontiguousarray(np.array(Image.open(path).convert("RGB")))
        mask = np.array(Image.open(root / "camvid/masks/test" / f"{path.stem}.png"))
        cases.append((path.stem, image, noisy_probs(mask, classes, seed=i)))
    return cases


def synthetic_case(
    height: int = 1024, width: int = 2048, classes: int = 19, noise: float = 4.0
) -> tuple[str, np.ndarray, np.ndarray]:
    """64x64-pixel blocks of 19 classes, a colour per class, smooth shading (+-20 levels) and Gaussian
    pixel noise (std ``noise``).  With noise 4 the appearance lattice has ~0.43 points per pixel, inside
    the range of the CamVid images (0.27-0.78); noisier images make both implementations slower."""
    rng = np.random.default_rng(0)
    cells = rng.integers(0, classes, (height // 64 + 1, width // 64 + 1))
    labels = np.kron(cells, np.ones((64, 64), dtype=np.int64))[:height, :width]
    palette = rng.integers(0, 256, (classes, 3))
    yy, xx = np.mgrid[0:height, 0:width]
    shade = 20 * np.sin(xx / 170.0 + 1.3) * np.cos(yy / 130.0)
    image = palette[labels] + shade[..., None] + rng.normal(0, noise, (height, width, 3))
    image = np.ascontiguousarray(np.clip(image, 0, 255).astype(np.uint8))
    return f"synthetic_{width}x{height}", image, noisy_probs(labels, classes, seed=0)


def lattice_density(image: np.ndarray) -> float:
    """Appearance-lattice points per pixel (what the cost of both implementations grows with)."""
    h, w, _ = image.shape
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    pos = np.stack([xs, ys], -1) / PARAMS["theta_alpha"]
    feats = np.concatenate([pos, image.astype(np.float32) / PARAMS["theta_beta"]], -1).reshape(-1, 5)
    lattice = PermutohedralLattice(torch.from_numpy(feats))
    return lattice.size / lattice.num_points


def run_pydensecrf(image: np.ndarray, probs: np.ndarray) -> np.ndarray:
    classes, h, w = probs.shape
    crf = dcrf.DenseCRF2D(w, h, classes)
    crf.setUnaryEnergy(np.ascontiguousarray(-np.log(np.clip(probs, 1e-5, 1.0)).reshape(classes, -1)))
    crf.addPairwiseGaussian(sxy=PARAMS["theta_gamma"], compat=PARAMS["w2"])
    crf.addPairwiseBilateral(sxy=PARAMS["theta_alpha"], srgb=PARAMS["theta_beta"], rgbim=image, compat=PARAMS["w1"])
    return np.array(crf.inference(PARAMS["iterations"])).reshape(classes, h, w)


def runners() -> dict:
    out = {}
    if dcrf is not None:
        out["pydensecrf2"] = run_pydensecrf
    for name, smoothness_filter in (("pixelwise", "exact"), ("pixelwise_lattice", "lattice")):

        def run(image, probs, smoothness_filter=smoothness_filter):
            with torch.inference_mode():
                return dense_crf(
                    image, torch.from_numpy(probs), smoothness_filter=smoothness_filter, threads=None, **PARAMS
                ).numpy()

        out[name] = run
    return out


def bench(cases: list, repeats: int) -> dict:
    """Per method: seconds per image (every image, every repeat) and argmax agreement with pydensecrf2."""
    methods = runners()
    for fn in methods.values():  # warm-up: allocator, oneDNN primitives, the smoothness-lattice cache
        fn(cases[0][1], cases[0][2])
    times = {name: [] for name in methods}
    agreement = {name: [] for name in methods if name != "pydensecrf2"}
    for _, image, probs in cases:
        for _ in range(repeats):
            outputs = {}
            for name, fn in methods.items():  # interleaved, so that machine noise hits all alike
                t = time.perf_counter()
                outputs[name] = fn(image, probs)
                times[name].append(time.perf_counter() - t)
        if "pydensecrf2" in outputs:
            ref = outputs["pydensecrf2"].argmax(0)
            for name in agreement:
                agreement[name].append(float((outputs[name].argmax(0) == ref).mean()))
    result = {}
    for name, ts in times.items():
        result[name] = {"mean_s": statistics.mean(ts), "median_s": statistics.median(ts), "min_s": min(ts)}
        if agreement.get(name):
            result[name]["argmax_agreement_mean"] = statistics.mean(agreement[name])
            result[name]["argmax_agreement_min"] = min(agreement[name])
    return result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    ap.add_argument("--data-root", help="folder holding camvid/ (default $PIXELWISE_DATA or ../shared/datasets)")
    ap.add_argument("--images", type=int, default=20, help="CamVid test images to time (default 20, of 233)")
    ap.add_argument("--synthetic-repeats", type=int, default=2, help="timed runs of the 1024x2048 case")
    ap.add_argument("--synthetic-noise", type=float, default=4.0, help="pixel noise std of the synthetic image")
    ap.add_argument("--skip-synthetic", action="store_true")
    ap.add_argument("--theta-alpha", type=float, help="the appearance kernel's position width (wide kernels: 80)")
    ap.add_argument("--theta-beta", type=float, help="the appearance kernel's colour width (wide kernels: 13)")
    ap.add_argument("--results", help="JSON file (default benchmarks/results/crf_speed_<threads>threads.json)")
    args = ap.parse_args()
    for key in ("theta_alpha", "theta_beta"):
        if getattr(args, key) is not None:
            PARAMS[key] = getattr(args, key)  # in place: every runner reads PARAMS

    torch.set_num_threads(args.threads)
    root = Path(
        args.data_root or os.environ.get("PIXELWISE_DATA") or Path(__file__).resolve().parents[2] / "shared/datasets"
    )
    if dcrf is None:
        print("pydensecrf2 is not installed: timing pixelwise only (pip install pydensecrf2)")

    results = {
        "threads": args.threads,
        "torch": torch.__version__,
        **machine_info(),
        "cpu_count": os.cpu_count(),
        "params": PARAMS,
        "cases": {},
    }
    cases = [("camvid_test_480x360_11cls", camvid_cases(root, args.images), 1)]
    if not args.skip_synthetic:
        cases.append(
            ("synthetic_2048x1024_19cls", [synthetic_case(noise=args.synthetic_noise)], args.synthetic_repeats)
        )
    for label, images, repeats in cases:
        print(f"{label}: {len(images)} image(s) x {repeats} ...", flush=True)
        density = statistics.mean(lattice_density(image) for _, image, _ in images)
        results["cases"][label] = {
            "images": len(images),
            "repeats": repeats,
            "lattice_points_per_pixel": density,
            **bench(images, repeats),
        }

    header = (
        f"{'case':28s} {'method':18s} {'s/image (median)':>16s} {'mean':>8s} {'vs pydensecrf2':>15s} "
        f"{'argmax agree':>13s}"
    )
    print(f"\ntorch threads: {args.threads} (pydensecrf2: 1)\n{header}\n{'-' * len(header)}")
    for label, res in results["cases"].items():
        ref = res.get("pydensecrf2", {}).get("median_s")
        for name in ("pydensecrf2", "pixelwise", "pixelwise_lattice"):
            if name not in res:
                continue
            r = res[name]
            ratio = f"{r['median_s'] / ref:.2f}x" if ref else "-"
            if ref:
                r["time_ratio_vs_pydensecrf2"] = r["median_s"] / ref
            agree = f"{100 * r['argmax_agreement_mean']:.3f} %" if "argmax_agreement_mean" in r else "-"
            print(f"{label:28s} {name:18s} {r['median_s']:16.3f} {r['mean_s']:8.3f} {ratio:>15s} {agree:>13s}")
    path = Path(args.results or f"benchmarks/results/crf_speed_{args.threads}threads.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2))
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
