"""Training, evaluation and prediction loops (used by the CLI and the Python API)."""

from __future__ import annotations

import contextlib
import glob
import json
import math
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Sampler, Subset
from tqdm.auto import tqdm

from .boundary import BoundaryF1
from .checkpoint import atomic_write, load_checkpoint, load_weights, model_from_checkpoint, save_checkpoint
from .config import dump_config
from .data import DatasetInfo, SegmentationDataset, build_transforms, resolve_data_root
from .data.dataset import IMAGE_EXTENSIONS, read_image
from .errors import CheckpointError, ConfigError, DataError
from .inference import InferenceSettings, model_logits, optimize_for_inference, predict_probs
from .instances import ISBIScores, label_instances
from .losses import build_loss, class_frequency_weights, list_losses, loss_arguments
from .metrics import ConfusionMatrix
from .models import build_model, model_arguments
from .models.convert import is_torchvision_deeplabv3, map_torchvision_deeplabv3
from .refine import CRFSettings, apply_crf
from .visualize import colorize, overlay


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} asked for, but CUDA is not available here")
    return device


def autocast(device: torch.device, amp: str) -> torch.autocast:
    """Mixed-precision context for ``amp`` in none | bf16 | fp16."""
    if amp not in ("none", "bf16", "fp16"):
        raise ConfigError(f"train.amp={amp!r}; valid: none, bf16, fp16")
    if amp == "fp16" and device.type != "cuda":
        raise ConfigError("train.amp=fp16 needs a CUDA device; use bf16 on CPU")
    dtype = torch.float16 if amp == "fp16" else torch.bfloat16
    return torch.autocast(device.type, dtype=dtype, enabled=amp != "none")


def inference_dtype(device: torch.device, amp: str) -> torch.dtype | None:
    """Weights' dtype for evaluation/prediction under ``amp``: half precision on CUDA, where autocast
    would otherwise cast every weight on every call (benchmarks/results/cuda); fp32 on CPU, where
    bf16 weights measured no faster."""
    if device.type != "cuda" or amp == "none":
        return None
    return torch.float16 if amp == "fp16" else torch.bfloat16


def to_jsonable(obj: Any) -> Any:
    """NaN/inf -> None, recursively, so that the output is strict JSON."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    return obj


def model_spec(config: dict[str, Any], info: DatasetInfo) -> dict[str, Any]:
    """The config's model section with ``num_classes`` filled from the data set and checked."""
    spec = dict(config["model"])
    n = spec.setdefault("num_classes", info.num_classes)
    if n != info.num_classes:
        raise ConfigError(
            f"model.num_classes={n} but data set {info.name!r} has {info.num_classes} classes "
            f"({', '.join(info.classes)})"
        )
    in_channels = input_channels(spec)
    for key in ("mean", "std"):
        if len(config["data"][key]) != in_channels:
            raise ConfigError(
                f"data.{key} has {len(config['data'][key])} values but the model takes {in_channels} input channel(s)"
            )
    return spec


def input_channels(spec: dict[str, Any]) -> int:
    """The model's ``in_channels`` (given, or the builder's default)."""
    return spec.get("in_channels", model_arguments(spec["name"]).get("in_channels", 3))


def image_mode(in_channels: int) -> str:
    if in_channels not in (1, 3):
        raise ConfigError(f"in_channels={in_channels}: images are read as grayscale (1) or RGB (3)")
    return "L" if in_channels == 1 else "RGB"


# --- training ---------------------------------------------------------------------------------
class EpochSampler(Sampler):
    """Infinite stream of ``(index, seed)`` pairs, epoch after epoch, from iteration ``start_iter``.

    Each epoch is a permutation drawn from ``(seed, epoch)`` and cut into global batches of
    ``batch_size * world_size`` samples (the remainder is dropped); process ``rank`` takes its
    ``batch_size`` slice of each. The sample for a given iteration and its augmentation seed depend
    only on the seed, so resuming at iteration k replays exactly what an uninterrupted run would
    have seen, for any number of loader workers, and N processes see what one process with the
    same global batch sees.
    """

    def __init__(
        self, size: int, batch_size: int, seed: int, start_iter: int = 0, rank: int = 0, world_size: int = 1
    ) -> None:
        self.size, self.batch_size, self.seed, self.start_iter = size, batch_size, seed, start_iter
        self.rank, self.global_batch = rank, batch_size * world_size
        self.batches_per_epoch = size // self.global_batch

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch, batch = divmod(self.start_iter, self.batches_per_epoch)
        while True:
            key = self.seed * 1_000_003 + epoch
            order = torch.randperm(self.size, generator=torch.Generator().manual_seed(key))
            for b in range(batch, self.batches_per_epoch):
                first = b * self.global_batch + self.rank * self.batch_size
                for pos in range(first, first + self.batch_size):
                    yield int(order[pos]), key * 100_003 + pos
            epoch, batch = epoch + 1, 0


