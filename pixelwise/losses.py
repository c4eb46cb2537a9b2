"""Losses: ``build_loss(name, **kwargs)`` returns a module called as ``loss(logits, target)``.

``logits`` is ``N x C x H x W``, ``target`` ``N x H x W`` class indices with ``ignore_index``
marking pixels that contribute nothing (neither to the sum nor to the normaliser).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .errors import ConfigError

_LOSSES: dict[str, Callable[..., nn.Module]] = {}


def register_loss(name: str) -> Callable[[type[nn.Module]], type[nn.Module]]:
    def wrap(cls: type[nn.Module]) -> type[nn.Module]:
        _LOSSES[name] = cls
        return cls

    return wrap


def list_losses() -> list[str]:
    return sorted(_LOSSES)


def build_loss(name: str, **kwargs: Any) -> nn.Module:
    """Build a loss by name; unknown names or arguments raise ConfigError listing the valid ones."""
    if name not in _LOSSES:
        raise ConfigError(f"unknown loss {name!r}; available: {', '.join(list_losses())}")
    cls = _LOSSES[name]
    valid = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
    unknown = sorted(set(kwargs) - set(valid))
    if unknown:
        raise ConfigError(f"loss {name!r} has no argument(s) {', '.join(unknown)}; valid: {', '.join(valid)}")
    return cls(**kwargs)


@register_loss("cross_entropy")
class CrossEntropyLoss(nn.Module):
    """Pixel-wise cross entropy averaged over the non-ignored pixels, optionally class-weighted."""

    def __init__(
        self, *, ignore_index: int = 255, weight: Sequence[float] | None = None, label_smoothing: float = 0.0
    ) -> None:
        super().__init__()
        self.ignore_index = ignore_index
        self.label_smoothing = label_smoothing
        self.register_buffer("weight", None if weight is None else torch.as_tensor(weight, dtype=torch.float32))

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if not (target != self.ignore_index).any():
            return logits.sum() * 0.0  # all pixels ignored: 0, not PyTorch's 0/0 = NaN
        return F.cross_entropy(
            logits.float(),
            target.long(),
            weight=self.weight,
            ignore_index=self.ignore_index,
            label_smoothing=self.label_smoothing,
        )
