"""A flat registry of model builders, by name.

Every builder is a function taking keyword-only arguments and returning an ``nn.Module`` whose
``forward(x)`` maps an ``N x C_in x H x W`` float tensor to ``N x num_classes x H x W`` logits at the
input size. A YAML config's ``model`` section is ``name`` plus these keyword arguments, one to one.
"""

from __future__ import annotations

import functools
import inspect
import json
import os
import re
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ..argument_types import check_argument_types
from ..errors import ConfigError, PixelwiseError, first_line

_BUILDERS: dict[str, Callable[..., nn.Module]] = {}


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Register ``fn`` under its function name. Builders take keyword-only arguments."""
    name = fn.__name__
    if name in _BUILDERS:
        raise ValueError(f"model {name!r} is already registered")
    params = inspect.signature(fn).parameters.values()
    if any(p.kind != p.KEYWORD_ONLY for p in params):
        # **kwargs too: a config's keys map one to one onto the builder's arguments, which build_model checks
        raise TypeError(f"builder {name!r} must take named keyword-only arguments (no positional ones, no **kwargs)")
    _BUILDERS[name] = fn
    return fn


def list_models() -> list[str]:
    """Names of all registered models, sorted."""
    return sorted(_BUILDERS)


def _builder(name: str) -> Callable[..., nn.Module]:
    try:
        return _BUILDERS[name]
    except KeyError:
        raise ConfigError(f"unknown model {name!r}; available: {', '.join(list_models())}") from None


def model_arguments(name: str) -> dict[str, Any]:
    """The builder's keyword arguments and their defaults (``inspect.Parameter.empty`` if required)."""
    return {p.name: p.default for p in inspect.signature(_builder(name)).parameters.values()}


def model_defaults(name: str) -> dict[str, Any]:
    """The keyword defaults of the builder ``name`` (none for a name not registered): what a spec that omits a key
    is built with. Training records them in the checkpoint, so that a later change of a default cannot change
    what an old run's spec means."""
    try:
        arguments = model_arguments(name)
    except ConfigError:
        return {}
    return {k: list(v) if isinstance(v, tuple) else v for k, v in arguments.items() if v is not inspect.Parameter.empty}


def build_model(name: str, **kwargs: Any) -> nn.Module:
    """Build a registered model by name.

    Unknown or missing arguments raise :class:`~pixelwise.errors.ConfigError` listing the valid ones.
    The returned module's ``forward`` gives logits ``N x num_classes x H x W`` at the input size.
    """
    builder = _builder(name)
    valid = model_arguments(name)
    unknown = sorted(set(kwargs) - set(valid))
    if unknown:
        raise ConfigError(f"model {name!r} has no argument(s) {', '.join(unknown)}; valid: {', '.join(valid)}")
    missing = [k for k, v in valid.items() if v is inspect.Parameter.empty and k not in kwargs]
    if missing:
        raise ConfigError(f"model {name!r} needs argument(s) {', '.join(missing)}")
    n = kwargs.get("num_classes")
    if "num_classes" in kwargs and (not isinstance(n, int) or isinstance(n, bool) or n < 1):
        raise ConfigError(f"model {name!r}: num_classes={n!r}, must be a whole number >= 1")
    pretrained = kwargs.get("pretrained_backbone")
    if not (pretrained is None or isinstance(pretrained, (bool, str, os.PathLike))):  # 1 was a TypeError in Path()
        raise ConfigError(f"model.pretrained_backbone must be true, false or a weights file path, not {pretrained!r}")
    if isinstance(pretrained, (str, os.PathLike)) and not os.fspath(pretrained).strip():  # built without weights
        raise ConfigError(
            "model.pretrained_backbone is an empty path: give a weights file, true (the library's weights) or false"
        )
    check_argument_types(f"model {name!r}", builder, kwargs)
    try:
        return builder(**kwargs)
    except PixelwiseError:
        raise
    except (ValueError, RuntimeError) as e:  # the builders' own checks (a padding, a dropout...), torch's (a width)
        raise ConfigError(f"model {name!r}: {first_line(e)}") from None


def input_channels(spec: dict[str, Any]) -> int:
    """The ``in_channels`` of a model spec (``{"name": ..., **kwargs}``): given, or the builder's default."""
    return spec.get("in_channels", model_arguments(spec["name"]).get("in_channels", 3))


