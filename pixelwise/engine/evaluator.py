"""Evaluation on a labelled split: the confusion-matrix metrics, boundary F1 and instance scores, for a
model in memory (:func:`evaluate`, also used during training) or a checkpoint (:func:`evaluate_checkpoint`)."""

from __future__ import annotations

import numbers
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Subset
from tqdm.auto import tqdm

from ..argmax import class_argmax
from ..cpu_threads import usable_cpus
from ..crf import CRFSettings
from ..data import SegmentationDataset, build_transforms, resolve_data_root
from ..device import autocast
from ..errors import CheckpointError, ConfigError
from ..inference import InferenceSettings, InstanceSettings, batch_scores, label_instances, predict_outputs
from ..inference.effects import class_list, parse_classes
from ..metrics import BoundaryF1, ChallengePixelError, ConfusionMatrix, InstanceMetrics, ISBIScores
from ..models import input_channels
from .builders import image_mode
from .instance_methods import InstanceOutput, decode, label_means
from .predictor import CRFOption, Predictor
from .stop_signals import EvaluationStopped, workers_end_quietly_on_sigterm

MAX_DETECTIONS = 1000
"""Detections per image and class that COCO mask AP scores (COCO's own evaluation: 100)."""


def _components(pred: np.ndarray, probs: np.ndarray, foreground: int, watershed: bool) -> InstanceOutput:
    """The connected components (or watershed regions) of one class of a semantic prediction, as instances
    scored by their mean probability of that class (``probs``: ``K x H x W``), which ranks them for COCO AP."""
    inst = label_instances(pred, foreground, watershed=watershed).astype(np.int32)
    k = int(inst.max())
    scores = label_means(inst, probs[foreground], k)[1][1:].astype(np.float32)
    return InstanceOutput(pred, inst, np.full(k, foreground, np.int64), scores)


