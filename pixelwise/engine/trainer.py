"""The training loop: ``pixelwise train``. Data-parallel under ``torchrun``, mixed precision, gradient
accumulation, periodic validation and checkpoints, exact resume (:mod:`.resume`)."""

from __future__ import annotations

import contextlib
import logging
import math
import os
import signal
import time
from pathlib import Path
from typing import Any, NoReturn

import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from ..config import load_config, validate_config
from ..data import (
    DatasetInfo,
    SegmentationDataset,
    build_transforms,
    dataset_splits,
    require_valid,
    resolve_data_root,
)
from ..data.transforms import AUGMENTATION_KEYS
from ..device import autocast, resolve_device, training_amp
from ..errors import CheckpointError, ConfigError, DataError, TrainingDiverged
from ..inference import InstanceSettings
from ..metrics import SUMMARY_KEYS
from ..models import build_model, input_channels, list_models, model_defaults
from ..models import model_arguments as registered_arguments
from ..models.registry import input_size_problem, smallest_input, training_batch_problem, without_pretrained
from ..models.weights import init_weights
from .builders import build_criterion, build_optimizer, build_scheduler, image_mode, model_spec, resolve_class_weights
from .distributed import agree_over_processes, broadcast_buffers, seed_step, setup_distributed, wait_for_all
from .ema import WeightEMA
from .evaluator import evaluate
from .instance_methods import TargetBuilder, model_arguments
from .instance_methods import build_loss as build_instance_loss
from .predictor import image_size_problem, run_inference
from .resume import TrainState, pack, restore, rng_state, sampler_start
from .run_dir import RunFiles, tensorboard_val
from .sampler import EpochSampler
from .stop_signals import EvaluationStopped, TrainingInterrupted, stop_on_signals, workers_end_quietly_on_sigterm

log = logging.getLogger(__name__)
INSTANCE_LOG_KEYS = ("ap", "mean_ap", "pq", "sq", "rq", "num_true", "num_pred")


def train_dataset(
    config: dict[str, Any], info: DatasetInfo, root: Path, mode: str, method: InstanceSettings
) -> SegmentationDataset:
    """The training split with the config's augmentation and the instance method's targets."""
    data_cfg = config["data"]
    train_tf = build_transforms(
        train=True,
        mean=data_cfg["mean"],
        std=data_cfg["std"],
        ignore_index=info.ignore_index,
        **{k: data_cfg[k] for k in AUGMENTATION_KEYS},
    )
    return SegmentationDataset(
        root,
        info.name,
        data_cfg["train_split"],
        transforms=train_tf,
        image_mode=mode,
        instances=method.trains_on_instances,
        instances_from_class=method.from_class_index(info.classes),
        target=TargetBuilder(method, info.num_classes, info.ignore_index) if method.trains_on_instances else None,
    )


def step_loss(loss_fn: nn.Module, out: Any, targets: Any, aux_weight: float) -> torch.Tensor:
    """The training loss of one forward pass: with an auxiliary head (training mode), its loss weighted in."""
    if isinstance(out, dict) and "aux" in out:
        return loss_fn(out["out"], targets) + aux_weight * loss_fn(out["aux"], targets)
    return loss_fn(out, targets)


def _datasets(
    config: dict[str, Any], info: DatasetInfo, root: Path, mode: str, method: InstanceSettings
) -> tuple[SegmentationDataset, SegmentationDataset | None]:
    """The training split (with the instance method's targets) and the validation split (with its instance
    maps when the run is evaluated on instances)."""
    data_cfg = config["data"]
    from_class = method.from_class_index(info.classes)
    norm = {"mean": data_cfg["mean"], "std": data_cfg["std"], "image_shift": data_cfg["image_shift"]}
    train_ds = train_dataset(config, info, root, mode, method)
    val_ds = None
    if data_cfg["val_split"]:
        val_tf = build_transforms(train=False, **norm)
        val_ds = SegmentationDataset(
            root,
            info.name,
            data_cfg["val_split"],
            transforms=val_tf,
            image_mode=mode,
            instances=method.enabled,
            instances_from_class=from_class,
        )
    return train_ds, val_ds


