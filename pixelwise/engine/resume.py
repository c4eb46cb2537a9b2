"""Exact resume: what a training checkpoint holds beyond the weights, packed and restored in one place.

``last.pt`` carries the model, the optimizer, schedule and gradient-scaler states, the torch RNG state and
the :class:`TrainState` counters; the sample order restarts at the saved iteration
(:class:`~pixelwise.engine.sampler.EpochSampler` depends on the seed and the iteration alone), and log
records written after the checkpoint are dropped, so a killed and resumed run ends with the weights of an
uninterrupted one. ``best.pt`` is the same without the training-only entries."""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..config import DEFAULTS
from ..errors import CheckpointError, ConfigError
from ..fileio import atomic_write_text, read_jsonl
from ..inference.instance_settings import DECODING_KEYS
from ..models import model_defaults
from ..models.registry import without_pretrained
from ..models.weights import load_checkpoint, load_weights
from .ema import WeightEMA

log = logging.getLogger(__name__)

TRAINING_ONLY = ("train_state", "optimizer", "scheduler", "scaler", "rng", "train_model", "ema")


@dataclass
class TrainState:
    """The counters a resumed run continues from."""

    iter: int = 0
    best_miou: float = -1.0
    best_iter: int | None = None
    train_seconds: float = 0.0
    eval_due: bool = False  # stopped by a signal after a step due for validation: validate first on resume
    samples: int = 0  # training samples drawn so far, over all processes (where the sample order continues)
    sample_batch: int = 0  # the global batch they were drawn in (0: a checkpoint from before it was recorded)
    log_loss_sum: float = 0.0  # the losses of the steps since the last train log line (averaged over the processes)
    log_steps: int = 0

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainState:
        return cls(**{k: v for k, v in values.items() if k in cls.__dataclass_fields__})


def rng_state(device: torch.device) -> dict[str, torch.Tensor]:
    """The random states a training step draws from: the CPU generator, and on a GPU that device's generator
    (dropout and random kernels on CUDA draw from it). Every process of a DDP run holds the same states (one seed),
    so rank 0's, restored on each process's own device, continue every process exactly."""
    state = {"torch": torch.get_rng_state()}
    if torch.device(device).type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict[str, torch.Tensor], device: torch.device) -> None:
    """Restore :func:`rng_state` (a checkpoint from before the CUDA state was saved restores the CPU's only)."""
    torch.set_rng_state(state["torch"].cpu())
    if torch.device(device).type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"].cpu(), device)


def pack(
    *,
    model: nn.Module,
    meta: dict[str, Any],
    config: dict[str, Any],
    state: TrainState,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    scaler: torch.amp.GradScaler,
    rng: dict[str, torch.Tensor] | None = None,
    ema: WeightEMA | None = None,
) -> dict[str, Any]:
    """The checkpoint dict of a training at ``state.iter`` (``last.pt``); ``rng``: the random states at that
    iteration (:func:`rng_state`; default: the CPU generator's now). With ``ema``, ``"model"`` holds the averaged
    weights and ``"train_model"`` the trained ones."""
    averaged = {"train_model": model.state_dict(), "ema": ema.state()} if ema is not None else {}
    return {
        "model": (ema.module if ema is not None else model).state_dict(),
        **averaged,
        "meta": meta,
        "config": config,
        "train_state": asdict(state),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict(),
        "rng": rng_state(torch.device("cpu")) if rng is None else rng,
    }


def weights_only(checkpoint: dict[str, Any]) -> dict[str, Any]:
    """``checkpoint`` without what only resuming needs (``best.pt``)."""
    return {k: v for k, v in checkpoint.items() if k not in TRAINING_ONLY}


