"""Instances from semantic output: connected components of one class, optionally split by a
distance-transform watershed.

:func:`label_instances` takes the pixels of one semantic class (e.g. class 1 "cell" of ISBI
2012, whose class 0 is "membrane") and labels their connected components with 4-connectivity (face
connectivity in N-D: pixels touching only at a corner are separate instances, as in the challenge's own
evaluation). 0 is background. With ``watershed=True`` touching objects are split by a distance-transform
watershed: Euclidean distance to the background (``scipy.ndimage.distance_transform_edt``), markers at its local
maxima (a pixel equal to the maximum of its ``(2 * min_distance + 1)``-wide square window, as
``skimage.feature.peak_local_max`` does; 8-connected plateaus of maxima form one marker; a component without such
a maximum gets one at its deepest pixel), then a marker-controlled watershed by immersion (L. Vincent and
P. Soille, "Watersheds in digital spaces", TPAMI 1991) of the inverted distance quantised to ``levels`` grey
levels, flooding through 4-neighbours only. Flooding never crosses the background, so an instance never spans
two connected components, and every foreground pixel gets an instance. Only NumPy and SciPy are needed.
``scipy.ndimage.watershed_ift`` is deliberately not used: its arc weight is the grey-level *difference*
``|f(p) - f(q)|`` (it floods a gradient, not a relief) and it breaks cost ties last-in-first-out, so on a distance
map, whose differences are about 1 everywhere, one marker floods along a line through the other basin.

:func:`instances_from_boundary` decodes the 3-class (background / interior / boundary) output of a network trained
on :func:`pixelwise.data.instance_targets.boundary_classes` (the "U-Net (3 class)" of U. Schmidt et al., "Cell
Detection with Star-convex Polygons", MICCAI 2018): the interior's connected components are the seeds, grown back
over the foreground (interior + boundary) by a geodesic breadth-first flood, :func:`_flood` with a flat relief
(each foreground pixel goes to the seed it reaches first through foreground pixels, so a seed never
crosses the background); foreground components without any interior become instances of their own.
"""

from __future__ import annotations

import numpy as np
import torch

from ..data.instance_targets import class_components


def _relabel_consecutive(labels: np.ndarray) -> np.ndarray:
    """Map the nonzero ids of ``labels`` onto 1..K in increasing order, keeping 0 as 0."""
    if labels.size and labels.min() >= 0 and labels.max() <= 4 * labels.size + 1024:
        # a lookup table of the ids present: no sort (np.unique sorts every pixel)
        present = np.zeros(int(labels.max()) + 1, bool)
        present[labels.ravel()] = True
        rank = (np.cumsum(present) - 1)[labels].astype(np.int64)
        return rank if present[0] else rank + 1
    ids, inverse = np.unique(labels, return_inverse=True)
    inverse = inverse.reshape(labels.shape).astype(np.int64)
    return inverse if ids[0] == 0 else inverse + 1


def label_instances(
    semantic: np.ndarray,
    foreground: int,
    *,
    watershed: bool = False,
    min_distance: int = 3,
    levels: int = 256,
) -> np.ndarray:
    """Instance ids (int64, 0 = background, 1..K) of the pixels of class ``foreground`` in ``semantic``.

    Connected components with 4-connectivity; ``watershed=True`` also splits touching objects with a
    distance-transform watershed seeded at the maxima of ``(2 * min_distance + 1)``-wide windows (so distinct
    seeds are normally more than ``min_distance`` apart; larger values split less), flooding the distance
    quantised to ``levels`` grey levels (see the module docstring).
    """
    from scipy import ndimage as ndi

    mask = np.asarray(semantic) == foreground
    structure = ndi.generate_binary_structure(mask.ndim, 1)  # 4-connectivity, as class_components
    components = class_components(semantic, foreground).astype(np.int64)
    n = int(components.max(initial=0))
    if not watershed or n == 0:
        return components
    if min_distance < 1:
        raise ValueError(f"min_distance must be at least 1, got {min_distance}")

    dist = ndi.distance_transform_edt(mask)
    window_max = ndi.maximum_filter(dist, size=2 * min_distance + 1, mode="constant", cval=0.0)
    peaks = mask & (dist == window_max)
    markers, m = ndi.label(peaks, np.ones((3,) * mask.ndim, bool))
    # a plateau of seeds is one seed (8-connected), but never across two objects: objects are 4-connected, and
    # diagonal seeds of two objects touching at a corner would flood both with one label
    markers = _relabel_consecutive(np.where(peaks, markers.astype(np.int64) * (n + 1) + components, 0))
    m = int(markers.max(initial=0))
    index = np.arange(1, n + 1)
    missing = index[ndi.maximum(peaks.astype(np.uint8), components, index) == 0]
    for k, pos in enumerate(ndi.maximum_position(dist, components, missing), start=1):
        markers[pos] = m + k

    flooded = _flood(dist, markers.astype(np.int64), mask, structure, levels)
    return _relabel_consecutive(flooded)


