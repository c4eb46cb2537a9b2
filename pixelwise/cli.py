"""Command line: ``pixelwise {train,eval,predict,models}`` (also ``python -m pixelwise``)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from .errors import PixelwiseError


def _cmd_train(args: argparse.Namespace) -> int:
    from .config import load_config
    from .engine import train

    config = load_config(args.config, args.set)
    run_dir = args.run_dir or Path("runs") / Path(args.config).stem
    start = time.perf_counter()
    result = train(config, run_dir=run_dir, resume=args.resume, data_root=args.data_root, progress=not args.no_progress)
    minutes = (time.perf_counter() - start) / 60
    best = result["best_miou"]
    best_text = f"{best:.4f} at iteration {result['best_iter']}" if best is not None and best >= 0 else "n/a"
    print(f"done in {minutes:.1f} min; best val mIoU {best_text}; checkpoints in {run_dir}")
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    from .engine import evaluate_checkpoint, format_metrics_table, write_json

    result = evaluate_checkpoint(
        args.checkpoint,
        split=args.split,
        data_root=args.data_root,
        device=args.device,
        num_workers=args.num_workers,
        progress=not args.no_progress,
    )
    print(f"{result['dataset']} / {result['split']}: {result['num_images']} images, {args.checkpoint}")
    print(format_metrics_table(result["metrics"], result["classes"]))
    if args.json:
        write_json(args.json, result)
        print(f"metrics written to {args.json}")
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    from .engine import predict

    written = predict(
        args.checkpoint, args.inputs, args.out, device=args.device, alpha=args.alpha, progress=not args.no_progress
    )
    print(f"{len(written)} image(s) -> {args.out}/masks, {args.out}/color, {args.out}/overlay")
    return 0


def _cmd_models(args: argparse.Namespace) -> int:
    from .models import list_models
    from .models.stats import model_stats

    rows = []
    for name in list_models():
        params, flops = model_stats(name, num_classes=args.num_classes, size=args.size)
        rows.append({"name": name, "params_m": params / 1e6, "gflops": flops / 1e9})
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'model':<32} {'params (M)':>11} {f'GFLOPs @{args.size}':>14}")
    for r in rows:
        print(f"{r['name']:<32} {r['params_m']:>11.2f} {r['gflops']:>14.1f}")
    print(f"(num_classes={args.num_classes}; GFLOPs = 2 x multiply-adds of one {args.size}x{args.size} image)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pixelwise", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p: argparse.ArgumentParser, data: bool = True) -> None:
        if data:
            p.add_argument("--data-root", help="folder holding the data sets (default: $PIXELWISE_DATA, then ./data)")
        p.add_argument("--no-progress", action="store_true", help="no progress bars")

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
    common(p)
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("eval", help="evaluate a checkpoint on a labelled split")
    p.add_argument("checkpoint")
    p.add_argument("--split", default="val", help="split to evaluate (default: val)")
    p.add_argument("--json", help="also write the metrics to this JSON file")
    p.add_argument("--device", default="auto")
    p.add_argument("--num-workers", type=int, default=2)
    common(p)
    p.set_defaults(func=_cmd_eval)

    p = sub.add_parser("predict", help="predict masks for images")
    p.add_argument("checkpoint")
    p.add_argument("inputs", nargs="+", help="image files, folders or glob patterns")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--device", default="auto")
    p.add_argument("--alpha", type=float, default=0.5, help="overlay opacity (default 0.5)")
    common(p, data=False)
    p.set_defaults(func=_cmd_predict)

    p = sub.add_parser("models", help="list the registered models with parameters and GFLOPs")
    p.add_argument("--num-classes", type=int, default=21)
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_models)
    return parser


def _one_line(exc: BaseException) -> str:
    # errors raised in DataLoader workers come back wrapped with the worker's traceback: keep the message
    text = str(exc).strip()
    if "Original Traceback" in text:
        text = text.splitlines()[-1].split(": ", 1)[-1]
    return text


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except PixelwiseError as e:
        print(f"pixelwise {args.command}: error: {_one_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"pixelwise {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
