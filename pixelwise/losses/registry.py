"""The loss registry: ``build_loss(name, **kwargs)`` and the helpers every loss shares (the ignore index
never counts)."""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from ..argument_types import check_argument_types
from ..errors import ConfigError, DataError, first_line

_LOSSES: dict[str, Callable[..., nn.Module]] = {}


def register_loss(name: str) -> Callable[[type[nn.Module]], type[nn.Module]]:
    """Class decorator: register a loss under ``name`` for :func:`build_loss`. Its ``__init__`` takes keyword-only
    arguments (a config's ``loss_args`` map one to one onto them); anything else is a TypeError."""

    def wrap(cls: type[nn.Module]) -> type[nn.Module]:
        params = list(inspect.signature(cls.__init__).parameters.values())[1:]  # without self
        if any(p.kind != p.KEYWORD_ONLY for p in params):
            raise TypeError(f"loss {name!r} must take named keyword-only arguments (no positional ones, no **kwargs)")
        _LOSSES[name] = cls
        return cls

    return wrap


def list_losses() -> list[str]:
    """Names of all registered losses, sorted."""
    return sorted(_LOSSES)


def loss_arguments(name: str) -> list[str]:
    """The names of loss ``name``'s arguments; ConfigError listing the losses for an unknown name."""
    if name not in _LOSSES:
        raise ConfigError(f"unknown loss {name!r}; available: {', '.join(list_losses())}")
    return [p for p in inspect.signature(_LOSSES[name].__init__).parameters if p != "self"]


def build_loss(name: str, **kwargs: Any) -> nn.Module:
    """Build a loss by name; unknown names or arguments raise ConfigError listing the valid ones."""
    valid = loss_arguments(name)
    unknown = sorted(set(kwargs) - set(valid))
    if unknown:
        raise ConfigError(f"loss {name!r} has no argument(s) {', '.join(unknown)}; valid: {', '.join(valid)}")
    # the loss's own checks first (they say what the value means); then the annotated types, for what it took
    # silently (a YAML true as ignore index 1) or failed on without a word of its own
    try:
        loss = _LOSSES[name](**kwargs)
    except TypeError:
        check_argument_types(f"loss {name!r}", _LOSSES[name].__init__, kwargs)
        raise
    check_argument_types(f"loss {name!r}", _LOSSES[name].__init__, kwargs)
    return loss


def check_loss_config(loss: str | Sequence[Any], loss_args: dict[str, Any]) -> None:
    """``train.loss`` and ``train.loss_args`` checked when a config is loaded, before any data is read: every
    loss name and argument name (a ConfigError listing the valid ones), and the values each loss checks itself."""
    if isinstance(loss, str):
        terms, factor = [{"name": loss, **loss_args}], False
    else:
        if loss_args:
            raise ConfigError("train.loss_args applies to a single named loss; give a list's terms their own args")
        terms, factor = list(loss), True
    for term in terms:
        if not isinstance(term, dict) or "name" not in term:
            raise ConfigError(f"train.loss term {term!r} needs a name; available: {', '.join(list_losses())}")
        valid = loss_arguments(term["name"])
        unknown = sorted(set(term) - {"name"} - set(valid) - ({"weight"} if factor else set()))
        if unknown:
            raise ConfigError(
                f"loss {term['name']!r} has no argument(s) {', '.join(unknown)}; valid: {', '.join(valid)}"
            )
        if term["name"] == "sum":
            check_loss_config(term.get("terms") or [], {})
    try:  # its values too (a factor < 0, a label smoothing of 2): built once, as training will
        if isinstance(loss, str):
            build_loss(loss, **loss_args)
        else:
            build_loss("sum", terms=[dict(t) for t in loss])
    except (TypeError, ValueError) as e:
        raise ConfigError(f"train.loss: {first_line(e)}") from None


def takes_class_weights(term: dict[str, Any]) -> bool:
    """Whether a loss term takes per-class weights (its ``weight``, or a sum's terms')."""
    if term["name"] == "sum":
        return any(takes_class_weights(t) for t in term.get("terms") or [])
    return "weight" in loss_arguments(term["name"])


def _valid(target: torch.Tensor, ignore_index: int) -> torch.Tensor:
    return target != ignore_index