def _flood(
    dist: np.ndarray | None, markers: np.ndarray, mask: np.ndarray, structure: np.ndarray, levels: int
) -> np.ndarray:
    """Marker-controlled watershed by immersion (L. Vincent and P. Soille, TPAMI 1991) of ``-dist``.

    ``dist`` is quantised to ``levels`` grey levels; from the highest level down, the pixels of ``mask`` at that
    level join the pending set, and the labelled basins grow into pending pixels in synchronous breadth-first
    steps over the ``structure`` neighbours (where two basins reach a pixel in the same step the larger label
    wins). Pending pixels not connected to any basin wait for a lower level; those never reached stay 0.
    ``dist=None`` is a flat relief: one level, a plain geodesic breadth-first growth of the markers in ``mask``.
    """
    padded_shape = tuple(n + 2 for n in mask.shape)  # a 0 frame, so flat neighbour offsets never wrap
    inner = tuple(slice(1, -1) for _ in mask.shape)
    labels = np.zeros(padded_shape, np.int64)
    labels[inner] = np.where(mask, markers, 0)
    strides = np.cumprod((1,) + padded_shape[:0:-1])[::-1]
    centre = np.array(structure.shape) // 2
    offsets = np.array([int(np.dot(o - centre, strides)) for o in np.argwhere(structure) if (o != centre).any()])

    in_mask = np.zeros(padded_shape, bool)
    in_mask[inner] = mask
    flat = np.flatnonzero(in_mask.ravel() & (labels.ravel() == 0))
    if dist is None:
        groups = [flat]
    else:
        d = np.zeros(padded_shape)
        d[inner] = dist
        level = np.ceil(d.ravel()[flat] / dist.max() * levels).astype(np.int64)
        order = np.argsort(-level, kind="stable")
        flat, level = flat[order], level[order]
        groups = np.split(flat, np.flatnonzero(np.diff(level)) + 1)
    out = labels.ravel()
    pending = np.empty(0, np.int64)
    for group in groups:
        pending = np.concatenate([pending, group])
        while pending.size:
            best = out[pending[:, None] + offsets[None, :]].max(1)
            hit = best > 0
            if not hit.any():
                break
            out[pending[hit]] = best[hit]
            pending = pending[~hit]
    return labels[inner]


