"""``pixelwise crf-search``: the dense CRF's parameters searched on a val subset of a checkpoint's data set
(the network runs once per image, :func:`pixelwise.crf.search.grid_search` does the rest), the best
written into the run's ``config.yaml`` where ``--crf`` reads them."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from ..crf.search import check_run_config_writable, grid_points, grid_search, write_crf_to_run_config
from ..crf.settings import DEFAULT_GRID, settings_for
from ..errors import ConfigError
from ..fileio import check_output_file, write_json
from ..inference import InferenceSettings
from .evaluator import check_image_count, checkpoint_dataset
from .predictor import Predictor, check_crf_applies
from .video import batch_probabilities

SEARCH_RESULTS = "crf_search.json"
"""Where crf-search writes every setting's scores, beside the run's config.yaml."""


def spread_indices(length: int, count: int) -> list[int]:
    """``count`` indices of ``range(length)`` spread evenly from the first to the last (all of them when
    ``count >= length``): data sets stored in sequence order (CamVid's val holds a few drives one after the other)
    would otherwise be tuned on one scene."""
    if count >= length:
        return list(range(length))
    if count == 1:
        return [0]
    return [round(i * (length - 1) / (count - 1)) for i in range(count)]


def crf_search(
    checkpoint: str | os.PathLike,
    *,
    split: str = "val",
    data_root: str | os.PathLike | None = None,
    num_images: int = 20,
    iterations: int | None = None,
    grid: dict[str, Sequence[float] | float] | None = None,
    device: str = "auto",
    amp: str = "none",
    inference: InferenceSettings | dict[str, Any] | None = None,
    write: bool = True,
    progress: bool = True,
) -> dict[str, Any]:
    """Grid-search ``grid`` (default :data:`~pixelwise.crf.settings.DEFAULT_GRID`; each parameter's values a list,
    or one number that fixes it: ``{"w1": 3.0}`` is ``{"w1": [3.0]}``) on ``num_images`` images of
    ``split`` spread evenly over it (:func:`spread_indices`); with ``write`` the best settings go into the ``crf``
    section of the run's ``config.yaml`` and the whole search into ``crf_search.json`` beside the checkpoint. The
    network's probabilities come from the run's inference protocol, or ``inference`` over it (as
    :class:`Predictor`), in precision ``amp``. Returns the search result, with the protocol used under
    ``"inference"``."""
    check_image_count(num_images, " (the images the settings are scored on)")
    if num_images < 1:
        raise ConfigError(f"--num-images {num_images}: must be >= 1 (the images the settings are scored on)")
    predictor = Predictor(checkpoint, device=device, amp=amp, inference=inference)
    check_crf_applies(checkpoint, predictor.instance_method, "there is nothing for crf-search to tune")
    meta, ckpt = predictor.meta, predictor.ckpt
    ds = checkpoint_dataset(ckpt, checkpoint, split, data_root)
    base = settings_for(checkpoint, ckpt.get("config", {}).get("crf"), {"iterations": iterations})
    grid = grid or DEFAULT_GRID
    grid_points(grid, base)  # a bad value stops here, not after the network's pass over the images
    grid = dict(grid)
    if write:  # as must the places the results go
        check_run_config_writable(Path(checkpoint).parent / "config.yaml")
        results = Path(checkpoint).parent / SEARCH_RESULTS
        check_output_file(results, "crf-search's results", overwrite=True, folder_hint="move it away: they go there")
    cached = []
    indices = spread_indices(len(ds), num_images)
    with torch.inference_mode():
        for i in tqdm(indices, desc="network", disable=not progress, leave=False):
            x, y = ds[i]
            x = x[None].to(predictor.device)
            # the run's protocol (e.g. half-size images): the CRF is tuned on what eval/predict --crf will refine
            probs = batch_probabilities(predictor, x)
            cached.append((probs, x, y[None].to(predictor.device)))
    result = grid_search(
        cached,
        num_classes=ds.info.num_classes,
        ignore_index=ds.info.ignore_index,
        mean=meta["mean"],
        std=meta["std"],
        grid=grid,
        base=base,
        progress=progress,
    )
    result["image_indices"] = indices
    result["inference"] = None if predictor.inference is None else asdict(predictor.inference)
    if write:
        run_dir = Path(checkpoint).parent
        result["run_config"] = str(run_dir / "config.yaml")
        write_json(run_dir / SEARCH_RESULTS, result)  # first: the settings a config.yaml holds are explained
        write_crf_to_run_config(run_dir / "config.yaml", result["best"])
    return result