def check_target(
    loss: str,
    logits: torch.Tensor,
    target: torch.Tensor,
    valid: torch.Tensor,
    ignore_index: int,
    weight: torch.Tensor | None = None,
    what: str = "weight",
) -> bool:
    """The check every loss makes of its input, before torch's own errors (or a silent ``.long()`` floor): a
    ``target`` shaped as ``logits`` without their class dim (DataError), per-class ``weight`` (named ``what``) of
    one value per class (ConfigError), and classes in ``0..C-1`` where ``valid`` (not ``ignore_index``) and whole
    numbers (DataError). Returns whether any pixel is labelled, for the same one device sync."""
    if logits.dim() < 2 or target.shape != logits.shape[:1] + logits.shape[2:]:
        raise DataError(
            f"{loss} target of shape {tuple(target.shape)} does not fit logits of shape {tuple(logits.shape)}: give "
            "N x H x W class indices for N x C x H x W logits"
        )
    num_classes = logits.shape[1]
    if weight is not None and weight.numel() != num_classes:
        raise ConfigError(f"{loss} {what} has {weight.numel()} values for {num_classes} classes: give one per class")
    labelled = (target.to(torch.uint8) if target.dtype == torch.bool else target).where(valid, 0)
    lo, hi = torch.aminmax(labelled) if labelled.numel() else (labelled.new_zeros(()), labelled.new_zeros(()))
    whole = (labelled == labelled.trunc()).all() if labelled.is_floating_point() else valid.new_ones(())
    lo, hi = lo.double(), hi.double()
    stats = torch.stack([valid.any().double(), whole.double(), lo, hi])
    any_valid, is_whole, lo_value, hi_value = stats.tolist()  # the one device sync
    if not is_whole:
        raise DataError(
            f"{loss} target holds fractions, not class indices: give whole class numbers (an integer tensor)"
        )
    if lo_value < 0 or hi_value >= num_classes:
        bad = hi_value if hi_value >= num_classes else lo_value
        shown = int(bad) if math.isfinite(bad) else bad
        raise DataError(
            f"{loss} target holds class {shown} but the logits have {num_classes} classes: give classes "
            f"0..{num_classes - 1}, or ignore_index {ignore_index} for unlabelled pixels"
        )
    return bool(any_valid)


def _float(x: torch.Tensor) -> torch.Tensor:
    """``x`` in float32 at least: fp16/bf16 up (the losses' sums and logs), float64 kept."""
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


def _zero(logits: torch.Tensor) -> torch.Tensor:
    # no labelled pixel: 0 with a (zero) gradient, not 0/0 = NaN; in float32 at least (an fp16 sum of a crop's
    # logits overflows to inf, and inf * 0 is NaN)
    return (_float(logits) * 0.0).sum()


def _as_weight(weight: Sequence[float] | None, what: str = "weight") -> torch.Tensor | None:
    """Per-class weights as a tensor: finite and >= 0 (a negative one trains that class's pixels to be wrong)."""
    if weight is None:
        return None
    values = list(weight) if isinstance(weight, (list, tuple)) else [weight]
    if not all(isinstance(w, (int, float)) and not isinstance(w, bool) and math.isfinite(w) and w >= 0 for w in values):
        raise ConfigError(f"loss {what} {weight!r}: give numbers >= 0 (one per class)")
    return torch.as_tensor(values, dtype=torch.float32)


def _term_factor(name: str, factor: Any) -> float:
    """A summed term's ``weight``: a number (or a string of one, from YAML read elsewhere than ``load_yaml``)."""
    try:
        value = None if isinstance(factor, bool) else float(factor)
    except (TypeError, ValueError):
        value = None
    if value is None:
        raise ConfigError(
            f"loss term {name!r}: 'weight' is the term's factor (a number), got {factor!r}; "
            "per-class weights come from train.class_weights"
        )
    if not math.isfinite(value) or value < 0:  # a negative factor trains to make that term worse
        raise ConfigError(f"loss term {name!r}: weight {factor!r}, the term's factor, must be a number >= 0")
    return value


@register_loss("sum")
class WeightedSum(nn.Module):
    """``sum_i weight_i * loss_i``; ``terms`` is a list of ``{"name": ..., "weight": ..., **kwargs}``.

    In a term, ``weight`` is the term's scalar factor; per-class weights (``class_weights``) go to every
    term whose loss takes them (its own ``weight`` argument), so the two never collide."""

    def __init__(
        self,
        *,
        terms: Sequence[dict[str, Any]],
        ignore_index: int = 255,
        class_weights: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        if not terms:
            raise ConfigError("loss 'sum' needs at least one term")
        self.weights: list[float] = []
        modules = []
        for term in terms:
            term = dict(term)
            if "name" not in term:
                raise ConfigError(f"loss term {term} has no 'name'; available: {', '.join(list_losses())}")
            name = term.pop("name")
            self.weights.append(_term_factor(name, term.pop("weight", 1.0)))
            args = loss_arguments(name)
            if "ignore_index" in args:
                term.setdefault("ignore_index", ignore_index)
            if class_weights is not None and "weight" in args:
                term["weight"] = list(class_weights)
            elif class_weights is not None and name == "sum":  # a nested sum hands them to its own terms
                term["class_weights"] = list(class_weights)
            modules.append(build_loss(name, **term))
        self.terms = nn.ModuleList(modules)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return sum(w * term(logits, target) for w, term in zip(self.weights, self.terms, strict=True))
