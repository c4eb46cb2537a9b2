"""Instance decoding: Panoptic-DeepLab post-processing (pixelwise.inference.panoptic) and instances from
background/interior/boundary predictions (pixelwise.inference.instances_from_boundary), with round trips from the
targets of pixelwise.data.instance_targets."""

from __future__ import annotations

import logging
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import pixelwise.inference.panoptic as panoptic_module
from pixelwise.data.instance_targets import boundary_classes, panoptic_targets, relabel_consecutive
from pixelwise.inference import (
    PanopticPostProcess,
    find_instance_centers,
    group_pixels,
    instances_from_boundary,
    panoptic_postprocess,
)

from .test_instance_targets import random_touching_map


def logits_of(classes: torch.Tensor, num_classes: int, scale: float = 10.0) -> torch.Tensor:
    """1 x C x H x W logits whose argmax is ``classes`` (H x W)."""
    return F.one_hot(classes.long(), num_classes).permute(2, 0, 1).float().unsqueeze(0) * scale


def offsets_to(owner: torch.Tensor, centers: dict[int, tuple[float, float]]) -> torch.Tensor:
    """1 x 2 x H x W offsets pointing every pixel of ``owner == i`` to ``centers[i]``."""
    h, w = owner.shape
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
    off = torch.zeros(2, h, w)
    for i, (cy, cx) in centers.items():
        px = owner == i
        off[0][px] = cy - ys[px]
        off[1][px] = cx - xs[px]
    return off.unsqueeze(0)


def heat_with(h: int, w: int, peaks: dict[tuple[int, int], float]) -> torch.Tensor:
    heat = torch.zeros(1, 1, h, w)
    for (y, x), v in peaks.items():
        heat[0, 0, y, x] = v
    return heat


def same_up_to_permutation(a: np.ndarray | torch.Tensor, b: np.ndarray | torch.Tensor) -> bool:
    """The two id maps hold the same partition (0 = background in both)."""
    a, b = np.asarray(a).astype(np.int64).ravel(), np.asarray(b).astype(np.int64).ravel()
    if not np.array_equal(a == 0, b == 0):
        return False
    pairs = np.unique(np.stack([a, b]), axis=1)
    return len(np.unique(pairs[0])) == pairs.shape[1] == len(np.unique(pairs[1]))


def object_ious(truth: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """For each true object, the IoU of its best-overlapping predicted object (from the pair-count table)."""
    g, kg = relabel_consecutive(torch.as_tensor(np.asarray(truth).astype(np.int64)))
    p, kp = relabel_consecutive(torch.as_tensor(np.asarray(pred).astype(np.int64)))
    table = torch.bincount(g.ravel() * (kp + 1) + p.ravel(), minlength=(kg + 1) * (kp + 1)).reshape(kg + 1, kp + 1)
    inter = table[1:, 1:].double()
    union = table.sum(1)[1:, None] + table.sum(0)[None, 1:] - inter
    return (inter / union).max(1).values.numpy() if kp else np.zeros(kg)


def touching_squares(h: int = 14, w: int = 24) -> torch.Tensor:
    m = torch.zeros(h, w, dtype=torch.int64)
    m[2:12, 2:12] = 1
    m[2:12, 12:22] = 2
    return m


# ------------------------------------------------------------------ Panoptic-DeepLab


def test_touching_squares_with_own_offsets_become_two_instances():
    m = touching_squares()
    heat = heat_with(14, 24, {(6, 6): 0.9, (6, 17): 0.8})
    offset = offsets_to(m, {1: (6.5, 6.5), 2: (6.5, 16.5)})
    r = panoptic_postprocess(logits_of(m > 0, 2), heat, offset, [1])[0]
    assert r.instances.dtype == torch.int32 and r.instances.shape == (14, 24)
    assert torch.equal(r.instances, m.int())  # id 1 = the higher centre
    assert r.classes.tolist() == [1, 1] and r.centers.tolist() == [[6, 6], [6, 17]]
    assert r.scores.dtype == torch.float32 and r.scores.shape == (2,)
    assert torch.equal(r.semantic, (m > 0).long())
    assert torch.equal(r.panoptic, torch.where(m > 0, 1000 + m, 0))


class _ListHandler(logging.Handler):
    def __init__(self, records: list[str]) -> None:
        super().__init__(logging.WARNING)
        self.records = records

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record.getMessage())


