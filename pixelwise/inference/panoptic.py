"""Panoptic-DeepLab post-processing: instances from a centre heatmap and centre offsets, classes from the
semantic map.

B. Cheng, M. D. Collins, Y. Zhu, T. Liu, T. S. Huang, H. Adam, L.-C. Chen, "Panoptic-DeepLab: A Simple, Strong,
and Fast Baseline for Bottom-Up Panoptic Segmentation", CVPR 2020, section 3.3, with the defaults of detectron2's
``projects/Panoptic-DeepLab`` (``CENTER_THRESHOLD`` 0.1, ``NMS_KERNEL`` 7, ``TOP_K_INSTANCE`` 200):

1. centres (:func:`find_instance_centers`): heatmap values at or below ``threshold`` are dropped; a keypoint NMS
   keeps the pixels equal to the maximum of their ``nms_kernel`` x ``nms_kernel`` window (max-pooling; equal
   neighbouring peaks both survive); the ``top_k`` highest remain.
2. grouping (:func:`group_pixels`): each thing pixel (semantic argmax in ``thing_classes``) goes to the centre
   nearest to its position + predicted offset (Euclidean), so touching objects whose offsets point to their own
   centres stay apart. The ``pixels x centres`` distance table is computed in chunks of pixels (memory bounded).
3. each instance's class is the majority vote of the semantic argmax over its pixels (ties: the lower class);
   its score is the centre's heatmap value x the mean semantic probability of that class over its pixels (the
   paper's "Score(Objectness) x Score(Class)"; detectron2 reads the heatmap at the instance's rounded centroid
   instead of at its detected centre).
4. the panoptic map: ``class * label_divisor + instance id`` on instance pixels, ``class * label_divisor`` on
   stuff pixels (stuff classes with fewer than ``stuff_area`` pixels become ``void_label``, as detectron2's
   ``STUFF_AREA``), ``void_label`` on thing pixels that no centre claims.

Instance ids are 1..K in decreasing order of their centre's heatmap value (equal values in raster order); centres
that claim no pixel are dropped.

Export: :class:`PanopticPostProcess` (one image) is pure torch: max-pooling, ``topk``, boolean indexing
(ONNX ``NonZero``: the numbers of centres and of thing pixels stay dynamic), a matrix product, ``index_add``
(``ScatterElements`` with ``reduction="add"``, ONNX opset >= 16), ``scatter`` and ``cumsum``, with no
data-dependent Python branch on the exported path. It exports with the TorchScript exporter
(``torch.onnx.export(..., dynamo=False, opset_version=17)``, height and width dynamic) and onnxruntime reproduces
it on other sizes and object counts, none included (tests/test_panoptic_postprocess.py). While exporting, the
distance table is computed in one piece (a Python chunk loop would be unrolled for the traced image), so the graph
holds ``thing pixels x (centres + 2)`` floats at once. Not exportable: with the dynamo exporter
(``dynamo=True``), whose ``torch.export`` step fails on the data-dependent shapes; :func:`panoptic_postprocess`'s
loop over the images of a batch and its :class:`PanopticResult` objects (export one image at a time and read the
module's output tuple).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..argmax import class_argmax

log = logging.getLogger(__name__)

CENTER_THRESHOLD = 0.1
NMS_KERNEL = 7
TOP_K = 200
MAX_ELEMENTS = 2**20
"""Pixel-centre pairs :func:`group_pixels` holds at once (4 MiB per float32 buffer; larger chunks are no faster)."""


@dataclass
class PanopticResult:
    """One image's decoded output.

    instances: ``H x W`` int32, 0 = no instance, 1..K; classes: K int64 (semantic class of each instance);
    scores: K float32; centers: K x 2 int64, each instance's centre ``(y, x)``; semantic: ``H x W`` int64 argmax;
    panoptic: ``H x W`` int64 (``class * label_divisor + id`` on things, ``class * label_divisor`` on stuff,
    ``void_label`` elsewhere).
    """

    instances: torch.Tensor
    classes: torch.Tensor
    scores: torch.Tensor
    centers: torch.Tensor
    semantic: torch.Tensor
    panoptic: torch.Tensor


_WARNED: set[str] = set()


def _warn_once(key: str, message: str) -> None:
    """Log ``message`` once per process (it would recur for every image)."""
    if key not in _WARNED:
        _WARNED.add(key)
        log.warning(message)


def find_instance_centers(
    center: torch.Tensor,
    *,
    threshold: float = CENTER_THRESHOLD,
    nms_kernel: int = NMS_KERNEL,
    top_k: int = TOP_K,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(centers, scores)``: the K <= ``top_k`` kept centres of a heatmap (``H x W`` or ``1 x H x W``) as
    K x 2 int64 ``(y, x)`` and their heatmap values (K float32), highest first.

    A centre is a pixel whose value exceeds ``threshold`` and equals the maximum of its ``nms_kernel``-wide
    window (odd; 1 disables the NMS)."""
    if nms_kernel < 1 or nms_kernel % 2 == 0:
        raise ValueError(f"nms_kernel must be odd and positive, got {nms_kernel}")
    if top_k < 1:
        raise ValueError(f"top_k must be positive, got {top_k}")
    h, w = center.shape[-2:]
    heat = center.reshape(1, 1, h, w).float()
    low = torch.full_like(heat, float("-inf"))  # below any threshold (-1 was above one of -2)
    heat = torch.where(heat > threshold, heat, low)
    # a k x k maximum is a 1 x k maximum of a k x 1 one (2k comparisons per pixel instead of k^2);
    # padding of max_pool2d is -inf, so the image's edge never suppresses a peak
    r = nms_kernel // 2
    pooled = F.max_pool2d(F.max_pool2d(heat, (1, nms_kernel), 1, (0, r)), (nms_kernel, 1), 1, (r, 0))
    kept = torch.where(heat == pooled, heat, low).reshape(-1)
    if not (torch.onnx.is_in_onnx_export() or torch.jit.is_tracing() or torch.compiler.is_compiling()):
        found = int((kept > threshold).sum())
        if found > top_k:
            # the others' pixels go to the nearest kept centre: neighbouring objects merge
            _warn_once(
                "top_k",
                f"{found} instance centres above the threshold, only the top_k={top_k} highest kept (their pixels "
                "join the nearest kept centre's instance): raise top_k (instances.top_k / --top-k)",
            )
    values, index = torch.topk(kept, min(top_k, kept.numel()))
    valid = values > threshold
    values, index = values[valid], index[valid]
    # a deterministic order (decreasing value, equal values in raster order), whatever order topk's implementation
    # returns ties in (exact targets peak at 1 everywhere): each centre's rank from a K x K comparison, which also
    # exports (a stable sort does not)
    ahead = (values[None, :] > values[:, None]) | (
        (values[None, :] == values[:, None]) & (index[None, :] < index[:, None])
    )
    rank = ahead.sum(1)
    values = torch.zeros_like(values).scatter(0, rank, values)
    index = torch.zeros_like(index).scatter(0, rank, index)
    return torch.stack([torch.div(index, w, rounding_mode="floor"), index % w], 1), values


