"""Boundary classes and Panoptic-DeepLab targets from instance maps (pixelwise.data.instance_targets)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pixelwise.data.instance_targets import (
    BACKGROUND,
    BOUNDARY,
    INTERIOR,
    boundary_classes,
    gaussian_heatmap,
    instance_centers,
    panoptic_targets,
    relabel_consecutive,
)


def two_touching_squares() -> torch.Tensor:
    """8 x 12: ids 3 (rows 1-6, cols 1-5) and 7 (rows 1-6, cols 6-10) share the edge between columns 5 and 6."""
    m = torch.zeros(8, 12, dtype=torch.int64)
    m[1:7, 1:6] = 3
    m[1:7, 6:11] = 7
    return m


def random_touching_map(seed: int, h: int = 64, w: int = 80, n: int = 9) -> torch.Tensor:
    """Discs cut by their Voronoi cells: convex, mostly touching objects with ids shuffled over 1..300."""
    rng = np.random.default_rng(seed)
    cy, cx = rng.uniform(8, h - 8, n), rng.uniform(8, w - 8, n)
    radius = rng.uniform(7, 13, n)
    yy, xx = np.mgrid[:h, :w]
    d = np.sqrt((yy[None] - cy[:, None, None]) ** 2 + (xx[None] - cx[:, None, None]) ** 2)
    if n == 0:
        return torch.zeros(h, w, dtype=torch.int64)
    nearest = d.argmin(0)
    inside = np.take_along_axis(d, nearest[None], 0)[0] <= radius[nearest]
    ids = rng.choice(np.arange(1, 300), n, replace=False)
    return torch.from_numpy(np.where(inside, ids[nearest], 0))


def reference_targets(m: np.ndarray, sigma: float) -> tuple[np.ndarray, np.ndarray]:
    """Heatmap and offsets drawn one instance at a time, as detectron2's target generator does."""
    h, w = m.shape
    heat = np.zeros((h, w), np.float64)
    offset = np.zeros((2, h, w), np.float64)
    r = math.ceil(3 * sigma) + 1
    for i in np.unique(m[m > 0]):
        ys, xs = np.nonzero(m == i)
        cy, cx = ys.mean(), xs.mean()
        offset[0, ys, xs] = cy - ys
        offset[1, ys, xs] = cx - xs
        py, px = int(np.round(cy)), int(np.round(cx))
        for y in range(max(0, py - r), min(h, py + r + 1)):
            for x in range(max(0, px - r), min(w, px + r + 1)):
                g = math.exp(-((y - py) ** 2 + (x - px) ** 2) / (2 * sigma**2))
                heat[y, x] = max(heat[y, x], g)
    return heat, offset


# ------------------------------------------------------------------ boundary_classes


def test_two_touching_squares_get_a_boundary_line_between_them():
    b = boundary_classes(two_touching_squares(), width=1)
    expected = torch.zeros(8, 12, dtype=torch.int64)
    expected[1:7, 1:11] = BOUNDARY
    expected[2:6, 2:5] = INTERIOR
    expected[2:6, 7:10] = INTERIOR
    assert b.dtype == torch.int64 and torch.equal(b, expected)
    # columns 5 and 6 (the contact) are boundary on both sides: a 2-pixel line separates the interiors
    assert (b[1:7, 5:7] == BOUNDARY).all()


def test_width_is_the_chebyshev_radius_of_the_window():
    m = torch.zeros(20, 20, dtype=torch.int64)
    m[2:18, 2:18] = 5
    for width in (0, 1, 2, 3):
        b = boundary_classes(m, width=width)
        interior = torch.zeros_like(m, dtype=torch.bool)
        interior[2 + width : 18 - width, 2 + width : 18 - width] = True
        assert torch.equal(b == INTERIOR, interior), width
        assert torch.equal(b == BACKGROUND, m == 0)