def test_threshold_and_top_k():
    peaks = {(5, 5): 0.09, (5, 20): 0.1, (5, 35): 0.11, (20, 5): 0.7, (20, 20): 0.5, (20, 35): 0.9}
    heat = heat_with(30, 45, peaks)
    centers, scores = find_instance_centers(heat)
    assert centers.tolist() == [[20, 35], [20, 5], [20, 20], [5, 35]]  # strictly above 0.1, highest first
    assert torch.allclose(scores, torch.tensor([0.9, 0.7, 0.5, 0.11]))
    caplog_records = []
    handler = _ListHandler(caplog_records)
    logger = logging.getLogger("pixelwise.inference.panoptic")
    logger.addHandler(handler)
    panoptic_module._WARNED.discard("top_k")
    try:
        centers, scores = find_instance_centers(heat, top_k=2)
        find_instance_centers(heat, top_k=2)
    finally:
        logger.removeHandler(handler)
    assert centers.tolist() == [[20, 35], [20, 5]]
    # the centres cut off merge into the kept ones' instances: said, once
    assert caplog_records == [
        "4 instance centres above the threshold, only the top_k=2 highest kept (their pixels join the nearest kept "
        "centre's instance): raise top_k (instances.top_k / --top-k)"
    ]
    centers, _ = find_instance_centers(heat, threshold=0.6)
    assert centers.tolist() == [[20, 35], [20, 5]]
    assert find_instance_centers(torch.zeros(1, 8, 8))[0].shape == (0, 2)
    # equal peaks in raster order
    assert find_instance_centers(heat_with(20, 20, {(15, 2): 1.0, (2, 15): 1.0, (2, 3): 1.0}))[0].tolist() == [
        [2, 3],
        [2, 15],
        [15, 2],
    ]


def test_a_threshold_below_minus_one_keeps_only_the_peaks_above_it():
    """Pixels at or below the threshold, or suppressed, were marked -1, which a threshold under -1 let through:
    every pixel of a -3 heatmap with one peak became a centre."""
    heat = torch.full((1, 9, 9), -3.0)
    heat[0, 4, 4] = 1.0
    for threshold in (0.1, -0.5, -2.0):
        centers, scores = find_instance_centers(heat, threshold=threshold, nms_kernel=3)
        assert centers.tolist() == [[4, 4]] and scores.tolist() == [1.0]
    centers, _ = find_instance_centers(heat, threshold=-4.0, nms_kernel=3)  # every local maximum above -4
    assert len(centers) == 1 + 81 - 9  # the peak, and the -3 pixels out of its reach (a plateau keeps them all)


def test_nms_suppresses_a_neighbouring_lower_peak():
    heat = heat_with(30, 30, {(10, 10): 0.9, (10, 13): 0.5, (20, 10): 0.6, (20, 14): 0.4, (5, 25): 0.3, (7, 27): 0.3})
    centers, _ = find_instance_centers(heat, nms_kernel=7)
    kept = {tuple(c) for c in centers.tolist()}
    assert (10, 13) not in kept  # 3 pixels from a higher peak: inside its 7 x 7 window
    assert {(10, 10), (20, 10), (20, 14)} <= kept  # 4 pixels apart: outside
    assert {(5, 25), (7, 27)} <= kept  # equal peaks both survive
    centers, _ = find_instance_centers(heat, nms_kernel=3)
    assert (10, 13) in {tuple(c) for c in centers.tolist()}
    assert len(find_instance_centers(heat, nms_kernel=1)[0]) == 6
    with pytest.raises(ValueError):
        find_instance_centers(heat, nms_kernel=4)


