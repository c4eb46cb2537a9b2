"""The command line (also ``python -m pixelwise``): argument parsing and printing only; each verb is one
library call a Python user can make too."""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import logging
import math
import os
import signal
import sys
import time
from pathlib import Path

from . import __version__
from .cli_options import (
    CRF_HELP,
    add_common_options,
    add_crf_options,
    add_decoding_options,
    add_inference_options,
    crf_overrides,
    decoding_overrides,
    inference_settings,
)
from .errors import ConfigError, PixelwiseError
from .fileio import check_output_file

DESCRIPTION = "Semantic and instance segmentation with the classic architectures built to their papers."
EPILOG = 'Run "pixelwise VERB --help" for the options of a verb.'


PICTURE_SUFFIXES = (".png", ".jpg", ".jpeg", ".pdf", ".svg", ".svgz", ".tif", ".tiff", ".webp", ".eps", ".ps")


def _cmd_train(args: argparse.Namespace) -> int:
    from .config import load_config
    from .engine import train

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
    if _another_rank():  # under torchrun rank 0 prints the summary
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
    return 0


def _class_arg(value: str | None) -> int | str | None:
    return int(value) if value is not None and value.isdecimal() else value


def _cmd_eval(args: argparse.Namespace) -> int:
    from .engine import evaluate_checkpoint
    from .fileio import write_json
    from .inference import InferenceSettings
    from .metrics import format_metrics_table
    from .visualize import plot_confusion_matrix

    check_output_file(args.json, "--json", args.overwrite)
    check_output_file(args.confusion, "--confusion", args.overwrite, PICTURE_SUFFIXES)
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


def _cmd_predict(args: argparse.Namespace) -> int:
    from .engine import predict

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


def _cmd_serve(args: argparse.Namespace) -> int:
    from .serve import check_port, run

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


def _cmd_models(args: argparse.Namespace) -> int:
    from .models.stats import model_table

    if args.num_classes < 1:
        raise ConfigError(f"--num-classes {args.num_classes}: must be >= 1")
    if args.size < 1:
        raise ConfigError(f"--size {args.size}: the square input side the FLOPs are counted at, must be >= 1")
    if args.backbones:
        from .models.backbones import TIMM_NOT_WORKING, backbone_rows

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
            "backbone=... in deeplabv3, deeplabv3plus, pspnet, fcn8s/16s/32s and unet (FCN and U-Net at output "
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


def _cmd_data_check(args: argparse.Namespace) -> int:
    from .data import check_dataset, resolve_data_root
    from .fileio import write_json

    check_output_file(args.json, "--json", args.overwrite)
    root = resolve_data_root(args.data_root, None)
    report = check_dataset(root, args.name, args.split or None, progress=not args.no_progress, warn=False)
    print(report.format(max_problems=None))
    if args.json:
        write_json(args.json, report.to_dict())
    return 0 if report.ok else 1


def _cmd_data_import(args: argparse.Namespace) -> int:
    from .data.importers import import_dataset
    from .fileio import write_json

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


def _cmd_weight_map(args: argparse.Namespace) -> int:
    from .losses import write_weight_map

    check_output_file(args.out, "--out", args.overwrite, PICTURE_SUFFIXES)
    w = write_weight_map(
        args.mask,
        args.out,
        w0=args.w0,
        sigma=args.sigma,
        foreground=args.foreground,
        class_balance=not args.no_balance,
        ignore_index=args.ignore_index,
    )
    print(f"weight map of {args.mask} (min {w.min():.3f}, mean {w.mean():.3f}, max {w.max():.3f}) -> {args.out}")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from .export import export_onnx

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


def _cmd_crf_search(args: argparse.Namespace) -> int:
    from .crf.search import GRID_PARAMETERS
    from .engine import crf_search

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


