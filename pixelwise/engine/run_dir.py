"""A run directory: what rank 0 writes there (resolved config, metrics log, checkpoints, TensorBoard), every
write atomic or an appended log line."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..config import dump_config
from ..data import SegmentationDataset
from ..errors import ConfigError
from ..fileio import atomic_write_text, to_jsonable
from ..metrics import SUMMARY_KEYS
from ..models.weights import save_checkpoint
from ..visualize import colorize, overlay
from .resume import truncate_log, weights_only


class RunFiles:
    """``config.yaml``, ``metrics.jsonl``, ``last.pt``, ``best.pt``, ``iter_NNNNNNN.pt`` (``keep_last`` > 1)
    and ``tensorboard/``; nothing is written unless ``enabled`` (rank 0)."""

    def __init__(self, run_dir: Path, keep_last: int, enabled: bool) -> None:
        self.dir, self.keep_last, self.enabled = run_dir, keep_last, enabled
        self.last, self.best, self.log_path = run_dir / "last.pt", run_dir / "best.pt", run_dir / "metrics.jsonl"
        self._log = None
        self.tensorboard = None

    def open(self, config: dict[str, Any], resume_iter: int | None, tensorboard: bool = False) -> None:
        if not self.enabled:
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.dir / "config.yaml", dump_config(config))
        if resume_iter is not None:
            truncate_log(self.log_path, resume_iter)
        self._log = open(self.log_path, "a")  # noqa: SIM115 (closed in close())
        if tensorboard:
            self.tensorboard = _summary_writer(self.dir)

    def record(self, entry: dict[str, Any]) -> None:
        if self._log is not None:
            self._log.write(json.dumps(to_jsonable(entry)) + "\n")
            self._log.flush()

    def save(self, checkpoint: dict[str, Any], it: int, best: bool) -> None:
        if not self.enabled:
            return
        save_checkpoint(self.last, checkpoint)
        if best:
            save_checkpoint(self.best, weights_only(checkpoint))
        if self.keep_last > 1:  # also keep the last k checkpoints by iteration
            save_checkpoint(self.dir / f"iter_{it:07d}.pt", checkpoint)
            for old in sorted(self.dir.glob("iter_*.pt"))[: -self.keep_last]:
                old.unlink()

    def scalars(self, values: dict[str, float], it: int) -> None:
        if self.tensorboard is not None:
            for key, value in values.items():
                self.tensorboard.add_scalar(key, value, it)

    def close(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None
        if self.tensorboard is not None:
            self.tensorboard.close()
            self.tensorboard = None


def _summary_writer(run_dir: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise ConfigError("train.tensorboard needs the tensorboard package: pip install tensorboard") from None
    return SummaryWriter(str(run_dir / "tensorboard"))


def tensorboard_val(
    writer,
    model: nn.Module,
    val_ds: SegmentationDataset,
    metrics: dict[str, Any],
    meta: dict[str, Any],
    device: torch.device,
    it: int,
    images: int = 2,
) -> None:
    """Val scalars and, for the first ``images`` val images, prediction overlays."""
    for key in SUMMARY_KEYS:
        writer.add_scalar(f"val/{key}", metrics[key], it)
    for name, value in zip(val_ds.info.classes, metrics["iou"], strict=True):
        if value is not None and math.isfinite(value):
            writer.add_scalar(f"val_iou/{name}", value, it)
    was_training = model.training
    model.eval()
    with torch.inference_mode():
        for i in range(min(images, len(val_ds))):
            x, _ = val_ds[i]
            pred = model(x[None].to(device)).argmax(1)[0].to(torch.uint8).cpu().numpy()
            raw, _ = val_ds.load(i)
            picture = overlay(raw, colorize(pred, meta["palette"]))
            writer.add_image(f"val_overlay/{val_ds.name_of(i)}", picture, it, dataformats="HWC")
    model.train(was_training)