def test_class_by_majority_vote_score_and_panoptic_map():
    # classes: 0 background, 1 and 2 things, 3 stuff
    m = touching_squares()
    semantic = torch.where(m > 0, 1, 0)
    semantic[2:5, 2:12] = 2  # 30 of instance 1's 100 pixels say class 2: the vote says 1
    semantic[2:12, 12:19] = 2  # 70 of instance 2's pixels say class 2
    semantic[12:, :] = 3  # stuff
    logits = logits_of(semantic, 4, scale=2.0)
    heat = heat_with(14, 24, {(6, 6): 0.9, (6, 17): 0.8})
    offset = offsets_to(m, {1: (6.5, 6.5), 2: (6.5, 16.5)})
    r = panoptic_postprocess(logits, heat, offset, [1, 2])[0]
    assert r.classes.tolist() == [1, 2]
    # score = centre value x mean probability of the instance's class over its pixels
    probs = torch.softmax(logits[0], 0)
    expect = [0.9 * probs[1][m == 1].mean().item(), 0.8 * probs[2][m == 2].mean().item()]
    assert r.scores.tolist() == pytest.approx(expect, rel=1e-5)
    pan = r.panoptic
    assert (pan[m == 1] == 1001).all() and (pan[m == 2] == 2002).all()
    assert (pan[12:] == 3000).all() and (pan[(m == 0) & (semantic == 0)] == 0).all()
    # stuff smaller than stuff_area becomes void; so do thing pixels that no centre claims
    r = panoptic_postprocess(logits, torch.zeros_like(heat), offset, [1, 2], stuff_area=60, void_label=-1)[0]
    assert r.classes.numel() == 0 and (r.instances == 0).all()
    assert (r.panoptic[12:] == -1).all() and (r.panoptic[m > 0] == -1).all()  # 48 class-3 pixels < 60 <= 88
    assert (r.panoptic[(m == 0) & (semantic == 0)] == 0).all()


def test_majority_vote_tie_goes_to_the_lower_class_and_class_maps_are_accepted():
    m = touching_squares()
    semantic = torch.where(m > 0, 2, 0)
    semantic[2:7, 2:12] = 1  # instance 1: 50 pixels of class 1, 50 of class 2
    heat = heat_with(14, 24, {(6, 6): 0.9, (6, 17): 0.8})
    offset = offsets_to(m, {1: (6.5, 6.5), 2: (6.5, 16.5)})
    r = panoptic_postprocess(semantic.unsqueeze(0), heat, offset, [1, 2], num_classes=3)[0]
    assert r.classes.tolist() == [1, 2] and r.scores.tolist() == pytest.approx([0.9, 0.8])
    with pytest.raises(ValueError):
        panoptic_postprocess(semantic.unsqueeze(0), heat, offset, [1, 2])  # no num_classes


def test_centres_that_claim_no_pixel_are_dropped_and_ids_stay_consecutive():
    m = touching_squares()
    heat = heat_with(14, 24, {(6, 6): 0.9, (0, 23): 0.95, (6, 17): 0.8})  # (0, 23) lies on background
    offset = offsets_to(m, {1: (6.5, 6.5), 2: (6.5, 16.5)})
    r = panoptic_postprocess(logits_of(m > 0, 2), heat, offset, [1])[0]
    assert torch.equal(r.instances, m.int()) and r.centers.tolist() == [[6, 6], [6, 17]]


def test_group_pixels_chunking_and_mask():
    g = torch.Generator().manual_seed(0)
    centers = torch.randint(0, 40, (17, 2), generator=g)
    offset = torch.randn(2, 40, 50, generator=g) * 10
    mask = torch.rand(40, 50, generator=g) > 0.3
    whole = group_pixels(centers, offset, mask, max_elements=None)
    assert torch.equal(group_pixels(centers, offset, mask, max_elements=1), whole)
    assert torch.equal(group_pixels(centers, offset, mask, max_elements=100), whole)
    assert (whole[~mask] == 0).all() and whole[mask].min() >= 1 and whole.max() <= 17
    # brute force: nearest centre of position + offset
    ys, xs = torch.meshgrid(torch.arange(40.0), torch.arange(50.0), indexing="ij")
    target = torch.stack([ys + offset[0], xs + offset[1]], -1)  # H x W x 2
    d = ((target[:, :, None, :] - centers[None, None].float()) ** 2).sum(-1)
    assert torch.equal(whole[mask], d.argmin(-1)[mask] + 1)
    assert (group_pixels(centers[:0], offset, mask) == 0).all()
    # a pixel pointing 30 000 px from its only centre still belongs to it (the dummies at 1e4 took it: id 0)
    far = group_pixels(torch.tensor([[0, 0]]), torch.stack([torch.zeros(1, 3), torch.full((1, 3), 3.0e4)]))
    assert far.tolist() == [[1, 1, 1]]
    # zero offsets on integer centres: many exact ties, which go to the lower index (as argmin's first minimum)
    still = group_pixels(centers, torch.zeros(2, 40, 50), max_elements=64)
    flat = torch.stack([ys, xs], -1)
    d = ((flat[:, :, None, :] - centers[None, None].float()) ** 2).sum(-1)
    assert torch.equal(still, d.argmin(-1) + 1)