def model_logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``model(x)`` as one tensor: the main output of models that return ``{"out", "aux"}``."""
    out = model(x)
    return out["out"] if isinstance(out, dict) else out


def without_pretrained(spec: dict[str, Any]) -> dict[str, Any]:
    """A model spec without ``pretrained_backbone``, for building a model whose backbone weights come from
    elsewhere (a checkpoint) or are not needed (shapes only): no download, no file only the training machine has."""
    return {k: v for k, v in spec.items() if k != "pretrained_backbone"}


def shape_spec(spec_json: str) -> dict[str, Any]:
    """A JSON model spec for building on the meta device (shapes only), :func:`without_pretrained`."""
    return without_pretrained(json.loads(spec_json))


def _meta_forward_error(spec_json: str, batch: int, height: int, width: int, training: bool) -> Exception | None:
    """What a forward pass of the model of ``spec_json`` raises on a ``batch x C x height x width`` input, in
    training or eval mode, or None: run on the meta device, shapes only (no memory, no compute)."""
    spec = shape_spec(spec_json)
    with torch.device("meta"):
        model = build_model(**spec).train(training)
        x = torch.empty(batch, input_channels(spec), height, width)
    try:
        with torch.no_grad():
            model(x)
    except Exception as e:  # noqa: BLE001 - the callers tell which errors mean what
        return e
    return None


@functools.lru_cache(maxsize=32)
def _size_error(spec_json: str, height: int, width: int) -> str | None:
    """Why the model of ``spec_json`` does not run at ``height x width`` (the first line of the error), or None.
    A shape error (RuntimeError), or an assertion or ValueError of a model that takes one size only (timm's Swin)."""
    error = _meta_forward_error(spec_json, 1, height, width, training=False)
    if error is not None and not isinstance(error, (RuntimeError, AssertionError, ValueError)):
        raise error
    return None if error is None else first_line(error)


def _runs_at(spec_json: str, height: int, width: int) -> bool:
    return _size_error(spec_json, height, width) is None


def smallest_input(spec: dict[str, Any], limit: int = 512) -> int:
    """The smallest square side the model of ``spec`` takes (its total stride sets it, e.g. 16 for the 4-pooling
    U-Net); found by running the model on the meta device."""
    text = json.dumps(spec, sort_keys=True)
    lo, hi = 1, limit
    if not _runs_at(text, hi, hi):
        return limit + 1
    while lo < hi:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if _runs_at(text, mid, mid) else (mid + 1, hi)
    return lo


@functools.lru_cache(maxsize=32)
def _single_value_batch_norm(spec_json: str, batch: int, height: int, width: int) -> str | None:
    error = _meta_forward_error(spec_json, batch, height, width, training=True)
    # torch's check in F.batch_norm: one value per channel has no variance. Anything else (a model that reads
    # values, .item(), cannot run on meta) is for training itself to say
    if isinstance(error, ValueError) and "Expected more than 1 value per channel" in str(error):
        return "x".join(re.findall(r"\d+", str(error).rsplit("input size ", 1)[-1]))  # e.g. 1x512x1x1
    if error is not None and not isinstance(error, (ValueError, RuntimeError, NotImplementedError)):
        raise error
    return None


def training_batch_problem(spec: dict[str, Any], batch: int, height: int, width: int) -> str | None:
    """``None`` if the model of ``spec`` trains on batches of ``batch`` crops of ``height x width``, else why not:
    a batch norm that would see one value per channel (a batch of one and a 1x1 map)."""
    shape = _single_value_batch_norm(json.dumps(spec, sort_keys=True), batch, height, width)
    if shape is None:
        return None
    return f"model {spec['name']}'s batch norm would get one value per channel (a map of {shape}), which cannot train"


def input_size_problem(spec: dict[str, Any], height: int, width: int) -> str | None:
    """``None`` if the model of ``spec`` takes a ``height x width`` input, else why not (one phrase)."""
    error = _size_error(json.dumps(spec, sort_keys=True), height, width)
    if error is None:
        return None
    side = smallest_input(spec)
    if side > min(height, width) and side <= 512:
        return f"model {spec['name']} needs inputs of at least {side}x{side} pixels (its total stride)"
    # not a minimum: a size it cannot divide, or one fixed size (larger squares run, or none up to 512 does)
    return f"model {spec['name']} does not run at {height}x{width}: {error}"
