"""Training, evaluation and prediction loops (used by the CLI and the Python API)."""

from __future__ import annotations

import glob
import json
import math
import os
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Sampler
from tqdm.auto import tqdm

from .checkpoint import atomic_write, load_checkpoint, load_weights, model_from_checkpoint, save_checkpoint
from .config import dump_config
from .data import DatasetInfo, SegmentationDataset, build_transforms, resolve_data_root
from .data.dataset import IMAGE_EXTENSIONS, read_image
from .errors import CheckpointError, ConfigError, DataError
from .inference import InferenceSettings, predict_probs
from .losses import build_loss, class_frequency_weights, list_losses, loss_arguments
from .metrics import ConfusionMatrix
from .models import build_model, model_arguments
from .models.convert import is_torchvision_deeplabv3, map_torchvision_deeplabv3
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

    Each epoch is a permutation drawn from ``(seed, epoch)`` and truncated to whole batches, so the
    sample for a given iteration (and its augmentation seed) depends only on the seed: resuming at
    iteration k replays exactly what an uninterrupted run would have seen, for any worker count.
    """

    def __init__(self, size: int, batch_size: int, seed: int, start_iter: int = 0) -> None:
        self.size, self.batch_size, self.seed, self.start_iter = size, batch_size, seed, start_iter
        self.batches_per_epoch = size // batch_size

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch, batch = divmod(self.start_iter, self.batches_per_epoch)
        while True:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            order = torch.randperm(self.size, generator=g)[: self.batches_per_epoch * self.batch_size]
            for pos in range(batch * self.batch_size, len(order)):
                yield int(order[pos]), (self.seed * 1_000_003 + epoch) * 100_003 + pos
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
    name, lr, wd = train_cfg["optimizer"], train_cfg["lr"], train_cfg["weight_decay"]
    if name == "sgd":
        return torch.optim.SGD(model.parameters(), lr=lr, momentum=train_cfg["momentum"], weight_decay=wd)
    if name == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=wd)
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
    Returns ``{"best_miou", "best_iter", "last": <last val metrics>, "run_dir"}``.
    """
    data_cfg, train_cfg = config["data"], config["train"]
    run_dir = Path(run_dir)
    last_path, best_path, log_path = run_dir / "last.pt", run_dir / "best.pt", run_dir / "metrics.jsonl"
    if resume and not last_path.exists():
        raise CheckpointError(f"--resume: {last_path} does not exist")
    if not resume and last_path.exists():
        raise ConfigError(
            f"{run_dir} already holds a run (last.pt): pass --resume to continue it, or another --run-dir"
        )

    device = resolve_device(train_cfg["device"])
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
    if batch_size > len(train_ds):
        raise ConfigError(
            f"data.batch_size={batch_size} exceeds the {len(train_ds)} images of split {data_cfg['train_split']!r}"
        )

    torch.manual_seed(train_cfg["seed"])
    model = build_model(**spec).to(device)
    amp = train_cfg["amp"]
    autocast(device, amp)  # validates the setting before any work
    memory_format = torch.channels_last if train_cfg["channels_last"] else torch.contiguous_format
    model = model.to(memory_format=memory_format)
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
    state = {"iter": 0, "best_miou": -1.0, "best_iter": None}
    if resume:
        ckpt = load_checkpoint(last_path, map_location=device)
        if ckpt["meta"]["model"] != spec:
            raise ConfigError(f"--resume: the model in {last_path} ({ckpt['meta']['model']}) differs from the config's")
        load_weights(model, ckpt["model"], str(last_path))
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        scaler.load_state_dict(ckpt["scaler"])
        state = dict(ckpt["train_state"])
        torch.set_rng_state(ckpt["rng"]["torch"].cpu())
        _rewrite_log(log_path, state["iter"])
    elif train_cfg["init_from"]:
        init_weights(model, train_cfg["init_from"], partial=train_cfg["init_partial"])
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write(run_dir / "config.yaml", lambda f: f.write(dump_config(config).encode()))

    sampler = EpochSampler(len(train_ds), batch_size, train_cfg["seed"], start_iter=state["iter"])
    loader = DataLoader(
        train_ds,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=data_cfg["num_workers"],
        pin_memory=device.type == "cuda",
        persistent_workers=False,
    )
    total, eval_interval, log_interval = train_cfg["iters"], train_cfg["eval_interval"], train_cfg["log_interval"]
    last_metrics: dict[str, Any] | None = None

    def checkpoint(it: int) -> None:
        save_checkpoint(
            last_path,
            {
                "model": model.state_dict(),
                "meta": meta,
                "config": config,
                "train_state": state,
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict(),
                "rng": {"torch": torch.get_rng_state()},
            },
        )

    model.train()
    bar = tqdm(total=total, initial=state["iter"], desc="train", unit="it", disable=not progress, dynamic_ncols=True)
    window_loss, window_n, window_t = 0.0, 0, time.perf_counter()
    train_seconds = float(state.get("train_seconds", 0.0))
    with open(log_path, "a") as log:
        batches = iter(loader)
        while state["iter"] < total:
            step_start = time.perf_counter()
            images, masks = next(batches)
            images = images.to(device, non_blocking=True, memory_format=memory_format)
            masks = masks.to(device, non_blocking=True)
            with autocast(device, amp):
                out = model(images)
            if isinstance(out, dict):  # models with an auxiliary head, in training mode
                loss = loss_fn(out["out"], masks) + train_cfg["aux_weight"] * loss_fn(out["aux"], masks)
            else:
                loss = loss_fn(out, masks)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            state["iter"] += 1
            it = state["iter"]
            loss_value = float(loss.detach())
            if not math.isfinite(loss_value):
                raise FloatingPointError(f"loss became {loss_value} at iteration {it}; lower train.lr")
            window_loss, window_n = window_loss + loss_value, window_n + 1
            train_seconds += time.perf_counter() - step_start
            bar.update(1)
            bar.set_postfix(loss=f"{loss_value:.4f}", lr=f"{scheduler.get_last_lr()[0]:.2e}")
            if it % log_interval == 0 or it == total:
                elapsed = time.perf_counter() - window_t
                log.write(
                    json.dumps(
                        {
                            "type": "train",
                            "iter": it,
                            "loss": window_loss / window_n,
                            "lr": scheduler.get_last_lr()[0],
                            "images_per_s": window_n * batch_size / max(elapsed, 1e-9),
                            "train_seconds": train_seconds,
                        }
                    )
                    + "\n"
                )
                log.flush()
                window_loss, window_n, window_t = 0.0, 0, time.perf_counter()
            if it % eval_interval == 0 or it == total:
                state["train_seconds"] = train_seconds
                if val_ds is not None:
                    last_metrics = evaluate(
                        model, val_ds, device=device, progress=progress, amp=amp, num_workers=data_cfg["num_workers"]
                    )
                    model.train()
                    record = {
                        "type": "val",
                        "iter": it,
                        **{k: last_metrics[k] for k in SUMMARY_KEYS},
                        "iou": last_metrics["iou"],
                    }
                    log.write(json.dumps(to_jsonable(record)) + "\n")
                    log.flush()
                    bar.write(
                        f"iter {it}: val mIoU {last_metrics['miou']:.4f}  "
                        f"pixel acc {last_metrics['pixel_accuracy']:.4f}"
                    )
                    improved = last_metrics["miou"] > state["best_miou"]
                else:
                    improved = True
                if improved:
                    state["best_miou"] = last_metrics["miou"] if last_metrics else None
                    state["best_iter"] = it
                    save_checkpoint(
                        best_path,
                        {"model": model.state_dict(), "meta": meta, "config": config, "train_state": dict(state)},
                    )
                checkpoint(it)
                window_t = time.perf_counter()  # evaluation time is not training speed
    bar.close()
    return {
        "best_miou": state["best_miou"],
        "best_iter": state["best_iter"],
        "last": last_metrics,
        "train_seconds": train_seconds,
        "run_dir": str(run_dir),
    }


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
    progress: bool = True,
) -> dict[str, Any]:
    """Evaluate ``model`` on a labelled split: whole images, or the sliding-window / multi-scale /
    flip protocol of ``inference``. Returns :meth:`pixelwise.metrics.ConfusionMatrix.compute`."""
    device = torch.device(device)
    was_training = model.training
    model.eval()
    cm = ConfusionMatrix(dataset.info.num_classes, dataset.info.ignore_index, device=device)
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=num_workers)
    for images, masks in tqdm(
        loader, desc=f"eval {dataset.split}", unit="img", disable=not progress, leave=False, dynamic_ncols=True
    ):
        images = images.to(device)
        with autocast(device, amp):
            if inference is None or inference.is_plain:
                scores = model(images)
            else:
                scores = predict_probs(model, images, cm.num_classes, inference)
        cm.update(scores, masks.to(device))
    cm.all_reduce()
    model.train(was_training)
    return cm.compute()