def _until_stopped(batches: Iterator, stop: Callable[[], bool] | None) -> Iterator:
    """``batches`` until ``stop()`` says to give up (checked before each batch): :class:`EvaluationStopped`,
    also when the loader fails after it (a SIGTERM to the process group ends the loader's workers)."""
    while True:
        if stop is not None and stop():
            raise EvaluationStopped
        try:
            batch = next(batches)
        except StopIteration:
            return
        except Exception as e:
            if stop is not None and stop():
                raise EvaluationStopped from e
            raise
        yield batch


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
    instance_method: InstanceSettings | None = None,
    shard: tuple[int, int] = (0, 1),
    progress: bool = True,
    num_images: int | None = None,
    stop: Callable[[], bool] | None = None,
) -> dict[str, Any]:
    """Evaluate ``model`` on a labelled split (its first ``num_images`` only, where given): whole images, or the
    sliding-window / multi-scale / flip / quarter-turn protocol of ``inference``. With ``shard=(rank,
    world_size)`` this process takes every ``world_size``-th image and the counts (instance scores included) are
    joined over the processes.

    Returns :meth:`pixelwise.metrics.ConfusionMatrix.compute`, for a two-class data set (ISBI 2012's membrane
    and cell) ``"challenge_pixel_error"`` (:class:`pixelwise.metrics.ChallengePixelError`: the challenge's and
    the U-Net paper's pixel error, 1 - the best F-score of class 1 over thresholds of its probability), plus
    ``"boundary"`` (per-class
    boundary F1 within ``boundary_width`` pixels, :class:`pixelwise.metrics.BoundaryF1`: ``f1`` / ``mean_f1``
    from the counts pooled over the split, and Csurka et al.'s per-image BF score ``bf_score`` with
    ``bf_score_per_class``) and
    ``"instances"`` (ISBI 2012 V_rand / V_info of the connected components, or watershed
    regions, of class ``instances`` against those of the ground truth), when asked for.
    ``crf=(settings, mean, std)`` refines the probabilities with the dense CRF first (``mean``/``std``
    undo the input normalisation to give the CRF the RGB image). ``stop``: checked before each batch; when it
    returns True, :class:`~pixelwise.engine.stop_signals.EvaluationStopped` (a training's caught signal).

    Instances: with ``instance_method`` (a model trained for instances, whole images) or ``instances`` (the
    connected components, or watershed regions, of that class of a semantic model), ``"instances"`` also holds
    :class:`pixelwise.metrics.InstanceMetrics` (matching AP, precision, recall, F1 per IoU threshold, PQ, COCO
    mask AP) against the data set's instance maps (``dataset`` built with ``instances=True``; without them, the
    connected components of the true mask's class ``instances``), and the ISBI 2012 V_rand / V_info."""
    device = torch.device(device)
    was_training = getattr(model, "training", False)
    model.eval()
    info = dataset.info
    cm = ConfusionMatrix(info.num_classes, info.ignore_index, device=device)
    bf = None if boundary_width is None else BoundaryF1(cm.num_classes, cm.ignore_index, boundary_width, device=device)
    method = instance_method if instance_method is not None and instance_method.enabled else None
    binary = info.num_classes == 2 and method is None
    challenge = ChallengePixelError(ignore_index=info.ignore_index, device=device) if binary else None
    counting = method is not None or instances is not None
    isbi = ISBIScores() if counting else None
    # nuclei images hold hundreds of objects: COCO's cap of 100 detections per image would cut recall
    matching = InstanceMetrics(ignore_index=info.ignore_index, max_detections=MAX_DETECTIONS) if counting else None
    things = [instances] if method is None and instances is not None else info.thing_classes
    rank, world = shard
    count = len(dataset) if num_images is None else min(num_images, len(dataset))
    subset = dataset if world == 1 and count == len(dataset) else Subset(dataset, range(rank, count, world))
    # its workers end quietly on SIGTERM, as the training loader's (a training validates)
    loader = DataLoader(
        subset, batch_size=batch_size, num_workers=num_workers, worker_init_fn=workers_end_quietly_on_sigterm
    )
    done = 0  # images of this process's share so far: its next is the data set's rank + world * done
    for batch in tqdm(
        _until_stopped(iter(loader), stop),
        total=len(loader),
        desc=f"eval {dataset.split}",
        unit="img",
        disable=not progress,
        leave=False,
        dynamic_ncols=True,
    ):
        images, masks = batch[0].to(device), batch[1].to(device)
        true_instances = batch[2].numpy() if len(batch) > 2 else None
        if method is not None:  # whole images: the instance branch and decoding need the model's own output
            with autocast(device, amp):
                output = predict_outputs(model, images, inference)
            decoded = decode(method, output, info.num_classes, things, instance_maps=true_instances is not None)
            pred = torch.from_numpy(np.stack([d.semantic for d in decoded])).to(device)
        else:
            scores = batch_scores(
                model,
                images,
                cm.num_classes,
                device=device,
                amp=amp,
                settings=inference,
                crf=crf,
                probabilities=binary or counting,
            )
            pred = class_argmax(scores)
            if challenge is not None:
                challenge.update(scores[:, 1], masks)
            if counting:
                probs = scores.float().cpu().numpy()
                decoded = [
                    _components(p, q, instances, watershed) for p, q in zip(pred.cpu().numpy(), probs, strict=True)
                ]
        cm.update(pred, masks)
        if bf is not None:
            bf.update(pred, masks)
        if counting:
            for i, (d, t) in enumerate(zip(decoded, masks.cpu().numpy(), strict=True)):
                if true_instances is None:  # no instance maps: each thing class's connected components
                    truth = np.zeros(t.shape, np.int64)
                    for thing in things:
                        parts = label_instances(t, thing)
                        truth = np.where(parts > 0, parts + truth.max(initial=0), truth)
                elif method is None:  # one class's components: its own true instances only, not every thing's
                    truth = np.where(t == instances, true_instances[i], 0)
                else:
                    truth = true_instances[i]
                isbi.update(d.instances, truth)
                d.add_to(matching, truth, t, image_id=rank + world * (done + i))
        done += len(images)
    # joined over the processes only when each scored a share: a whole split scored in every process of a group
    # (evaluate_checkpoint after train() under torchrun) would be counted once per process
    if world > 1:
        for counts in (cm, challenge, bf, isbi, matching):
            if counts is not None:
                counts.all_reduce()
    metrics = cm.compute()
    if challenge is not None:
        metrics["challenge_pixel_error"] = challenge.compute()
    if bf is not None:
        metrics["boundary"] = {k: v for k, v in bf.compute().items() if k != "counts"}
        metrics["boundary"]["width"] = boundary_width
    if counting:
        how = {"method": method.method} if method is not None else {"foreground": instances, "watershed": watershed}
        metrics["instances"] = {**how, **matching.compute(), **isbi.compute()}
    if was_training:
        model.train()
    return metrics


