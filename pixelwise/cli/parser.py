"""The verbs and their flags: the argument parser of ``pixelwise``."""

from __future__ import annotations

import argparse

from .. import __version__
from . import verbs
from .options import (
    CRF_HELP,
    add_common_options,
    add_crf_options,
    add_decoding_options,
    add_inference_options,
)

DESCRIPTION = "Semantic and instance segmentation with the classic architectures built to their papers."
EPILOG = 'Run "pixelwise VERB --help" for the options of a verb.'


def build_parser() -> argparse.ArgumentParser:
    from ..crf.settings import DEFAULT_GRID, GRID_PARAMETERS, CRFSettings

    assert list(CRF_HELP) == CRFSettings.names(), "CRF_HELP must list CRFSettings's fields"
    parser = argparse.ArgumentParser(prog="pixelwise", description=DESCRIPTION, epilog=EPILOG)
    parser.add_argument("--version", action="version", version=f"pixelwise {__version__}")
    parser.add_argument("-q", "--quiet", action="store_true", help="print only warnings and results")
    sub = parser.add_subparsers(dest="command", required=True, metavar="VERB")

    p = sub.add_parser("train", help="train a model from a YAML config")
    p.add_argument("config", help="YAML config (sections model, data, train, crf, instances, inference)")
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
    p.set_defaults(func=verbs.cmd_train)

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
    p.set_defaults(func=verbs.cmd_eval)

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
    p.set_defaults(func=verbs.cmd_predict)

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
    p.set_defaults(func=verbs.cmd_crf_search)

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
    p.set_defaults(func=verbs.cmd_export)

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
    p.set_defaults(func=verbs.cmd_data_check)
    from ..data.importers import FORMATS  # the format names only; the readers' own dependencies load when used

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
    p.set_defaults(func=verbs.cmd_data_import)

    p = sub.add_parser("weight-map", help="draw the U-Net border weight map of a mask (Ronneberger et al. eq. 2)")
    p.add_argument("mask", help="a mask PNG of class indices")
    p.add_argument("--out", required=True, help="PNG to write")
    p.add_argument("--w0", type=float, default=10.0)
    p.add_argument("--sigma", type=float, default=5.0)
    p.add_argument("--foreground", type=int, default=1, help="class whose connected components are the objects")
    p.add_argument("--ignore-index", type=int, default=255)
    p.add_argument("--no-balance", action="store_true", help="no class-frequency term w_c")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    p.set_defaults(func=verbs.cmd_weight_map)

    p = sub.add_parser("report", help="plots (loss, val metrics, per-class IoU, confusion) and a summary of a run")
    p.add_argument("run_dir")
    p.add_argument("--out", help="output folder (default RUN_DIR/report; an earlier report there is replaced)")
    p.add_argument("--overwrite", action="store_true", help="replace files of the report's names it did not write")
    p.set_defaults(func=verbs.cmd_report)

    p = sub.add_parser("models", help="list the registered models with parameters and GFLOPs")
    p.add_argument("--num-classes", type=int, default=21)
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--json", action="store_true")
    p.add_argument(
        "--backbones", action="store_true", help="list the backbones instead, with the output strides each supports"
    )
    p.set_defaults(func=verbs.cmd_models)
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
    p.set_defaults(func=verbs.cmd_serve)
    return parser