def format_metrics_table(metrics: dict[str, Any], class_names: Sequence[str]) -> str:
    """Per-class table (IoU, accuracy, F1, in %) followed by the summary metrics."""
    width = max(len(k) for k in (*class_names, *SUMMARY_KEYS))
    pct = lambda v: "   n/a" if v is None or not math.isfinite(v) else f"{100 * v:6.2f}"  # noqa: E731
    lines = [f"{'class':<{width}}  {'IoU':>6}  {'Acc':>6}  {'F1':>6}"]
    for i, name in enumerate(class_names):
        lines.append(
            f"{name:<{width}}  {pct(metrics['iou'][i])}  {pct(metrics['accuracy'][i])}  {pct(metrics['f1'][i])}"
        )
    lines.append("")
    for key in SUMMARY_KEYS:
        lines.append(f"{key:<{width}}  {pct(metrics[key])}")
    return "\n".join(lines)


def evaluate_checkpoint(
    checkpoint: str | os.PathLike,
    *,
    split: str = "val",
    data_root: str | os.PathLike | None = None,
    device: str = "auto",
    num_workers: int = 2,
    amp: str = "none",
    inference: InferenceSettings | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Evaluate a checkpoint on a split of the data set it was trained on. Returns
    ``{"checkpoint", "dataset", "split", "num_images", "classes", "metrics"}``."""
    dev = resolve_device(device)
    ckpt = load_checkpoint(checkpoint, map_location=dev)
    meta = ckpt["meta"]
    model = model_from_checkpoint(ckpt, str(checkpoint)).to(dev)
    config_root = ckpt.get("config", {}).get("data", {}).get("root")
    root = resolve_data_root(data_root, config_root)
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
    metrics = evaluate(model, ds, device=dev, num_workers=num_workers, amp=amp, inference=inference, progress=progress)
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
    progress: bool = True,
) -> list[dict[str, str]]:
    """For each input image write ``out_dir/masks/<stem>.png`` (class indices), ``color/<stem>.png``
    (palette colours) and ``overlay/<stem>.png``. One image at a time: memory stays flat."""
    dev = resolve_device(device)
    ckpt = load_checkpoint(checkpoint, map_location=dev)
    meta = ckpt["meta"]
    model = model_from_checkpoint(ckpt, str(checkpoint)).to(dev)
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
    for path in tqdm(paths, desc="predict", unit="img", disable=not progress, dynamic_ncols=True):
        image = read_image(path, mode)
        x = torch.from_numpy(image).to(dev).permute(2, 0, 1).float().div_(255).sub_(mean).div_(std)
        with autocast(dev, amp):
            if inference is None or inference.is_plain:
                scores = model(x[None])
            else:
                scores = predict_probs(model, x[None], len(meta["classes"]), inference)
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