def _check_image_sizes(
    config: dict[str, Any], spec: dict[str, Any], train_ds: SegmentationDataset, val_ds: SegmentationDataset | None
) -> None:
    """Images the network would see smaller than its total stride, as eval says it (a DataError of one line), before
    the first step: the training split's when trained on whole (a crop pads them up), at the smallest of
    data.scale_range, and the validation split's at the run's inference scales. From the sizes the data sets read
    from the headers; each size once."""
    data_cfg = config["data"]
    checks = []  # (data set, smallest scale, where it comes from, what to do about it)
    if data_cfg["crop_size"] is None:
        low = min(data_cfg["scale_range"]) if data_cfg["scale_range"] else 1.0
        checks.append((train_ds, low, "data.scale_range low", "raise it to {least} or more, or set data.crop_size"))
    if val_ds is not None:
        protocol = run_inference(config["inference"])  # the scales validation runs at, as eval would
        checks.append((val_ds, min(protocol.scales) if protocol is not None else 1.0, "inference scale", None))
    if not checks:
        return
    side = smallest_input(spec)  # on the meta device: shapes only
    if side > 512:  # no square up to 512 runs: one size, not a minimum (data.crop_size's check says it)
        return
    for ds, low, scale, fix in checks:
        if min(min(w, h) * min(low, 1.0) for w, h in ds.image_sizes) >= side:
            continue
        checked = set()
        for (image, _), (w, h) in zip(ds.samples, ds.image_sizes, strict=True):
            if (w, h) not in checked:
                checked.add((w, h))
                problem = image_size_problem(h, w, str(image), spec["name"], side, low, scale, fix)
                if problem:
                    raise DataError(problem)


def _summary(
    run_dir: Path,
    device: torch.device,
    info: DatasetInfo,
    train_ds: SegmentationDataset,
    val_ds: SegmentationDataset | None,
    spec: dict[str, Any],
    model: nn.Module,
    state: TrainState,
    total: int,
    amp: str,
    world_size: int,
    budget: float = 0.0,
) -> None:
    """What the run is about to do, before its first step (``budget``: the time budget in seconds, 0 for none)."""
    params = sum(p.numel() for p in model.parameters())
    threads = f"{torch.get_num_threads()} threads" if device.type == "cpu" else torch.cuda.get_device_name(device)
    splits = f"{len(train_ds)} {train_ds.split}" + (f", {len(val_ds)} {val_ds.split}" if val_ds is not None else "")
    if val_ds is not None and val_ds.split == train_ds.split:
        splits = f"{len(train_ds)} {train_ds.split} (validated on the same split)"
    start = f"iterations {state.iter + 1}-{total}" if state.iter else f"{total} iterations"
    if budget > 0:  # the clock, not the iterations, ends such a run
        spent = f", {state.train_seconds / 60:.1f} spent" if state.train_seconds else ""
        start = f"train.max_minutes {budget / 60:g} (the schedule follows the clock{spent}), at most {total} iterations"
    log.info("run directory %s", run_dir)
    log.info(
        "device %s (%s), %d process(es), precision %s", device, threads, world_size, "fp32" if amp == "none" else amp
    )
    log.info("data %s under %s: %s images, %d classes", info.name, train_ds.root, splits, info.num_classes)
    log.info("model %s: %.2f M parameters; %s", spec["name"], params / 1e6, start)