def test_image_edge_is_not_a_boundary():
    m = torch.zeros(6, 6, dtype=torch.int64)
    m[:, :3] = 1  # touches the top, bottom and left edges of the image
    b = boundary_classes(m, width=1)
    assert (b[:, :2] == INTERIOR).all() and (b[:, 2] == BOUNDARY).all()


def test_ignore_pixels_become_ignore_index():
    m = two_touching_squares()
    ignore = torch.zeros_like(m, dtype=torch.bool)
    ignore[0, :] = True
    b = boundary_classes(m, ignore=ignore, ignore_index=255)
    assert (b[0] == 255).all() and torch.equal(b[1:], boundary_classes(m)[1:])


def test_boundary_classes_batch_numpy_and_id_independence():
    m = random_touching_map(0)
    b = boundary_classes(m, width=2)
    # any injective relabelling, huge ids (beyond float32's exact integers) and numpy / uint16 input: same classes
    ids = torch.unique(m)[1:]
    perm = torch.zeros(int(m.max()) + 1, dtype=torch.int64)
    perm[ids] = torch.randperm(ids.numel(), generator=torch.Generator().manual_seed(0)) + 2**40
    huge = torch.where(m > 0, perm[m], 0)
    assert torch.equal(boundary_classes(huge, width=2), b)
    assert torch.equal(boundary_classes(m.numpy().astype(np.uint16), width=2), b)
    batch = boundary_classes(torch.stack([m, random_touching_map(1)]), width=2)
    assert batch.shape == (2, *m.shape) and torch.equal(batch[0], b)
    assert torch.equal(batch[1], boundary_classes(random_touching_map(1), width=2))


def test_boundary_classes_empty_and_bad_input():
    assert torch.equal(boundary_classes(torch.zeros(5, 7, dtype=torch.int32)), torch.zeros(5, 7, dtype=torch.int64))
    assert boundary_classes(torch.zeros(0, 4, dtype=torch.int64)).shape == (0, 4)
    with pytest.raises(TypeError):
        boundary_classes(torch.zeros(4, 4))
    with pytest.raises(ValueError):
        boundary_classes(-2 * torch.ones(4, 4, dtype=torch.int64))  # -1 is past the image (a crop's padding)
    assert torch.equal(boundary_classes(-torch.ones(4, 4, dtype=torch.int64)), torch.zeros(4, 4, dtype=torch.int64))
    with pytest.raises(ValueError):
        boundary_classes(torch.zeros(4, 4, dtype=torch.int64), width=-1)


# ------------------------------------------------------------------ panoptic_targets


def test_single_square_centre_offsets_and_heatmap_exact():
    m = torch.zeros(30, 40, dtype=torch.int16)
    m[10:15, 20:25] = 9  # centre of mass (12, 22), an integer pixel
    t = panoptic_targets(m, sigma=3.0)
    assert set(t) == {"center", "offset", "center_weights", "offset_weights", "semantic_weights"}
    shapes = {"center": (1, 30, 40), "offset": (2, 30, 40), "center_weights": (1, 30, 40)}
    shapes |= {"offset_weights": (1, 30, 40), "semantic_weights": (30, 40)}
    for key, shape in shapes.items():
        assert t[key].shape == shape and t[key].dtype == torch.float32, key
    heat = t["center"][0]
    assert heat[12, 22] == 1.0 and heat.max() == 1.0
    # the value at distance d from the centre is exp(-d^2 / (2 sigma^2)); 0 beyond r = ceil(3 sigma) + 1 = 10
    for dy, dx in [(0, 1), (3, 4), (-5, 2), (10, 10), (-10, 0)]:
        d2 = dy * dy + dx * dx
        assert heat[12 + dy, 22 + dx].item() == pytest.approx(math.exp(-d2 / 18), rel=1e-6, abs=1e-12)
    assert heat[12, 33] == 0 and heat[23, 22] == 0 and heat[1, 22] == 0 and heat[2, 22] > 0
    ys, xs = torch.meshgrid(torch.arange(30), torch.arange(40), indexing="ij")
    inside = m > 0
    assert torch.equal(t["offset"][0][inside], (12 - ys)[inside].float())
    assert torch.equal(t["offset"][1][inside], (22 - xs)[inside].float())
    assert (t["offset"][:, ~inside] == 0).all()
    assert torch.equal(t["offset_weights"][0], inside.float())
    assert (t["center_weights"] == 1).all() and (t["semantic_weights"] == 1).all()


