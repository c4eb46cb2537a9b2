"""Parameter and FLOP counts of registered models."""

from __future__ import annotations

import functools
import json
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from ..errors import ConfigError
from .registry import build_model, input_channels, input_size_problem, list_models, shape_spec


def model_table(*, num_classes: int = 21, size: int = 512, progress: bool = False) -> list[dict[str, Any]]:
    """``pixelwise models``: every registered model's ``name``, ``params_m`` (millions) and ``gflops`` on a
    ``size x size`` image (each model built and run once on the meta device: ``progress`` shows a bar); a
    ConfigError naming the first model that cannot take that size."""
    from tqdm.auto import tqdm

    rows = []
    for name in tqdm(list_models(), desc="models", unit="model", disable=not progress, leave=False):
        problem = input_size_problem({"name": name, "num_classes": num_classes}, size, size)
        if problem:
            raise ConfigError(f"--size {size}: {problem}; give a larger size")
        params, flops = model_stats(name, num_classes=num_classes, size=size)
        rows.append({"name": name, "params_m": params / 1e6, "gflops": flops / 1e9})
    return rows


def model_stats(name: str, *, num_classes: int = 21, size: int = 512) -> tuple[int, int]:
    """``(parameters, FLOPs)`` of one forward pass on a ``size x size`` image (FLOPs = 2 x MACs),
    counted on the meta device: no memory or compute is spent on the activations."""
    with torch.device("meta"):
        model = build_model(name, num_classes=num_classes).eval()
        x = torch.empty(1, input_channels({"name": name}), size, size)
    params = sum(p.numel() for p in model.parameters())
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(x)
    return params, counter.get_total_flops()


@functools.lru_cache(maxsize=32)
def _largest_output_per_pixel(spec_json: str, size: int) -> float:
    spec = shape_spec(spec_json)
    with torch.device("meta"):
        model = build_model(**spec).eval()
        x = torch.empty(1, input_channels(spec), size, size)
    largest = [0]

    def hook(module: torch.nn.Module, args: tuple, out: object) -> None:
        if isinstance(out, torch.Tensor):
            largest[0] = max(largest[0], out.numel() * out.element_size())

    leaves = [m for m in model.modules() if not any(True for _ in m.children())]
    handles = [m.register_forward_hook(hook) for m in leaves]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    return largest[0] / (size * size)


def inference_bytes(spec: dict[str, Any], height: int, width: int) -> int:
    """A rough estimate of the peak memory of one ``height x width`` whole-image forward pass in fp32: three
    times the largest layer output (its input, itself and a held skip feature), scaled from a 128x128 pass on
    the meta device. Meant to tell a 50-megapixel photo from a tile, not for accounting."""
    return int(3 * _largest_output_per_pixel(json.dumps(spec, sort_keys=True), 128) * height * width)