def _lr_lambda(train_cfg: dict[str, Any]) -> Any:
    iters, warmup = train_cfg["iters"], train_cfg["warmup_iters"]
    power, schedule = train_cfg["poly_power"], train_cfg["lr_schedule"]
    if schedule not in ("poly", "constant"):
        raise ConfigError(f"train.lr_schedule={schedule!r}; valid: poly, constant")

    def factor(it: int) -> float:
        if it < warmup:
            return (it + 1) / warmup
        if schedule == "constant":
            return 1.0
        return (1 - min(it, iters - 1) / iters) ** power  # poly: (1 - iter/max_iter)^power

    return factor


def _optimizer(model: nn.Module, train_cfg: dict[str, Any]) -> torch.optim.Optimizer:
    """SGD or AdamW; with ``train.head_lr_mult`` the parameters outside ``model.backbone`` (the
    newly initialised head) get that multiple of the learning rate, as DeepLab's 10x."""
    name, lr, wd = train_cfg["optimizer"], train_cfg["lr"], train_cfg["weight_decay"]
    mult = train_cfg["head_lr_mult"]
    backbone = getattr(model, "backbone", None)
    if mult != 1 and isinstance(backbone, nn.Module):
        in_backbone = {id(p) for p in backbone.parameters()}
        head = [p for p in model.parameters() if id(p) not in in_backbone]
        params = [{"params": list(backbone.parameters()), "lr": lr}, {"params": head, "lr": lr * mult}]
    else:
        params = [{"params": list(model.parameters()), "lr": lr}]
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=train_cfg["momentum"], weight_decay=wd)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=wd)
    raise ConfigError(f"train.optimizer={name!r}; valid: sgd, adamw")


def resolve_class_weights(
    setting: str | list | None, dataset: SegmentationDataset, run_dir: Path, progress: bool = True
) -> list[float] | None:
    """``train.class_weights`` as a list: given, or computed from the training masks once and cached
    in ``run_dir/class_weights.json`` (reused on resume)."""
    if setting is None:
        return None
    n = dataset.info.num_classes
    if isinstance(setting, list):
        if len(setting) != n:
            raise ConfigError(f"train.class_weights has {len(setting)} values, the data set has {n} classes")
        return [float(w) for w in setting]
    cache = run_dir / "class_weights.json"
    if cache.exists():
        cached = json.loads(cache.read_text())
        if cached.get("method") == setting and len(cached["weights"]) == n:
            return cached["weights"]
    counts, image_counts = dataset.class_counts(progress=progress)
    weights = class_frequency_weights(counts, image_counts, setting)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json(
        cache,
        {
            "method": setting,
            "classes": dataset.info.classes,
            "weights": weights,
            "pixels": counts,
            "pixels_of_images_with_class": image_counts,
        },
    )
    return weights


def build_criterion(train_cfg: dict[str, Any], ignore_index: int, class_weights: list[float] | None) -> nn.Module:
    """The loss of ``train.loss`` (a name with ``train.loss_args``, or a list of summed terms), with
    the data set's ignore index and the class weights given to every term that takes ``weight``."""
    loss = train_cfg["loss"]
    if isinstance(loss, str):
        terms = [{"name": loss, **train_cfg["loss_args"]}]
    else:
        if train_cfg["loss_args"]:
            raise ConfigError("train.loss_args applies to a single named loss; give a list's terms their own args")
        terms = [dict(t) for t in loss]
    takes_weight = False
    for term in terms:
        if not isinstance(term, dict) or "name" not in term:
            raise ConfigError(f"train.loss term {term!r} needs a name; available: {', '.join(list_losses())}")
        args = loss_arguments(term["name"])
        if "ignore_index" in args:
            term.setdefault("ignore_index", ignore_index)
        if class_weights is not None and "weight" in args:
            term.setdefault("weight", class_weights)
            takes_weight = True
    if class_weights is not None and not takes_weight:
        raise ConfigError("train.class_weights is set but no loss term takes class weights (cross_entropy, ohem do)")
    if isinstance(loss, str):
        return build_loss(terms[0].pop("name"), **terms[0])
    return build_loss("sum", terms=terms, ignore_index=ignore_index)


