"""From a run config to the objects a training needs: the model spec, optimizer, learning-rate schedule,
class weights and criterion."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..data import DatasetInfo, SegmentationDataset
from ..errors import ConfigError, first_line
from ..fileio import write_json
from ..losses import build_loss, check_loss_config, class_frequency_weights, loss_arguments, takes_class_weights
from ..models import input_channels


def model_spec(config: dict[str, Any], info: DatasetInfo) -> dict[str, Any]:
    """The config's model section with ``num_classes`` filled from the data set and checked."""
    spec = dict(config["model"])
    n = spec.setdefault("num_classes", info.num_classes)
    if not isinstance(n, int) or isinstance(n, bool):
        raise ConfigError(
            f"model.num_classes={n!r}: give a whole number (data set {info.name!r} has {info.num_classes} classes), "
            "or leave it out to take the data set's"
        )
    if n != info.num_classes:
        raise ConfigError(
            f"model.num_classes={n!r} but data set {info.name!r} has {info.num_classes} classes "
            f"({', '.join(info.classes)})"
        )
    in_channels = input_channels(spec)
    if not isinstance(in_channels, int) or isinstance(in_channels, bool):
        raise ConfigError(f"model.in_channels={in_channels!r}: give a whole number (1 for grey images, 3 for RGB)")
    for key in ("mean", "std"):
        if len(config["data"][key]) != in_channels:
            raise ConfigError(
                f"data.{key} has {len(config['data'][key])} values but the model takes {in_channels} input channel(s)"
            )
    return spec


def image_mode(in_channels: int) -> str:
    """The Pillow mode images are read in for a model with ``in_channels`` inputs."""
    if in_channels not in (1, 3):
        raise ConfigError(f"in_channels={in_channels}: images are read as grayscale (1) or RGB (3)")
    return "L" if in_channels == 1 else "RGB"


def parameter_groups(model: nn.Module, train_cfg: dict[str, Any]) -> list[dict[str, Any]]:
    """The optimizer's parameter groups: with ``train.head_lr_mult`` the parameters outside ``model.backbone``
    and the model's ``backbone_layers()`` (the newly initialised head) get that multiple of the learning rate, as
    DeepLab's 10x; with
    ``train.norm_bias_weight_decay`` the 1-D parameters (biases, normalisation scales and shifts) get that weight
    decay instead of ``train.weight_decay``, as timm's and torchvision's recipes (0). Each group records its
    ``lr_mult`` and whether it is the ``norm_bias`` one; empty groups are left out."""
    lr, wd = train_cfg["lr"], train_cfg["weight_decay"]
    mult, norm_bias_wd = train_cfg["head_lr_mult"], train_cfg["norm_bias_weight_decay"]
    backbone = getattr(model, "backbone", None)
    if mult != 1 and not isinstance(backbone, nn.Module):
        raise ConfigError(
            f"train.head_lr_mult={mult}: model {type(model).__name__} has no backbone (model.backbone) to tell "
            "from its head; set train.head_lr_mult: 1"
        )
    # and the layers a model makes from its backbone's ImageNet classifier (FCN's, DeepLab-VGG's fc6/fc7)
    extra = getattr(model, "backbone_layers", None)
    pretrained = [backbone, *(extra() if callable(extra) else [])] if mult != 1 else []
    in_backbone = {id(p) for module in pretrained for p in module.parameters()}
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for p in model.parameters():
        head = mult != 1 and id(p) not in in_backbone
        norm_bias = norm_bias_wd is not None and p.ndim <= 1
        groups.setdefault((head, norm_bias), []).append(p)
    return [
        {
            "params": groups[key],
            "lr": lr * (mult if key[0] else 1.0),
            "weight_decay": norm_bias_wd if key[1] else wd,
            "lr_mult": mult if key[0] else 1.0,
            "norm_bias": key[1],
        }
        for key in sorted(groups)  # backbone before head, decayed before not
    ]


def build_optimizer(model: nn.Module, train_cfg: dict[str, Any]) -> torch.optim.Optimizer:
    """SGD or AdamW over :func:`parameter_groups`."""
    name, lr, wd = train_cfg["optimizer"], train_cfg["lr"], train_cfg["weight_decay"]
    params = parameter_groups(model, train_cfg)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=train_cfg["momentum"], weight_decay=wd)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=wd)
    raise ConfigError(f"train.optimizer={name!r}; valid: sgd, adamw")