def train(
    config: dict[str, Any] | str | os.PathLike,
    *,
    run_dir: str | os.PathLike,
    resume: bool = False,
    allow_changes: bool = False,
    data_root: str | os.PathLike | None = None,
    check_data: bool = True,
    progress: bool = True,
) -> dict[str, Any]:
    """Train from a config: a mapping (validated here: :func:`pixelwise.config.validate_config`, which a config
    from :func:`pixelwise.config.load_config` passes as it is) or a YAML file's path (read by ``load_config``).

    Writes ``run_dir/config.yaml``, ``metrics.jsonl`` (one JSON record per log/eval step),
    ``last.pt`` (with optimizer state, for ``resume=True``) and ``best.pt`` (best val mIoU).
    Under ``torchrun`` each process trains on its slice of every global batch (data parallel, with
    ``train.sync_bn`` optional), metrics are all-reduced, and only rank 0 writes.
    ``resume=True`` continues from ``last.pt`` exactly; settings that differ from the run's are refused unless
    ``allow_changes`` (:func:`pixelwise.engine.resume.restore`). The run directory is locked while training
    (``.lock``). ``check_data`` first reads every file of the train and val splits
    (:func:`pixelwise.data.require_valid`) and stops on any bad one. SIGINT and SIGTERM end the run after
    the current step with ``last.pt`` written (raising :class:`TrainingInterrupted`), and
    ``train.checkpoint_minutes`` bounds the work a ``kill -9`` loses.
    Returns ``{"best_miou", "best_metric", "best_iter", "last": <last val metrics>, "train_seconds", "iterations",
    "run_dir", "classes"}``
    (``best_miou`` holds the best value of ``best_metric``: ``"miou"``, or ``"mean_ap"`` for instance methods).
    """
    # a path, an empty mapping or an unknown key gave TypeError/KeyError tracebacks from deep inside the run
    config = load_config(config) if isinstance(config, (str, os.PathLike)) else validate_config(config)
    train_cfg = config["train"]
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"--run-dir {run_dir} is a file: give the folder the run's checkpoints and log go to")
    if resume and not (run_dir / "last.pt").exists():
        raise CheckpointError(f"--resume: {run_dir / 'last.pt'} does not exist")
    if not resume and (run_dir / "last.pt").exists():
        raise ConfigError(f"{run_dir} already holds a run (last.pt): pass --resume to continue it, or a new --run-dir")
    if not resume and (run_dir / "best.pt").exists():  # a run killed while writing its first last.pt
        raise ConfigError(
            f"{run_dir} holds best.pt of a run that wrote no last.pt (stopped during its first checkpoint): move "
            "best.pt away to train there again, or give a new --run-dir"
        )
    ddp, device = setup_distributed(resolve_device(train_cfg["device"]))
    if train_cfg["deterministic"]:
        # Bit-exact on CPU. On CUDA some kernels have no deterministic version (2-D NLL loss, bilinear
        # upsampling backward): those warn instead of stopping the run; cuBLAS gets its deterministic workspace.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=device.type == "cuda")
        torch.backends.cudnn.benchmark = False
    files = RunFiles(run_dir, train_cfg["keep_last"], enabled=ddp.is_main)
    files.claim()
    try:
        return _train(
            config, files, ddp, device, resume, allow_changes, data_root, check_data, progress and ddp.is_main
        )
    finally:
        files.close()


