"""The options of the benchmarks that run a trained checkpoint over a split of its data set, as `pixelwise eval`
does: the split, where the data lies, the precision, the threads and where the figures go; scoring the
checkpoint one way and another in turns, and writing the figures with the machine they ran on."""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Sequence
from typing import Any

from machine import machine_info

from pixelwise.engine.evaluator import evaluate_checkpoint
from pixelwise.fileio import write_json


def add_checkpoint_options(ap: argparse.ArgumentParser, *, split: str = "val") -> None:
    """``--split`` (default ``split``), ``--data-root``, ``--amp``, ``--threads`` and ``--json``."""
    ap.add_argument("--split", default=split)
    ap.add_argument("--data-root")
    ap.add_argument("--amp", default="auto", help="as eval's --amp (auto: the run's precision where native)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", help="write the figures here")


def score_in_turns(
    args: argparse.Namespace, ways: Sequence[tuple[str, Callable[[], None]]]
) -> tuple[dict[str, dict[str, Any]], dict[str, Any] | None]:
    """Score ``args.checkpoint`` on ``args.split`` once per ``(name, put_in_place)`` of ``ways``, in that order
    (``put_in_place()`` sets the way up first); returns the rows by name and the protocol the run used."""
    rows, inference = {}, None
    for name, put_in_place in ways:
        put_in_place()
        start = time.perf_counter()
        result = evaluate_checkpoint(
            args.checkpoint, split=args.split, data_root=args.data_root, amp=args.amp, num_workers=0, progress=False
        )
        m, inference = result["metrics"], result["inference"]
        rows[name] = {
            "miou": m["miou"],
            "pixel_error": 1 - m["pixel_accuracy"],
            "iou": m["iou"],
            "seconds": round(time.perf_counter() - start, 1),
        }
        print(
            f"{name:>14}: mIoU {100 * m['miou']:.2f}  pixel error {1 - m['pixel_accuracy']:.5f}  "
            f"min class IoU {100 * min(m['iou']):.1f}",
            flush=True,
        )
    return rows, inference


def write_figures(args: argparse.Namespace, rows: dict[str, Any], **extra: Any) -> None:
    """Write ``rows`` to ``args.json`` (if given) with the machine, checkpoint, split and threads, and ``extra``."""
    if args.json:
        out = {
            **machine_info(),
            "checkpoint": str(args.checkpoint),
            "split": args.split,
            "threads": args.threads,
            **extra,
            "rows": rows,
        }
        write_json(args.json, out)