def instances_from_boundary(
    probs_or_labels: np.ndarray | torch.Tensor,
    *,
    min_size: int = 0,
    interior_threshold: float | None = None,
    foreground_threshold: float | None = None,
    connectivity: int = 8,
) -> tuple[np.ndarray, np.ndarray]:
    """``(instances, scores)`` from a 3-class background (0) / interior (1) / boundary (2) prediction.

    ``probs_or_labels``: ``3 x H x W`` class probabilities (softmax output; numpy or torch, any device) or an
    ``H x W`` map of classes (values other than 1 and 2, e.g. an ignore value, are background). From probabilities
    the classes are the argmax, unless ``interior_threshold`` (interior where ``p_interior >= t``) or
    ``foreground_threshold`` (foreground where ``1 - p_background >= t``) is given.

    Seeds are the connected components of the interior (``connectivity`` 8 or 4). Every foreground pixel
    (interior or boundary) then goes to the seed it reaches first through foreground pixels (a breadth-first
    flood over the same neighbourhood; where two seeds arrive in the same step the higher id wins); a 4-connected
    foreground component with no interior at all (an object too thin for one) becomes one instance. Instances with
    fewer than ``min_size`` pixels are dropped (set to 0).

    On exact targets (``boundary_classes(m, width)``) with 8-connectivity this recovers every object that is
    the union of the ``(2 width + 1)``-wide squares inside it (its morphological opening): a boundary pixel is
    then within ``width`` steps of its own interior, and more than ``width`` steps from any other.

    Returns the ``H x W`` int32 id map (0 background, 1..K consecutive: the seeds in raster order of their first
    pixel, then the seedless components) and K float32 scores for ranking (COCO AP): the mean interior
    probability over each instance's seed pixels (its whole area for a seedless component), or 1.0 given classes.
    """
    from scipy import ndimage as ndi

    if connectivity not in (4, 8):
        raise ValueError(f"connectivity must be 4 or 8, got {connectivity}")
    x = probs_or_labels.detach().cpu().numpy() if isinstance(probs_or_labels, torch.Tensor) else probs_or_labels
    x = np.asarray(x)
    if x.ndim == 3:
        if x.shape[0] != 3:
            raise ValueError(f"expected 3 x H x W probabilities (background, interior, boundary), got {x.shape}")
        probs = x.astype(np.float32, copy=False)
        classes = probs.argmax(0)
        interior = classes == 1 if interior_threshold is None else probs[1] >= interior_threshold
        foreground = classes != 0 if foreground_threshold is None else 1.0 - probs[0] >= foreground_threshold
        foreground |= interior
        p_interior = probs[1]
    elif x.ndim == 2:
        interior = x == 1
        foreground = interior | (x == 2)
        p_interior = None
    else:
        raise ValueError(f"expected 3 x H x W probabilities or an H x W class map, got shape {x.shape}")

    structure = ndi.generate_binary_structure(2, 1 if connectivity == 4 else 2)
    seeds, n = ndi.label(interior, structure)
    # 4-connected here whatever ``connectivity``: a seedless object touching another only at a corner stays apart
    components, m = ndi.label(foreground, ndi.generate_binary_structure(2, 1))
    if m:
        # foreground components that hold no seed become seeds themselves (e.g. objects too thin for an interior)
        has_seed = np.zeros(m + 1, bool)
        has_seed[components[seeds > 0]] = True
        orphan_ids = np.zeros(m + 1, np.int64)
        orphans = np.flatnonzero(~has_seed[1:]) + 1
        orphan_ids[orphans] = n + 1 + np.arange(orphans.size)
        orphan = orphan_ids[components]
    else:
        orphan = np.zeros(foreground.shape, np.int64)
    # orphans are complete already: flood the rest of the foreground from the interior seeds only
    grown = _flood(None, seeds.astype(np.int64), foreground & (orphan == 0), structure, 1)
    seeds = np.where(orphan > 0, orphan, seeds)
    labels = np.where(orphan > 0, orphan, grown)  # 1..K already: every seed keeps its own pixels
    if min_size > 0:
        keep = np.bincount(labels.ravel()) >= min_size
        keep[0] = True
        labels = _relabel_consecutive(np.where(keep[labels], labels, 0))
    k = int(labels.max())
    if p_interior is None:
        return labels.astype(np.int32), np.ones(k, np.float32)
    # the seed pixels of each final instance (its whole area if it grew from a seedless component)
    seeded = (seeds > 0) & (labels > 0)
    seed_area = np.bincount(labels[seeded], minlength=k + 1)
    seed_sum = np.bincount(labels[seeded], weights=p_interior[seeded], minlength=k + 1)
    scores = seed_sum[1:] / np.maximum(seed_area[1:], 1)
    return labels.astype(np.int32), scores.astype(np.float32)