def _cmd_report(args: argparse.Namespace) -> int:
    from .report import write_report

    summary = write_report(args.run_dir, args.out, overwrite=args.overwrite)
    print(f"report written to {summary.parent} ({summary.name} and PNG plots)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from .crf import CRFSettings
    from .crf.search import DEFAULT_GRID, GRID_PARAMETERS

    assert list(CRF_HELP) == CRFSettings.names(), "CRF_HELP must list CRFSettings's fields"
    parser = argparse.ArgumentParser(prog="pixelwise", description=DESCRIPTION, epilog=EPILOG)
    parser.add_argument("--version", action="version", version=f"pixelwise {__version__}")
    parser.add_argument("-q", "--quiet", action="store_true", help="print only warnings and results")
    sub = parser.add_subparsers(dest="command", required=True, metavar="VERB")

    p = sub.add_parser("train", help="train a model from a YAML config")
    p.add_argument("config", help="YAML config with sections model, data, train")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key, e.g. --set train.iters=100 (repeatable)",
    )
    p.add_argument("--run-dir", help="where checkpoints and logs go (default: runs/<config name>)")
    p.add_argument("--resume", action="store_true", help="continue from RUN_DIR/last.pt")
    p.add_argument(
        "--allow-changes",
        action="store_true",
        help="with --resume: apply settings that differ from the run's (learning rate, schedule, data...)",
    )
    p.add_argument(
        "--no-check-data",
        action="store_true",
        help="skip the pre-flight read of every train/val file (pixelwise data check)",
    )
    add_common_options(p)
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("eval", help="evaluate a checkpoint on a labelled split")
    p.add_argument("checkpoint")
    p.add_argument("--split", default="val", help="split to evaluate (default: val)")
    p.add_argument("--json", help="also write the metrics to this JSON file")
    p.add_argument("--device", default="auto")
    p.add_argument(
        "--num-workers", type=int, help="image-reading processes (default: 2, or 1 where the process may use one CPU)"
    )
    p.add_argument("--confusion", metavar="PNG", help="also draw the row-normalised confusion matrix here")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --json or --confusion file")
    p.add_argument("--num-images", type=int, metavar="N", help="score only the split's first N images (a quick look)")
    p.add_argument(
        "--boundary-width", type=int, metavar="PX", help="also score boundary F1 per class, within this many pixels"
    )
    p.add_argument(
        "--instances",
        metavar="CLASS",
        help="also score instances (ISBI 2012 V_rand, V_info): connected components of this class",
    )
    p.add_argument("--watershed", action="store_true", help="split predicted instances by distance watershed")
    add_crf_options(p)
    add_inference_options(p)
    add_decoding_options(p)
    add_common_options(p)
    p.set_defaults(func=_cmd_eval)

    p = sub.add_parser("predict", help="predict masks for images and videos")
    p.add_argument("checkpoint")
    p.add_argument("inputs", nargs="+", help="image or video files, folders or glob patterns")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--device", default="auto")
    p.add_argument("--alpha", type=float, default=0.5, help="overlay opacity (default 0.5)")
    p.add_argument("--overwrite", action="store_true", help="write into a non-empty --out folder, replacing files")
    p.add_argument(
        "--skip-errors", action="store_true", help="carry on past unreadable images; list them at the end (exit 2)"
    )
    p.add_argument(
        "--backend",
        choices=["auto", "torch", "onnxruntime"],
        default="auto",
        help="auto (default): onnxruntime for an .onnx file from pixelwise export, else torch",
    )
    g = p.add_argument_group("effects and video")
    g.add_argument(
        "--effect",
        metavar="EFFECT",
        help="also write the picture with an effect (DIR/effect/<stem>.png; DIR/<stem>_effect.mp4 for a video): "
        "blur[=SIGMA] (the background blurred; Gaussian sigma in pixels, default 2%% of the longer side), "
        "replace=IMAGE_OR_COLOUR (e.g. beach.jpg, #00b140, 0,177,64), cutout (RGBA), highlight[=OPACITY]",
    )
    g.add_argument(
        "--foreground",
        metavar="CLASS[,CLASS...]",
        help="the classes the effect keeps (highlight: tints), by name or index "
        "(default: all but a class named background)",
    )
    g.add_argument(
        "--smooth",
        type=float,
        metavar="A",
        help="video: smooth the class probabilities in time, s_t = A * p_t + (1 - A) * s_(t-1) (0 < A <= 1; "
        "smaller is smoother; default: none)",
    )
    g.add_argument(
        "--video-masks",
        choices=["none", "video", "png"],
        default="none",
        help="video: also write the class indices losslessly, as DIR/<stem>_masks.mkv (FFV1) or as "
        "DIR/masks/<stem>/000000.png ... (default: none)",
    )
    g.add_argument("--batch-size", type=int, default=4, help="video: frames per forward pass (default 4)")
    g.add_argument("--no-audio", action="store_true", help="video: drop the audio (default: passed through)")
    add_inference_options(p)
    add_decoding_options(p)
    add_crf_options(p)
    add_common_options(p, data=False)
    p.set_defaults(func=_cmd_predict)

    p = sub.add_parser("crf-search", help="grid-search the dense CRF's parameters on a val subset (as DeepLab)")
    p.add_argument("checkpoint")
    p.add_argument("--split", default="val")
    p.add_argument(
        "--num-images", type=int, default=20, help="images scored, spread evenly over the split (default: 20)"
    )
    p.add_argument("--iterations", type=int, help="mean-field iterations (default: the run's crf section, else 10)")
    for name in GRID_PARAMETERS:
        values = DEFAULT_GRID.get(name)
        p.add_argument(
            f"--{name.replace('_', '-')}",
            type=float,
            nargs="+",
            default=values,
            help=f"{CRF_HELP[name][1]} (grid; default {values if values else 'the run' + chr(39) + 's value'})",
        )
    p.add_argument("--device", default="auto")
    add_inference_options(p, compile=False)
    add_common_options(p)
    p.set_defaults(func=_cmd_crf_search)

    p = sub.add_parser("export", help="export a checkpoint to ONNX, checked with onnxruntime")
    p.add_argument("checkpoint")
    p.add_argument("--format", choices=["onnx"], default="onnx")
    p.add_argument("--out", required=True, help="the .onnx file to write")
    p.add_argument("--size", type=int, nargs="+", default=[512, 512], help="example input size: S or H W")
    p.add_argument("--opset", type=int, default=17)
    p.add_argument("--static", action="store_true", help="fixed input size (default: dynamic batch/height/width)")
    p.add_argument(
        "--exporter",
        choices=["torchscript", "dynamo"],
        default="torchscript",
        help="torch.onnx exporter (torchscript is fast; dynamo is torch.export based)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    p.set_defaults(func=_cmd_export)

    p = sub.add_parser("data", help="data set tools: check, import")
    data_sub = p.add_subparsers(dest="data_command", required=True, metavar="TOOL")
    p = data_sub.add_parser(
        "check",
        help="read every image, mask and instance map of a data set; list every problem (exit 1 if any error)",
    )
    p.add_argument("name", help="the data set's folder name under the data root")
    p.add_argument("--split", action="append", help="check only this split (repeatable; default: every split)")
    p.add_argument("--json", help="also write the report (per-split counts, class pixels, problems) to this file")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --json file")
    add_common_options(p)
    p.set_defaults(func=_cmd_data_check)
    from .data.importers import FORMATS  # the format names only; the readers' own dependencies load when used

    p = data_sub.add_parser(
        "import",
        help="import a data set from its own format (VOC, SBD, Cityscapes, ADE20K, COCO, RGB masks, LabelMe) into "
        "the native layout",
        description="Read SRC in FORMAT's own layout (never altering it) and write DST/NAME in pixelwise's native "
        "layout: images, masks, instance maps where the format has objects, classes.json; then print what was "
        "written and skipped. docs/importers.md describes each format's split and class mapping.",
    )
    p.add_argument("format", choices=list(FORMATS), metavar="FORMAT", help=f"one of {', '.join(FORMATS)}")
    p.add_argument("src", metavar="SRC", help="the folder the format's documentation starts from")
    p.add_argument("dst", metavar="DST", help="the data root to write DST/NAME into")
    p.add_argument("--name", help="the data set's folder name under DST (default: the format's name)")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty DST/NAME (and an existing --json)")
    p.add_argument("--workers", type=int, help="threads converting images (default: the CPUs, at most 8)")
    p.add_argument(
        "--palette",
        metavar="FILE",
        help="rgb, labelme: a classes.json giving the classes, their colours (and rgb's optional ignore_color)",
    )
    p.add_argument(
        "--link", action="store_true", help="hard-link the images instead of copying them (same file system)"
    )
    p.add_argument("--json", help="also write the summary to this file")
    add_common_options(p, data=False)
    p.set_defaults(func=_cmd_data_import)

    p = sub.add_parser("weight-map", help="draw the U-Net border weight map of a mask (Ronneberger et al. eq. 2)")
    p.add_argument("mask", help="a mask PNG of class indices")
    p.add_argument("--out", required=True, help="PNG to write")
    p.add_argument("--w0", type=float, default=10.0)
    p.add_argument("--sigma", type=float, default=5.0)
    p.add_argument("--foreground", type=int, default=1, help="class whose connected components are the objects")
    p.add_argument("--ignore-index", type=int, default=255)
    p.add_argument("--no-balance", action="store_true", help="no class-frequency term w_c")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    p.set_defaults(func=_cmd_weight_map)

    p = sub.add_parser("report", help="plots (loss, val metrics, per-class IoU, confusion) and a summary of a run")
    p.add_argument("run_dir")
    p.add_argument("--out", help="output folder (default RUN_DIR/report; an earlier report there is replaced)")
    p.add_argument("--overwrite", action="store_true", help="replace files of the report's names it did not write")
    p.set_defaults(func=_cmd_report)

    p = sub.add_parser("models", help="list the registered models with parameters and GFLOPs")
    p.add_argument("--num-classes", type=int, default=21)
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--json", action="store_true")
    p.add_argument(
        "--backbones", action="store_true", help="list the backbones instead, with the output strides each supports"
    )
    p.set_defaults(func=_cmd_models)
    p = sub.add_parser("serve", help="serve a model: an HTTP API and a web page (needs the [serve] extra)")
    p.add_argument("checkpoint", help="RUN/best.pt, or an .onnx file from pixelwise export")
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (default 127.0.0.1: this machine only; 0.0.0.0 opens it to the network)",
    )
    p.add_argument("--port", type=int, default=8000, help="port (default 8000; 0: a free one, printed)")
    p.add_argument(
        "--backend",
        choices=["auto", "torch", "onnxruntime"],
        default="auto",
        help="auto (default): onnxruntime for an .onnx file, else torch",
    )
    p.add_argument("--device", default="auto")
    add_inference_options(p, compile=False)  # the run's protocol by default; e.g. --no-flip halves the work
    p.add_argument(
        "--max-queue", type=int, default=8, help="requests waiting behind the running one; more get 503 (default 8)"
    )
    p.add_argument("--max-mb", type=float, default=20, help="largest request body, MiB; larger get 413 (default 20)")
    p.add_argument(
        "--max-megapixels",
        type=float,
        default=25,
        help="largest image, width x height in millions of pixels; larger get 413 (default 25)",
    )
    p.add_argument(
        "--timeout",
        type=float,
        default=30,
        help="seconds a request may take, upload, queue and prediction together; longer get 408/504 (default 30)",
    )
    p.set_defaults(func=_cmd_serve)
    return parser


