"""The U-Net border weights (Ronneberger et al., MICCAI 2015, eq. 2): a per-pixel weight map that makes the
thin gaps between touching objects count, and the cross entropy weighted by it."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from torch import nn

from ..errors import ConfigError, DataError
from ..fileio import check_output_file
from .registry import _float, _valid, _zero, check_target, register_loss


def check_weight_map_args(w0: float, sigma: float) -> None:
    """The border term's weight and width: ``w0 >= 0`` (0: no border term) and ``sigma > 0`` pixels, both finite."""
    if isinstance(w0, bool) or not isinstance(w0, (int, float)) or not 0 <= w0 < math.inf:
        raise ConfigError(
            f"U-Net weight map w0={w0!r}: must be a finite number >= 0 (the paper's 10; 0: no border term)"
        )
    if isinstance(sigma, bool) or not isinstance(sigma, (int, float)) or not 0 < sigma < math.inf:
        raise ConfigError(f"U-Net weight map sigma={sigma!r}: must be a finite number > 0 of pixels (the paper's 5)")


def write_weight_map(
    mask_path: str | os.PathLike,
    out: str | os.PathLike,
    *,
    w0: float = 10.0,
    sigma: float = 5.0,
    foreground: int = 1,
    class_balance: bool = True,
    ignore_index: int = 255,
    overwrite: bool = False,
) -> np.ndarray:
    """``pixelwise weight-map``: the :func:`unet_weight_map` of the mask file ``mask_path``, drawn as a heat map
    picture at ``out`` (written whole or not at all; an existing file only replaced with ``overwrite``, the mask
    itself never); returns the map."""
    from ..data.dataset import read_mask
    from ..visualize import save_heatmap

    if Path(out).exists() and Path(mask_path).exists() and os.path.samefile(out, mask_path):
        raise ConfigError(f"--out {out} is the mask it is computed from: choose another file for the weight map")
    check_output_file(out, "--out", overwrite)
    mask = read_mask(Path(mask_path))
    if not (mask == foreground).any():
        present = ", ".join(str(c) for c in np.unique(mask).tolist()[:20])
        raise DataError(
            f"{mask_path} holds no pixel of class {foreground} (it holds {present}): --foreground names the class "
            "whose connected components are the objects"
        )
    weights = unet_weight_map(
        mask, w0, sigma, foreground=foreground, class_balance=class_balance, ignore_index=ignore_index
    )
    save_heatmap(weights, out, title=f"U-Net weights, w0={w0}, sigma={sigma}: max {weights.max():.2f}")
    return weights


def unet_weight_map(
    mask: np.ndarray,
    w0: float = 10.0,
    sigma: float = 5.0,
    *,
    foreground: int = 1,
    class_balance: bool = True,
    ignore_index: int = 255,
) -> np.ndarray:
    """The U-Net weight map (Ronneberger et al. 2015, eq. 2) of an ``H x W`` label array:

    ``w(x) = w_c(x) + w0 * exp(-(d1(x) + d2(x))^2 / (2 sigma^2))``

    with ``d1``, ``d2`` the distances to the nearest and second-nearest object (4-connected
    component of the ``foreground`` class) and ``w_c`` balancing the class frequencies of this mask
    (``w_c = n / (k * n_c)`` for the ``k`` classes present, or 1 with ``class_balance=False``). As in
    the paper's Fig. 3d the border term is applied to the pixels between objects (not foreground);
    it is cut off where it falls below ``1e-4 * w0``, which bounds the distance computations to each
    object's neighbourhood. Ignored pixels get weight 0."""
    check_weight_map_args(w0, sigma)
    mask = np.asarray(mask)
    labelled = mask != ignore_index
    weights = np.ones(mask.shape, dtype=np.float32)
    if class_balance and labelled.any():
        values, counts = np.unique(mask[labelled], return_counts=True)
        lut = {v: labelled.sum() / (len(values) * c) for v, c in zip(values, counts, strict=True)}
        for v, w in lut.items():
            weights[mask == v] = w
    objects, count = ndimage.label(mask == foreground)
    if count >= 2 and w0 > 0:
        reach = int(math.ceil(sigma * math.sqrt(2 * math.log(1e4)))) + 1  # where the term is < 1e-4 w0
        d1 = np.full(mask.shape, np.inf, dtype=np.float32)
        d2 = np.full(mask.shape, np.inf, dtype=np.float32)
        for k, (rows, cols) in enumerate(ndimage.find_objects(objects), start=1):
            box = tuple(slice(max(s.start - reach, 0), s.stop + reach) for s in (rows, cols))
            dist = ndimage.distance_transform_edt(objects[box] != k).astype(np.float32)  # to object k
            a, b = d1[box], d2[box]
            d2[box] = np.minimum(b, np.maximum(a, dist))
            d1[box] = np.minimum(a, dist)
        border = w0 * np.exp(-((d1 + d2) ** 2) / (2 * sigma**2))
        between = labelled & (mask != foreground)
        weights[between] += border[between]
    weights[~labelled] = 0
    return weights


@register_loss("unet_weighted")
class UNetWeightedCrossEntropy(nn.Module):
    """Cross entropy weighted per pixel by :func:`unet_weight_map`, computed from the (augmented)
    target of each batch: ``sum w(x) CE(x) / #labelled pixels``."""

    def __init__(
        self,
        *,
        w0: float = 10.0,
        sigma: float = 5.0,
        foreground: int = 1,
        class_balance: bool = True,
        ignore_index: int = 255,
    ) -> None:
        super().__init__()
        check_weight_map_args(w0, sigma)
        self.w0, self.sigma, self.foreground = w0, sigma, foreground
        self.class_balance, self.ignore_index = class_balance, ignore_index

    def weights(self, target: torch.Tensor) -> torch.Tensor:
        maps = [
            unet_weight_map(
                t,
                self.w0,
                self.sigma,
                foreground=self.foreground,
                class_balance=self.class_balance,
                ignore_index=self.ignore_index,
            )
            for t in target.detach().cpu().numpy()
        ]
        return torch.from_numpy(np.stack(maps)).to(target.device)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        valid = _valid(target, self.ignore_index)
        if not check_target("unet_weighted", logits, target, valid, self.ignore_index):
            return _zero(logits)
        ce = F.cross_entropy(_float(logits), target.long(), ignore_index=self.ignore_index, reduction="none")
        return (ce * self.weights(target)).sum() / valid.sum()
