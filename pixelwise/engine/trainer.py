"""The training loop: ``pixelwise train``. Data-parallel under ``torchrun``, mixed precision, gradient
accumulation, periodic validation and checkpoints, exact resume (:mod:`.resume`)."""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from ..data import DatasetInfo, SegmentationDataset, build_transforms, resolve_data_root
from ..data.transforms import AUGMENTATION_KEYS
from ..device import autocast, resolve_device
from ..errors import CheckpointError, ConfigError
from ..metrics import SUMMARY_KEYS
from ..models import build_model, input_channels
from ..models.weights import init_weights
from .builders import build_criterion, build_optimizer, build_scheduler, image_mode, model_spec, resolve_class_weights
from .distributed import mean_over_processes, setup_distributed
from .evaluator import evaluate
from .resume import TrainState, pack, restore, sampler_start
from .run_dir import RunFiles, tensorboard_val
from .sampler import EpochSampler

log = logging.getLogger(__name__)


def _datasets(
    config: dict[str, Any], info: DatasetInfo, root: Path, mode: str
) -> tuple[SegmentationDataset, SegmentationDataset | None]:
    data_cfg = config["data"]
    norm = {"mean": data_cfg["mean"], "std": data_cfg["std"]}
    train_tf = build_transforms(
        train=True, ignore_index=info.ignore_index, **norm, **{k: data_cfg[k] for k in AUGMENTATION_KEYS}
    )
    train_ds = SegmentationDataset(root, info.name, data_cfg["train_split"], transforms=train_tf, image_mode=mode)
    val_ds = None
    if data_cfg["val_split"]:
        val_tf = build_transforms(train=False, **norm)
        val_ds = SegmentationDataset(root, info.name, data_cfg["val_split"], transforms=val_tf, image_mode=mode)
    return train_ds, val_ds