def test_panoptic_postprocess_batch_and_bad_input():
    m = touching_squares()
    heat = heat_with(14, 24, {(6, 6): 0.9, (6, 17): 0.8})
    offset = offsets_to(m, {1: (6.5, 6.5), 2: (6.5, 16.5)})
    logits = logits_of(m > 0, 2)
    out = panoptic_postprocess(
        torch.cat([logits, logits]), torch.cat([heat, torch.zeros_like(heat)]), torch.cat([offset, offset]), [1]
    )
    assert len(out) == 2 and torch.equal(out[0].instances, m.int()) and out[1].classes.numel() == 0
    with pytest.raises(ValueError):
        panoptic_postprocess(logits, heat[:, :, :5], offset, [1])
    with pytest.raises(ValueError):
        panoptic_postprocess(logits, heat, offset, [2])
    with pytest.raises(ValueError):
        panoptic_postprocess(logits, heat, offset, [1], top_k=1000, label_divisor=1000)


def test_round_trip_panoptic_targets_decode_to_the_instance_map():
    for seed in range(6):
        m = random_touching_map(seed, n=14)
        t = panoptic_targets(m)
        r = panoptic_postprocess(logits_of(m > 0, 2), t["center"][None], t["offset"][None], [1])[0]
        assert same_up_to_permutation(r.instances, m), seed
        assert r.scores.min() > 0.99  # peaks of 1 x semantic probability ~1
    # two squares whose centres are 10 pixels apart, touching: still two instances
    m = touching_squares()
    t = panoptic_targets(m)
    r = panoptic_postprocess(logits_of(m > 0, 2), t["center"][None], t["offset"][None], [1])[0]
    assert same_up_to_permutation(r.instances, m)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_panoptic_round_trip_on_cuda():
    m = random_touching_map(0, n=14).cuda()
    t = panoptic_targets(m)
    assert t["center"].is_cuda
    r = panoptic_postprocess(logits_of(m > 0, 2), t["center"][None], t["offset"][None], [1])[0]
    assert r.instances.is_cuda and same_up_to_permutation(r.instances.cpu(), m.cpu())


