"""The verbs: each one's library call, and what it prints."""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path

from ..errors import ConfigError
from ..fileio import check_output_file
from .options import crf_overrides, decoding_overrides, inference_settings

PICTURE_SUFFIXES = (".png", ".jpg", ".jpeg", ".pdf", ".svg", ".svgz", ".tif", ".tiff", ".webp", ".eps", ".ps")


def another_rank() -> bool:
    """Whether this process is one of torchrun's other than rank 0 (from the environment torchrun sets)."""
    return os.environ.get("RANK", "0") != "0"


def cmd_train(args: argparse.Namespace) -> int:
    from ..config import load_config
    from ..engine import train

    if args.allow_changes and not args.resume:
        raise ConfigError("--allow-changes applies settings changed since a run's checkpoint: add --resume")
    config = load_config(args.config, args.set)
    run_dir = args.run_dir or Path("runs") / Path(args.config).stem
    start = time.perf_counter()
    result = train(
        config,
        run_dir=run_dir,
        resume=args.resume,
        allow_changes=args.allow_changes,
        data_root=args.data_root,
        check_data=not args.no_check_data,
        progress=not args.no_progress,
    )
    if another_rank():  # under torchrun rank 0 prints the summary
        return 0
    minutes = (time.perf_counter() - start) / 60
    best = result["best_miou"]
    best_text = f"{best:.4f} at iteration {result['best_iter']}" if best is not None and best >= 0 else "n/a"
    name = "mean AP" if result.get("best_metric") == "mean_ap" else "mIoU"
    print(f"done in {minutes:.1f} min; best val {name} {best_text}; checkpoints in {run_dir}")
    challenge = (result.get("last") or {}).get("challenge_pixel_error")
    if challenge:  # a two-class run (ISBI 2012): the measure its papers report, of the last validation
        plain = 1 - result["last"]["pixel_accuracy"]
        positive = result["classes"][1]
        print(
            f"last val pixel error {plain:.4f}; 1 - best F-score of {positive!r} "
            f"(the ISBI challenge's measure) {challenge['pixel_error']:.4f}"
        )
    last = Path(run_dir) / "last.pt"
    print(
        f"next: pixelwise eval {last} (add --json F) | pixelwise predict {last} IMAGES --out DIR | "
        f"pixelwise report {run_dir}"
    )
    return 0


def _class_arg(value: str | None) -> int | str | None:
    return int(value) if value is not None and value.isdecimal() else value


