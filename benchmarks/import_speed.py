"""Speed of ``pixelwise data import`` (pixelwise.data.importers) on a generated Pascal VOC 2012 style data set.

Data: ``--images`` (default 3000) VOC-style samples of ``--size`` (default 128x128) pixels generated in a temporary
folder in VOC's exact layout: ``JPEGImages/*.jpg`` (quality 90), palette PNGs in ``SegmentationClass`` (two to four
rectangles of random classes 1..20 on background, each with a one-pixel void border, 255) and
``SegmentationObject`` (one index per rectangle, 255 on the borders), ``ImageSets/Segmentation/{train,val}.txt``
(80 % / 20 %). The import (JPEGs copied, both PNGs decoded, masks and 16-bit instance maps encoded, every file
checked) is timed per worker count (``--workers``, default 1 and 2) into a fresh destination, ``--repeats`` times
with the worker counts interleaved (so that a burst of load from other processes does not land on one count
only), after one untimed warm-up import of 100 images; reported as images per second, the best and the median run.
The machine (CPU model, the CPUs this process may use) goes into the result: with one CPU allowed, more threads
cannot go faster.

    OMP_NUM_THREADS=1 taskset -c 0 python benchmarks/import_speed.py
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import PIL
from machine import machine_info  # noqa: E402  (benchmarks/ is on sys.path when run as a script)
from PIL import Image

from pixelwise.data import default_palette
from pixelwise.data.importers import import_dataset
from pixelwise.fileio import write_json

COMMAND = "OMP_NUM_THREADS=1 taskset -c 0 python benchmarks/import_speed.py"
RESULTS = Path(__file__).resolve().parent / "results" / "import_speed.json"
COLOURS = np.array(default_palette(256), np.float32)


def _palette_png(indices: np.ndarray, path: Path, flat_palette: list[int]) -> None:
    h, w = indices.shape
    im = Image.frombytes("P", (w, h), indices.tobytes())
    im.putpalette(flat_palette)
    im.save(path)


def generate_voc(root: Path, count: int, size: int, seed: int = 0) -> Path:
    """A VOC 2012 style folder of ``count`` samples (see the module docstring); returns the VOC2012 folder."""
    rng = np.random.default_rng(seed)
    voc = root / "VOC2012"
    for sub in ("JPEGImages", "SegmentationClass", "SegmentationObject", "ImageSets/Segmentation"):
        (voc / sub).mkdir(parents=True, exist_ok=True)
    flat = [v for c in default_palette(256) for v in c]
    stems = [f"2012_{i:06d}" for i in range(count)]
    yy, xx = np.mgrid[:size, :size]
    for stem in stems:
        cls = np.zeros((size, size), np.uint8)
        obj = np.zeros((size, size), np.uint8)
        for k in range(1, int(rng.integers(2, 5)) + 1):
            y0, x0 = rng.integers(0, size - 16, size=2)
            h, w = rng.integers(12, size // 2, size=2)
            y1, x1 = min(y0 + h, size), min(x0 + w, size)
            box = (yy >= y0) & (yy < y1) & (xx >= x0) & (xx < x1)
            inner = (yy > y0) & (yy < y1 - 1) & (xx > x0) & (xx < x1 - 1)
            cls[box], obj[box] = 255, 255  # the void border, as VOC draws around objects
            cls[inner], obj[inner] = int(rng.integers(1, 21)), k
        # an image that looks like its mask plus noise (JPEG sizes like a photo's, not like pure noise)
        image = (COLOURS[cls] * 0.7 + rng.integers(0, 76, (size, size, 3))).astype(np.uint8)
        Image.fromarray(image).save(voc / "JPEGImages" / f"{stem}.jpg", quality=90)
        _palette_png(cls, voc / "SegmentationClass" / f"{stem}.png", flat)
        _palette_png(obj, voc / "SegmentationObject" / f"{stem}.png", flat)
    n_train = int(0.8 * count)
    lists = voc / "ImageSets" / "Segmentation"
    (lists / "train.txt").write_text("".join(f"{s}\n" for s in stems[:n_train]))
    (lists / "val.txt").write_text("".join(f"{s}\n" for s in stems[n_train:]))
    return voc


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=3000)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="pixelwise-import-speed-"))
    try:
        start = time.perf_counter()
        src = generate_voc(tmp / "src", args.images, args.size)
        generate_s = time.perf_counter() - start
        print(f"generated {args.images} VOC samples of {args.size}x{args.size} in {generate_s:.1f} s", flush=True)
        warm = generate_voc(tmp / "warm", 100, args.size, seed=1)
        import_dataset("voc", warm, tmp / "warm_out", workers=1, progress=False)
        times: dict[int, list[float]] = {w: [] for w in args.workers}
        for _ in range(args.repeats):
            for workers in args.workers:
                dst = tmp / f"dst_{workers}"
                start = time.perf_counter()
                summary = import_dataset("voc", src, dst, workers=workers, progress=False)
                seconds = time.perf_counter() - start
                assert summary.total_images == args.images, summary.format_text()
                times[workers].append(seconds)
                print(f"workers {workers}: {seconds:.2f} s, {args.images / seconds:.0f} images/s", flush=True)
                shutil.rmtree(dst)
        runs = [
            {
                "workers": w,
                "seconds": t,
                "images_per_second_best": args.images / min(t),
                "images_per_second_median": args.images / statistics.median(t),
            }
            for w, t in times.items()
        ]
        source_mb = sum(p.stat().st_size for p in src.rglob("*") if p.is_file()) / 1e6
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    try:
        allowed = len(os.sched_getaffinity(0))
    except AttributeError:
        allowed = os.cpu_count() or 1
    result = {
        "command": COMMAND,
        "argv": " ".join(shlex.quote(a) for a in sys.argv),
        **machine_info(),
        "cpu_count": os.cpu_count(),
        "cpus_allowed": allowed,
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "pillow": PIL.__version__,
        "format": "voc",
        "images": args.images,
        "size": [args.size, args.size],
        "repeats": args.repeats,
        "load_average": os.getloadavg()[0],
        "source_mb": source_mb,
        "generate_seconds": generate_s,
        "runs": runs,
    }
    write_json(args.out, result)
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
