"""Training targets built from an instance map after augmentation: boundary classes and Panoptic-DeepLab targets.

An instance map is an ``H x W`` integer tensor: 0 = no instance, any other value = one object (ids need not be
consecutive). Everything here is vectorised torch (window maxima, ``bincount``, one ``scatter_reduce``), runs on the
map's device, and has no Python loop over pixels or instances, so it can run in the data loader on every crop.

- :func:`boundary_classes`: background / interior / boundary, the 3-class targets of the "U-Net (3 class)" of
  U. Schmidt, M. Weigert, C. Broaddus, G. Myers, "Cell Detection with Star-convex Polygons", MICCAI 2018
  (arXiv 1806.03535), Table 1: a boundary class between touching objects lets a semantic network separate them.
- :func:`panoptic_targets`: the centre heatmap, centre offsets and loss weights of Panoptic-DeepLab
  (B. Cheng, M. D. Collins, Y. Zhu, T. Liu, T. S. Huang, H. Adam, L.-C. Chen, "Panoptic-DeepLab: A Simple,
  Strong, and Fast Baseline for Bottom-Up Panoptic Segmentation", CVPR 2020, section 3.2), with the
  conventions of detectron2's ``projects/Panoptic-DeepLab`` (``target_generator.py``): each instance's Gaussian
  is centred on its centre of mass rounded to the nearest pixel (so its peak is exactly 1) and drawn in a
  ``(2r + 1) x (2r + 1)`` window, ``r = ceil(3 sigma) + 1`` (``6 sigma + 3`` wide for an integer sigma),
  0 outside; overlapping Gaussians combine by their maximum.

The paper's losses on these targets (weighted means: ``sum(w * loss) / sum(w)``): MSE on the heatmap, weighted
by ``center_weights`` and by :data:`CENTER_LOSS_WEIGHT`; L1 on the offsets (both channels summed per pixel),
weighted by ``offset_weights`` and by :data:`OFFSET_LOSS_WEIGHT`; the semantic cross entropy may be weighted by
``semantic_weights`` (the paper weights pixels of instances smaller than 64 x 64 = 4096 pixels by 3 on
Cityscapes, detectron2's ``SMALL_INSTANCE_AREA`` / ``SMALL_INSTANCE_WEIGHT``). Crowd regions (COCO's
``iscrowd``) are to be passed as ``ignore``: they get weight 0 in every branch.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch

PAPER_SIGMA = 8.0
"""The heatmap Gaussian's standard deviation in the paper (detectron2's Cityscapes/COCO configs use 10)."""
CENTER_LOSS_WEIGHT = 200.0
"""Weight of the centre-heatmap MSE in the total loss (paper, section 3.2; detectron2 ``CENTER_LOSS_WEIGHT``)."""
OFFSET_LOSS_WEIGHT = 0.01
"""Weight of the offset L1 in the total loss (paper, section 3.2; detectron2 ``OFFSET_LOSS_WEIGHT``)."""

BACKGROUND, INTERIOR, BOUNDARY = 0, 1, 2
"""The classes of :func:`boundary_classes`."""

_INSTANCE_CHUNK = 2**21  # window elements scattered at once when drawing heatmaps (bounds the memory)


def _as_tensor(instances: torch.Tensor | np.ndarray, outside: bool = False) -> torch.Tensor:
    """The ids as an integer tensor; negative ids refused, but for -1 where ``outside`` (past the image: a crop's
    padding, :data:`~pixelwise.data.transforms.OUTSIDE`)."""
    t = torch.as_tensor(np.ascontiguousarray(instances) if isinstance(instances, np.ndarray) else instances)
    if t.dtype.is_floating_point or t.dtype.is_complex or t.dtype == torch.bool:
        raise TypeError(f"an instance map must hold integer ids, got {t.dtype}")
    if t.dtype in (torch.uint16, torch.uint32, torch.uint64):  # 16-bit PNG ids; torch has few ops for these
        t = t.to(torch.int64)
    if t.numel() and int(t.min()) < (-1 if outside else 0):
        raise ValueError("an instance map holds negative ids; 0 is no instance and ids are positive")
    return t


def class_components(mask: np.ndarray, cls: int) -> np.ndarray:
    """The instance map (int32, 0 = none, 1..K) of a data set whose objects are the 4-connected components of one
    class of its semantic mask (ISBI 2012's cells, separated by membrane: how the challenge defines its
    segments for V_rand). :func:`pixelwise.inference.label_instances` labels predictions the same way."""
    from scipy import ndimage as ndi

    region = np.asarray(mask) == cls
    components, _ = ndi.label(region, ndi.generate_binary_structure(region.ndim, 1))
    return components.astype(np.int32, copy=False)


def relabel_consecutive(instances: torch.Tensor) -> tuple[torch.Tensor, int]:
    """``(labels, K)``: ``instances`` (any shape, integer) with its nonzero ids mapped onto 1..K in increasing order
    (int64, 0 stays 0). A lookup table when the ids are small (the usual case: a ``bincount``-sized table), else a
    sort (``torch.unique``)."""
    flat = instances.reshape(-1).long()
    if flat.numel() == 0:
        return flat.reshape(instances.shape), 0
    top = int(flat.max())
    if top <= 4 * flat.numel() + 1024:
        present = torch.zeros(top + 1, dtype=torch.bool, device=flat.device)
        present[flat] = True
        present[0] = False
        lut = torch.cumsum(present, 0) * present  # id -> its rank among the present ids, 0 for absent ones
        return lut[flat].reshape(instances.shape), int(present.sum())
    ids, inverse = torch.unique(flat, return_inverse=True)
    if int(ids[0]) != 0:  # no background pixel: the smallest id got rank 0
        inverse = inverse + 1
    return inverse.reshape(instances.shape), int((ids != 0).sum())


def boundary_classes(
    instances: torch.Tensor | np.ndarray,
    width: int = 1,
    *,
    ignore: torch.Tensor | np.ndarray | None = None,
    ignore_index: int = 255,
) -> torch.Tensor:
    """Background (0) / interior (1) / boundary (2) classes (int64, shape of ``instances``: ``H x W`` or
    ``N x H x W``) of an instance map.

    An instance pixel is *boundary* when a pixel within Chebyshev distance ``width`` of it (its
    ``(2 width + 1) x (2 width + 1)`` square window) has another id, another instance's or background (0); else
    *interior*. Pixels outside the image do not count, nor do those of negative id (a crop's padding,
    :data:`~pixelwise.data.transforms.OUTSIDE`), so an object cut by the crop's or the image's edge gets no
    boundary there. Two touching objects are thus separated by a band of ``2 width`` boundary pixels (``width`` on each
    side), and the interiors of different objects are more than ``2 width`` pixels apart (Chebyshev), so their
    8-connected components never merge. ``width=0`` makes every instance pixel interior.

    Computed from the maximum and the minimum of the ids over each window (a pixel is interior when both equal its
    own id), by shifted views of the id map, not per pixel. ``ignore`` (bool, same shape, e.g.
    ``mask == ignore_index`` of the semantic mask) marks pixels set to ``ignore_index`` in the result.
    """
    if width < 0:
        raise ValueError(f"boundary width must be >= 0, got {width}")
    inst = _as_tensor(instances, outside=True)
    if inst.dim() not in (2, 3):
        raise ValueError(f"an instance map must be H x W or N x H x W, got shape {tuple(inst.shape)}")
    ids = inst.long()
    out = (ids > 0).long()  # 0 background, 1 instance
    if width > 0 and ids.numel():
        # outside the image: -1 for the maximum and the largest int64 for the minimum, values no id can beat
        high = _window_extreme(ids, width, torch.maximum, -1)  # a negative id never beats a pixel's own
        big = torch.iinfo(torch.int64).max
        low = _window_extreme(ids.masked_fill(ids < 0, big), width, torch.minimum, big)
        out = out + ((high != ids) | (low != ids)).long() * out
    if ignore is not None:
        mask = torch.as_tensor(ignore, device=out.device).bool()
        out = out.masked_fill(mask, ignore_index)
    return out


def _window_extreme(x: torch.Tensor, r: int, op: Callable, outside: int) -> torch.Tensor:
    """``op`` (``torch.maximum`` / ``torch.minimum``) over each pixel's ``(2r + 1)^2`` window of ``... x H x W`` ``x``,
    the image padded with ``outside``: a row pass then a column pass of shifted views, 2(2r + 1) elementwise ops
    (cheaper on CPU than a stride-1 max-pooling, and exact on int64 ids of any size)."""
    h, w = x.shape[-2:]
    padded = x.new_full((*x.shape[:-2], h + 2 * r, w + 2 * r), outside)
    padded[..., r : r + h, r : r + w] = x
    rows = padded[..., :, :w]
    for d in range(1, 2 * r + 1):
        rows = op(rows, padded[..., :, d : d + w])
    out = rows[..., :h, :]
    for d in range(1, 2 * r + 1):
        out = op(out, rows[..., d : d + h, :])
    return out


def instance_centers(instances: torch.Tensor | np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(ids, centers, areas)`` of the instances present in an ``H x W`` map: their ids (K, increasing, dtype of
    the map as int64), centres of mass (K x 2 float64, (y, x) in pixels) and pixel counts (K int64), from three
    ``bincount`` over the map."""
    inst = _as_tensor(instances)
    labels, k = relabel_consecutive(inst)
    ids = torch.zeros(k + 1, dtype=torch.long, device=inst.device)
    ids[labels.reshape(-1)] = inst.reshape(-1).long()
    centers, areas = _centers(labels, k)
    return ids[1:], centers[1:], areas[1:]