def init_weights(model: nn.Module, path: str | os.PathLike, *, partial: bool = False) -> None:
    """Initialise ``model`` from a pixelwise checkpoint or a torchvision DeepLab v3 state dict (read
    with ``weights_only=True``). ``partial=True`` skips tensors whose shape differs (reported), e.g.
    the classifier of weights trained for another number of classes."""
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(f"train.init_from: cannot load {path}: {str(e).strip().splitlines()[0]}") from None
    if isinstance(raw, dict) and raw.get("format") == "pixelwise":
        state = raw["model"]
    elif isinstance(raw, dict) and is_torchvision_deeplabv3(raw):
        state = map_torchvision_deeplabv3(raw)
    elif isinstance(raw, dict) and all(isinstance(v, torch.Tensor) for v in raw.values()):
        state = raw
    else:
        raise CheckpointError(f"train.init_from: {path} is neither a pixelwise checkpoint nor a state dict")
    if partial:
        own = model.state_dict()
        skipped = sorted(k for k, v in state.items() if k not in own or own[k].shape != v.shape)
        state = {k: v for k, v in state.items() if k not in skipped}
        missing = sorted(set(own) - set(state))
        model.load_state_dict(state, strict=False)
        print(
            f"init_from {path}: loaded {len(state)} tensors; skipped {len(skipped)} {skipped[:4]}; "
            f"left as initialised {len(missing)} {missing[:4]}"
        )
    else:
        load_weights(model, state, f"train.init_from {path}")


def _rewrite_log(path: Path, upto_iter: int) -> None:
    """On resume, drop log records written after the checkpoint we resume from."""
    if not path.exists():
        return
    keep = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line)["iter"] <= upto_iter]
    atomic_write(path, lambda f: f.write("".join(line + "\n" for line in keep).encode()))