def test_panoptic_postprocess_exports_to_onnx(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")

    def case(seed: int, n: int, h: int, w: int) -> tuple[torch.Tensor, ...]:
        m = random_touching_map(seed, h, w, n)
        t = panoptic_targets(m)
        semantic = torch.where(m > 0, 1, 0)
        semantic[:, : w // 4][m[:, : w // 4] == 0] = 2  # some stuff
        return logits_of(semantic, 3, scale=3.0), t["center"][None], t["offset"][None]

    module = PanopticPostProcess(3, [1]).eval()
    path = tmp_path / "post.onnx"
    axes = {name: {2: "height", 3: "width"} for name in ("semantic", "center", "offset")}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            case(0, 9, 64, 80),
            str(path),
            dynamo=False,
            opset_version=17,
            input_names=["semantic", "center", "offset"],
            output_names=["instances", "classes", "scores", "centers", "panoptic"],
            dynamic_axes=axes,
        )
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for args in (case(0, 9, 64, 80), case(5, 14, 57, 91), case(6, 1, 33, 41), case(6, 0, 40, 40)):  # other sizes
        with torch.no_grad():
            ref = module(*args)
        got = session.run(None, {k: a.numpy() for k, a in zip(("semantic", "center", "offset"), args, strict=True)})
        for r, g in zip(ref, got, strict=True):
            assert r.shape == g.shape
            np.testing.assert_allclose(g, r.numpy(), rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------ background / interior / boundary


def test_boundary_decoding_separates_two_touching_squares():
    m = touching_squares()
    classes = boundary_classes(m, width=1)
    labels, scores = instances_from_boundary(classes.numpy())
    assert labels.dtype == np.int32 and labels.shape == (14, 24)
    assert np.array_equal(labels, m.numpy()) and scores.tolist() == [1.0, 1.0]
    # from probabilities (torch input): same instances, scores = mean interior probability over the seeds
    probs = F.one_hot(classes, 3).permute(2, 0, 1).float() * 0.7 + 0.1
    labels, scores = instances_from_boundary(probs)
    assert np.array_equal(labels, m.numpy()) and scores == pytest.approx([0.8, 0.8])


def test_boundary_decoding_thin_objects_min_size_and_thresholds():
    m = touching_squares(16, 24)
    m[14, 2:6] = 3  # a 1-pixel-thin object: no interior, its own 4-connected component
    m[13, 1] = 4  # a single pixel touching object 1 only at a corner
    classes = boundary_classes(m, width=1).numpy()
    labels, _ = instances_from_boundary(classes)
    assert same_up_to_permutation(labels, m)
    labels, _ = instances_from_boundary(classes, min_size=2)
    assert labels.max() == 3 and (labels[13, 1] == 0) and same_up_to_permutation(labels, np.where(m == 4, 0, m))
    labels, _ = instances_from_boundary(classes, min_size=10)
    assert same_up_to_permutation(labels, np.where(m > 2, 0, m))
    # thresholds: interior where p_interior >= t
    probs = F.one_hot(torch.from_numpy(classes), 3).permute(2, 0, 1).float()
    probs = probs * 0.5 + torch.tensor([0.3, 0.1, 0.1])[:, None, None]  # interior pixels: p_interior = 0.6
    labels, _ = instances_from_boundary(probs, interior_threshold=0.7)
    # no interior at all: each 4-connected foreground component is one object (the squares merge)
    assert same_up_to_permutation(labels, np.where(m == 2, 1, m))
    labels, _ = instances_from_boundary(probs, interior_threshold=0.55)
    assert same_up_to_permutation(labels, m)
    with pytest.raises(ValueError):
        instances_from_boundary(np.zeros((2, 4, 4)))
    with pytest.raises(ValueError):
        instances_from_boundary(classes, connectivity=6)


def test_round_trip_boundary_targets_exact_on_open_shapes():
    # objects that are unions of (2 width + 1)-wide squares (their morphological opening): recovered exactly
    yy, xx = np.mgrid[:48, :64]
    m = np.zeros((48, 64), np.int64)
    # discs of radius 10.5: a radius-10 digital disc has 1-pixel tips, which no 3 x 3 square inside it covers
    m[(yy - 15) ** 2 + (xx - 14) ** 2 <= 110] = 1
    m[((yy - 15) ** 2 + (xx - 34) ** 2 <= 110) & (m == 0)] = 2  # cut by the first disc: touching
    m[30:44, 4:20] = 3
    m[30:44, 20:30] = 4
    m[26:44, 30:60] = 5  # touches 2 (above) and 4 (left)
    for width in (1, 2, 3):
        assert same_up_to_permutation(instances_from_boundary(boundary_classes(m, width=width).numpy())[0], m), width


def test_round_trip_boundary_targets_on_touching_convex_objects():
    # Voronoi-cut discs have sharp corners where a boundary pixel can be as near another object's seed as its
    # own: the growth is then up to a pixel off, never an object lost
    ious = np.concatenate(
        [
            object_ious(m, instances_from_boundary(boundary_classes(m, width=1).numpy())[0])
            for m in map(random_touching_map, range(10))
        ]
    )
    assert ious.min() >= 0.85 and (ious >= 0.9).mean() >= 0.95 and (ious == 1).mean() >= 0.3