def cmd_eval(args: argparse.Namespace) -> int:
    from ..engine import evaluate_checkpoint
    from ..fileio import write_json
    from ..inference import InferenceSettings
    from ..metrics import format_metrics_table
    from ..visualize import plot_confusion_matrix

    check_output_file(args.json, "--json", args.overwrite)
    check_output_file(args.confusion, "--confusion", args.overwrite, PICTURE_SUFFIXES)
    if args.json and args.confusion and Path(args.json).resolve() == Path(args.confusion).resolve():
        raise ConfigError(f"--json and --confusion both name {args.json}: give each its own file")
    result = evaluate_checkpoint(
        args.checkpoint,
        split=args.split,
        data_root=args.data_root,
        device=args.device,
        num_workers=args.num_workers,
        amp=args.amp,
        inference=inference_settings(args),
        boundary_width=args.boundary_width,
        instances=_class_arg(args.instances),
        watershed=args.watershed,
        crf=crf_overrides(args),
        compile=args.compile,
        progress=not args.no_progress,
        decoding=decoding_overrides(args),
        num_images=args.num_images,
    )
    if "crf" in result["metrics"]:
        print("dense CRF: " + ", ".join(f"{k}={v}" for k, v in result["metrics"]["crf"].items()))
    precision = "fp32" if result["amp"] == "none" else result["amp"]
    print(f"{result['dataset']} / {result['split']}: {result['num_images']} images, {args.checkpoint} ({precision})")
    print("protocol: " + InferenceSettings(**(result["inference"] or {})).describe())
    print(format_metrics_table(result["metrics"], result["classes"]))
    if args.json:
        write_json(args.json, result)
        print(f"metrics written to {args.json}")
    if args.confusion:
        plot_confusion_matrix(
            result["metrics"]["confusion_matrix"],
            result["classes"],
            args.confusion,
            title=f"{result['dataset']} {result['split']}: row-normalised confusion matrix",
        )
        print(f"confusion matrix picture written to {args.confusion}")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from ..engine import predict

    written = predict(
        args.checkpoint,
        args.inputs,
        args.out,
        backend=args.backend,
        crf=crf_overrides(args),
        device=args.device,
        alpha=args.alpha,
        amp=args.amp,
        inference=inference_settings(args),
        compile=args.compile,
        overwrite=args.overwrite,
        skip_errors=args.skip_errors,
        progress=not args.no_progress,
        effect=args.effect,
        foreground=args.foreground,
        smooth=args.smooth,
        video_masks=None if args.video_masks == "none" else args.video_masks,
        batch_size=args.batch_size,
        audio=not args.no_audio,
        decoding=decoding_overrides(args),
    )
    videos = [w for w in written if "video" in w]
    if len(videos) < len(written):
        effect = f", {args.out}/effect" if args.effect else ""
        if any("instances" in w for w in written):
            effect = f", {args.out}/instances, {args.out}/instance_overlay{effect}"
        print(
            f"{len(written) - len(videos)} image(s) -> {args.out}/masks, {args.out}/color, {args.out}/overlay{effect} "
            f"({args.out}/manifest.json; the colours: {args.out}/legend.png)"
        )
    for v in videos:
        outputs = ", ".join(os.path.relpath(v[k], args.out) for k in ("overlay", "effect", "masks") if k in v)
        print(
            f"{v['video']}: {v['frames']} frames {v['size']} at {v['fps']} fps -> {outputs} in {args.out} "
            f"({v['codec']}; audio {v['audio']}; {v['frames_per_second']} frames/s)"
        )
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from ..serve import check_port, run

    for flag, value, scale, unit in (
        ("--max-mb", args.max_mb, 2**20, "byte"),
        ("--max-megapixels", args.max_megapixels, 10**6, "pixel"),
    ):
        if not 0 < value < math.inf:  # NaN too; int() of either would be a traceback
            raise ConfigError(f"{flag} {value}: must be a finite number > 0")
        if int(value * scale) < 1:
            raise ConfigError(f"{flag} {value}: under one {unit}; give at least {1 / scale:.3g}")
    # checked before the model loads, named as the flags are
    if args.max_queue < 0:
        raise ConfigError(f"--max-queue {args.max_queue}: the requests that may wait, must be >= 0")
    if not 0 < args.timeout < math.inf:
        raise ConfigError(f"--timeout {args.timeout}: seconds per request, must be a finite number > 0")
    check_port(args.port)

    run(
        args.checkpoint,
        args.host,
        args.port,
        backend=args.backend,
        device=args.device,
        amp=args.amp,
        inference=inference_settings(args),
        max_queue=args.max_queue,
        max_bytes=int(args.max_mb * 2**20),
        max_pixels=int(args.max_megapixels * 1_000_000),
        timeout_s=args.timeout,
        log_level="warning" if args.quiet else "info",
    )
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from ..models.stats import model_table

    if args.num_classes < 1:
        raise ConfigError(f"--num-classes {args.num_classes}: must be >= 1")
    if args.size < 1:
        raise ConfigError(f"--size {args.size}: the square input side the FLOPs are counted at, must be >= 1")
    if args.backbones:
        from ..models.backbones import TIMM_NOT_WORKING, backbone_rows

        table = backbone_rows()
        if args.json:
            print(json.dumps(table, indent=2))
            return 0
        width = max(len(r["name"]) for r in table) + 2
        for kind, title in (("pixelwise", "backbone: NAME"), ("timm", "backbone: timm/<model>, families checked")):
            print(f"{title:<{width}} {'output strides':<15} {'source' if kind == 'pixelwise' else 'e.g.'}")
            for r in (r for r in table if r["kind"] == kind):
                print(f"{r['name']:<{width}} {', '.join(map(str, r['output_strides'])):<15} {r['details']}")
            print()
        print(
            "backbone=... in deeplabv3, deeplabv3plus, lraspp, pspnet, fcn8s/16s/32s and unet (FCN and U-Net at output "
            "stride 32); timm/<model> takes any timm model with features_only, the families above are checked. "
            f"Known not to work: {TIMM_NOT_WORKING}."
        )
        return 0
    rows = model_table(num_classes=args.num_classes, size=args.size, progress=not args.json)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'model':<32} {'params (M)':>11} {f'GFLOPs @{args.size}':>14}")
    for r in rows:
        print(f"{r['name']:<32} {r['params_m']:>11.2f} {r['gflops']:>14.1f}")
    print(f"(num_classes={args.num_classes}; GFLOPs = 2 x multiply-adds of one {args.size}x{args.size} image)")
    return 0


