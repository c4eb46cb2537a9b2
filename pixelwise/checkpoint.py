"""Checkpoints: written atomically, read with ``torch.load(weights_only=True)`` (no unpickling of code).

A checkpoint is a dict of plain types and tensors::

    {"format": "pixelwise", "version": 1,
     "model": state_dict,
     "meta": {"model": {"name": ..., **builder_kwargs}, "classes": [...], "palette": [...],
              "ignore_index": 255, "mean": [...], "std": [...], "dataset": ...},
     "config": the resolved run config,
     # in last.pt only, for --resume:
     "train_state": {...}, "optimizer": ..., "scheduler": ...}
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .errors import CheckpointError
from .models.registry import build_model

FORMAT = "pixelwise"
VERSION = 1


def atomic_write(path: str | os.PathLike, write: Any) -> None:
    """Call ``write(fileobj)`` on a temporary file beside ``path``, fsync it, then rename it over
    ``path``: a reader (or a crash) sees the old file or the new one, never half of one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the file the usual permissions
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_checkpoint(path: str | os.PathLike, checkpoint: dict[str, Any]) -> None:
    atomic_write(path, lambda f: torch.save({"format": FORMAT, "version": VERSION, **checkpoint}, f))


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a pixelwise checkpoint safely (``weights_only=True``); CheckpointError if it is not one."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # truncated file, foreign pickle, not a torch file...
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"cannot load checkpoint {path}: {msg}") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT or "model" not in ckpt or "meta" not in ckpt:
        raise CheckpointError(f"{path} is not a pixelwise checkpoint (no 'format': 'pixelwise' / 'model' / 'meta')")
    return ckpt


def load_weights(model: nn.Module, state_dict: dict[str, torch.Tensor], source: str) -> None:
    """``model.load_state_dict`` with a clear error on mismatching keys or shapes (for instance a
    checkpoint trained for another number of classes)."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(own))
    if missing or unexpected:
        raise CheckpointError(
            f"{source} does not fit the model: {len(missing)} missing key(s) {missing[:3]}, "
            f"{len(unexpected)} unexpected key(s) {unexpected[:3]}"
        )
    # the last weight/bias pair is the classifier: name a class-count mismatch as such
    classifier = [k for k in own if k.endswith(("weight", "bias"))][-2:]
    for key, value in state_dict.items():
        if own[key].shape != value.shape:
            hint = ""
            if key in classifier and value.shape[1:] == own[key].shape[1:]:
                hint = f" (a checkpoint for {value.shape[0]} classes, a model for {own[key].shape[0]})"
            raise CheckpointError(
                f"{source} does not fit the model: {key} has shape {tuple(value.shape)} in the checkpoint, "
                f"{tuple(own[key].shape)} in the model{hint}"
            )
    model.load_state_dict(state_dict)


def model_from_checkpoint(ckpt: dict[str, Any], source: str = "checkpoint") -> nn.Module:
    """Rebuild the model recorded in ``ckpt['meta']`` and load its weights (eval mode)."""
    spec = dict(ckpt["meta"]["model"])
    model = build_model(spec.pop("name"), **spec)
    load_weights(model, ckpt["model"], source)
    return model.eval()
