"""Dense-CRF post-processing for ``pixelwise eval/predict --crf`` and the parameter search of
``pixelwise crf-search`` (DeepLab v1/v2 sec. 4.1 cross-validate w1, theta_alpha, theta_beta on a
held-out subset with w2 and theta_gamma fixed; so does this search by default).

The CRF needs the RGB image: it is recovered from the normalised network input
(``round((x * std + mean) * 255)``, exact for 8-bit images); a grayscale image is repeated to 3
channels (the colour distance then is sqrt(3) times the grey-level distance).
"""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
import yaml
from tqdm.auto import tqdm

from . import crf as _crf
from .checkpoint import atomic_write
from .errors import ConfigError
from .inference import model_logits


@dataclass
class CRFSettings:
    """The dense CRF's parameters (defaults: :mod:`pixelwise.crf`, DeepLab-v2's released settings)."""

    iterations: int = _crf.DEFAULT_ITERATIONS
    w1: float = _crf.DEFAULT_W1
    theta_alpha: float = _crf.DEFAULT_THETA_ALPHA
    theta_beta: float = _crf.DEFAULT_THETA_BETA
    w2: float = _crf.DEFAULT_W2
    theta_gamma: float = _crf.DEFAULT_THETA_GAMMA

    @classmethod
    def from_dict(cls, values: dict[str, Any] | None, source: str = "crf") -> CRFSettings:
        values = dict(values or {})
        valid = [f.name for f in fields(cls)]
        unknown = sorted(set(values) - set(valid))
        if unknown:
            raise ConfigError(f"unknown {source} key(s) {', '.join(unknown)}; valid: {', '.join(valid)}")
        return cls(**values)


def settings_for(
    checkpoint: str | os.PathLike, stored: dict[str, Any] | None, overrides: dict[str, Any] | None = None
) -> CRFSettings:
    """CRF parameters: ``overrides`` (CLI flags) over the ``crf`` section of ``config.yaml`` beside the
    checkpoint (where ``crf-search`` writes), over the checkpoint's own config, over the defaults."""
    values = dict(stored or {})
    beside = Path(checkpoint).parent / "config.yaml"
    if beside.is_file():
        values.update((yaml.safe_load(beside.read_text()) or {}).get("crf") or {})
    values.update({k: v for k, v in (overrides or {}).items() if v is not None})
    return CRFSettings.from_dict(values)


def rgb_uint8(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """Normalised ``N x C x H x W`` network input back to ``N x H x W x 3`` uint8 RGB."""
    m = torch.as_tensor(mean, device=images.device, dtype=torch.float32).view(1, -1, 1, 1)
    s = torch.as_tensor(std, device=images.device, dtype=torch.float32).view(1, -1, 1, 1)
    rgb = ((images.float() * s + m) * 255).round().clamp(0, 255).to(torch.uint8)
    if rgb.shape[1] == 1:
        rgb = rgb.expand(-1, 3, -1, -1)
    return rgb.permute(0, 2, 3, 1).contiguous()


def apply_crf(
    probs: torch.Tensor, images: torch.Tensor, mean: Sequence[float], std: Sequence[float], settings: CRFSettings
) -> torch.Tensor:
    """Refined ``N x K x H x W`` probabilities (``probs``: softmax output, ``images``: normalised input)."""
    return _crf.dense_crf_batch(rgb_uint8(images, mean, std), probs, **asdict(settings))


def crf_search(
    model: torch.nn.Module,
    dataset: Any,
    *,
    mean: Sequence[float],
    std: Sequence[float],
    grid: dict[str, Sequence[float]],
    base: CRFSettings,
    num_images: int = 20,
    device: torch.device | str = "cpu",
    progress: bool = True,
) -> dict[str, Any]:
    """Grid search of CRF parameters by mIoU on the first ``num_images`` of ``dataset``.

    The network runs once per image; every parameter combination refines the stored probabilities.
    Returns ``{"best": settings dict, "best_miou", "no_crf_miou", "results": [...]}``."""
    from .metrics import ConfusionMatrix

    n = min(num_images, len(dataset))
    cached = []
    model.eval()
    with torch.inference_mode():
        for i in tqdm(range(n), desc="network", disable=not progress, leave=False):
            x, y = dataset[i]
            x = x[None].to(device)
            cached.append((torch.softmax(model_logits(model, x).float(), 1), x, y[None].to(device)))
    k = dataset.info.num_classes

    def score(settings: CRFSettings | None) -> float:
        cm = ConfusionMatrix(k, dataset.info.ignore_index, device=device)
        for probs, x, y in cached:
            cm.update(probs if settings is None else apply_crf(probs, x, mean, std, settings), y)
        return cm.compute()["miou"]

    names = list(grid)
    combos = list(itertools.product(*(grid[name] for name in names)))
    results = []
    no_crf = score(None)
    bar = tqdm(combos, desc="crf-search", disable=not progress)
    for values in bar:
        settings = CRFSettings(**{**asdict(base), **dict(zip(names, values, strict=True))})
        t = time.perf_counter()
        miou = score(settings)
        results.append({**asdict(settings), "miou": miou, "seconds": time.perf_counter() - t})
        bar.set_postfix(best=f"{max(r['miou'] for r in results):.4f}")
    best = max(results, key=lambda r: r["miou"])
    return {
        "best": {f.name: best[f.name] for f in fields(CRFSettings)},
        "best_miou": best["miou"],
        "no_crf_miou": no_crf,
        "num_images": n,
        "results": results,
    }


def write_crf_to_run_config(run_config: Path, settings: dict[str, Any]) -> None:
    """Put ``settings`` into the ``crf`` section of a run's ``config.yaml`` (atomically)."""
    config = yaml.safe_load(run_config.read_text()) if run_config.is_file() else {}
    config["crf"] = settings
    atomic_write(run_config, lambda f: f.write(yaml.safe_dump(config, sort_keys=False).encode()))