def restore(
    path: str | os.PathLike,
    *,
    model: nn.Module,
    spec: dict[str, Any],
    config: dict[str, Any],
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LambdaLR,
    scaler: torch.amp.GradScaler,
    device: torch.device,
    allow_changes: bool = False,
    ema: WeightEMA | None = None,
    state: TrainState | None = None,
    world_size: int = 1,
) -> TrainState:
    """Load ``path`` (a ``last.pt``) into the training objects and the RNG; returns its state.

    Settings of ``config`` that differ from the checkpoint's (:func:`changed_settings`) stop the resume with
    the list, unless ``allow_changes``: then they are applied for real (optimizer settings by
    :func:`apply_optimizer_changes`, a new optimizer type with a fresh optimizer state) and logged. A changed
    model never resumes (its weights would not fit). ``ema`` (``train.ema_decay`` on) continues the checkpoint's
    average, or starts one from its weights when it had none. ``state``, when given, is filled in place (and
    returned) before the changes are applied: a time-driven schedule reads its clock from it."""
    ckpt = load_checkpoint(path, map_location=device)
    missing = [key for key in ("train_state", "optimizer", "scheduler", "scaler", "rng") if key not in ckpt]
    if missing:  # e.g. a best.pt copied over last.pt
        raise CheckpointError(
            f"--resume: {path} holds a model's weights only (as best.pt does), not the training state a resume "
            f"needs ({', '.join(missing)}); start a new run from its weights with train.init_from: {path}"
        )
    # load_checkpoint filled the checkpoint's spec with the defaults its training recorded, so a default changed
    # since shows as a change; a key the config lacks is today's default
    # where the backbone's first weights came from is no part of the model: the checkpoint's weights replace them
    model_changes = _section_changes(
        without_pretrained(ckpt["meta"]["model"]), without_pretrained(spec), model_defaults(spec.get("name", ""))
    )
    if model_changes:
        listed = "; ".join(f"model.{k}: {old!r} -> {new!r}" for k, (old, new) in model_changes.items())
        raise ConfigError(
            f"--resume: the config's model is not the one {path} was trained with ({listed}); "
            "its weights would not fit: resume with the run's own model, or train the new one in a new --run-dir"
        )
    changes = changed_settings(ckpt.get("config") or {}, config)
    if changes and not allow_changes:
        listed = "; ".join(f"{k}: {old!r} -> {new!r}" for k, (old, new) in changes.items())
        raise ConfigError(
            f"--resume: the config changes settings that {path} was trained with ({listed}); "
            "resume with the run's own settings, or add --allow-changes to apply these from here on"
        )
    load_weights(model, ckpt.get("train_model", ckpt["model"]), str(path))
    if ema is not None:
        ema.load(ckpt["model"], ckpt.get("ema", {"updates": 0}))
    # what the new settings make of the parameter groups (their saved copies replace them on loading)
    layout = [(g["lr_mult"], g["norm_bias"]) for g in optimizer.param_groups]
    saved_sizes = [len(g["params"]) for g in ckpt["optimizer"]["param_groups"]]
    sizes = [len(g["params"]) for g in optimizer.param_groups]
    if "train.optimizer" not in changes and saved_sizes != sizes:
        grouping = [k for k in ("train.head_lr_mult", "train.norm_bias_weight_decay") if k in changes]
        if not grouping:  # the settings are the run's: this version groups the model's parameters otherwise
            raise ConfigError(
                f"--resume: this version of pixelwise groups the parameters of {path}'s model otherwise "
                f"({saved_sizes} parameters in the optimizer's state, {sizes} now; after 0.1.0 train.head_lr_mult "
                "leaves FCN's and DeepLab-VGG's fc6/fc7 at the base rate), which the state cannot follow; resume "
                "with --allow-changes and another train.optimizer (a fresh optimizer state), or with the version "
                "that trained it"
            )
        listed = "; ".join(f"{k}: {changes[k][0]!r} -> {changes[k][1]!r}" for k in grouping)
        raise ConfigError(
            f"--resume: {listed} turns the parameter groups of {path}'s optimizer ({saved_sizes} parameters) into "
            f"{sizes}, which its state cannot follow; keep the run's train.head_lr_mult and "
            "train.norm_bias_weight_decay, or also change train.optimizer (a fresh optimizer state)"
        )
    if "train.optimizer" in changes:
        log.warning("--allow-changes: a new %s optimizer starts with a fresh state", config["train"]["optimizer"])
    else:
        optimizer.load_state_dict(ckpt["optimizer"])
    scheduler.load_state_dict(ckpt["scheduler"])
    scaler.load_state_dict(ckpt["scaler"])
    set_rng_state(ckpt["rng"], device)
    restored = TrainState.from_dict(ckpt["train_state"])
    saved = {**DEFAULTS["data"], **(ckpt.get("config") or {}).get("data", {})}
    saved_train = {**DEFAULTS["train"], **(ckpt.get("config") or {}).get("train", {})}
    if "samples" not in ckpt["train_state"]:  # written before the samples were counted: from its own settings
        restored.samples = restored.iter * saved_train["accumulate"] * saved["batch_size"] * world_size
    steps = restored.iter * saved_train["accumulate"]
    if not restored.sample_batch and steps and restored.samples % steps == 0:
        # written before the batch was recorded: the one its settings drew every step with (unknown if it changed)
        restored.sample_batch = restored.samples // steps
    global_batch = config["data"]["batch_size"] * world_size
    if restored.sample_batch and restored.sample_batch != global_batch and "data.batch_size" not in changes:
        # the same per-process batch in another number of processes: another global batch, and no setting shows it
        before = restored.sample_batch / saved["batch_size"]
        processes = f"in {before:g} process(es) " if before == int(before) else ""  # unknown where the batch changed
        what = (
            f"{path} was trained {processes}with a global batch of {restored.sample_batch}, this resume runs in "
            f"{world_size} (a global batch of {global_batch})"
        )
        if not allow_changes:
            raise ConfigError(
                f"--resume: {what}; resume with as many processes (torchrun --nproc_per_node), or add "
                "--allow-changes to go on with the new global batch"
            )
        log.warning("--allow-changes: %s", what)
    if state is not None:
        vars(state).update(vars(restored))  # the schedule's clock (train_seconds) before the new rates are set
        restored = state
    if changes:
        apply_optimizer_changes(changes, optimizer, scheduler, config["train"], layout)
        for key, (old, new) in changes.items():
            log.warning("--allow-changes: %s %r -> %r from iteration %d", key, old, new, ckpt["train_state"]["iter"])
    return restored


