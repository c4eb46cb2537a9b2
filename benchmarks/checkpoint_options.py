"""The options of the benchmarks that run a trained checkpoint over a split of its data set, as `pixelwise eval`
does: the split, where the data lies, the precision, the threads and where the figures go."""

from __future__ import annotations

import argparse


def add_checkpoint_options(ap: argparse.ArgumentParser, *, split: str = "val") -> None:
    """``--split`` (default ``split``), ``--data-root``, ``--amp``, ``--threads`` and ``--json``."""
    ap.add_argument("--split", default=split)
    ap.add_argument("--data-root")
    ap.add_argument("--amp", default="auto", help="as eval's --amp (auto: the run's precision where native)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", help="write the figures here")
