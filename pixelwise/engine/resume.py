"""Exact resume: what a training checkpoint holds beyond the weights, packed and restored in one place.

``last.pt`` carries the model, the optimizer, schedule and gradient-scaler states, the torch RNG state and
the :class:`TrainState` counters; the sample order restarts at the saved iteration
(:class:`~pixelwise.engine.sampler.EpochSampler` depends on the seed and the iteration alone), and log
records written after the checkpoint are dropped, so a killed and resumed run ends with the weights of an
uninterrupted one. ``best.pt`` is the same without the training-only entries."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError
from ..fileio import atomic_write_text
from ..models.weights import load_checkpoint, load_weights

TRAINING_ONLY = ("train_state", "optimizer", "scheduler", "scaler", "rng")


@dataclass
class TrainState:
    """The counters a resumed run continues from."""

    iter: int = 0
    best_miou: float = -1.0
    best_iter: int | None = None
    train_seconds: float = 0.0

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainState:
        return cls(**{k: v for k, v in values.items() if k in cls.__dataclass_fields__})


def pack(
    *,
    model: nn.Module,
    meta: dict[str, Any],
    config: dict[str, Any],
    state: TrainState,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    scaler: torch.amp.GradScaler,
) -> dict[str, Any]:
    """The checkpoint dict of a training at ``state.iter`` (``last.pt``)."""
    return {
        "model": model.state_dict(),
        "meta": meta,
        "config": config,
        "train_state": asdict(state),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict(),
        "rng": {"torch": torch.get_rng_state()},
    }


def weights_only(checkpoint: dict[str, Any]) -> dict[str, Any]:
    """``checkpoint`` without what only resuming needs (``best.pt``)."""
    return {k: v for k, v in checkpoint.items() if k not in TRAINING_ONLY}


def restore(
    path: str | os.PathLike,
    *,
    model: nn.Module,
    spec: dict[str, Any],
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    scaler: torch.amp.GradScaler,
    device: torch.device,
) -> tuple[TrainState, dict[str, Any]]:
    """Load ``path`` (a ``last.pt``) into the training objects and the RNG; returns its state and the
    checkpoint (for the caller's comparisons of its config)."""
    ckpt = load_checkpoint(path, map_location=device)
    if ckpt["meta"]["model"] != spec:
        raise ConfigError(f"--resume: the model in {path} ({ckpt['meta']['model']}) is not the config's")
    load_weights(model, ckpt["model"], str(path))
    optimizer.load_state_dict(ckpt["optimizer"])
    scheduler.load_state_dict(ckpt["scheduler"])
    scaler.load_state_dict(ckpt["scaler"])
    torch.set_rng_state(ckpt["rng"]["torch"].cpu())
    return TrainState.from_dict(ckpt["train_state"]), ckpt


def truncate_log(path: Path, upto_iter: int) -> None:
    """On resume, drop the log records written after the checkpoint being resumed from."""
    if not path.exists():
        return
    keep = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line)["iter"] <= upto_iter]
    atomic_write_text(path, "".join(line + "\n" for line in keep))


def sampler_start(state: TrainState, accumulate: int) -> int:
    """The sampler's first batch: an iteration (optimizer step) takes ``accumulate`` batches."""
    return state.iter * accumulate