def _centers(labels: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(K+1) x 2 float64 centres of mass (row 0: zeros) and K+1 areas of a consecutive ``H x W`` label map."""
    h, w = labels.shape
    flat = labels.reshape(-1)
    areas = torch.bincount(flat, minlength=k + 1)
    ys = torch.arange(h, dtype=torch.float64, device=labels.device).repeat_interleave(w)
    xs = torch.arange(w, dtype=torch.float64, device=labels.device).repeat(h)
    sums = torch.stack([torch.bincount(flat, ys, minlength=k + 1), torch.bincount(flat, xs, minlength=k + 1)], 1)
    centers = sums / areas.clamp(min=1).unsqueeze(1).to(torch.float64)
    centers[0] = 0.0
    return centers, areas


def gaussian_heatmap(
    centers: torch.Tensor, height: int, width: int, sigma: float | torch.Tensor = PAPER_SIGMA
) -> torch.Tensor:
    """``1 x H x W`` float32: the maximum over ``centers`` (K x 2, (y, x)) of a Gaussian of std ``sigma`` peaking
    at 1 on the centre rounded to the nearest pixel, drawn in a ``(2r + 1)^2`` window (``r = ceil(3 sigma) + 1``)
    and 0 outside it, as detectron2's Panoptic-DeepLab target generator draws them. ``sigma`` is one std for all
    centres or one per centre (K).

    One ``scatter_reduce(amax)`` of all the windows (in chunks of instances to bound the memory), no loop over
    instances for the usual sizes."""
    device = centers.device
    k = centers.shape[0]
    sigmas = torch.as_tensor(sigma, dtype=torch.float32, device=device).reshape(-1)
    if sigmas.numel() not in (1, k) or not (sigmas > 0).all():
        smallest = float(sigmas.min()) if sigmas.numel() else None
        raise ValueError(
            f"sigma must be positive, one value or one per centre ({k}); got {sigmas.numel()} value(s), the smallest "
            f"{smallest}"
        )
    heat = torch.zeros(height * width, dtype=torch.float32, device=device)
    if k == 0 or height * width == 0:
        return heat.reshape(1, height, width)
    radii = torch.ceil(3 * sigmas).long() + 1  # each centre's own window
    r = int(radii.max())
    d = torch.arange(-r, r + 1, device=device)
    d2 = (d[:, None] ** 2 + d[None, :] ** 2).to(torch.float32)  # S x S
    if sigmas.numel() == 1:
        shared = torch.exp(-d2 / (2 * sigmas**2))[None]  # 1 x S x S: one kernel for all centres
    else:
        reach = torch.maximum(d[:, None].abs(), d[None, :].abs())  # S x S: which windows hold each offset
    peaks = torch.round(centers).long()  # half to even, as numpy's round in detectron2
    per_chunk = max(1, _INSTANCE_CHUNK // d2.numel())
    for start in range(0, k, per_chunk):
        p = peaks[start : start + per_chunk]
        if sigmas.numel() == 1:
            g = shared.expand(p.shape[0], -1, -1)
        else:
            s, w = sigmas[start : start + per_chunk, None, None], radii[start : start + per_chunk, None, None]
            g = torch.exp(-d2 / (2 * s**2)) * (reach <= w)  # K x S x S
        ys = p[:, 0, None, None] + d[None, :, None]  # K x S x 1
        xs = p[:, 1, None, None] + d[None, None, :]  # K x 1 x S
        inside = (ys >= 0) & (ys < height) & (xs >= 0) & (xs < width)  # K x S x S
        index = (ys * width + xs).expand(inside.shape)[inside]
        heat.scatter_reduce_(0, index, g[inside], reduce="amax")
    return heat.reshape(1, height, width)


def center_sigmas(areas: torch.Tensor, sigma: float, per_radius: float | None) -> float | torch.Tensor:
    """The std of each instance's centre Gaussian: ``sigma`` for all, or with ``per_radius`` set,
    ``min(sigma, per_radius * sqrt(area / pi))`` and at least 1 pixel (or ``sigma`` if that is smaller), so
    that the peaks of small touching objects stay apart (two touching discs of radius R lie 2R apart; with std
    R / 2 the heatmap between them falls to exp(-2) = 0.14 instead of merging)."""
    if per_radius is None:
        return sigma
    radius = torch.sqrt(areas.to(torch.float32) / math.pi)
    return (per_radius * radius).clamp(min=1.0, max=sigma)


def panoptic_targets(
    instances: torch.Tensor | np.ndarray,
    sigma: float = PAPER_SIGMA,
    *,
    ignore: torch.Tensor | np.ndarray | None = None,
    small_instance_area: int = 0,
    small_instance_weight: float = 1.0,
    sigma_per_radius: float | None = None,
) -> dict[str, torch.Tensor]:
    """Panoptic-DeepLab training targets (Cheng et al., CVPR 2020, section 3.2) of an ``H x W`` instance map
    (0 = no instance; every instance is a "thing"; stuff has no instance id).

    Returns a dict of float32 tensors (fixed shapes, so a DataLoader batches them):

    - ``center`` (1 x H x W): :func:`gaussian_heatmap` of the instances' centres of mass, std ``sigma`` (with
      ``sigma_per_radius``: per instance, :func:`center_sigmas`, from its area in this crop).
    - ``offset`` (2 x H x W): at each instance pixel ``(dy, dx)`` = its instance's centre of mass (exact, not
      rounded) minus the pixel's ``(y, x)``; 0 elsewhere. Pixel + offset = centre.
    - ``center_weights`` (1 x H x W): 1, 0 on ``ignore`` pixels (unlabelled or crowd regions).
    - ``offset_weights`` (1 x H x W): 1 on instance pixels, 0 elsewhere and on ``ignore``.
    - ``semantic_weights`` (H x W): ``small_instance_weight`` on the pixels of instances with fewer than
      ``small_instance_area`` pixels (counted in this crop, after augmentation), 1 elsewhere, 0 on ``ignore``
      (the paper: 3 for instances under 64 x 64 pixels; the defaults here weight nothing).

    Centres of mass come from ``bincount`` over the ids, offsets from indexing the centre table with the id map,
    the heatmap from one scatter of Gaussian windows; nothing loops over pixels or instances.
    """
    inst = _as_tensor(instances)
    if inst.dim() != 2:
        raise ValueError(f"an instance map must be H x W, got shape {tuple(inst.shape)}")
    h, w = inst.shape
    device = inst.device
    labels, k = relabel_consecutive(inst)
    centers, areas = _centers(labels, k)  # row 0 is background: zeros
    center = gaussian_heatmap(centers[1:], h, w, center_sigmas(areas[1:], sigma, sigma_per_radius))

    ys = torch.arange(h, dtype=torch.float64, device=device)[:, None]
    xs = torch.arange(w, dtype=torch.float64, device=device)[None, :]
    on = labels > 0
    own = centers[labels]  # H x W x 2: each pixel's instance centre
    offset = torch.stack([own[..., 0] - ys, own[..., 1] - xs]).where(on, 0.0).to(torch.float32)

    valid = torch.ones(h, w, dtype=torch.bool, device=device)
    if ignore is not None:
        valid = ~torch.as_tensor(ignore, device=device).bool()
    center_weights = valid.to(torch.float32).unsqueeze(0)
    offset_weights = (on & valid).to(torch.float32).unsqueeze(0)
    semantic_weights = valid.to(torch.float32)
    if small_instance_area > 0 and small_instance_weight != 1.0:
        small = (areas < small_instance_area) & (torch.arange(k + 1, device=device) > 0)
        semantic_weights = torch.where(small[labels] & valid, float(small_instance_weight), semantic_weights)
    return {
        "center": center,
        "offset": offset,
        "center_weights": center_weights,
        "offset_weights": offset_weights,
        "semantic_weights": semantic_weights,
    }
