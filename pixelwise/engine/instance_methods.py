"""The instance segmentation methods a run's ``instances`` config section
(:class:`~pixelwise.inference.InstanceSettings`) selects, from training targets to
decoded instances: one place that says what each method changes in the model, the data, the loss and the output.

``method``:

- ``none``: semantic segmentation only (the default).
- ``connected_components``: a semantic model; each connected component of a thing class is an instance (the
  StarDist paper's "U-Net (2 class)" baseline; touching objects merge). 8-connected, as that baseline (skimage's
  ``label``), except where the true instances are themselves a class's 4-connected components
  (``instances.from_class``, or a data set without instance maps): there 4-connected, as the truth
  (:func:`component_connectivity`), so that a perfect semantic map scores perfectly.
- ``boundary``: a semantic model with one more class, the instances' boundaries (``boundary_width`` pixels on
  each side of where two objects or an object and the background meet,
  :func:`pixelwise.data.instance_targets.boundary_classes`); instances are the connected components of the
  interior grown back over the boundary (:func:`pixelwise.inference.instances_from_boundary`); the StarDist
  paper's "U-Net (3 class)".
- ``panoptic``: Panoptic-DeepLab (Cheng et al., CVPR 2020): the model's instance branch
  (``instance_head="panoptic"``) predicts a centre heatmap and offsets, trained with
  :class:`pixelwise.losses.PanopticLoss`, decoded by :func:`pixelwise.inference.panoptic_postprocess`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from scipy import ndimage as ndi
from torch import nn

from ..data import DatasetInfo
from ..data.instance_targets import boundary_classes, panoptic_targets
from ..errors import ConfigError
from ..inference import InstanceSettings, instances_from_boundary, panoptic_postprocess
from ..losses import PanopticLoss
from ..metrics import InstanceMetrics


def model_arguments(settings: InstanceSettings, info: DatasetInfo) -> dict[str, Any]:
    """What the method adds to the model's builder arguments: one more class for ``boundary``, the instance
    branch for ``panoptic``."""
    if settings.method == "boundary":
        return {"num_classes": info.num_classes + 1}
    if settings.method == "panoptic":
        return {"instance_head": "panoptic"}
    return {}


class TargetBuilder:
    """``(mask, instances) -> target`` after augmentation (runs in the data loader's workers): the mask with
    the boundary class (``boundary``), or a dict with the mask and Panoptic-DeepLab's targets (``panoptic``)."""

    def __init__(self, settings: InstanceSettings, num_classes: int, ignore_index: int) -> None:
        self.settings, self.num_classes, self.ignore_index = settings, num_classes, ignore_index

    def __call__(self, mask: torch.Tensor, instances: torch.Tensor) -> torch.Tensor | dict[str, torch.Tensor]:
        ignore = mask == self.ignore_index
        if self.settings.method == "boundary":
            border = boundary_classes(instances, self.settings.boundary_width, ignore=ignore) == 2
            return torch.where(border, self.num_classes, mask)
        if self.settings.method == "panoptic":
            s = self.settings
            targets = panoptic_targets(
                instances.clamp(min=0),  # past the image (a crop's padding): no instance, and ignored anyway
                s.center_sigma,
                ignore=ignore,
                small_instance_area=s.small_instance_area,
                small_instance_weight=s.small_instance_weight,
                sigma_per_radius=s.center_sigma_per_radius,
            )
            keys = ["center", "center_weights", "offset", "offset_weights"]
            if s.weighs_small_instances:
                keys.append("semantic_weights")
            return {"mask": mask, **{k: targets[k] for k in keys}}
        return mask


def build_loss(settings: InstanceSettings, semantic: nn.Module) -> nn.Module:
    """The training criterion: the semantic one, or Panoptic-DeepLab's sum for ``panoptic``."""
    if settings.method == "panoptic":
        if settings.weighs_small_instances and not getattr(semantic, "takes_pixel_weights", False):
            raise ConfigError(
                f"instances.small_instance_weight={settings.small_instance_weight} weighs pixels of the semantic "
                f"loss, which {type(semantic).__name__} cannot: use train.loss: cross_entropy, or "
                "small_instance_weight: 1"
            )
        return PanopticLoss(semantic, center_weight=settings.center_weight, offset_weight=settings.offset_weight)
    return semantic


@dataclass
class InstanceOutput:
    """One image's decoded output: ``semantic`` (H x W int64 classes of the data set), ``instances`` (H x W
    int32, 0 = none, 1..K), ``classes`` and ``scores`` (K each)."""

    semantic: np.ndarray
    instances: np.ndarray
    classes: np.ndarray
    scores: np.ndarray

    def add_to(
        self, matching: InstanceMetrics, truth: np.ndarray, true_classes: np.ndarray, image_id: int | None = None
    ) -> None:
        """Score this image in ``matching`` against its true instance map and class map (instance ``k`` carries
        ``classes[k - 1]`` and ``scores[k - 1]``); ``image_id``: its place in the data set."""
        matching.update(
            truth,
            self.instances,
            true_classes=true_classes,
            pred_classes={k + 1: int(c) for k, c in enumerate(self.classes)},
            scores={k + 1: float(v) for k, v in enumerate(self.scores)},
            image_id=image_id,
        )


def label_means(labels: np.ndarray, values: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per label 0..``k`` of ``labels``: its pixel count, and the mean of ``values`` over its pixels (0 where it
    has none): an instance's score from a probability map."""
    flat = labels.ravel()
    sizes = np.bincount(flat, minlength=k + 1)
    return sizes, np.bincount(flat, weights=values.ravel(), minlength=k + 1) / np.maximum(sizes, 1)


def component_connectivity(settings: InstanceSettings, instance_maps: bool = True) -> int:
    """The ``connected_components`` method's neighbourhood, 4 or 8: 4 where the data set's true instances are a
    class's 4-connected components (``instances.from_class``, or no ``instance_maps``), else 8."""
    return 8 if instance_maps and settings.from_class is None else 4


def _components(
    semantic: np.ndarray, probs: np.ndarray, things: list[int], min_size: int, connectivity: int
) -> InstanceOutput:
    """Connected components of each thing class, scored by their mean class probability."""
    instances = np.zeros(semantic.shape, np.int32)
    classes, scores = [], []
    structure = ndi.generate_binary_structure(2, 1 if connectivity == 4 else 2)
    for c in things:
        labels, k = ndi.label(semantic == c, structure=structure)
        if k == 0:
            continue
        sizes, score = label_means(labels, probs[c], k)
        keep = np.flatnonzero(sizes >= max(min_size, 1))
        keep = keep[keep > 0]
        lut = np.zeros(k + 1, np.int32)
        lut[keep] = len(classes) + 1 + np.arange(keep.size)
        instances = np.where(labels > 0, lut[labels], instances)
        classes += [c] * keep.size
        scores += score[keep].tolist()
    return InstanceOutput(semantic, instances, np.asarray(classes, np.int64), np.asarray(scores, np.float32))


def decode(
    settings: InstanceSettings,
    output: torch.Tensor | dict[str, torch.Tensor],
    num_classes: int,
    thing_classes: list[int],
    *,
    instance_maps: bool = True,
) -> list[InstanceOutput]:
    """Instances of a batch of model outputs (logits ``N x C x H x W``, or the panoptic model's dict);
    ``instance_maps=False``: the data set has none, its true instances are components (see
    :func:`component_connectivity`)."""
    if settings.method == "panoptic":
        results = panoptic_postprocess(
            output["out"].float(),
            output["center"].float(),
            output["offset"].float(),
            thing_classes,
            threshold=settings.center_threshold,
            nms_kernel=settings.nms_kernel,
            top_k=settings.top_k,
            label_divisor=10 ** len(str(settings.top_k)),  # above top_k, as the panoptic ids need (unused here)
        )
        decoded = []
        for r in results:
            inst, classes, scores = r.instances.cpu().numpy(), r.classes.cpu().numpy(), r.scores.cpu().numpy()
            if settings.min_size > 1 and classes.size:
                sizes = np.bincount(inst.ravel(), minlength=classes.size + 1)
                keep = np.flatnonzero(sizes[1:] >= settings.min_size)
                lut = np.zeros(classes.size + 1, np.int32)
                lut[keep + 1] = np.arange(1, keep.size + 1)
                inst, classes, scores = lut[inst], classes[keep], scores[keep]
            decoded.append(InstanceOutput(r.semantic.cpu().numpy(), inst.astype(np.int32), classes, scores))
        return decoded
    logits = output["out"] if isinstance(output, dict) else output
    probs = torch.softmax(logits.float(), 1).cpu().numpy()
    decoded = []
    for p in probs:
        semantic = p[:num_classes].argmax(0)
        if settings.method == "boundary":
            label = p.argmax(0)
            thing = np.isin(label, thing_classes)
            three = np.where(label == num_classes, 2, np.where(thing, 1, 0))
            inst, scores = instances_from_boundary(three, min_size=settings.min_size)
            # an instance's class: the majority of the semantic argmax over its pixels (among the thing classes)
            k = int(inst.max())
            pairs = inst.ravel().astype(np.int64) * num_classes + semantic.ravel()
            votes = np.bincount(pairs, minlength=(k + 1) * num_classes).reshape(k + 1, num_classes)
            masked = votes[1:, thing_classes]
            classes = np.asarray(thing_classes, np.int64)[masked.argmax(1)] if masked.size else np.zeros(0, np.int64)
            fg_prob = p[[*thing_classes, num_classes]].sum(0)
            scores = label_means(inst, fg_prob, len(classes))[1][1:]
            # the semantic map agrees with the instances: their pixels (boundary ones too) take their class
            semantic = np.where(inst > 0, np.concatenate([[0], classes])[inst], semantic)
            decoded.append(InstanceOutput(semantic, inst.astype(np.int32), classes, scores.astype(np.float32)))
        else:
            connectivity = component_connectivity(settings, instance_maps)
            decoded.append(_components(semantic, p, thing_classes, settings.min_size, connectivity))
    return decoded