def checkpoint_dataset(
    ckpt: dict[str, Any],
    checkpoint: str | os.PathLike,
    split: str,
    data_root: str | os.PathLike | None,
    instances: bool | None = False,
) -> SegmentationDataset:
    """The labelled ``split`` of the data set a checkpoint was trained on, with its evaluation
    transforms; a data set with another number of classes is a :class:`CheckpointError`. ``instances``:
    with the split's instance maps (True: required; None: where the split has them); a run whose
    ``instances.from_class`` is set takes them from the masks as it was trained."""
    meta = ckpt["meta"]
    root = resolve_data_root(data_root, ckpt.get("config", {}).get("data", {}).get("root"))
    if instances is None:
        instances = (root / meta["dataset"] / "instances" / split).is_dir()
    from_class = InstanceSettings.from_dict(meta.get("instances")).from_class_index(list(meta["classes"]))
    ds = SegmentationDataset(
        root,
        meta["dataset"],
        split,
        image_mode=image_mode(input_channels(meta["model"])),
        transforms=build_transforms(
            train=False, mean=meta["mean"], std=meta["std"], image_shift=meta.get("image_shift")
        ),
        instances=instances,
        instances_from_class=from_class,
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
    """One class given by index or name (an unknown one lists the classes)."""
    found = parse_classes(str(name_or_index), classes, option)
    if len(found) > 1:
        raise ConfigError(f"{option} {name_or_index!r}: give one class; the model's classes are {class_list(classes)}")
    return found[0]


def check_image_count(num_images: object, hint: str) -> None:
    """A ConfigError for a ``num_images`` (``--num-images``) that is no whole number (``"2"`` stopped on a raw
    TypeError); ``hint`` ends the message (what the count is, or how to leave it out)."""
    if isinstance(num_images, bool) or not isinstance(num_images, numbers.Integral):
        raise ConfigError(f"num_images={num_images!r} (--num-images): give a whole number >= 1{hint}")


def evaluate_checkpoint(
    checkpoint: str | os.PathLike,
    *,
    split: str = "val",
    data_root: str | os.PathLike | None = None,
    device: str = "auto",
    num_workers: int | None = None,
    amp: str = "none",
    inference: InferenceSettings | dict[str, Any] | None = None,
    boundary_width: int | None = None,
    instances: int | str | None = None,
    watershed: bool = False,
    crf: CRFOption = None,
    compile: bool = False,
    progress: bool = True,
    decoding: dict[str, Any] | None = None,
    num_images: int | None = None,
) -> dict[str, Any]:
    """Evaluate a checkpoint on a split of the data set it was trained on (its first ``num_images``, where given;
    options as
    :func:`evaluate`; ``instances`` may be a class name; ``crf`` refines with the dense CRF, as
    :class:`~pixelwise.engine.predictor.Predictor`; ``compile`` as
    :func:`pixelwise.inference.optimize_for_inference`; ``inference`` as :class:`Predictor`: by default the run's
    own protocol; ``decoding`` overrides the instance decoding settings, as :class:`Predictor`). Returns
    ``{"checkpoint", "dataset", "split", "num_images", "classes", "amp", "inference", "metrics"}`` (``inference``:
    the protocol used, ``None`` for the plain whole-image one), and for instance models ``"decoding"`` (the
    decoding settings used)."""
    if boundary_width is not None and not boundary_width >= 0:
        raise ConfigError(f"--boundary-width {boundary_width}: must be >= 0 pixels")
    if num_workers is not None and num_workers < 0:
        raise ConfigError(f"--num-workers {num_workers}: must be >= 0 (0 loads in this process)")
    if num_images is not None:
        check_image_count(num_images, ", or leave it out for the whole split")
    if num_images is not None and num_images < 1:
        raise ConfigError(f"--num-images {num_images}: must be >= 1 (leave it out for the whole split)")
    predictor = Predictor(
        checkpoint, device=device, amp=amp, compile=compile, inference=inference, crf=crf, decoding=decoding
    )
    meta = predictor.meta
    method = predictor.instance_method
    if method.enabled and (instances is not None or watershed):
        raise ConfigError(
            f"--instances/--watershed make instances of a semantic model's classes; this model decodes its own "
            f"(instances.method={method.method}): leave them out"
        )
    if watershed and instances is None:
        raise ConfigError("--watershed splits the instances of --instances CLASS: add --instances (or drop it)")
    # instance maps: required for an instance model, used where present for --instances, else not read
    with_maps = True if method.enabled else (None if instances is not None else False)
    ds = checkpoint_dataset(predictor.ckpt, checkpoint, split, data_root, instances=with_maps)
    if instances is not None:
        instances = class_index(instances, meta["classes"], "--instances")
    count = len(ds) if num_images is None else min(num_images, len(ds))
    checked = set()
    for (image, _), size in zip(ds.samples[:count], ds.image_sizes[:count], strict=True):
        if size not in checked:  # an image too small for the network at a scale: one line, as predict says it
            predictor.check_size(size[1], size[0], str(image))
            checked.add(size)
    metrics = evaluate(
        predictor.model,
        ds,
        device=predictor.device,
        # 2 image readers, or 1 where this process may use one CPU (more drew torch's warning under taskset)
        num_workers=min(2, usable_cpus()) if num_workers is None else num_workers,
        amp=predictor.amp,
        inference=predictor.inference,
        boundary_width=boundary_width,
        instances=instances,
        watershed=watershed,
        crf=predictor.crf_args,
        instance_method=method,
        progress=progress,
        num_images=num_images,
    )
    if predictor.crf is not None:
        metrics["crf"] = asdict(predictor.crf)
    decoded = {"decoding": method.decoding} if method.enabled else {}
    return {
        **decoded,
        "checkpoint": str(checkpoint),
        "dataset": meta["dataset"],
        "split": split,
        "num_images": len(ds) if num_images is None else min(num_images, len(ds)),
        "classes": meta["classes"],
        "amp": predictor.amp,
        "inference": None if predictor.inference is None else asdict(predictor.inference),
        "metrics": metrics,
    }