def truncate_log(path: Path, upto_iter: int) -> None:
    """On resume, drop the log records written after the checkpoint being resumed from."""
    if not path.exists():
        return
    keep = [record for record in read_jsonl(path) if record["iter"] <= upto_iter]  # a cut-short last line goes too
    atomic_write_text(path, "".join(json.dumps(record) + "\n" for record in keep))


def sampler_start(state: TrainState, global_batch: int, size: int) -> int:
    """The sampler's first global batch (of ``global_batch`` samples of a data set of ``size``): where the samples
    drawn so far end, so that a resume with another batch size or accumulation (``--allow-changes``) neither skips
    nor repeats data (up to a partial batch, skipped). Each epoch drops the remainder of its own batching, so the
    place is found as (epoch, position in its order) in the batching the samples were drawn in."""
    old = state.sample_batch or global_batch
    drawn = -(-state.samples // old)  # batches of the old size begun
    if old == global_batch:
        return drawn
    epoch, batch = divmod(drawn, size // old)
    # the first new batch at or after the place; past the epoch's last whole batch, the next epoch's first
    return epoch * (size // global_batch) + min(-(-batch * old // global_batch), size // global_batch)


# Keys whose change does not contradict a restored state: where things are and how often to report or save.
FREE_ON_RESUME = {
    "data.root",
    "data.num_workers",
    "data.val_batch_size",
    "train.log_interval",
    "train.eval_interval",
    "train.checkpoint_interval",
    "train.checkpoint_minutes",
    "train.keep_last",
    "train.tensorboard",
    "train.device",
    # the weights a run started from: a resume takes its checkpoint's
    "train.init_from",
    "train.init_partial",
    # decoding only: eval and predict may override them too
    *(f"instances.{key}" for key in DECODING_KEYS),
}


def changed_settings(saved: dict[str, Any], config: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """``{"section.key": (saved value, new value)}`` for the settings of ``config`` that differ from those the
    checkpoint was trained with (the ``crf`` section and :data:`FREE_ON_RESUME` excepted). A key the checkpoint's
    config lacks (a setting added since it was written) counts as its default."""
    out = {}
    # the model section is :func:`restore`'s model check (against the recorded spec), which no flag overrides;
    # inference is compared because validation scores with it, and best.pt is chosen on those scores
    for section in ("data", "train", "instances", "inference"):
        old, new = saved.get(section) or {}, config.get(section) or {}
        for key, change in _section_changes(old, new, DEFAULTS.get(section, {})).items():
            if f"{section}.{key}" not in FREE_ON_RESUME:
                out[f"{section}.{key}"] = change
    return out


def _section_changes(old: dict[str, Any], new: dict[str, Any], defaults: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """``{key: (old value, new value)}`` where they differ, a missing key counting as its default (None if it
    has none), as building the model or the run from either would: a run written before a setting existed, or a
    config that spells out a default, is the same run. Lists and tuples of the same items are equal (YAML has
    no tuples)."""
    out = {}
    for key in sorted(set(old) | set(new)):
        before, after = old.get(key, defaults.get(key)), new.get(key, defaults.get(key))
        if _plain(before) != _plain(after):
            out[key] = (before, after)
    return out


def _plain(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def apply_optimizer_changes(
    changes: dict[str, tuple[Any, Any]],
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LambdaLR,
    train_cfg: dict[str, Any],
    layout: list[tuple[float, bool]],
) -> None:
    """Make a restored optimizer and schedule follow the new ``train`` settings (``--allow-changes``): the base
    learning rates (each group's ``layout`` learning-rate multiple: the head's), momentum and weight decay (the
    norm-and-bias group's its own); the schedule's shape (iters, warmup, poly power) already comes from the new
    config, only its base values are restored from the checkpoint."""
    lr, wd, norm_bias_wd = train_cfg["lr"], train_cfg["weight_decay"], train_cfg["norm_bias_weight_decay"]
    for group, (mult, norm_bias) in zip(optimizer.param_groups, layout, strict=True):
        group["initial_lr"] = lr * mult
        group["lr_mult"], group["norm_bias"] = mult, norm_bias
        if "momentum" in group:
            group["momentum"] = train_cfg["momentum"]
        group["weight_decay"] = norm_bias_wd if norm_bias else wd
    scheduler.base_lrs = [lr * mult for mult, _ in layout]
    step = scheduler.last_epoch
    for group, base, factor in zip(optimizer.param_groups, scheduler.base_lrs, scheduler.lr_lambdas, strict=True):
        group["lr"] = base * factor(step)
    scheduler._last_lr = [g["lr"] for g in optimizer.param_groups]