def _one_line(exc: BaseException) -> str:
    # errors raised in DataLoader workers come back wrapped with the worker's traceback: keep the message
    text = str(exc).strip()
    if "Original Traceback" in text:
        text = text.splitlines()[-1].split(": ", 1)[-1]
    return text


class _TqdmHandler(logging.Handler):
    """Log records as lines that do not break a progress bar: info to stdout, warnings to stderr."""

    def emit(self, record: logging.LogRecord) -> None:
        from tqdm.auto import tqdm

        stream = sys.stderr if record.levelno >= logging.WARNING else sys.stdout
        prefix = "warning: " if record.levelno >= logging.WARNING else ""
        tqdm.write(prefix + self.format(record), file=stream)


def _another_rank() -> bool:
    """Whether this process is one of torchrun's other than rank 0 (from the environment torchrun sets)."""
    return os.environ.get("RANK", "0") != "0"


def setup_logging(quiet: bool = False) -> None:
    """Show the library's log records (``pixelwise.*``) as plain lines; once per process."""
    logger = logging.getLogger("pixelwise")
    if not any(isinstance(h, _TqdmHandler) for h in logger.handlers):
        handler = _TqdmHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
        logger.propagate = False
    # under torchrun every process runs the verb: the others say only what goes wrong, rank 0 the rest
    quiet = quiet or _another_rank()
    logger.setLevel(logging.WARNING if quiet else logging.INFO)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.quiet)
    from .engine.trainer import TrainingInterrupted

    verb = " ".join(v for v in (args.command, getattr(args, "data_command", None)) if v)
    if verb not in SIGTERM_AS_INTERRUPT:
        return _run(args, verb, TrainingInterrupted)
    with _sigterm_as_interrupt():
        return _run(args, verb, TrainingInterrupted)