def cmd_data_check(args: argparse.Namespace) -> int:
    from ..data import check_dataset, resolve_data_root
    from ..fileio import write_json

    check_output_file(args.json, "--json", args.overwrite)
    root = resolve_data_root(args.data_root, None)
    report = check_dataset(root, args.name, args.split or None, progress=not args.no_progress, warn=False)
    print(report.format(max_problems=None))
    if args.json:
        write_json(args.json, report.to_dict())
    return 0 if report.ok else 1


def cmd_data_import(args: argparse.Namespace) -> int:
    from ..data.importers import import_dataset
    from ..fileio import write_json

    check_output_file(args.json, "--json", args.overwrite)
    summary = import_dataset(
        args.format,
        args.src,
        args.dst,
        name=args.name,
        overwrite=args.overwrite,
        workers=args.workers,
        palette=args.palette,
        link=args.link,
        progress=not args.no_progress,
    )
    print(summary.format_text())
    if args.json:
        write_json(args.json, summary.to_dict())
    return 0


def cmd_weight_map(args: argparse.Namespace) -> int:
    from ..losses import write_weight_map

    check_output_file(args.out, "--out", args.overwrite, PICTURE_SUFFIXES)
    w = write_weight_map(
        args.mask,
        args.out,
        w0=args.w0,
        sigma=args.sigma,
        foreground=args.foreground,
        class_balance=not args.no_balance,
        ignore_index=args.ignore_index,
        overwrite=args.overwrite,
    )
    print(f"weight map of {args.mask} (min {w.min():.3f}, mean {w.mean():.3f}, max {w.max():.3f}) -> {args.out}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from ..export import export_onnx

    if len(args.size) > 2:
        raise ConfigError(f"--size {' '.join(map(str, args.size))}: give S or H W")
    report = export_onnx(
        args.checkpoint,
        args.out,
        height=args.size[0],
        width=args.size[-1],
        opset=args.opset,
        dynamic=not args.static,
        exporter=args.exporter,
        overwrite=args.overwrite,
    )
    shape = "dynamic batch, height and width" if report["dynamic"] else f"fixed size {args.size[0]}x{args.size[-1]}"
    print(f"{args.out}: ONNX opset {report['opset']} ({report['exporter']} exporter), {shape}")
    for failure in report.get("failures", []):
        print(f"  (first tried {failure})")
    compared = " and ".join(report["outputs"])  # the logits; an instance model's centre and offset too
    for size, diff in report["max_abs_diff"].items():
        if size != "relative":
            print(f"  onnxruntime vs PyTorch at {size}: max abs difference of the {compared} {diff:.2e}")
    print(f"  (relative to the largest value: {report['max_abs_diff']['relative']:.1e})")
    return 0


def cmd_crf_search(args: argparse.Namespace) -> int:
    from ..crf.settings import GRID_PARAMETERS
    from ..engine import crf_search

    # nargs="+": each a non-empty list; w2 and theta_gamma keep the run's values unless given
    grid = {k: v for k in GRID_PARAMETERS if (v := getattr(args, k))}
    result = crf_search(
        args.checkpoint,
        split=args.split,
        data_root=args.data_root,
        num_images=args.num_images,
        iterations=args.iterations,
        grid=grid,
        device=args.device,
        amp=args.amp,
        inference=inference_settings(args),
        progress=not args.no_progress,
    )
    for r in sorted(result["results"], key=lambda r: -r["miou"])[:10]:
        print("  " + ", ".join(f"{k}={r[k]}" for k in grid) + f": mIoU {100 * r['miou']:.2f}")
    print(
        f"{result['num_images']} {args.split} images: mIoU {100 * result['no_crf_miou']:.2f} without the CRF, "
        f"{100 * result['best_miou']:.2f} with the best: " + ", ".join(f"{k}={v}" for k, v in result["best"].items())
    )
    if result["best_miou"] < result["no_crf_miou"]:
        print("note: on these images every CRF setting tried lowers the mIoU; eval/predict run without --crf then")
    print(f"best CRF settings written to the crf section of {result['run_config']} (used by eval/predict --crf)")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from ..report import write_report

    summary = write_report(args.run_dir, args.out, overwrite=args.overwrite)
    print(f"report written to {summary.parent} ({summary.name} and PNG plots)")
    return 0
