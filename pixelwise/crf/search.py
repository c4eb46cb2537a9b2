"""Grid search of the dense CRF's parameters by mIoU on held-out images, as DeepLab v1/v2 (sec. 4.1)
cross-validate w1, theta_alpha and theta_beta with w2 and theta_gamma fixed (so does
:data:`~pixelwise.crf.settings.DEFAULT_GRID`: those two keep the run's values).
The network's probabilities are computed once (:func:`pixelwise.engine.crf_search`); every combination
refines those."""

from __future__ import annotations

import itertools
import math
import numbers
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from ..errors import ConfigError
from ..fileio import atomic_write_text, cannot_create_in, dump_yaml, load_yaml
from ..metrics import ConfusionMatrix
from .postprocess import apply_crf
from .settings import DEFAULT_GRID, GRID_PARAMETERS, CRFSettings  # noqa: F401  (the grid's defaults, importable here too)

Cached = Sequence[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]  # (probabilities, normalised image, mask)


def _grid_values(name: str, given: Any) -> list[Any]:
    """The values ``grid[name]`` gives: a list (tuple, array) as is, one number as that value alone
    (``{"w1": 3.0}``); anything else (a string, read character by character; an empty list) a ConfigError."""
    if isinstance(given, numbers.Real) or (hasattr(given, "ndim") and given.ndim == 0):
        return [given]
    values = [] if isinstance(given, (str, bytes, Mapping)) or not isinstance(given, Iterable) else list(given)
    if not values:
        raise ConfigError(
            f"CRF search grid {name}={given!r}: give a list of values (e.g. [3.0, 4.0, 5.0]) or one number"
        )
    return values


def grid_points(grid: dict[str, Sequence[float] | float], base: CRFSettings) -> list[CRFSettings]:
    """Every combination of ``grid`` (each parameter's values: a list, or one number for that value alone), the
    other parameters from ``base`` (each checked: a ConfigError naming the first bad value or unknown name)."""
    if not isinstance(grid, Mapping):
        raise ConfigError(
            f"CRF search grid {grid!r}: give a dict of parameter: values (e.g. {{'w1': [3.0, 4.0, 5.0]}})"
        )
    unknown = sorted(set(grid) - set(CRFSettings.names()))
    if unknown:
        raise ConfigError(
            f"unknown dense CRF parameter(s) {', '.join(unknown)}; valid: {', '.join(CRFSettings.names())}"
        )
    names = list(grid)
    # numpy numbers (np.linspace) as Python's: they are written to YAML and JSON at the end
    # each value once (--w1 5 5 scored the same settings twice), in the order given
    values = [[v.item() if hasattr(v, "item") else v for v in _grid_values(name, grid[name])] for name in names]
    values = [list(dict.fromkeys(v)) if all(isinstance(x, (int, float)) for x in v) else v for v in values]
    combos = itertools.product(*values)
    return [CRFSettings(**{**asdict(base), **dict(zip(names, values, strict=True))}) for values in combos]


def grid_search(
    cached: Cached,
    *,
    num_classes: int,
    ignore_index: int,
    mean: Sequence[float],
    std: Sequence[float],
    grid: dict[str, Sequence[float]],
    base: CRFSettings,
    progress: bool = True,
) -> dict[str, Any]:
    """mIoU of every combination of ``grid`` (the other parameters from ``base``) on ``cached`` network
    outputs. Returns ``{"best": settings dict, "best_miou", "no_crf_miou", "num_images", "results": [...]}``."""
    if not cached:
        raise ConfigError("the CRF search needs at least one image")
    points = grid_points(grid, base)
    device = cached[0][0].device

    def score(settings: CRFSettings | None) -> float:
        cm = ConfusionMatrix(num_classes, ignore_index, device=device)
        for probs, x, y in cached:
            cm.update(probs if settings is None else apply_crf(probs, x, mean, std, settings), y)
        return cm.compute()["miou"]

    results = []
    no_crf = score(None)
    bar = tqdm(points, desc="crf-search", disable=not progress)
    for settings in bar:
        t = time.perf_counter()
        miou = score(settings)
        results.append({**asdict(settings), "miou": miou, "seconds": time.perf_counter() - t})
        bar.set_postfix(best=f"{max(r['miou'] for r in results):.4f}")
    scored = [r for r in results if not math.isnan(r["miou"])]
    if not scored:
        raise ConfigError(
            f"no labelled pixel in the {len(cached)} image(s) searched (every mIoU is undefined): search another "
            "split, or more images"
        )
    best = max(scored, key=lambda r: r["miou"])
    return {
        "best": {name: best[name] for name in CRFSettings.names()},
        "best_miou": best["miou"],
        "no_crf_miou": no_crf,
        "num_images": len(cached),
        "results": results,
    }


def check_run_config_writable(run_config: str | os.PathLike) -> None:
    """Before a search: the run's ``config.yaml`` (and its folder) must take the result, or the search's time is
    lost at its end; a read-only file is the user's choice, not replaced."""
    run_config = _written_file(Path(run_config))
    # the mode bits, not os.access: root may write anything, and would replace a file made read-only to keep it
    if run_config.exists() and not (os.access(run_config, os.W_OK) and run_config.stat().st_mode & 0o200):
        raise ConfigError(
            f"{run_config} is read-only, and crf-search writes its best settings there: make it writable, or "
            "search without writing (crf_search(..., write=False))"
        )
    if (error := cannot_create_in(run_config.parent, run_config.name)) is not None:  # tried, as atomic_write will
        raise ConfigError(
            f"cannot write in {run_config.parent} ({error}), where crf-search writes its results: make it writable"
        )
    _run_config(run_config)  # a file that holds no config stops here, not after the search


def write_crf_to_run_config(run_config: str | os.PathLike, settings: dict[str, Any]) -> None:
    """Put ``settings`` into the ``crf`` section of a run's ``config.yaml`` (atomically; the file's comments are
    not kept: it is the run's resolved config, which pixelwise wrote)."""
    run_config = Path(run_config)
    check_run_config_writable(run_config)
    config = _run_config(run_config)
    config["crf"] = settings
    atomic_write_text(_written_file(run_config), dump_yaml(config))


def _written_file(run_config: Path) -> Path:
    """The file a write of ``run_config`` replaces: through a link, the file it names (replacing the link would
    leave that file with the old settings, and the write's temporary goes beside it)."""
    if not run_config.is_symlink():
        return run_config
    try:
        return run_config.resolve(strict=False)
    except (RuntimeError, OSError):  # a loop
        raise ConfigError(f"{run_config} is a link that leads back to itself: put the run's config there") from None


def _run_config(run_config: Path) -> dict[str, Any]:
    """The run's config.yaml as a mapping ({} where there is none); a ConfigError where it holds something else."""
    config = (load_yaml(run_config.read_text()) if run_config.is_file() else None) or {}
    if not isinstance(config, dict):
        raise ConfigError(f"{run_config} does not hold a config (a mapping of sections): fix it or move it away")
    return config
