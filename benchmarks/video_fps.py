"""Frames per second of ``pixelwise predict`` on a video, decode, model and encode included, on this machine's CPU:
fp32, bf16 (autocast) and onnxruntime; with the flicker (fraction of pixels whose label changes between
consecutive frames) with and without temporal smoothing, and against the ground truth where there is one.

The video is a CamVid test sequence made into an .mp4 (its frames in name order, 480x360, H.264 at ``--fps``),
unless ``--video`` gives one; the ground-truth masks of those frames give the per-frame mIoU. Without a trained
checkpoint (``--checkpoint``), ``--config`` builds the config's model untrained (random weights, CamVid's
classes): the speed is the model's, but accuracy and flicker then mean nothing and the JSON says so.

Each variant predicts the whole video ``--repeats`` times after a warm-up on its first frames (one-time allocations
and kernel selection), the variants in turns, writing ``<stem>_overlay.mp4`` as the CLI does (audio off: a CamVid
video has none); its figure is the median. The parts are timed apart too (decoding alone, the model alone on
decoded frames, encoding the overlay alone).

    pip install -e '.[video,onnx]'
    OMP_NUM_THREADS=1 taskset -c 0 python benchmarks/video_fps.py \\
        --config configs/camvid_deeplabv3plus_mobilenetv2_os16.yaml --sequence 0001TP --frames 40 --onnx
    python benchmarks/video_fps.py --checkpoint runs/camvid_deeplabv3plus_mobilenetv2_os16/best.pt --onnx
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import sys
import tempfile
import time
import warnings
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import machine_info  # noqa: E402

from pixelwise import __version__, build_model  # noqa: E402
from pixelwise.argmax import class_argmax  # noqa: E402
from pixelwise.config import load_config  # noqa: E402
from pixelwise.data import read_image, read_mask, resolve_data_root  # noqa: E402
from pixelwise.data.video import VideoWriter, choose_codec, probe_video, read_frames  # noqa: E402
from pixelwise.engine import Predictor  # noqa: E402
from pixelwise.engine.video import batch_probabilities, batches, predict_video, sequence_scores  # noqa: E402
from pixelwise.inference import InferenceSettings  # noqa: E402
from pixelwise.models.weights import save_checkpoint  # noqa: E402
from pixelwise.visualize import colorize, overlay, overlay_palette  # noqa: E402

warnings.filterwarnings("ignore")
REPO = Path(__file__).resolve().parents[1]


def untrained_checkpoint(config_path: str, data_root: Path, out: Path) -> Path:
    """A checkpoint of the config's model with random weights and CamVid's classes (speed only)."""
    cfg = load_config(config_path)
    info = json.loads((data_root / "camvid" / "classes.json").read_text())
    spec = {**cfg["model"], "num_classes": len(info["classes"])}
    spec.pop("pretrained_backbone", None)
    torch.manual_seed(0)
    model = build_model(**spec)
    meta = {
        "model": spec,
        "classes": info["classes"],
        "palette": info["palette"],
        "ignore_index": info.get("ignore_index", 255),
        "dataset": "camvid",
        "mean": cfg["data"]["mean"],
        "std": cfg["data"]["std"],
        "image_range": None,
    }
    save_checkpoint(out, {"model": model.state_dict(), "meta": meta, "config": cfg})
    return out


def camvid_sequence(data_root: Path, prefix: str, frames: int, fps: int, out: Path) -> tuple[Path, list[np.ndarray]]:
    """The first ``frames`` CamVid test images of one sequence (name order) as an H.264 .mp4, and their masks."""
    images = sorted((data_root / "camvid" / "images" / "test").glob(f"{prefix}_*"))[:frames]
    if not images:
        raise SystemExit(f"no CamVid test images named {prefix}_* under {data_root / 'camvid'}")
    first = read_image(images[0], "RGB")
    h, w = first.shape[:2]
    masks = []
    with VideoWriter(out, fps=fps, width=w, height=h) as writer:
        for path in images:
            writer.write(read_image(path, "RGB"))
            masks.append(read_mask(data_root / "camvid" / "masks" / "test" / f"{path.stem}.png"))
    return out, masks


def warm_clip(video: Path, frames: int, out: Path) -> Path:
    info = probe_video(video)
    with VideoWriter(out, fps=info.fps, width=info.width, height=info.height) as writer:
        for i, frame in enumerate(read_frames(video)):
            if i == frames:
                break
            writer.write(frame)
    return out


def time_parts(predictor: Predictor, video: Path, batch_size: int, tmp: Path) -> dict[str, float]:
    """Frames per second of decoding alone, the model alone (on frames already decoded and normalised), and
    colouring + encoding the overlay alone."""
    start = time.perf_counter()
    frames = list(read_frames(video))
    decode = len(frames) / (time.perf_counter() - start)
    x = [predictor.normalise(f) for f in frames]
    labels = []
    start = time.perf_counter()
    with torch.inference_mode():
        for chunk in batches(x, batch_size):
            labels += list(class_argmax(batch_probabilities(predictor, torch.stack(chunk))).to(torch.uint8).numpy())
    model = len(frames) / (time.perf_counter() - start)
    info = probe_video(video)
    contrast = overlay_palette(predictor.meta["palette"])
    start = time.perf_counter()
    with VideoWriter(tmp / "encode.mp4", fps=info.fps, width=info.width, height=info.height) as writer:
        for frame, label in zip(frames, labels, strict=True):
            writer.write(overlay(frame, colorize(label, contrast), 0.5))
    encode = len(frames) / (time.perf_counter() - start)
    return {"decode_fps": round(decode, 2), "model_fps": round(model, 2), "overlay_encode_fps": round(encode, 2)}


def time_end_to_end(predictor: Predictor, video: Path, batch_size: int, tmp: Path, name: str) -> tuple[float, int]:
    """Seconds of one ``predict_video`` run (decode + model + overlay encode) and its frame count."""
    start = time.perf_counter()
    files = predict_video(predictor, video, tmp / name, batch_size=batch_size, audio=False, progress=False)
    return time.perf_counter() - start, int(files["frames"])


def run_variants(
    predictors: dict[str, Predictor], video: Path, warm: Path, batch_size: int, tmp: Path, repeats: int
) -> dict[str, dict]:
    """Frames per second of each predictor end to end, the median of ``repeats`` runs taken in turns (one run of
    each predictor per round, so that a slower spell of a shared machine hits every variant alike), then the parts
    of one run timed alone."""
    for name, predictor in predictors.items():
        predict_video(predictor, warm, tmp / f"warm_{name}", batch_size=batch_size, audio=False, progress=False)
    runs: dict[str, list[float]] = {name: [] for name in predictors}
    frames = 0
    for _ in range(repeats):
        for name, predictor in predictors.items():
            seconds, frames = time_end_to_end(predictor, video, batch_size, tmp, name)
            runs[name].append(frames / seconds)
    out = {}
    for name, predictor in predictors.items():
        out[name] = {
            "frames": frames,
            "fps": round(statistics.median(runs[name]), 2),
            "fps_runs": [round(f, 2) for f in runs[name]],
            "amp": predictor.amp,
        }
        out[name].update(time_parts(predictor, video, batch_size, tmp))
        print(f"{name}: {out[name]}", flush=True)
    return out


def labels_of(predictor: Predictor, video: Path, tmp: Path, smooth: float | None, batch_size: int) -> list:
    files = predict_video(
        predictor,
        video,
        tmp / f"labels_{smooth}",
        masks="video",
        overlay_video=False,
        smooth=smooth,
        batch_size=batch_size,
        progress=False,
    )
    return [m[..., 0] for m in read_frames(files["masks"], "L")]


def command_line() -> str:
    """The command as run: the thread setting, the CPU pinning (taskset) where the process is pinned, the script."""
    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    prefix = [f"OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']}"] if "OMP_NUM_THREADS" in os.environ else []
    if cores and len(cores) < (os.cpu_count() or len(cores)):
        prefix += ["taskset", "-c", ",".join(map(str, cores))]
    script = os.path.relpath(sys.argv[0], REPO) if Path(sys.argv[0]).is_absolute() else sys.argv[0]
    return shlex.join([*prefix, "python", script, *sys.argv[1:]])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", help="a trained checkpoint (CamVid classes for the ground-truth scores)")
    parser.add_argument(
        "--config",
        default="configs/camvid_deeplabv3plus_mobilenetv2_os16.yaml",
        help="without --checkpoint: this config's model, untrained (speed only)",
    )
    parser.add_argument("--video", help="a video to predict (default: a CamVid test sequence made into one)")
    parser.add_argument("--sequence", default="0001TP", help="CamVid test sequence prefix: 0001TP or Seq05VD")
    parser.add_argument("--frames", type=int, default=40, help="frames of the CamVid sequence to use")
    parser.add_argument("--fps", type=int, default=30, help="frame rate of the CamVid video made")
    parser.add_argument("--data-root", help="data sets folder (default: $PIXELWISE_DATA, then ../shared/datasets)")
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    parser.add_argument(
        "--onnx", nargs="?", const="export", help="also onnxruntime: this .onnx file, or exported from the checkpoint"
    )
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5, help="end-to-end runs of each variant, in turns (median)")
    parser.add_argument(
        "--scale", type=float, default=1.0, help="run the model at this image scale (e.g. 0.5), probabilities upsampled"
    )
    parser.add_argument("--smooth", type=float, default=0.5, help="EMA factor whose flicker is measured")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "video_fps.json"))
    args = parser.parse_args()

    data_root = Path(args.data_root or os.environ.get("PIXELWISE_DATA") or REPO.parent / "shared" / "datasets")
    data_root = resolve_data_root(data_root)
    with tempfile.TemporaryDirectory(prefix="video_fps_") as tmp:
        run(args, data_root, Path(tmp))


def run(args: argparse.Namespace, data_root: Path, tmp: Path) -> None:
    """The benchmark in the scratch folder ``tmp`` (the videos written, the untrained checkpoint, the ONNX file)."""
    trained = args.checkpoint is not None
    checkpoint = (
        Path(args.checkpoint) if trained else untrained_checkpoint(args.config, data_root, tmp / "untrained.pt")
    )
    masks = None
    if args.video:
        video = Path(args.video)
    else:
        video, masks = camvid_sequence(data_root, args.sequence, args.frames, args.fps, tmp / f"{args.sequence}.mp4")
    info = probe_video(video)
    warm = warm_clip(video, min(2 * args.batch_size, 8), tmp / "warm.mp4")
    print(f"video {video}: {info.frames} frames {info.size} at {info.fps} fps; checkpoint {checkpoint}", flush=True)

    predictors: dict[str, Predictor] = {}
    for precision in args.precisions:
        inference = InferenceSettings(scales=(args.scale,))  # as --scale says, whatever the run's config says
        amp = "none" if precision == "fp32" else "bf16"
        predictors[precision] = Predictor(checkpoint, device="cpu", amp=amp, inference=inference)
    fp32 = predictors.get("fp32")
    onnx_file = None
    if args.onnx:
        from pixelwise.export import export_onnx

        onnx_file = Path(args.onnx) if args.onnx != "export" else tmp / "model.onnx"
        if args.onnx == "export":
            h, w = round(info.height * args.scale), round(info.width * args.scale)
            export_onnx(checkpoint, onnx_file, height=h, width=w)
        predictors["onnxruntime"] = Predictor(
            onnx_file, backend="onnxruntime", inference=InferenceSettings(scales=(args.scale,))
        )
    variants = run_variants(predictors, video, warm, args.batch_size, tmp, args.repeats)

    quality: dict = {}
    if fp32 is not None:
        plain = labels_of(fp32, video, tmp, None, args.batch_size)
        smoothed = labels_of(fp32, video, tmp, args.smooth, args.batch_size)
        num_classes, ignore = len(fp32.classes), fp32.meta.get("ignore_index", 255)
        for key, labels in (("none", plain), (f"ema_{args.smooth}", smoothed)):
            if masks is not None:
                scores = sequence_scores(labels, masks, num_classes, ignore)
                scores.pop("miou_per_frame")
            else:
                scores = sequence_scores(labels, labels, num_classes, ignore)
                scores = {"flicker": scores["flicker"]}
            quality[key] = scores

    result = {
        "what": "frames per second of predict_video (decode + model + overlay encode), median of --repeats runs",
        "command": command_line(),
        "pinned": sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        **machine_info(),
        "torch_threads": torch.get_num_threads(),
        "pixelwise": __version__,
        "torch": torch.__version__,
        "av": __import__("av").__version__,
        "checkpoint": str(args.checkpoint) if trained else f"untrained {args.config}",
        "model": fp32.meta["model"] if fp32 is not None else None,
        "accuracy": "measured" if trained else "not measured: untrained model (random weights), speed only",
        "video": str(args.video) if args.video else f"CamVid test {args.sequence}, first {args.frames} frames",
        "size": info.size,
        "fps_of_video": str(Fraction(info.fps)),
        "codec": choose_codec(),
        "batch_size": args.batch_size,
        "model_scale": args.scale,
        "variants": variants,
        "onnx": str(args.onnx) if args.onnx else None,
        "flicker_and_accuracy": quality,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("cpu", "variants", "flicker_and_accuracy")}, indent=1))
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