@dataclass
class Distributed:
    """This process's place in a ``torchrun`` job (rank 0 of 1 when not distributed)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    enabled: bool = False  # in a process group (under torchrun, also with one process)

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup_distributed(device: torch.device) -> tuple[Distributed, torch.device]:
    """Join the process group that ``torchrun`` describes in the environment (gloo on CPU, NCCL on
    CUDA); each process then uses GPU ``LOCAL_RANK``. Without ``torchrun``: one process, no group.
    (``torchrun --nproc_per_node=1`` joins a group of one: the DDP/SyncBatchNorm path on one GPU.)"""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return Distributed(), device
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Distributed(dist.get_rank(), dist.get_world_size(), local, enabled=True), device


def _mean_over_processes(value: float, ddp: Distributed, device: torch.device) -> float:
    if ddp.world_size == 1:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return float(t) / ddp.world_size


class _RunFiles:
    """What rank 0 writes into a run directory; every write is atomic (or an appended log line)."""

    def __init__(self, run_dir: Path, keep_last: int, enabled: bool) -> None:
        self.dir, self.keep_last, self.enabled = run_dir, keep_last, enabled
        self.last, self.best, self.log_path = run_dir / "last.pt", run_dir / "best.pt", run_dir / "metrics.jsonl"
        self._log = None

    def open(self, config: dict[str, Any], resume_iter: int | None) -> None:
        if not self.enabled:
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        atomic_write(self.dir / "config.yaml", lambda f: f.write(dump_config(config).encode()))
        if resume_iter is not None:
            _rewrite_log(self.log_path, resume_iter)
        self._log = open(self.log_path, "a")  # noqa: SIM115 (closed in close())

    def record(self, entry: dict[str, Any]) -> None:
        if self._log is not None:
            self._log.write(json.dumps(to_jsonable(entry)) + "\n")
            self._log.flush()

    def save(self, checkpoint: dict[str, Any], it: int, best: bool) -> None:
        if not self.enabled:
            return
        save_checkpoint(self.last, checkpoint)
        if best:
            slim = {k: v for k, v in checkpoint.items() if k not in ("optimizer", "scheduler", "scaler", "rng")}
            save_checkpoint(self.best, slim)
        if self.keep_last > 1:  # also keep the last k checkpoints by iteration
            save_checkpoint(self.dir / f"iter_{it:07d}.pt", checkpoint)
            for old in sorted(self.dir.glob("iter_*.pt"))[: -self.keep_last]:
                old.unlink()

    def close(self) -> None:
        if self._log is not None:
            self._log.close()


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
    if ddp.enabled and ddp.is_main:
        print(f"distributed: {ddp.world_size} process(es), {dist.get_backend()} on {device.type}")
    if train_cfg["deterministic"]:
        # Bit-exact on CPU. On CUDA some kernels have no deterministic version (2-D NLL loss, bilinear
        # upsampling backward): those warn instead of stopping the run; cuBLAS gets its deterministic workspace.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=device.type == "cuda")
        torch.backends.cudnn.benchmark = False
    files = _RunFiles(run_dir, train_cfg["keep_last"], enabled=ddp.is_main)
    progress = progress and ddp.is_main

    root = resolve_data_root(data_root, data_cfg["root"])
    info = DatasetInfo.load(root, data_cfg["dataset"])
    spec = model_spec(config, info)
    mode = image_mode(input_channels(spec))
    norm = {"mean": data_cfg["mean"], "std": data_cfg["std"]}
    aug_keys = (
        "crop_size",
        "scale_range",
        "hflip",
        "vflip",
        "color_jitter",
        "elastic_p",
        "elastic_sigma",
        "elastic_grid",
    )
    train_tf = build_transforms(
        train=True, ignore_index=info.ignore_index, **norm, **{k: data_cfg[k] for k in aug_keys}
    )
    train_ds = SegmentationDataset(root, info.name, data_cfg["train_split"], transforms=train_tf, image_mode=mode)
    val_ds = None
    if data_cfg["val_split"]:
        val_ds = SegmentationDataset(
            root, info.name, data_cfg["val_split"], transforms=build_transforms(train=False, **norm), image_mode=mode
        )
    batch_size = data_cfg["batch_size"]
    if batch_size * ddp.world_size > len(train_ds):
        raise ConfigError(
            f"data.batch_size={batch_size} x {ddp.world_size} process(es) exceeds the {len(train_ds)} "
            f"images of split {data_cfg['train_split']!r}"
        )

    torch.manual_seed(train_cfg["seed"])
    amp = train_cfg["amp"]
    autocast(device, amp)  # validates the setting before any work
    memory_format = torch.channels_last if train_cfg["channels_last"] else torch.contiguous_format
    model = build_model(**spec).to(device, memory_format=memory_format)
    scaler = torch.amp.GradScaler(device.type, enabled=amp == "fp16")
    optimizer = _optimizer(model, train_cfg)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(train_cfg))
    class_weights = resolve_class_weights(train_cfg["class_weights"], train_ds, run_dir, progress=progress)
    loss_fn = build_criterion(train_cfg, info.ignore_index, class_weights).to(device)
    meta = {
        "model": spec,
        "classes": info.classes,
        "palette": info.palette,
        "ignore_index": info.ignore_index,
        "dataset": info.name,
        **norm,
    }
    state = {"iter": 0, "best_miou": -1.0, "best_iter": None, "train_seconds": 0.0}
    if resume:
        ckpt = load_checkpoint(files.last, map_location=device)
        if ckpt["meta"]["model"] != spec:
            raise ConfigError(f"--resume: the model in {files.last} ({ckpt['meta']['model']}) is not the config's")
        load_weights(model, ckpt["model"], str(files.last))
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        scaler.load_state_dict(ckpt["scaler"])
        state = {**state, **ckpt["train_state"]}
        torch.set_rng_state(ckpt["rng"]["torch"].cpu())
    elif train_cfg["init_from"]:
        init_weights(model, train_cfg["init_from"], partial=train_cfg["init_partial"])
    files.open(config, state["iter"] if resume else None)
    tensorboard = _tensorboard(run_dir) if train_cfg["tensorboard"] and ddp.is_main else None

    net: nn.Module = model
    if train_cfg["compile"]:
        net = torch.compile(net)  # the same parameters: checkpoints keep saving `model`
    if ddp.enabled:
        if train_cfg["sync_bn"]:
            if device.type != "cuda":
                raise ConfigError("train.sync_bn needs CUDA (PyTorch's SyncBatchNorm is GPU-only)")
            net = nn.SyncBatchNorm.convert_sync_batchnorm(net)
        net = nn.parallel.DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda" else None)
    accumulate = train_cfg["accumulate"]
    if accumulate < 1:
        raise ConfigError(f"train.accumulate={accumulate}: must be >= 1")
    # the sampler counts batches; an iteration (optimizer step) takes `accumulate` of them
    sampler = EpochSampler(
        len(train_ds),
        batch_size,
        train_cfg["seed"],
        start_iter=state["iter"] * accumulate,
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

    net.train()
    bar = tqdm(total=total, initial=state["iter"], desc="train", unit="it", disable=not progress, dynamic_ncols=True)
    batches = iter(loader)
    try:
        while state["iter"] < total:
            step_start = time.perf_counter()
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
            state["iter"] += 1
            it = state["iter"]
            if not math.isfinite(loss_value):
                raise FloatingPointError(f"loss became {loss_value} at iteration {it}; lower train.lr")
            window_loss, window_n = window_loss + loss_value, window_n + 1
            state["train_seconds"] += time.perf_counter() - step_start
            bar.update(1)
            bar.set_postfix(loss=f"{loss_value:.4f}", lr=f"{scheduler.get_last_lr()[0]:.2e}")
            if it % log_interval == 0 or it == total:
                mean_loss = _mean_over_processes(window_loss / window_n, ddp, device)
                images_seen = window_n * accumulate * batch_size * ddp.world_size
                speed = images_seen / max(time.perf_counter() - window_t, 1e-9)
                files.record(
                    {
                        "type": "train",
                        "iter": it,
                        "loss": mean_loss,
                        "lr": scheduler.get_last_lr()[0],
                        "images_per_s": speed,
                        "train_seconds": state["train_seconds"],
                    }
                )
                if tensorboard is not None:
                    tensorboard.add_scalar("train/loss", mean_loss, it)
                    tensorboard.add_scalar("train/lr", scheduler.get_last_lr()[0], it)
                window_loss, window_n, window_t = 0.0, 0, time.perf_counter()
            evaluating = val_ds is not None and (it % eval_interval == 0 or it == total)
            improved = False
            if evaluating:
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
                if tensorboard is not None:
                    _tensorboard_val(tensorboard, model, val_ds, last_metrics, meta, device, it)
                bar.write(
                    f"iter {it}: val mIoU {last_metrics['miou']:.4f}  pixel acc {last_metrics['pixel_accuracy']:.4f}"
                )
                improved = last_metrics["miou"] > state["best_miou"]
                if improved:
                    state["best_miou"], state["best_iter"] = last_metrics["miou"], it
            elif val_ds is None and (it % eval_interval == 0 or it == total):
                improved, state["best_iter"] = True, it  # no validation: best = latest
            if improved or it % ckpt_interval == 0 or it == total:
                files.save(
                    {
                        "model": model.state_dict(),
                        "meta": meta,
                        "config": config,
                        "train_state": dict(state),
                        "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict(),
                        "scaler": scaler.state_dict(),
                        "rng": {"torch": torch.get_rng_state()},
                    },
                    it,
                    best=improved,
                )
            if evaluating:
                window_t = time.perf_counter()  # evaluation time is not training speed
    finally:
        bar.close()
        files.close()
        if tensorboard is not None:
            tensorboard.close()
    return {
        "best_miou": state["best_miou"],
        "best_iter": state["best_iter"],
        "last": last_metrics,
        "train_seconds": state["train_seconds"],
        "run_dir": str(run_dir),
    }


def _tensorboard(run_dir: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise ConfigError("train.tensorboard needs the tensorboard package: pip install tensorboard") from None
    return SummaryWriter(str(run_dir / "tensorboard"))


def _tensorboard_val(
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


# --- evaluation -------------------------------------------------------------------------------
SUMMARY_KEYS = ("pixel_accuracy", "mean_accuracy", "miou", "fwiou", "mean_f1")


@torch.inference_mode()
def evaluate(
    model: nn.Module,
    dataset: SegmentationDataset,
    *,
    device: torch.device | str = "cpu",
    batch_size: int = 1,
    num_workers: int = 0,
    amp: str = "none",
    inference: InferenceSettings | None = None,
    boundary_width: int | None = None,
    instances: int | None = None,
    watershed: bool = False,
    crf: tuple[CRFSettings, Sequence[float], Sequence[float]] | None = None,
    shard: tuple[int, int] = (0, 1),
    progress: bool = True,
) -> dict[str, Any]:
    """Evaluate ``model`` on a labelled split: whole images, or the sliding-window / multi-scale /
    flip protocol of ``inference``. With ``shard=(rank, world_size)`` this process takes every
    ``world_size``-th image and the counts are summed over the processes.

    Returns :meth:`pixelwise.metrics.ConfusionMatrix.compute`, plus ``"boundary"`` (per-class
    boundary F1 within ``boundary_width`` pixels, :class:`pixelwise.boundary.BoundaryF1`) and
    ``"instances"`` (ISBI 2012 V_rand / V_info of the connected components, or watershed
    regions, of class ``instances`` against those of the ground truth), when asked for.
    ``crf=(settings, mean, std)`` refines the probabilities with the dense CRF first (``mean``/``std``
    undo the input normalisation to give the CRF the RGB image)."""
    device = torch.device(device)
    was_training = model.training
    model.eval()
    cm = ConfusionMatrix(dataset.info.num_classes, dataset.info.ignore_index, device=device)
    bf = None if boundary_width is None else BoundaryF1(cm.num_classes, cm.ignore_index, boundary_width, device=device)
    isbi = None if instances is None else ISBIScores()
    rank, world = shard
    subset = dataset if world == 1 else Subset(dataset, range(rank, len(dataset), world))
    loader = DataLoader(subset, batch_size=batch_size, num_workers=num_workers)
    for images, masks in tqdm(
        loader, desc=f"eval {dataset.split}", unit="img", disable=not progress, leave=False, dynamic_ncols=True
    ):
        images = images.to(device)
        scores = _scores(model, images, cm.num_classes, device, amp, inference, crf)
        masks = masks.to(device)
        pred = scores.argmax(1)
        cm.update(pred, masks)
        if bf is not None:
            bf.update(pred, masks)
        if isbi is not None:
            for p, t in zip(pred.cpu().numpy(), masks.cpu().numpy(), strict=True):
                isbi.update(label_instances(p, instances, watershed=watershed), label_instances(t, instances))
    cm.all_reduce()
    metrics = cm.compute()
    if bf is not None:
        bf.all_reduce()
        metrics["boundary"] = {k: v for k, v in bf.compute().items() if k != "counts"}
        metrics["boundary"]["width"] = boundary_width
    if isbi is not None:
        metrics["instances"] = {"foreground": instances, "watershed": watershed, **isbi.compute()}
    model.train(was_training)
    return metrics


def _scores(
    model: nn.Module,
    images: torch.Tensor,
    num_classes: int,
    device: torch.device,
    amp: str,
    inference: InferenceSettings | None,
    crf: tuple[CRFSettings, Sequence[float], Sequence[float]] | None,
) -> torch.Tensor:
    """Logits, or probabilities (inference protocol, CRF), of a batch; only their argmax is used."""
    with autocast(device, amp):
        if inference is None or inference.is_plain:
            scores = model_logits(model, images)
            if crf is None:
                return scores
            scores = torch.softmax(scores.float(), 1)
        else:
            scores = predict_probs(model, images, num_classes, inference)
    if crf is not None:
        scores = apply_crf(scores, images, crf[1], crf[2], crf[0])
    return scores


def format_metrics_table(metrics: dict[str, Any], class_names: Sequence[str]) -> str:
    """Per-class table (IoU, accuracy, F1, and boundary F1 if computed, in %) followed by the
    summary metrics and, if computed, the instance scores."""
    boundary = metrics.get("boundary")
    summary = [(k, metrics[k]) for k in SUMMARY_KEYS]
    if boundary:
        summary.append((f"boundary_f1@{boundary['width']}px", boundary["mean_f1"]))
    if metrics.get("instances"):
        summary += [(k, metrics["instances"][k]) for k in ("v_rand", "v_info")]
    width = max(len(k) for k in (*class_names, *(name for name, _ in summary)))
    pct = lambda v: "   n/a" if v is None or not math.isfinite(v) else f"{100 * v:6.2f}"  # noqa: E731
    header = f"{'class':<{width}}  {'IoU':>6}  {'Acc':>6}  {'F1':>6}" + ("  {:>6}".format("BF") if boundary else "")
    lines = [header]
    for i, name in enumerate(class_names):
        row = f"{name:<{width}}  {pct(metrics['iou'][i])}  {pct(metrics['accuracy'][i])}  {pct(metrics['f1'][i])}"
        lines.append(row + (f"  {pct(boundary['f1'][i])}" if boundary else ""))
    lines.append("")
    lines += [f"{name:<{width}}  {pct(value)}" for name, value in summary]
    return "\n".join(lines)


def checkpoint_dataset(
    ckpt: dict[str, Any], checkpoint: str | os.PathLike, split: str, data_root: str | os.PathLike | None
) -> SegmentationDataset:
    """The labelled ``split`` of the data set a checkpoint was trained on, with its evaluation
    transforms; a data set with another number of classes is a :class:`CheckpointError`."""
    meta = ckpt["meta"]
    root = resolve_data_root(data_root, ckpt.get("config", {}).get("data", {}).get("root"))
    ds = SegmentationDataset(
        root,
        meta["dataset"],
        split,
        image_mode=image_mode(input_channels(meta["model"])),
        transforms=build_transforms(train=False, mean=meta["mean"], std=meta["std"]),
    )
    if ds.info.num_classes != len(meta["classes"]):
        raise CheckpointError(
            f"{checkpoint} is for {len(meta['classes'])} classes but data set "
            f"{ds.info.name!r} under {root} has {ds.info.num_classes}"
        )
    return ds


def inference_model(
    ckpt: dict[str, Any], checkpoint: str | os.PathLike, device: torch.device, *, amp: str, compile: bool
) -> nn.Module:
    """A loaded checkpoint's model on ``device``, prepared as eval/predict run it
    (:func:`pixelwise.inference.optimize_for_inference`; half-precision weights under ``amp`` on CUDA)."""
    model = model_from_checkpoint(ckpt, str(checkpoint)).to(device)
    return optimize_for_inference(
        model, in_channels=input_channels(ckpt["meta"]["model"]), compile=compile, dtype=inference_dtype(device, amp)
    )


def evaluate_checkpoint(
    checkpoint: str | os.PathLike,
    *,
    split: str = "val",
    data_root: str | os.PathLike | None = None,
    device: str = "auto",
    num_workers: int = 2,
    amp: str = "none",
    inference: InferenceSettings | None = None,
    boundary_width: int | None = None,
    instances: int | str | None = None,
    watershed: bool = False,
    crf: CRFSettings | None = None,
    compile: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Evaluate a checkpoint on a split of the data set it was trained on (options as
    :func:`evaluate`; ``instances`` may be a class name; ``crf`` refines with the dense CRF;
    ``compile`` as :func:`pixelwise.inference.optimize_for_inference`). Returns
    ``{"checkpoint", "dataset", "split", "num_images", "classes", "metrics"}``."""
    dev = resolve_device(device)
    ckpt = load_checkpoint(checkpoint, map_location=dev)
    meta = ckpt["meta"]
    model = inference_model(ckpt, checkpoint, dev, amp=amp, compile=compile)
    ds = checkpoint_dataset(ckpt, checkpoint, split, data_root)
    if isinstance(instances, str):
        if instances not in meta["classes"]:
            raise ConfigError(f"--instances {instances!r}: no such class; classes: {', '.join(meta['classes'])}")
        instances = meta["classes"].index(instances)
    metrics = evaluate(
        model,
        ds,
        device=dev,
        num_workers=num_workers,
        amp=amp,
        inference=inference,
        boundary_width=boundary_width,
        instances=instances,
        watershed=watershed,
        crf=None if crf is None else (crf, meta["mean"], meta["std"]),
        progress=progress,
    )
    if crf is not None:
        metrics["crf"] = asdict(crf)
    return {
        "checkpoint": str(checkpoint),
        "dataset": meta["dataset"],
        "split": split,
        "num_images": len(ds),
        "classes": meta["classes"],
        "metrics": metrics,
    }


