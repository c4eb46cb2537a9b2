"""An exponential moving average of the weights (Polyak and Juditsky 1992; ``train.ema_decay``).

After every optimizer step the average moves towards the trained weights, ``avg <- d * avg + (1 - d) * w``, with
``d = min(ema_decay, (1 + n) / (10 + n))`` after ``n`` updates (TensorFlow's ``ExponentialMovingAverage`` with
``num_updates``): early on the average follows the weights closely, so a short time budget is not averaged
with the random initialisation. Batch-norm statistics are averaged with the weights (as timm's ``ModelEmaV3``
does), so the averaged model is evaluated as it stands. Built on :class:`torch.optim.swa_utils.AveragedModel`.

With the average on, validation scores it, and checkpoints hold it under ``"model"`` (what eval, predict, export
and ``init_from`` read), the trained weights under ``"train_model"`` and the update count under ``"ema"``
(``last.pt`` only, for resuming)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel


class WeightEMA:
    """The moving average of ``model``'s parameters and buffers, updated by :meth:`update` after each step."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"decay={decay}: must be in (0, 1)")
        self.decay = decay
        self.averaged = AveragedModel(model, multi_avg_fn=self._lerp, use_buffers=True)
        self.averaged.eval()

    @property
    def module(self) -> nn.Module:
        """The averaged model (same class and parameter names as the trained one)."""
        return self.averaged.module

    @property
    def updates(self) -> int:
        return int(self.averaged.n_averaged)

    def decay_at(self, updates: int) -> float:
        """The decay of the update after ``updates`` earlier ones (the first one copies the weights)."""
        return min(self.decay, (1.0 + updates) / (10.0 + updates))

    def _lerp(self, averaged: list[torch.Tensor], current: list[torch.Tensor], _: torch.Tensor) -> None:
        # AveragedModel groups the tensors by dtype; batch norm's integer step counters are copied, not averaged
        if averaged[0].is_floating_point():
            # called before AveragedModel counts this update: `updates` is the number of earlier ones
            torch._foreach_lerp_(averaged, current, 1.0 - self.decay_at(self.updates))
        else:
            torch._foreach_copy_(averaged, current)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Move the average towards ``model``'s current weights (the unwrapped model, not DDP's wrapper)."""
        self.averaged.update_parameters(model)

    def state(self) -> dict[str, Any]:
        """What resuming needs besides the averaged weights (saved under ``"model"``)."""
        return {"updates": self.updates, "decay": self.decay}

    def load(self, weights: dict[str, torch.Tensor], state: dict[str, Any]) -> None:
        self.module.load_state_dict(weights)
        self.averaged.n_averaged.fill_(int(state["updates"]))
