"""Losses: ``build_loss(name, **kwargs)`` returns a module called as ``loss(logits, target)``.

``logits`` is ``N x C x H x W``, ``target`` ``N x H x W`` class indices; pixels whose target is
``ignore_index`` contribute nothing (neither to the sum nor to the normaliser), so changing the
logits there changes neither the loss nor any gradient.

Names: ``cross_entropy`` (optionally class-weighted), ``focal`` (Lin et al. 2017), ``dice`` (soft
multi-class Dice), ``lovasz`` (Lovász-softmax, Berman et al. 2018), ``ohem`` (online hard example
mining cross entropy), ``unet_weighted`` (cross entropy with the U-Net border weight map,
Ronneberger et al. 2015 eq. 2), and ``sum`` (a weighted sum of any of these).

:class:`PanopticLoss` (Panoptic-DeepLab, Cheng et al. 2020: a semantic criterion plus MSE on the centre heatmap and
L1 on the offsets) has no name: it wraps one of the above and is built in code for models with an instance head.
"""

from __future__ import annotations

from . import border_weights, cross_entropy, region  # noqa: F401  (registers the losses)
from .border_weights import UNetWeightedCrossEntropy, unet_weight_map, write_weight_map
from .class_weights import class_frequency_weights
from .cross_entropy import CrossEntropyLoss, FocalLoss, OHEMCrossEntropy
from .panoptic import PanopticLoss
from .region import DiceLoss, LovaszSoftmaxLoss
from .registry import (
    WeightedSum,
    build_loss,
    check_loss_config,
    list_losses,
    loss_arguments,
    register_loss,
    takes_class_weights,
)

__all__ = [
    "check_loss_config",
    "takes_class_weights",
    "CrossEntropyLoss",
    "DiceLoss",
    "FocalLoss",
    "LovaszSoftmaxLoss",
    "OHEMCrossEntropy",
    "PanopticLoss",
    "UNetWeightedCrossEntropy",
    "WeightedSum",
    "build_loss",
    "class_frequency_weights",
    "list_losses",
    "loss_arguments",
    "register_loss",
    "unet_weight_map",
    "write_weight_map",
]