def train(
    config: dict[str, Any],
    *,
    run_dir: str | os.PathLike,
    resume: bool = False,
    data_root: str | os.PathLike | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Train from a validated config (see :func:`pixelwise.config.load_config`).

    Writes ``run_dir/config.yaml``, ``metrics.jsonl`` (one JSON record per log/eval step),
    ``last.pt`` (with optimizer state, for ``resume=True``) and ``best.pt`` (best val mIoU).
    Under ``torchrun`` each process trains on its slice of every global batch (data parallel, with
    ``train.sync_bn`` optional), metrics are all-reduced, and only rank 0 writes.
    Returns ``{"best_miou", "best_iter", "last": <last val metrics>, "train_seconds", "run_dir"}``.
    """
    data_cfg, train_cfg = config["data"], config["train"]
    run_dir = Path(run_dir)
    if resume and not (run_dir / "last.pt").exists():
        raise CheckpointError(f"--resume: {run_dir / 'last.pt'} does not exist")
    if not resume and (run_dir / "last.pt").exists():
        raise ConfigError(f"{run_dir} already holds a run (last.pt): pass --resume to continue it, or a new --run-dir")
    ddp, device = setup_distributed(resolve_device(train_cfg["device"]))
    if train_cfg["deterministic"]:
        # Bit-exact on CPU. On CUDA some kernels have no deterministic version (2-D NLL loss, bilinear
        # upsampling backward): those warn instead of stopping the run; cuBLAS gets its deterministic workspace.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=device.type == "cuda")
        torch.backends.cudnn.benchmark = False
    files = RunFiles(run_dir, train_cfg["keep_last"], enabled=ddp.is_main)
    progress = progress and ddp.is_main

    root = resolve_data_root(data_root, data_cfg["root"])
    info = DatasetInfo.load(root, data_cfg["dataset"])
    spec = model_spec(config, info)
    train_ds, val_ds = _datasets(config, info, root, image_mode(input_channels(spec)))
    batch_size = data_cfg["batch_size"]
    if batch_size * ddp.world_size > len(train_ds):
        raise ConfigError(
            f"data.batch_size={batch_size} x {ddp.world_size} process(es) exceeds the {len(train_ds)} "
            f"images of split {data_cfg['train_split']!r}"
        )
    accumulate = train_cfg["accumulate"]
    if accumulate < 1:
        raise ConfigError(f"train.accumulate={accumulate}: must be >= 1")

    torch.manual_seed(train_cfg["seed"])
    amp = train_cfg["amp"]
    autocast(device, amp)  # validates the setting before any work
    memory_format = torch.channels_last if train_cfg["channels_last"] else torch.contiguous_format
    model = build_model(**spec).to(device, memory_format=memory_format)
    scaler = torch.amp.GradScaler(device.type, enabled=amp == "fp16")
    optimizer = build_optimizer(model, train_cfg)
    scheduler = build_scheduler(optimizer, train_cfg)
    class_weights = resolve_class_weights(train_cfg["class_weights"], train_ds, run_dir, progress=progress)
    loss_fn = build_criterion(train_cfg, info.ignore_index, class_weights).to(device)
    meta = {
        "model": spec,
        "classes": info.classes,
        "palette": info.palette,
        "ignore_index": info.ignore_index,
        "dataset": info.name,
        "mean": data_cfg["mean"],
        "std": data_cfg["std"],
    }
    state = TrainState()
    if resume:
        state, _ = restore(
            files.last, model=model, spec=spec, optimizer=optimizer, scheduler=scheduler, scaler=scaler, device=device
        )
    elif train_cfg["init_from"]:
        init_weights(model, train_cfg["init_from"], partial=train_cfg["init_partial"])
    files.open(config, state.iter if resume else None, tensorboard=train_cfg["tensorboard"])

    net: nn.Module = model
    if train_cfg["compile"]:
        net = torch.compile(net)  # the same parameters: checkpoints keep saving `model`
    if ddp.enabled:
        if train_cfg["sync_bn"]:
            if device.type != "cuda":
                raise ConfigError("train.sync_bn needs CUDA (PyTorch's SyncBatchNorm is GPU-only)")
            net = nn.SyncBatchNorm.convert_sync_batchnorm(net)
        net = nn.parallel.DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda" else None)
    sampler = EpochSampler(
        len(train_ds),
        batch_size,
        train_cfg["seed"],
        start_iter=sampler_start(state, accumulate),
        rank=ddp.rank,
        world_size=ddp.world_size,
    )
    loader = DataLoader(
        train_ds,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=data_cfg["num_workers"],
        pin_memory=device.type == "cuda",
    )
    total, log_interval = train_cfg["iters"], train_cfg["log_interval"]
    eval_interval = train_cfg["eval_interval"]
    ckpt_interval = train_cfg["checkpoint_interval"] or eval_interval
    last_metrics: dict[str, Any] | None = None
    window_loss, window_n, window_t = 0.0, 0, time.perf_counter()

    def step(batches) -> float:
        """One optimizer step over ``accumulate`` batches; returns the mean loss."""
        optimizer.zero_grad(set_to_none=True)
        loss_value = 0.0
        for micro in range(accumulate):  # gradient accumulation: one optimizer step per `accumulate` batches
            images, masks = next(batches)
            images = images.to(device, non_blocking=True, memory_format=memory_format)
            masks = masks.to(device, non_blocking=True)
            with autocast(device, amp):
                out = net(images)
            if isinstance(out, dict):  # models with an auxiliary head, in training mode
                loss = loss_fn(out["out"], masks) + train_cfg["aux_weight"] * loss_fn(out["aux"], masks)
            else:
                loss = loss_fn(out, masks)
            # DDP: synchronise gradients only on the last micro-batch
            sync = not ddp.enabled or micro == accumulate - 1
            with contextlib.nullcontext() if sync else net.no_sync():
                scaler.scale(loss / accumulate).backward()
            loss_value += float(loss.detach()) / accumulate
        if train_cfg["grad_clip"]:
            scaler.unscale_(optimizer)
            nn.utils.clip_grad_norm_(model.parameters(), train_cfg["grad_clip"])
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        return loss_value

    net.train()
    bar = tqdm(total=total, initial=state.iter, desc="train", unit="it", disable=not progress, dynamic_ncols=True)
    batches = iter(loader)
    try:
        while state.iter < total:
            step_start = time.perf_counter()
            loss_value = step(batches)
            state.iter += 1
            it = state.iter
            if not math.isfinite(loss_value):
                raise FloatingPointError(f"loss became {loss_value} at iteration {it}; lower train.lr")
            window_loss, window_n = window_loss + loss_value, window_n + 1
            state.train_seconds += time.perf_counter() - step_start
            bar.update(1)
            lr = scheduler.get_last_lr()[0]
            bar.set_postfix(loss=f"{loss_value:.4f}", lr=f"{lr:.2e}")
            if it % log_interval == 0 or it == total:
                mean_loss = mean_over_processes(window_loss / window_n, ddp, device)
                images_seen = window_n * accumulate * batch_size * ddp.world_size
                speed = images_seen / max(time.perf_counter() - window_t, 1e-9)
                files.record(
                    {
                        "type": "train",
                        "iter": it,
                        "loss": mean_loss,
                        "lr": lr,
                        "images_per_s": speed,
                        "train_seconds": state.train_seconds,
                    }
                )
                files.scalars({"train/loss": mean_loss, "train/lr": lr}, it)
                window_loss, window_n, window_t = 0.0, 0, time.perf_counter()
            due = it % eval_interval == 0 or it == total
            improved = False
            if val_ds is not None and due:
                last_metrics = evaluate(
                    model,
                    val_ds,
                    device=device,
                    progress=progress,
                    amp=amp,
                    num_workers=data_cfg["num_workers"],
                    shard=(ddp.rank, ddp.world_size),
                )
                net.train()
                files.record(
                    {
                        "type": "val",
                        "iter": it,
                        **{k: last_metrics[k] for k in SUMMARY_KEYS},
                        "iou": last_metrics["iou"],
                        "confusion_matrix": last_metrics["confusion_matrix"],
                    }
                )
                if files.tensorboard is not None:
                    tensorboard_val(files.tensorboard, model, val_ds, last_metrics, meta, device, it)
                log.info(
                    "iter %d: val mIoU %.4f  pixel acc %.4f", it, last_metrics["miou"], last_metrics["pixel_accuracy"]
                )
                improved = last_metrics["miou"] > state.best_miou
                if improved:
                    state.best_miou, state.best_iter = last_metrics["miou"], it
            elif val_ds is None and due:
                improved, state.best_iter = True, it  # no validation: best = latest
            if improved or it % ckpt_interval == 0 or it == total:
                checkpoint = pack(
                    model=model,
                    meta=meta,
                    config=config,
                    state=state,
                    optimizer=optimizer,
                    scheduler=scheduler,
                    scaler=scaler,
                )
                files.save(checkpoint, it, best=improved)
            if val_ds is not None and due:
                window_t = time.perf_counter()  # evaluation time is not training speed
    finally:
        bar.close()
        files.close()
    return {
        "best_miou": state.best_miou,
        "best_iter": state.best_iter,
        "last": last_metrics,
        "train_seconds": state.train_seconds,
        "run_dir": str(run_dir),
    }