def test_half_pixel_centre_rounds_half_to_even_and_offsets_stay_exact():
    m = two_touching_squares()  # centres (3.5, 3.0) and (3.5, 8.0)
    ids, centers, areas = instance_centers(m)
    assert ids.tolist() == [3, 7] and areas.tolist() == [30, 30]
    assert centers.tolist() == [[3.5, 3.0], [3.5, 8.0]]
    t = panoptic_targets(m)
    heat = t["center"][0]
    assert heat[4, 3] == 1.0 and heat[4, 8] == 1.0  # round(3.5) = 4 (half to even), as numpy's round
    assert t["offset"][0, 1, 1] == 2.5 and t["offset"][1, 1, 1] == 2.0  # (3.5 - 1, 3 - 1)
    assert t["offset"][0, 6, 6] == -2.5 and t["offset"][1, 6, 6] == 2.0  # instance 7's pixel: towards (3.5, 8)
    # every instance pixel + its offset is its own instance's centre of mass, touching or not
    ys, xs = torch.meshgrid(torch.arange(8.0), torch.arange(12.0), indexing="ij")
    for i, c in zip(ids.tolist(), centers.tolist(), strict=True):
        px = m == i
        assert torch.equal((ys + t["offset"][0])[px], torch.full((30,), c[0]))
        assert torch.equal((xs + t["offset"][1])[px], torch.full((30,), c[1]))