# The verbs that take SIGTERM (kill, timeout, a batch system, docker stop) as Ctrl-C, to clean up as on SIGINT (an
# import its staging folder, predict its manifest): their work returns to Python between images. Not the others: a
# Python handler waits for the interpreter, and a process blocked in C (torchrun's rendezvous) would never end;
# train has its own handling inside, serve uvicorn's.
SIGTERM_AS_INTERRUPT = frozenset({"data import", "predict"})


class _Terminated(KeyboardInterrupt):
    """SIGTERM taken as Ctrl-C (:data:`SIGTERM_AS_INTERRUPT`)."""


@contextlib.contextmanager
def _sigterm_as_interrupt():
    def terminated(signum, frame):
        raise _Terminated

    try:
        previous = signal.signal(signal.SIGTERM, terminated)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _run(args: argparse.Namespace, verb: str, TrainingInterrupted: type) -> int:  # noqa: N803
    try:
        return args.func(args)
    except TrainingInterrupted as e:
        print(f"pixelwise {verb}: {e}", file=sys.stderr)
        return 128 + e.signum
    except PixelwiseError as e:
        print(f"pixelwise {verb}: error: {_one_line(e)}", file=sys.stderr)
        return 2
    except OSError as e:
        if e.filename is None:  # not about a file the user named: a bug, its traceback wanted
            raise
        where = f"{e.filename} -> {e.filename2}" if e.filename2 else str(e.filename)
        full = e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
        fix = "free some space there, or choose another place" if full else "check the path and its permissions"
        print(f"pixelwise {verb}: error: {where}: {e.strerror or e}; {fix}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:
        print(f"pixelwise {verb}: interrupted", file=sys.stderr)
        return 128 + (signal.SIGTERM if isinstance(e, _Terminated) else signal.SIGINT)


if __name__ == "__main__":
    sys.exit(main())
