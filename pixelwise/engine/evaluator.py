"""Evaluation on a labelled split: the confusion-matrix metrics, boundary F1 and instance scores, for a
model in memory (:func:`evaluate`, also used during training) or a checkpoint (:func:`evaluate_checkpoint`)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Subset
from tqdm.auto import tqdm

from ..crf import CRFSettings
from ..data import SegmentationDataset, build_transforms, resolve_data_root
from ..errors import CheckpointError, ConfigError
from ..inference import InferenceSettings, batch_scores, label_instances
from ..metrics import BoundaryF1, ConfusionMatrix, ISBIScores
from ..models import input_channels
from .builders import image_mode
from .predictor import CRFOption, Predictor


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
    boundary F1 within ``boundary_width`` pixels, :class:`pixelwise.metrics.BoundaryF1`) and
    ``"instances"`` (ISBI 2012 V_rand / V_info of the connected components, or watershed
    regions, of class ``instances`` against those of the ground truth), when asked for.
    ``crf=(settings, mean, std)`` refines the probabilities with the dense CRF first (``mean``/``std``
    undo the input normalisation to give the CRF the RGB image)."""
    device = torch.device(device)
    was_training = getattr(model, "training", False)
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
        scores = batch_scores(model, images, cm.num_classes, device=device, amp=amp, settings=inference, crf=crf)
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
    if was_training:
        model.train()
    return metrics


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
    if list(ds.info.classes) != list(meta["classes"]):
        differ = [
            f"{i}: {a!r} vs {b!r}"
            for i, (a, b) in enumerate(zip(meta["classes"], ds.info.classes, strict=True))
            if a != b
        ]
        raise CheckpointError(
            f"{checkpoint} was trained with other class names than data set {ds.info.name!r} under {root} has "
            f"(checkpoint vs data set, {', '.join(differ[:3])}): the class indices would mean other things"
        )
    return ds


def class_index(name_or_index: int | str, classes: Sequence[str], option: str) -> int:
    """A class given by index or name (an unknown name lists the classes)."""
    if isinstance(name_or_index, int):
        return name_or_index
    if name_or_index not in classes:
        raise ConfigError(f"{option} {name_or_index!r}: no such class; classes: {', '.join(classes)}")
    return list(classes).index(name_or_index)


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
    crf: CRFOption = None,
    compile: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Evaluate a checkpoint on a split of the data set it was trained on (options as
    :func:`evaluate`; ``instances`` may be a class name; ``crf`` refines with the dense CRF, as
    :class:`~pixelwise.engine.predictor.Predictor`; ``compile`` as
    :func:`pixelwise.inference.optimize_for_inference`). Returns
    ``{"checkpoint", "dataset", "split", "num_images", "classes", "metrics"}``."""
    predictor = Predictor(checkpoint, device=device, amp=amp, compile=compile, inference=inference, crf=crf)
    meta = predictor.meta
    ds = checkpoint_dataset(predictor.ckpt, checkpoint, split, data_root)
    if instances is not None:
        instances = class_index(instances, meta["classes"], "--instances")
    metrics = evaluate(
        predictor.model,
        ds,
        device=predictor.device,
        num_workers=num_workers,
        amp=amp,
        inference=inference,
        boundary_width=boundary_width,
        instances=instances,
        watershed=watershed,
        crf=predictor.crf_args,
        progress=progress,
    )
    if predictor.crf is not None:
        metrics["crf"] = asdict(predictor.crf)
    return {
        "checkpoint": str(checkpoint),
        "dataset": meta["dataset"],
        "split": split,
        "num_images": len(ds),
        "classes": meta["classes"],
        "metrics": metrics,
    }