def test_panoptic_targets_match_a_per_instance_reference():
    for seed, sigma in [(0, 8.0), (1, 3.0), (2, 2.5)]:
        m = random_touching_map(seed)
        t = panoptic_targets(m, sigma=sigma)
        heat, offset = reference_targets(m.numpy(), sigma)
        np.testing.assert_allclose(t["center"][0].numpy(), heat, rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(t["offset"].numpy(), offset, rtol=0, atol=1e-5)


def test_permuted_ids_give_the_same_targets():
    m = random_touching_map(3)
    ids = torch.unique(m)[1:]
    perm = torch.zeros(int(m.max()) + 1, dtype=torch.int64)
    perm[ids] = ids[torch.randperm(ids.numel(), generator=torch.Generator().manual_seed(1))]
    permuted = torch.where(m > 0, perm[m], 0)
    a, b = panoptic_targets(m), panoptic_targets(permuted)
    for key in a:
        assert torch.equal(a[key], b[key]), key
    ia, ca, _ = instance_centers(m)
    ib, cb, _ = instance_centers(permuted)
    # the same centres, listed under the permuted ids
    lookup = {int(i): c.tolist() for i, c in zip(ib, cb, strict=True)}
    assert all(lookup[int(perm[i])] == c.tolist() for i, c in zip(ia, ca, strict=True))


def test_empty_map_and_input_types():
    for m in (torch.zeros(16, 20, dtype=torch.int64), np.zeros((16, 20), np.uint16)):
        t = panoptic_targets(m)
        assert (t["center"] == 0).all() and (t["offset"] == 0).all() and (t["offset_weights"] == 0).all()
        assert (t["center_weights"] == 1).all() and t["center"].shape == (1, 16, 20)
    ids, centers, areas = instance_centers(torch.zeros(3, 3, dtype=torch.int64))
    assert ids.numel() == 0 and centers.shape == (0, 2) and areas.numel() == 0
    assert gaussian_heatmap(torch.zeros(0, 2), 4, 5).shape == (1, 4, 5)
    m = random_touching_map(4)
    for dtype in (torch.int16, torch.int32, torch.uint8):
        small = torch.where(m > 0, m % 200 + 1, 0)  # ids that fit every dtype (distinct for this map)
        ref = panoptic_targets(small)
        got = panoptic_targets(small.to(dtype))
        assert all(torch.equal(ref[k], got[k]) for k in ref)
    with pytest.raises(ValueError):
        panoptic_targets(torch.zeros(2, 3, 3, dtype=torch.int64))
    with pytest.raises(ValueError):
        panoptic_targets(torch.zeros(3, 3, dtype=torch.int64), sigma=0.0)


def test_ignore_and_small_instance_weights():
    m = torch.zeros(20, 20, dtype=torch.int64)
    m[1:4, 1:4] = 1  # 9 pixels: small
    m[8:18, 8:18] = 2  # 100 pixels
    ignore = torch.zeros(20, 20, dtype=torch.bool)
    ignore[:, 15:] = True  # crowd / unlabelled region, crossing instance 2
    t = panoptic_targets(m, ignore=ignore, small_instance_area=50, small_instance_weight=3.0)
    sw = t["semantic_weights"]
    assert (sw[1:4, 1:4] == 3).all() and (sw[8:18, 8:15] == 1).all() and (sw[ignore] == 0).all()
    assert (sw[(m == 0) & ~ignore] == 1).all()
    assert torch.equal(t["center_weights"][0], (~ignore).float())
    assert torch.equal(t["offset_weights"][0], ((m > 0) & ~ignore).float())
    # ignore changes only the weights
    assert torch.equal(t["center"], panoptic_targets(m)["center"])


def test_relabel_consecutive_both_paths():
    m = torch.tensor([[0, 5, 5], [9, 0, 2]])
    assert relabel_consecutive(m)[0].tolist() == [[0, 2, 2], [3, 0, 1]] and relabel_consecutive(m)[1] == 3
    big = torch.tensor([[2**40, 7], [7, 2**40]])  # no background, ids far beyond the lookup table
    assert relabel_consecutive(big)[0].tolist() == [[2, 1], [1, 2]] and relabel_consecutive(big)[1] == 2


def test_sigma_per_radius_narrows_small_instances_only():
    m = torch.zeros(40, 40, dtype=torch.int64)
    m[5:10, 5:10] = 1  # two 5x5 squares touching: centres (7, 7) and (12, 7), 5 px apart
    m[10:15, 5:10] = 2
    m[20:38, 20:38] = 3  # 18x18: its own std stays at the cap
    fixed = panoptic_targets(m, 4.0)["center"][0]
    narrow = panoptic_targets(m, 4.0, sigma_per_radius=0.5)["center"][0]
    small = 0.5 * math.sqrt(25 / math.pi)  # 1.41 px: half the equivalent radius of a 25-pixel square
    # between the two small centres (7, 7) and (12, 7): the nearer peak's Gaussian at 2 px
    assert narrow[9, 7].item() == pytest.approx(math.exp(-4 / (2 * small**2)), rel=1e-5)  # 0.37
    assert fixed[9, 7].item() == pytest.approx(math.exp(-4 / (2 * 4.0**2)), rel=1e-5)  # 0.88: one blob
    # the big square: 0.5 x its radius (5.1 px) is above the cap, so its Gaussian is center_sigma's
    assert torch.equal(narrow[20:, 20:], fixed[20:, 20:])
    # the window follows each centre's std: r = ceil(3 x 1.41) + 1 = 6 around (7, 7), zero beyond
    assert narrow[7, 7 + 6].item() > 0 and narrow[1, 7 + 7].item() == 0
    assert panoptic_targets(m, 4.0, sigma_per_radius=100.0)["center"].equal(fixed[None])  # all capped


def test_a_tiny_instance_keeps_a_one_pixel_std():
    m = torch.zeros(9, 9, dtype=torch.int64)
    m[4, 4] = 1  # one pixel: 0.5 x 0.56 px would be 0.28
    heat = panoptic_targets(m, 4.0, sigma_per_radius=0.5)["center"][0]
    assert heat[4, 5].item() == pytest.approx(math.exp(-0.5))  # std 1


def test_gaussian_heatmap_takes_one_std_per_centre():
    centers = torch.tensor([[3.0, 4.0], [20.0, 20.0]])
    both = gaussian_heatmap(centers, 30, 30, torch.tensor([1.5, 3.0]))
    ref = torch.maximum(gaussian_heatmap(centers[:1], 30, 30, 1.5), gaussian_heatmap(centers[1:], 30, 30, 3.0))
    assert torch.equal(both, ref)
    assert torch.equal(
        gaussian_heatmap(centers, 30, 30, torch.tensor([2.0, 2.0])), gaussian_heatmap(centers, 30, 30, 2.0)
    )
    with pytest.raises(ValueError, match=r"one value or one per centre \(2\)"):
        gaussian_heatmap(centers, 30, 30, torch.tensor([1.0, 2.0, 3.0]))
    with pytest.raises(ValueError, match="must be positive"):
        gaussian_heatmap(centers, 30, 30, torch.tensor([1.0, 0.0]))


def test_objects_outlined_by_a_void_band_keep_their_boundary():
    """VOC and SBD outline every object with 255: its rim is still boundary (a change that counted ignored pixels
    as outside the image, to spare padded crop edges, took every object's boundary away there; reverted)."""
    from pixelwise.engine.instance_methods import TargetBuilder
    from pixelwise.inference import InstanceSettings

    mask = torch.zeros(7, 12, dtype=torch.long)
    inst = torch.zeros(7, 12, dtype=torch.long)
    mask[1:6, 1:11] = 255
    mask[2:5, 2:5], inst[2:5, 2:5] = 1, 1
    mask[2:5, 7:10], inst[2:5, 7:10] = 1, 2
    target = TargetBuilder(InstanceSettings(method="boundary", boundary_width=1), 2, 255)(mask, inst)
    for rows, cols in ((slice(2, 5), slice(2, 5)), (slice(2, 5), slice(7, 10))):
        square = target[rows, cols]
        assert (square[1, 1] == 1) and (square.sum() - 1 == 8 * 2)  # centre interior, the 8 around it boundary


def test_an_object_cut_by_a_crop_s_padding_gets_no_boundary_there():
    """A crop larger than the image pads it: the padding was background (0) to the boundary targets, so every
    object reaching the image's edge got a false boundary band along it (about 1 % of DSB2018's boundary pixels);
    it is OUTSIDE (-1) now, past the image, where no boundary is drawn, as at the image's own edge."""
    from pixelwise.data import build_transforms
    from pixelwise.engine.instance_methods import TargetBuilder
    from pixelwise.inference import InstanceSettings

    inst = torch.zeros(10, 12, dtype=torch.long)
    inst[:, :6], inst[:, 6:] = 1, 2  # two objects filling the image, touching in the middle
    mask = (inst > 0).to(torch.uint8)
    tf = build_transforms(train=True, mean=[0.5] * 3, std=[0.25] * 3, crop_size=16, scale_range=None, hflip=False)
    torch.manual_seed(0)
    _, mask_t, inst_t = tf(torch.stack([mask * 100] * 3), mask, inst)
    target = TargetBuilder(InstanceSettings(method="boundary", boundary_width=1), 2, 255)(mask_t.long(), inst_t)
    inside = mask_t != 255
    assert int(inside.sum()) == 120  # the whole image, padded round
    boundary = (target == 2) & inside
    # only the two columns where the objects touch: none along the padding
    assert int(boundary.sum()) == 2 * 10
    cols = boundary.nonzero()[:, 1].unique()
    assert len(cols) == 2 and int(cols[1] - cols[0]) == 1