def group_pixels(
    centers: torch.Tensor,
    offset: torch.Tensor,
    mask: torch.Tensor | None = None,
    *,
    max_elements: int | None = MAX_ELEMENTS,
) -> torch.Tensor:
    """``H x W`` int64: for each pixel of ``mask`` (``H x W`` bool; all pixels if None), 1 + the index of the centre
    (``centers``: K x 2, ``(y, x)``) nearest to the pixel's ``(y, x)`` + ``offset`` (``2 x H x W``, ``(dy, dx)``);
    0 outside ``mask`` or when there is no centre. At most ``max_elements`` pixel-centre pairs are held at once
    (None: all at once).

    The squared distances ``|c|^2 - 2 t.c (+ |t|^2)`` are one matrix product per chunk (coordinates taken from the
    image's middle, to keep float32 rounding small); the two nearest centres by it are then compared exactly, so
    the result is the exact nearest centre (the lower index among equidistant ones) unless three centres are
    within rounding of equidistant."""
    h, w = offset.shape[-2:]
    device = offset.device
    offset = offset.reshape(2, h, w).float()
    ys = torch.arange(h, dtype=torch.float32, device=device)
    xs = torch.arange(w, dtype=torch.float32, device=device)
    # the middle as a tensor computed in the graph: an exported graph must shift pixels and centres alike
    mid = torch.stack([ys[-1], xs[-1]]) / 2
    ys, xs = ys[:, None] - mid[0], xs[None, :] - mid[1]
    targets = torch.stack([(offset[0] + ys).reshape(-1), (offset[1] + xs).reshape(-1)], 1)  # P x 2
    out = torch.zeros(h * w, dtype=torch.long, device=device)
    exporting = torch.onnx.is_in_onnx_export() or torch.jit.is_tracing()
    if mask is None:
        index = torch.arange(h * w, device=device)
    else:
        index = mask.reshape(-1).nonzero().squeeze(1)
        targets = targets[index]
    k, n = centers.shape[0], targets.shape[0]
    if not exporting and (k == 0 or n == 0):
        return out.reshape(h, w)
    # two far-away dummy centres: K + 2 >= 2 candidates for the top-2, also in a graph traced with other counts;
    # they never win the exact comparison below (a pixel gets id 0 only when there is no centre)
    far = torch.full((2, 2), 1.0e6, device=device)
    far[1] = -1.0e6
    cands = torch.cat([centers.float() - mid, far])  # (K + 2) x 2
    ids = torch.cat([torch.ones_like(centers[:, 0]).long().cumsum(0), torch.zeros(2, dtype=torch.long, device=device)])
    norms = (cands * cands).sum(1)
    step = max(n, 1) if (max_elements is None or exporting) else max(1, max_elements // (k + 2))
    nearest = []
    for start in range(0, n, step):  # one chunk when tracing: a traced loop is unrolled for the example's size
        t = targets[start : start + step]
        two = torch.addmm(norms[None, :], t, cands.T, alpha=-2.0).topk(2, 1, largest=False).indices  # chunk x 2
        first, second = two.min(1).values, two.max(1).values  # an exact tie goes to the lower index
        # a dummy (id 0) is infinitely far: ids, not K, tell them apart (a traced graph takes other counts)
        d_first = torch.where(ids[first] > 0, ((t - cands[first]) ** 2).sum(1), torch.inf)
        d_second = torch.where(ids[second] > 0, ((t - cands[second]) ** 2).sum(1), torch.inf)
        nearest.append(torch.where(d_second < d_first, second, first))
    out[index] = ids[torch.cat(nearest)]
    return out.reshape(h, w)


def _decode(
    semantic: torch.Tensor,
    center: torch.Tensor,
    offset: torch.Tensor,
    thing_lut: torch.Tensor,
    *,
    threshold: float,
    nms_kernel: int,
    top_k: int,
    probabilities: bool,
    label_divisor: int,
    stuff_area: int,
    void_label: int,
    max_elements: int | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One image: ``semantic`` ``C x H x W`` (logits or probabilities) or ``H x W`` classes; ``thing_lut`` (C bool).
    Returns (instances, classes, scores, centers, semantic argmax, panoptic), see :class:`PanopticResult`."""
    if semantic.dim() == 3:
        probs = semantic.float() if probabilities else torch.softmax(semantic.float(), 0)
        classes_map = class_argmax(probs, 0)
    else:
        probs = None
        classes_map = semantic.long()
    num_classes = thing_lut.shape[0]
    thing = thing_lut[classes_map]
    centers, center_scores = find_instance_centers(center, threshold=threshold, nms_kernel=nms_kernel, top_k=top_k)
    ids = group_pixels(centers, offset, thing, max_elements=max_elements)  # 0..Kc, candidate order
    kc = centers.shape[0]

    # majority vote: a (Kc + 1) x C table of pixel counts; every claimed pixel is a thing pixel
    flat_ids = ids.reshape(-1)
    votes = torch.zeros((kc + 1) * num_classes, dtype=torch.float32, device=ids.device)
    votes.index_add_(0, flat_ids * num_classes + classes_map.reshape(-1), torch.ones_like(flat_ids, dtype=votes.dtype))
    votes = votes.reshape(kc + 1, num_classes)
    cls = votes.argmax(1)  # first maximum on ties: the lower class
    area = votes.sum(1)

    used = area > 0
    used[0] = False
    new_id = torch.cumsum(used.long(), 0) * used.long()  # candidate -> 1..K, 0 for unused ones
    instances = new_id[ids]

    if probs is None:
        mean_prob = torch.ones(kc + 1, dtype=torch.float32, device=ids.device)
    else:
        pixel_prob = probs.gather(0, cls[ids].unsqueeze(0)).reshape(-1)  # prob. of its instance's class
        sums = torch.zeros(kc + 1, dtype=torch.float32, device=ids.device).index_add_(0, flat_ids, pixel_prob)
        mean_prob = sums / area.clamp(min=1)
    scores = torch.cat([torch.zeros(1, device=ids.device), center_scores.float()]) * mean_prob

    stuff = ~thing
    stuff_count = torch.zeros(num_classes, dtype=torch.float32, device=ids.device)
    stuff_count.index_add_(0, classes_map.reshape(-1), stuff.reshape(-1).float())
    big_stuff = stuff & (stuff_count >= stuff_area)[classes_map]
    void = torch.full_like(classes_map, void_label)
    panoptic = torch.where(big_stuff, classes_map * label_divisor, void)
    panoptic = torch.where(instances > 0, cls[ids] * label_divisor + instances, panoptic)
    keep = used[1:]
    return instances.int(), cls[1:][keep], scores[1:][keep], centers[keep], classes_map, panoptic


def _thing_lut(thing_classes: Sequence[int], num_classes: int, device: torch.device) -> torch.Tensor:
    lut = torch.zeros(num_classes, dtype=torch.bool, device=device)
    things = [int(c) for c in thing_classes]
    bad = [c for c in things if not 0 <= c < num_classes]
    if bad:
        raise ValueError(f"thing classes {bad} are not among the {num_classes} classes")
    lut[things] = True
    return lut


def _check(top_k: int, label_divisor: int) -> None:
    if top_k >= label_divisor:
        raise ValueError(f"top_k ({top_k}) must be below label_divisor ({label_divisor}) for the panoptic ids")


def panoptic_postprocess(
    semantic: torch.Tensor,
    center: torch.Tensor,
    offset: torch.Tensor,
    thing_classes: Sequence[int],
    *,
    threshold: float = CENTER_THRESHOLD,
    nms_kernel: int = NMS_KERNEL,
    top_k: int = TOP_K,
    probabilities: bool = False,
    num_classes: int | None = None,
    label_divisor: int = 1000,
    stuff_area: int = 0,
    void_label: int = -1,
    max_elements: int | None = MAX_ELEMENTS,
) -> list[PanopticResult]:
    """Panoptic-DeepLab post-processing (Cheng et al., CVPR 2020; see the module docstring) of a batch.

    ``semantic``: ``N x C x H x W`` logits (softmax applied here) or probabilities (``probabilities=True``), or
    ``N x H x W`` class indices (then ``num_classes`` is needed and the class factor of the scores is 1);
    ``center``: ``N x 1 x H x W`` heatmap; ``offset``: ``N x 2 x H x W`` ``(dy, dx)`` in pixels, at the
    semantic map's resolution; ``thing_classes``: the classes that have instances. One :class:`PanopticResult` per
    image, on the inputs' device.
    """
    _check(top_k, label_divisor)
    if semantic.dim() == 4:
        num_classes = semantic.shape[1]
    elif semantic.dim() == 3:
        if num_classes is None:
            raise ValueError("semantic class maps (N x H x W) need num_classes")
    else:
        raise ValueError(f"semantic must be N x C x H x W or N x H x W, got shape {tuple(semantic.shape)}")
    n, h, w = semantic.shape[0], semantic.shape[-2], semantic.shape[-1]
    if tuple(center.shape) != (n, 1, h, w) or tuple(offset.shape) != (n, 2, h, w):
        raise ValueError(
            f"center must be {n} x 1 x {h} x {w} and offset {n} x 2 x {h} x {w}, "
            f"got {tuple(center.shape)} and {tuple(offset.shape)}"
        )
    lut = _thing_lut(thing_classes, num_classes, semantic.device)
    results = []
    with torch.no_grad():
        for i in range(n):
            out = _decode(
                semantic[i],
                center[i],
                offset[i],
                lut,
                threshold=threshold,
                nms_kernel=nms_kernel,
                top_k=top_k,
                probabilities=probabilities,
                label_divisor=label_divisor,
                stuff_area=stuff_area,
                void_label=void_label,
                max_elements=max_elements,
            )
            results.append(PanopticResult(*out))
    log.debug("panoptic post-processing: %s instances", [int(r.classes.numel()) for r in results])
    return results


class PanopticPostProcess(nn.Module):
    """:func:`panoptic_postprocess` of one image as a module, for ONNX export (see the module docstring).

    ``forward(semantic 1 x C x H x W logits, center 1 x 1 x H x W, offset 1 x 2 x H x W)`` returns
    ``(instances H x W int32, classes K int64, scores K float32, centers K x 2 int64, panoptic H x W int64)``.
    """

    def __init__(
        self,
        num_classes: int,
        thing_classes: Sequence[int],
        *,
        threshold: float = CENTER_THRESHOLD,
        nms_kernel: int = NMS_KERNEL,
        top_k: int = TOP_K,
        probabilities: bool = False,
        label_divisor: int = 1000,
        stuff_area: int = 0,
        void_label: int = -1,
    ) -> None:
        super().__init__()
        _check(top_k, label_divisor)
        self.register_buffer("thing_lut", _thing_lut(thing_classes, num_classes, torch.device("cpu")))
        self.settings = {
            "threshold": threshold,
            "nms_kernel": nms_kernel,
            "top_k": top_k,
            "probabilities": probabilities,
            "label_divisor": label_divisor,
            "stuff_area": stuff_area,
            "void_label": void_label,
        }

    def forward(
        self, semantic: torch.Tensor, center: torch.Tensor, offset: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        instances, classes, scores, centers, _, panoptic = _decode(
            semantic[0], center[0], offset[0], self.thing_lut, max_elements=None, **self.settings
        )
        return instances, classes, scores, centers, panoptic