def lr_factor(train_cfg: dict[str, Any], elapsed: Callable[[], float] | None = None) -> Callable[[int], float]:
    """The learning-rate multiplier per iteration: poly (power ``train.poly_power``) or constant, scaled by a
    linear warmup over the first ``train.warmup_iters``. With ``train.max_minutes`` (a time budget) the poly
    schedule follows the training time so far, ``elapsed()`` seconds, instead of the iteration, as
    time-budgeted benchmarks do."""
    iters, warmup = train_cfg["iters"], train_cfg["warmup_iters"]
    power, schedule = train_cfg["poly_power"], train_cfg["lr_schedule"]
    budget = 60.0 * train_cfg["max_minutes"]
    if schedule not in ("poly", "constant"):
        raise ConfigError(f"train.lr_schedule={schedule!r}; valid: poly, constant")
    if budget > 0 and elapsed is None:
        raise ValueError("train.max_minutes needs the training clock (elapsed)")

    def factor(it: int) -> float:
        # warmup scales the main schedule (as mmsegmentation's), so the rate runs on without a jump where it ends
        ramp = min(1.0, (it + 1) / warmup) if warmup > 0 else 1.0
        if schedule == "constant":
            return ramp
        if budget > 0:
            return ramp * max(0.0, 1 - elapsed() / budget) ** power
        return ramp * (1 - min(it, iters - 1) / iters) ** power  # poly: (1 - iter/max_iter)^power

    return factor


def build_scheduler(
    optimizer: torch.optim.Optimizer, train_cfg: dict[str, Any], elapsed: Callable[[], float] | None = None
) -> torch.optim.lr_scheduler.LambdaLR:
    """The schedule of :func:`lr_factor`; ``elapsed`` returns the training seconds so far (for ``max_minutes``)."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(train_cfg, elapsed))


def resolve_class_weights(
    setting: str | list | None,
    dataset: SegmentationDataset,
    run_dir: Path,
    progress: bool = True,
    *,
    write: bool = True,
) -> list[float] | None:
    """``train.class_weights`` as a list: given, or computed from the training masks once and cached
    in ``run_dir/class_weights.json`` (reused on resume while the method, data set, split, classes and number of
    images are the same, else counted again; written only where ``write``: the process that holds the run
    folder's lock)."""
    if setting is None:
        return None
    n = dataset.info.num_classes
    if isinstance(setting, list):
        if len(setting) != n:
            raise ConfigError(f"train.class_weights has {len(setting)} values, the data set has {n} classes")
        return [float(w) for w in setting]
    cache = run_dir / "class_weights.json"
    # the data they were counted on: a run folder reused for other data (a data set, split or class list, or more
    # images) had the old weights silently
    source = {"root": str(dataset.root.resolve()), "name": dataset.info.name, "split": dataset.split}
    source["images"] = len(dataset)
    if cache.exists():
        cached = json.loads(cache.read_text())
        same = [cached.get(k) for k in ("method", "dataset", "classes")] == [setting, source, dataset.info.classes]
        if same and len(cached["weights"]) == n:
            return cached["weights"]
    counts, image_counts = dataset.class_counts(progress=progress)
    weights = class_frequency_weights(counts, image_counts, setting)
    if not write:
        return weights
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json(
        cache,
        {
            "method": setting,
            "dataset": source,
            "classes": dataset.info.classes,
            "weights": weights,
            "pixels": counts,
            "pixels_of_images_with_class": image_counts,
        },
    )
    return weights


def build_criterion(
    train_cfg: dict[str, Any], ignore_index: int, class_weights: list[float] | None, num_classes: int | None = None
) -> nn.Module:
    """The loss of ``train.loss`` (a name with ``train.loss_args``, or a list of summed terms), with
    the data set's ignore index and the class weights given to every term that takes them. With ``num_classes``
    it is tried once on a tiny input, so that a value it cannot take (per-class weights of another length) is
    one line before anything is written, not a traceback at the first step."""
    criterion = _build_criterion(train_cfg, ignore_index, class_weights)
    if num_classes is not None:
        logits = torch.zeros(1, num_classes, 2, 2)
        target = torch.arange(4).remainder(num_classes).reshape(1, 2, 2)
        try:
            criterion(logits, target)
        except (RuntimeError, ValueError, IndexError, TypeError) as e:
            raise ConfigError(
                f"train.loss {train_cfg['loss']!r} cannot run on the data set's {num_classes} classes: {first_line(e)}"
            ) from None
    return criterion


def _build_criterion(train_cfg: dict[str, Any], ignore_index: int, class_weights: list[float] | None) -> nn.Module:
    loss = train_cfg["loss"]
    check_loss_config(loss, train_cfg["loss_args"])
    terms = [{"name": loss, **train_cfg["loss_args"]}] if isinstance(loss, str) else [dict(t) for t in loss]
    if class_weights is not None and not any(takes_class_weights(t) for t in terms):
        raise ConfigError("train.class_weights is set but no loss term takes class weights (cross_entropy, ohem do)")
    if isinstance(loss, str):
        term = terms[0]
        term.pop("name")
        args = loss_arguments(loss)
        if "ignore_index" in args:
            term.setdefault("ignore_index", ignore_index)
        if class_weights is not None:
            key = "class_weights" if loss == "sum" else "weight"
            if key in term:
                raise ConfigError(
                    f"train.loss_args.{key} and train.class_weights both give class weights: keep one of them"
                )
            if key in args:
                term[key] = class_weights
        return build_loss(loss, **term)
    # in a list, a term's ``weight`` is its factor: the class weights travel separately
    return build_loss("sum", terms=terms, ignore_index=ignore_index, class_weights=class_weights)