def _train(
    config: dict[str, Any],
    files: RunFiles,
    ddp: Any,
    device: torch.device,
    resume: bool,
    allow_changes: bool,
    data_root: str | os.PathLike | None,
    check_data: bool,
    progress: bool,
) -> dict[str, Any]:
    data_cfg, train_cfg = config["data"], config["train"]
    run_dir = files.dir
    root = resolve_data_root(data_root, data_cfg["root"])
    info = DatasetInfo.load(root, data_cfg["dataset"])
    if info.num_classes < 2:
        # a softmax over one class is 1 everywhere: the loss is 0 and every score perfect, whatever is learnt
        raise DataError(
            f"{root / info.name / 'classes.json'} lists one class ({info.classes[0]!r}): a segmentation model needs "
            f'two or more; add the background, e.g. "classes": ["background", "{info.classes[0]}"]'
        )
    method = InstanceSettings.from_dict(config["instances"])
    spec = model_spec(config, info)
    added = model_arguments(method, info)
    if "instance_head" in added and "instance_head" not in registered_arguments(spec["name"]):
        with_head = [m for m in list_models() if "instance_head" in registered_arguments(m)]
        raise ConfigError(
            f"instances.method={method.method}: model {spec['name']} has no instance branch (instance_head); use one "
            f"that has: {', '.join(with_head)}"
        )
    spec = {**spec, **added}
    crop = data_cfg["crop_size"]
    if crop is not None:
        h, w = (crop, crop) if isinstance(crop, int) else crop
        problem = input_size_problem(spec, h, w)
        if problem:
            raise ConfigError(f"data.crop_size={crop}: {problem}; use a larger crop")
    present = dataset_splits(root, info.name) if (root / info.name / "images").is_dir() else []
    for key in ("train_split", "val_split"):
        split = data_cfg[key]
        if split and split not in present:
            also = ", or null to train without validation" if key == "val_split" else ""
            raise ConfigError(
                f"data.{key}={split!r}: data set {info.name!r} has no split {split!r} (it has "
                f"{', '.join(present) or 'none'}): set data.{key} to one of them{also}"
            )
    if check_data:
        splits = [s for s in (data_cfg["train_split"], data_cfg["val_split"]) if s]
        require_valid(root, info.name, splits, progress=progress)
    # eval/predict find the data where training found it (unless given another --data-root)
    config = {**config, "data": {**data_cfg, "root": str(root.resolve())}}
    train_ds, val_ds = _datasets(config, info, root, image_mode(input_channels(spec)), method)
    batch_size = data_cfg["batch_size"]
    if batch_size * ddp.world_size > len(train_ds):
        raise ConfigError(
            f"data.batch_size={batch_size} x {ddp.world_size} process(es) exceeds the {len(train_ds)} "
            f"images of split {data_cfg['train_split']!r}"
        )
    if data_cfg["rot90"] and crop is None and batch_size > 1:
        for (image, _), (w, h) in zip(train_ds.samples, train_ds.image_sizes, strict=True):
            if w != h:
                raise ConfigError(
                    f"data.rot90 with data.crop_size null: {image} is {w}x{h}, and turned it cannot share a batch "
                    "with unturned images; set data.crop_size (or data.batch_size: 1)"
                )
    if crop is None and batch_size > 1 and len(set(train_ds.image_sizes)) > 1:  # a collate traceback at a step
        sizes = sorted(set(train_ds.image_sizes))
        raise ConfigError(
            f"data.crop_size null with data.batch_size={batch_size}: the images of split {data_cfg['train_split']!r} "
            f"differ in size ({sizes[0][0]}x{sizes[0][1]}, {sizes[1][0]}x{sizes[1][1]}, ...) and cannot share a "
            "batch whole; set data.crop_size (or data.batch_size: 1)"
        )
    if val_ds is not None and data_cfg["val_batch_size"] > 1 and len(set(val_ds.image_sizes)) > 1:
        sizes = sorted(set(val_ds.image_sizes))
        raise ConfigError(
            f"data.val_batch_size={data_cfg['val_batch_size']}: the images of split {data_cfg['val_split']!r} differ "
            f"in size ({sizes[0][0]}x{sizes[0][1]}, {sizes[1][0]}x{sizes[1][1]}, ...) and are validated whole, so "
            "they cannot share a batch; set data.val_batch_size: 1"
        )
    _check_image_sizes(config, spec, train_ds, val_ds)
    # SyncBatchNorm under torchrun counts the values of every process
    if crop is not None and batch_size == 1 and not (train_cfg["sync_bn"] and ddp.world_size > 1):
        problem = training_batch_problem(spec, batch_size, h, w)
        if problem:
            raise ConfigError(f"data.batch_size=1 with data.crop_size={crop}: {problem}; use a batch size of 2 or more")
    accumulate = train_cfg["accumulate"]

    torch.manual_seed(train_cfg["seed"])
    amp = training_amp(train_cfg["amp"], device)  # "auto": bf16 only where the device computes it natively
    autocast(device, amp)  # validates the setting before any work
    memory_format = torch.channels_last if train_cfg["channels_last"] else torch.contiguous_format
    # a resumed run's weights come from its checkpoint: its pretrained file (or the network) may be gone by now
    model = build_model(**(without_pretrained(spec) if resume else spec)).to(device, memory_format=memory_format)
    scaler = torch.amp.GradScaler(device.type, enabled=amp == "fp16")
    optimizer = build_optimizer(model, train_cfg)
    state = TrainState()
    # the time budget's clock: the training seconds so far (a resume fills `state` in place)
    scheduler = build_scheduler(optimizer, train_cfg, elapsed=lambda: state.train_seconds)
    class_weights = resolve_class_weights(
        train_cfg["class_weights"], train_ds, run_dir, progress=progress, write=ddp.is_main
    )
    protocol = run_inference(config["inference"], class_weights=class_weights)  # validation as eval will run it
    loss_fn = build_instance_loss(
        method,
        build_criterion(train_cfg, info.ignore_index, class_weights, spec["num_classes"]),  # the boundary class too
    ).to(device)
    meta = {
        "model": spec,
        "model_defaults": model_defaults(spec["name"]),  # what the spec's missing keys were built with
        "classes": info.classes,
        "palette": info.palette,
        "ignore_index": info.ignore_index,
        "dataset": info.name,
        "mean": data_cfg["mean"],
        "std": data_cfg["std"],
        "image_range": list(info.image_range) if info.image_range else None,
        "image_shift": data_cfg["image_shift"],  # inference moves every image by it, as training did
        "instances": method.to_dict(),
        "thing_classes": info.thing_classes,
        "class_weights": class_weights,  # what inference.class_weight_correction divides by
    }
    ema = WeightEMA(model, train_cfg["ema_decay"]) if train_cfg["ema_decay"] else None
    if resume:
        state = restore(
            files.last,
            model=model,
            spec=spec,
            config=config,
            optimizer=optimizer,
            scheduler=scheduler,
            scaler=scaler,
            device=device,
            allow_changes=allow_changes,
            ema=ema,
            state=state,
            world_size=ddp.world_size,
        )
        if state.iter > train_cfg["iters"]:  # before config.yaml takes the new value: it would contradict last.pt
            raise ConfigError(
                f"--resume: train.iters={train_cfg['iters']} is below the iteration {files.last} is at "
                f"({state.iter}); give train.iters above it to train on, or leave the run as it is"
            )
    elif train_cfg["init_from"]:
        init_weights(model, train_cfg["init_from"], partial=train_cfg["init_partial"])
    scored = ema.module if ema is not None else model  # what validation scores and checkpoints hold as "model"
    if ddp.enabled and train_cfg["sync_bn"] and device.type != "cuda":  # before the run folder is written
        raise ConfigError("train.sync_bn needs CUDA (PyTorch's SyncBatchNorm is GPU-only)")
    files.open(config, state.iter if resume else None, tensorboard=train_cfg["tensorboard"])

    net: nn.Module = model
    if train_cfg["compile"]:
        net = torch.compile(net)  # the same parameters: checkpoints keep saving `model`
    if ddp.enabled:
        if train_cfg["sync_bn"]:
            net = nn.SyncBatchNorm.convert_sync_batchnorm(net)
        net = nn.parallel.DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda" else None)
    global_batch = batch_size * ddp.world_size
    start = sampler_start(state, global_batch, len(train_ds))
    # from here on the samples are counted in this run's batching
    state.samples, state.sample_batch = start * global_batch, global_batch
    sampler = EpochSampler(
        len(train_ds), batch_size, train_cfg["seed"], start_iter=start, rank=ddp.rank, world_size=ddp.world_size
    )
    loader = DataLoader(
        train_ds,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=data_cfg["num_workers"],
        pin_memory=device.type == "cuda",
        worker_init_fn=workers_end_quietly_on_sigterm,
    )
    total, log_interval = train_cfg["iters"], train_cfg["log_interval"]
    budget = 60.0 * train_cfg["max_minutes"]

    def out_of_time() -> bool:
        """The time budget is spent (``state.train_seconds`` is the same on every process: see below)."""
        return budget > 0 and state.train_seconds >= budget

    if resume and not state.eval_due and (state.iter == total or out_of_time()):
        key = "train.iters" if state.iter == total else "train.max_minutes"
        limit = f"train.iters={total}" if state.iter == total else "its train.max_minutes"
        log.warning(
            "--resume: %s has reached %s already: nothing to train (raise %s with --allow-changes to go on)",
            files.last,
            limit,
            key,
        )

    eval_interval = train_cfg["eval_interval"]
    ckpt_interval = train_cfg["checkpoint_interval"] or eval_interval
    last_metrics: dict[str, Any] | None = None
    window_n, window_t = 0, time.perf_counter()  # steps and time since the last log line in this process (speed)
    waited = [0.0]  # seconds spent waiting for batches in this logging window (data loading not hidden by workers)

    def step(batches) -> float:
        """One optimizer step over ``accumulate`` batches; returns the mean loss."""
        optimizer.zero_grad(set_to_none=True)
        seed_step(train_cfg["seed"], state.iter, ddp)  # each process its own dropout masks
        loss_value = 0.0
        # a step cut short after its first micro-batch (a signal that stopped the loader's workers) is redone on
        # resume from the step's start: the batch-norm statistics its forward passes moved go back with it
        buffers = [b.detach().clone() for b in model.buffers()] if accumulate > 1 else None
        for micro in range(accumulate):  # gradient accumulation: one optimizer step per `accumulate` batches
            wait_start = time.perf_counter()
            try:
                images, targets = next(batches)
            except BaseException:
                if buffers is not None and micro > 0:
                    with torch.no_grad():
                        for b, kept in zip(model.buffers(), buffers, strict=True):
                            b.copy_(kept)
                raise
            waited[0] += time.perf_counter() - wait_start
            images = images.to(device, non_blocking=True, memory_format=memory_format)
            if isinstance(targets, dict):  # Panoptic-DeepLab: the mask, centre and offset targets and weights
                targets = {k: v.to(device, non_blocking=True) for k, v in targets.items()}
            else:
                targets = targets.to(device, non_blocking=True)
            # DDP: synchronise gradients only on the last micro-batch (its forward decides whether the backward
            # all-reduces, so the forward too runs under no_sync)
            sync = not ddp.enabled or micro == accumulate - 1
            with contextlib.nullcontext() if sync else net.no_sync():
                with autocast(device, amp):
                    out = net(images)
                loss = step_loss(loss_fn, out, targets, train_cfg["aux_weight"])
                scaler.scale(loss / accumulate).backward()
            loss_value += float(loss.detach()) / accumulate
        if train_cfg["grad_clip"]:
            scaler.unscale_(optimizer)
            nn.utils.clip_grad_norm_(model.parameters(), train_cfg["grad_clip"])
        scaler.step(optimizer)
        scaler.update()
        if ema is not None:
            ema.update(model)
        return loss_value

    def save(best: bool, rng: dict[str, torch.Tensor] | None = None) -> None:
        checkpoint = pack(
            model=model,
            meta=meta,
            config=config,
            state=state,
            optimizer=optimizer,
            scheduler=scheduler,
            scaler=scaler,
            rng=rng or rng_state(device),
            ema=ema,
        )
        files.save(checkpoint, state.iter, best=best)

    def stop(
        signum: int, it: int, rng: dict[str, torch.Tensor] | None, eval_due: bool = False, agreed: bool = False
    ) -> NoReturn:
        """Save ``last.pt`` and raise TrainingInterrupted. A finished step needs no RNG state to redo it (``rng``
        None); an unfinished one is redone from ``rng``. A finished step due for validation is validated first
        thing on --resume. ``agreed``: every process stops here (they agreed on the signal), and none leaves
        before rank 0 has written last.pt (torchrun ends the job, rank 0 with it, when the first exits); not where
        this process stops alone (a step cut short), where the others may be inside other collectives."""
        state.eval_due = eval_due
        save(best=False, rng=rng)
        if agreed:
            wait_for_all(ddp)
        name = signal.Signals(int(signum)).name
        raise TrainingInterrupted(
            f"stopped by {name} at iteration {it}: {files.last} written; continue with --resume --run-dir {run_dir}",
            int(signum),
        )

    if ddp.is_main:
        _summary(run_dir, device, info, train_ds, val_ds, spec, model, state, total, amp, ddp.world_size, budget)
        warmup = train_cfg["warmup_iters"]
        if warmup >= total:
            log.warning(
                "train.warmup_iters=%d is not below train.iters=%d: the run ends inside its warmup", warmup, total
            )
    net.train()
    if budget > 0:  # the budget ends the run: the bar counts its seconds (the iterations go in the postfix)
        bar = tqdm(
            total=round(budget),
            initial=min(round(state.train_seconds), round(budget)),
            desc="train",
            unit="s",
            bar_format="{l_bar}{bar}| {n:.0f}/{total_fmt} s of training [{elapsed}<{remaining}{postfix}]",
            disable=not progress,
            dynamic_ncols=True,
        )
    else:
        bar = tqdm(total=total, initial=state.iter, desc="train", unit="it", disable=not progress, dynamic_ncols=True)
    # the iterator draws its base seed from the global RNG; the run being continued made that draw at its first
    # iteration, before the RNG state it saved, so on resume dropout must continue from the saved state itself
    with torch.random.fork_rng(devices=[], enabled=resume):
        batches = iter(loader)
    minutes = train_cfg["checkpoint_minutes"]

    def validate(it: int, caught: list[int]) -> bool:
        """Score the val split at iteration ``it`` and log it (without a val split the latest counts as the
        best); True when ``best.pt`` should become this model. A signal ``caught`` meanwhile stops it
        (:class:`EvaluationStopped`)."""
        nonlocal last_metrics
        if val_ds is None:
            state.best_iter = it
            return True
        broadcast_buffers(scored, ddp)  # every process scores the model rank 0 saves
        # the validation loader draws its seed from the global RNG: fork it, so that how often a run validates
        # (train.eval_interval, free to change on resume) does not change its dropout masks
        with torch.random.fork_rng(devices=[]):
            last_metrics = evaluate(
                scored,
                val_ds,
                device=device,
                progress=progress,
                amp=amp,
                inference=protocol,
                batch_size=data_cfg["val_batch_size"],
                num_workers=data_cfg["num_workers"],
                instance_method=method,
                shard=(ddp.rank, ddp.world_size),
                # one process: a signal ends the validation at its next batch. Several: each would stop on its
                # own and leave the others in the counts' all-reduce; they agree on it after the next step instead
                stop=(lambda: bool(caught)) if ddp.world_size == 1 else None,
            )
        net.train()
        counted = last_metrics.get("instances") or {}
        challenge = last_metrics.get("challenge_pixel_error")  # two-class data sets
        files.record(
            {
                "type": "val",
                "iter": it,
                **{k: last_metrics[k] for k in SUMMARY_KEYS},
                **({"challenge_pixel_error": challenge["pixel_error"]} if challenge else {}),
                "iou": last_metrics["iou"],
                "confusion_matrix": last_metrics["confusion_matrix"],
                **({"instances": {k: counted[k] for k in INSTANCE_LOG_KEYS}} if counted else {}),
            }
        )
        if files.tensorboard is not None:
            with torch.random.fork_rng(devices=[]):  # as above: its loader draws too
                tensorboard_val(files.tensorboard, scored, val_ds, last_metrics, meta, device, it)
        log.info("iter %d: val mIoU %.4f  pixel acc %.4f", it, last_metrics["miou"], last_metrics["pixel_accuracy"])
        if challenge:
            log.info(
                "iter %d: val pixel error %.4f; 1 - best F-score (the ISBI challenge's measure) %.4f",
                it,
                1 - last_metrics["pixel_accuracy"],
                challenge["pixel_error"],
            )
        # best.pt: the best val mIoU, or for an instance method the best mean matching AP (tau 0.5..0.9)
        score = counted["mean_ap"] if method.enabled else last_metrics["miou"]
        if method.enabled:
            log.info("iter %d: val AP@0.5 %.4f  mean AP %.4f", it, counted["ap"]["0.50"], score)
        if score > state.best_miou:
            state.best_miou, state.best_iter = score, it
            return True
        return False

    with stop_on_signals() as caught:
        if state.eval_due:  # the run being continued was stopped right after a step due for validation
            try:
                improved = validate(state.iter, caught)
            except EvaluationStopped:
                stop(caught[0], state.iter, None, eval_due=True)
            state.eval_due = False
            save(best=improved)
            window_t = time.perf_counter()
        last_save = time.monotonic()
        while state.iter < total and not out_of_time():
            step_start = time.perf_counter()
            rng = rng_state(device)
            try:
                loss_value = step(batches)
            except Exception:
                if not caught:
                    raise
                loss_value = None  # a signal also stopped the loader's workers mid-step: nothing was stepped
            if loss_value is not None:  # a step taken counts, and so does its time, signal or not
                state.iter += 1
                state.samples += accumulate * batch_size * ddp.world_size
                state.train_seconds += time.perf_counter() - step_start
            # What every process must act on alike, agreed in one collective: the clock (a time budget sets the
            # learning rate and the last step from it; per-process clocks would step the replicas apart), a signal
            # caught by any process, a loss that is no longer finite.
            nonfinite = loss_value is not None and not math.isfinite(loss_value)
            if loss_value is None:
                # the step itself was cut short here: another process may be inside the step's own collectives
                # (DDP's gradient all-reduce), which a collective of ours would pair with; stop as before agreeing
                signum, bad = caught[0], False
            else:
                (seconds, signum, bad), (agreed_loss,) = agree_over_processes(
                    [state.train_seconds, caught[0] if caught else 0, nonfinite], [loss_value], ddp, device
                )
                state.train_seconds = seconds
            it = state.iter
            last = it == total or out_of_time()
            if bad:
                value = loss_value if nonfinite else "non-finite on another process"
                raise TrainingDiverged(f"loss became {value} at iteration {it}; lower train.lr")
            if loss_value is None:  # the step was cut short by a signal: saved to be redone from its RNG state
                stop(signum, it, rng)
            lr = scheduler.get_last_lr()[0]  # the rate this step took
            # the next step's rate: after the step's seconds are counted (and agreed), so that a time-driven
            # schedule is at its end exactly when the budget is
            scheduler.step()
            # the loss of the steps since the last log line (each step's averaged over the processes, so the same in
            # every one): kept in the checkpoint, so that a resumed run logs the mean an uninterrupted one would
            state.log_loss_sum, state.log_steps, window_n = (
                state.log_loss_sum + agreed_loss,
                state.log_steps + 1,
                window_n + 1,
            )
            bar.update(min(state.train_seconds, budget) - bar.n if budget > 0 else 1)
            bar.set_postfix(**({"it": it} if budget > 0 else {}), loss=f"{loss_value:.4f}", lr=f"{lr:.2e}")
            if it % log_interval == 0 or last:
                mean_loss = state.log_loss_sum / state.log_steps
                images_seen = window_n * accumulate * batch_size * ddp.world_size
                window_seconds = max(time.perf_counter() - window_t, 1e-9)
                speed = images_seen / window_seconds
                files.record(
                    {
                        "type": "train",
                        "iter": it,
                        "loss": mean_loss,
                        "lr": lr,
                        "images_per_s": speed,
                        "data_wait_share": min(1.0, waited[0] / window_seconds),
                        "train_seconds": state.train_seconds,
                    }
                )
                files.scalars({"train/loss": mean_loss, "train/lr": lr}, it)
                waited[0] = 0.0
                state.log_loss_sum, state.log_steps, window_n, window_t = 0.0, 0, 0, time.perf_counter()
            if signum:  # after the step's log line (every process agreed on the signal: the same collectives)
                stop(signum, it, None, eval_due=it % eval_interval == 0 or last, agreed=True)
            due = it % eval_interval == 0 or last
            try:
                improved = due and validate(it, caught)
            except EvaluationStopped:  # a signal during the validation: that step's validation comes first on resume
                stop(caught[0], it, None, eval_due=True)
            timed = minutes > 0 and time.monotonic() - last_save >= 60 * minutes
            if improved or it % ckpt_interval == 0 or last or timed:
                save(best=improved)
                last_save = time.monotonic()
            if val_ds is not None and due:
                # evaluation time is not training speed: the window restarts (its steps too, or the next speed
                # would count the steps before the validation over the time after it)
                window_t, window_n = time.perf_counter(), 0
                waited[0] = 0.0
    bar.close()
    if ddp.is_main and budget > 0 and state.iter >= total and state.train_seconds < 0.9 * budget:
        log.warning(
            "train.iters=%d ended the run with %.0f s of train.max_minutes=%g left: the learning rate follows the "
            "clock, so it ended at %.2e, barely decayed; for a run by iterations set train.max_minutes=0",
            total, budget - state.train_seconds, budget / 60, scheduler.get_last_lr()[0],
        )  # fmt: skip
    return {
        "best_miou": state.best_miou,
        "best_metric": "mean_ap" if method.enabled else "miou",
        "best_iter": state.best_iter,
        "last": last_metrics,
        "train_seconds": state.train_seconds,
        "iterations": state.iter,
        "run_dir": str(run_dir),
        "classes": list(info.classes),
    }