# --- prediction -------------------------------------------------------------------------------
def expand_inputs(inputs: Sequence[str | os.PathLike]) -> list[Path]:
    """Files, folders (their images, sorted) and glob patterns -> image paths, in order."""
    paths: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            paths += sorted(q for q in p.iterdir() if q.suffix.lower() in IMAGE_EXTENSIONS)
        elif p.is_file():
            paths.append(p)
        else:
            matches = sorted(Path(m) for m in glob.glob(str(item), recursive=True))
            if not matches:
                raise DataError(f"input {str(item)!r} is no file, folder or matching pattern")
            paths += [m for m in matches if m.is_file()]
    return paths


@torch.inference_mode()
def predict(
    checkpoint: str | os.PathLike,
    inputs: Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    *,
    device: str = "auto",
    alpha: float = 0.5,
    amp: str = "none",
    inference: InferenceSettings | None = None,
    crf: CRFSettings | None = None,
    backend: str = "torch",
    compile: bool = False,
    progress: bool = True,
) -> list[dict[str, str]]:
    """For each input image write ``out_dir/masks/<stem>.png`` (class indices), ``color/<stem>.png``
    (palette colours) and ``overlay/<stem>.png``. One image at a time: memory stays flat.
    ``backend="onnxruntime"`` runs an ONNX file written by ``pixelwise export`` instead of a checkpoint;
    ``compile`` as :func:`pixelwise.inference.optimize_for_inference` (torch backend)."""
    if backend == "onnxruntime":
        from .export import OnnxModel

        dev = torch.device("cpu")
        model = OnnxModel(checkpoint)
        meta = model.meta
    elif backend == "torch":
        dev = resolve_device(device)
        ckpt = load_checkpoint(checkpoint, map_location=dev)
        meta = ckpt["meta"]
        model = inference_model(ckpt, checkpoint, dev, amp=amp, compile=compile)
    else:
        raise ConfigError(f"backend {backend!r}; valid: torch, onnxruntime")
    mode = image_mode(input_channels(meta["model"]))
    mean = torch.tensor(meta["mean"], device=dev).view(-1, 1, 1)
    std = torch.tensor(meta["std"], device=dev).view(-1, 1, 1)
    out_dir = Path(out_dir)
    for sub in ("masks", "color", "overlay"):
        (out_dir / sub).mkdir(parents=True, exist_ok=True)
    paths = expand_inputs(inputs)
    if not paths:
        raise DataError(f"no images found in {', '.join(map(str, inputs))}")
    written: list[dict[str, str]] = []
    used: set[str] = set()
    crf_args = None if crf is None else (crf, meta["mean"], meta["std"])
    for path in tqdm(paths, desc="predict", unit="img", disable=not progress, dynamic_ncols=True):
        image = read_image(path, mode)
        x = torch.from_numpy(image).to(dev).permute(2, 0, 1).float().div_(255).sub_(mean).div_(std)
        scores = _scores(model, x[None], len(meta["classes"]), dev, amp, inference, crf_args)
        pred = scores.argmax(1)[0].to(torch.uint8).cpu().numpy()
        stem = path.stem
        while stem in used:  # same stem from two folders: keep both
            stem += "_"
        used.add(stem)
        color = colorize(pred, meta["palette"])
        files = {"image": str(path)}
        for sub, array in (("masks", pred), ("color", color), ("overlay", overlay(image, color, alpha))):
            files[sub] = str(out_dir / sub / f"{stem}.png")
            Image.fromarray(array).save(files[sub])
        written.append(files)
    return written


def write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write(path, lambda f: f.write(json.dumps(to_jsonable(obj), indent=2).encode()))


__all__ = [
    "EpochSampler",
    "evaluate",
    "evaluate_checkpoint",
    "expand_inputs",
    "format_metrics_table",
    "predict",
    "resolve_device",
    "train",
    "write_json",
]
