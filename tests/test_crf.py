"""Dense CRF (pixelwise.crf): the permutohedral lattice against exact Gaussian filtering, mean field
against an O(N^2) brute force, behaviour, batching, gradients, and pydensecrf2 when it is installed."""

from __future__ import annotations

import math
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch

from pixelwise.crf import CRFSettings, PermutohedralLattice, dense_crf, dense_crf_batch, permutohedral_filter
from pixelwise.errors import ConfigError

try:  # optional reference implementation (pip install pydensecrf2); never a dependency
    import pydensecrf.densecrf as dcrf
except ImportError:  # pragma: no cover - depends on the environment
    dcrf = None

# Parameters at the scale of the 24x20 test scenes (the defaults are meant for ~500 px images).
SMALL = dict(w1=4.0, theta_alpha=5.0, theta_beta=13.0, w2=3.0, theta_gamma=1.0)


def scene(seed: int, height: int = 20, width: int = 24, noise: float = 0.6):
    """A three-region RGB image with pixel noise, and noisy probabilities around its label map."""
    rng = np.random.default_rng(seed)
    labels = np.zeros((height, width), dtype=np.int64)
    labels[:, width // 2 :] = 1
    labels[height // 2 :, : width // 3] = 2
    palette = np.array([[200, 40, 40], [40, 180, 60], [50, 60, 210]])
    image = np.clip(palette[labels] + rng.normal(0, 12, (height, width, 3)), 0, 255).astype(np.uint8)
    onehot = np.eye(3)[labels].transpose(2, 0, 1)
    probs = (1 - noise) * onehot + noise * rng.dirichlet(np.ones(3), size=(height, width)).transpose(2, 0, 1)
    return image, torch.tensor(probs, dtype=torch.float32), labels


def brute_force_crf(image, probs, *, w1, theta_alpha, theta_beta, w2, theta_gamma, iterations=10, clip=1e-5):
    """Mean field with the dense N x N Gaussian kernels, in float64: densecrf's update (Potts, the j = i
    term included) and its symmetric normalisation D^-1/2 K D^-1/2, D = K 1."""
    h, w, _ = image.shape
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64), indexing="ij")
    pos = torch.stack([xs, ys], -1).reshape(-1, 2)
    rgb = torch.as_tensor(image, dtype=torch.float64).reshape(-1, 3)
    kernels = []
    for weight, feats in ((w1, torch.cat([pos / theta_alpha, rgb / theta_beta], 1)), (w2, pos / theta_gamma)):
        k = torch.exp(-(torch.cdist(feats, feats) ** 2) / 2)
        kernels.append((weight, k, k.sum(1, keepdim=True).rsqrt()))
    neg_unary = torch.log(probs.to(torch.float64).reshape(probs.shape[0], -1).t().clamp(clip, 1))
    q = torch.softmax(neg_unary, 1)
    for _ in range(iterations):
        message = sum(weight * norm * (k @ (norm * q)) for weight, k, norm in kernels)
        q = torch.softmax(neg_unary + message, 1)
    return q.t().reshape(probs.shape)


# --- the lattice alone ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("dim", "side", "scale_range", "normalised_bound", "raw_bound"),
    [(2, 10, (0.85, 0.91), 0.02, 0.03), (5, 3, (0.62, 0.68), 0.04, 0.06)],
)
def test_lattice_filter_against_exact_gaussian(dim, side, scale_range, normalised_bound, raw_bound):
    """Random points (dense enough that every point has neighbours within the kernel width): the lattice
    filter against sum_j exp(-|f_i - f_j|^2 / 2) v_j.  Measured over 5 seeds: the symmetrically
    normalised filter (what the CRF uses) is within 1.0 % (d = 2) and 2.4 % (d = 5) relative error; the raw
    filter carries a global scale (0.88 for d = 2, 0.65 for d = 5: densecrf's alpha constant does not make
    it 1) and is within 1.7 % / 4.0 % of the exact filter once that one scale is fitted."""
    for seed in range(3):
        g = torch.Generator().manual_seed(seed)
        feats = torch.rand(1000, dim, generator=g) * side
        values = torch.rand(1000, 3, generator=g)
        k = torch.exp(-(torch.cdist(feats.double(), feats.double()) ** 2) / 2)
        exact = k @ values.double()
        approx = permutohedral_filter(feats, values).double()
        scale = (approx * exact).sum() / (exact * exact).sum()
        assert scale_range[0] < scale < scale_range[1]
        assert ((approx - scale * exact).norm() / (scale * exact).norm()).item() < raw_bound
        d_exact = k.sum(1, keepdim=True).rsqrt()
        d_approx = permutohedral_filter(feats, torch.ones(1000, 1)).double().rsqrt()
        normalised_exact = d_exact * (k @ (d_exact * values.double()))
        normalised = d_approx * permutohedral_filter(feats, (d_approx * values.double()).float()).double()
        err = ((normalised - normalised_exact).norm() / normalised_exact.norm()).item()
        assert err < normalised_bound


@pytest.mark.parametrize("d", [1, 2, 3])
def test_lattice_structure(d):
    feats = torch.rand(500, d) * 4
    lattice = PermutohedralLattice(feats)
    assert 0 < lattice.size <= 500 * 4
    # barycentric weights are a partition of unity over the d + 1 enclosing vertices
    splat = lattice.splat_matrix().to_dense()
    torch.testing.assert_close(splat.sum(0), torch.ones(500))
    assert splat.min() >= 0
    # a batch is the same lattices side by side
    batch = PermutohedralLattice(torch.stack([feats, feats]))
    assert batch.size == 2 * lattice.size
    values = torch.rand(500, 2)
    two = batch.filter(torch.cat([values, values]))
    torch.testing.assert_close(two[:500], lattice.filter(values))
    torch.testing.assert_close(two[500:], lattice.filter(values))
    # the sparse products assume valid CSR (columns strictly increasing in each row); blur steps are symmetric
    for m in [batch.splat_matrix(), batch.slice_matrix(), *batch._blur]:
        torch.sparse_csr_tensor(m.crow_indices(), m.col_indices(), m.values(), m.shape, check_invariants=True)
        rows = torch.arange(m.shape[0]).repeat_interleave(m.crow_indices().diff())
        cols = m.col_indices().long()
        assert bool((cols[1:] > cols[:-1])[rows[1:] == rows[:-1]].all())
    for blur in batch._blur:
        dense = blur.to_dense()
        assert torch.equal(dense, dense.t())


# --- mean field against the brute force ----------------------------------------------------------


@pytest.mark.parametrize("smoothness_filter", ["exact", "lattice"])
def test_mean_field_against_brute_force(smoothness_filter):
    """Measured over these 5 scenes: max |difference| 0.0101 (exact smoothness) / 0.0128 (lattice), argmax
    agreement 100 %."""
    for seed in range(5):
        image, probs, _ = scene(seed)
        reference = brute_force_crf(image, probs, **SMALL)
        out = dense_crf(image, probs, smoothness_filter=smoothness_filter, **SMALL).double()
        assert (out - reference).abs().max().item() < 0.025
        assert (out.argmax(0) == reference.argmax(0)).double().mean().item() >= 0.995


def test_exact_smoothness_kernel_is_exact():
    image, probs, _ = scene(0)
    params = dict(SMALL, w1=0.0)
    reference = brute_force_crf(image, probs, **params)
    out = dense_crf(image, probs, smoothness_filter="exact", **params).double()
    assert (out - reference).abs().max().item() < 1e-4  # truncation at 4 sigma and float32


# --- behaviour -----------------------------------------------------------------------------------


@pytest.mark.parametrize("smoothness_filter", ["exact", "lattice"])
def test_output_is_a_distribution(smoothness_filter):
    image, probs, _ = scene(1)
    out = dense_crf(image, probs, smoothness_filter=smoothness_filter, **SMALL)
    assert out.shape == probs.shape and out.dtype == probs.dtype
    assert out.min() >= 0
    torch.testing.assert_close(out.sum(0), torch.ones(out.shape[1:]), atol=1e-5, rtol=0)


def test_zero_weights_return_the_input():
    image, probs, _ = scene(2)
    probs = probs / probs.sum(0, keepdim=True)
    torch.testing.assert_close(dense_crf(image, probs, w1=0, w2=0), probs, atol=1e-5, rtol=0)
    torch.testing.assert_close(dense_crf(image, probs, iterations=0), probs, atol=1e-5, rtol=0)


def test_logits_are_the_softmax_of_probabilities():
    image, _, _ = scene(3)
    logits = torch.randn(3, 20, 24) * 3
    torch.testing.assert_close(
        dense_crf(image, logits, logits=True, **SMALL), dense_crf(image, logits.softmax(0), clip=0.0, **SMALL)
    )


def test_potts_equals_its_compatibility_matrix():
    image, probs, _ = scene(4)
    out = dense_crf(image, probs, **SMALL)
    torch.testing.assert_close(dense_crf(image, probs, compat=1 - torch.eye(3), **SMALL), out, atol=1e-5, rtol=0)
    # a compatibility that never penalises leaves only the unary
    torch.testing.assert_close(
        dense_crf(image, probs, compat=torch.zeros(3, 3), **SMALL), probs / probs.sum(0), atol=1e-5, rtol=0
    )


def test_isolated_wrong_labels_are_cleaned_up():
    """Two flat colour regions; 10 % of the pixels confidently (0.6) labelled with the other region."""
    rng = np.random.default_rng(0)
    h, w = 30, 40
    truth = np.zeros((h, w), dtype=np.int64)
    truth[:, w // 2 :] = 1
    image = np.where(truth[..., None] == 1, [[[30, 60, 200]]], [[[220, 200, 40]]]).astype(np.uint8)
    noisy = truth.copy()
    flip = rng.random((h, w)) < 0.1
    noisy[flip] = 1 - noisy[flip]
    probs = torch.tensor(np.eye(2)[noisy].transpose(2, 0, 1) * 0.2 + 0.4, dtype=torch.float32)
    assert (probs.argmax(0).numpy() != truth).sum() == flip.sum() > 50
    for smoothness_filter in ("exact", "lattice"):
        out = dense_crf(image, probs, theta_alpha=10.0, smoothness_filter=smoothness_filter)
        assert (out.argmax(0).numpy() == truth).all()


@pytest.mark.parametrize("smoothness_filter", ["exact", "lattice"])
def test_batch_equals_single_images(smoothness_filter):
    scenes = [scene(seed) for seed in range(3)]
    images = np.stack([s[0] for s in scenes])
    probs = torch.stack([s[1] for s in scenes])
    batch = dense_crf_batch(images, probs, smoothness_filter=smoothness_filter, **SMALL)
    for i in range(3):
        single = dense_crf(images[i], probs[i], smoothness_filter=smoothness_filter, **SMALL)
        torch.testing.assert_close(batch[i], single, atol=1e-5, rtol=0)


@pytest.mark.parametrize("smoothness_filter", ["exact", "lattice"])
def test_gradients_are_finite_and_correct(smoothness_filter):
    image, probs, _ = scene(5)
    weights = torch.randn(probs.shape, generator=torch.Generator().manual_seed(0))
    params = dict(SMALL, iterations=3)

    def objective(p):
        return (dense_crf(image, p, smoothness_filter=smoothness_filter, **params).double() * weights).sum()

    p = probs.clone().requires_grad_(True)
    objective(p).backward()
    assert torch.isfinite(p.grad).all() and p.grad.abs().max() > 0
    direction = torch.randn(probs.shape, generator=torch.Generator().manual_seed(1)) * 1e-2
    eps = 0.05
    numeric = (objective(probs + eps * direction) - objective(probs - eps * direction)).item() / (2 * eps)
    analytic = (p.grad * direction).sum().item()
    assert math.isclose(analytic, numeric, rel_tol=0.02, abs_tol=1e-4)


def test_lattice_backward_is_the_transpose():
    """<K u, v> = <u, K^T v> with K^T from autograd, for the normalised appearance-type operator."""
    feats = torch.rand(800, 5) * 3
    u = torch.rand(800, 4, dtype=torch.float32, requires_grad=True)
    v = torch.rand(800, 4)
    ku = permutohedral_filter(feats, u)
    (ktv,) = torch.autograd.grad((ku * v).sum(), u)
    torch.testing.assert_close((ku * v).sum(), (u * ktv).sum(), rtol=1e-5, atol=0)


def test_bad_inputs_are_rejected():
    image, probs, _ = scene(0)
    with pytest.raises(
        ValueError, match=r"^images must be \(B, H, W, 3\) = \(1, 20, 24, 3\) to match probs, got \(1, 10, 24, 3\)$"
    ):
        dense_crf(image[:10], probs)
    with pytest.raises(ValueError, match=r"^compat must be \(3, 3\), got \(2, 2\)$"):
        dense_crf(image, probs, compat=torch.zeros(2, 2))
    with pytest.raises(ValueError, match="^smoothness_filter must be 'exact' or 'lattice', got 'fast'$"):
        dense_crf(image, probs, smoothness_filter="fast")
    # a float image in [0, 1] ran with a colour term 255 times too weak (68.8 % of labels kept, 20 x 20)
    with pytest.raises(ValueError) as e:
        dense_crf(torch.as_tensor(image).float() / 255, probs)
    assert str(e.value) == (
        "images must be uint8 RGB (0-255, as theta_beta's scale), got torch.float32: e.g. "
        "(image * 255).round().to(torch.uint8) for a float image in [0, 1]"
    )


# --- against pydensecrf2 -------------------------------------------------------------------------

CAMVID_STEMS = ["0001TP_008550", "Seq05VD_f01140", "Seq05VD_f02640"]


def camvid_case(root: Path, stem: str, classes: int = 11):
    """A CamVid test image and probabilities: the one-hot ground truth (void: uniform) mixed 40/60 with
    Dirichlet noise, so that a few per cent of the argmax labels change under the CRF."""
    from PIL import Image

    image = np.ascontiguousarray(np.array(Image.open(root / "camvid/images/test" / f"{stem}.webp").convert("RGB")))
    mask = np.array(Image.open(root / "camvid/masks/test" / f"{stem}.png"))
    onehot = np.full((classes, *mask.shape), 1.0 / classes, dtype=np.float32)
    valid = mask < classes
    onehot[:, valid] = 0
    rows, cols = np.nonzero(valid)
    onehot[mask[valid], rows, cols] = 1
    noise = np.random.default_rng(0).dirichlet(np.ones(classes), size=mask.shape).transpose(2, 0, 1)
    return image, (0.4 * onehot + 0.6 * noise).astype(np.float32)


def pydensecrf_reference(image, probs, *, iterations, w1, theta_alpha, theta_beta, w2, theta_gamma):
    classes, h, w = probs.shape
    crf = dcrf.DenseCRF2D(w, h, classes)
    crf.setUnaryEnergy(np.ascontiguousarray(-np.log(np.clip(probs, 1e-5, 1.0)).reshape(classes, -1)))
    crf.addPairwiseGaussian(sxy=theta_gamma, compat=w2)
    crf.addPairwiseBilateral(sxy=theta_alpha, srgb=theta_beta, rgbim=image, compat=w1)
    return np.array(crf.inference(iterations)).reshape(classes, h, w)


@pytest.mark.realdata
@pytest.mark.slow
@pytest.mark.skipif(dcrf is None, reason="pydensecrf2 is not installed (pip install pydensecrf2)")
def test_against_pydensecrf2_on_camvid(data_root):
    """DeepLab's parameters (the defaults) on real 480x360 images.  Measured: the 'lattice' smoothness
    filter reproduces pydensecrf2 to 3.4e-6 (100 % argmax agreement); the default exact Gaussian
    smoothness agrees on 99.95 % of the pixels (mean of the first 20 test images, lowest 99.93 %)."""

    params = asdict(CRFSettings())
    for stem in CAMVID_STEMS:
        image, probs = camvid_case(data_root, stem)
        reference = pydensecrf_reference(image, probs, **params)
        changed = float((reference.argmax(0) != probs.argmax(0)).mean())
        assert changed > 0.01  # the CRF does change labels here
        exact = dense_crf(image, torch.from_numpy(probs)).numpy()
        agreement = float((exact.argmax(0) == reference.argmax(0)).mean())
        assert agreement >= 0.995, (stem, agreement)
        lattice = dense_crf(image, torch.from_numpy(probs), smoothness_filter="lattice").numpy()
        difference = float(np.abs(lattice - reference).max())
        agreement = float((lattice.argmax(0) == reference.argmax(0)).mean())
        assert difference < 1e-4 and agreement >= 0.9999, (stem, difference, agreement)


def test_exact_smoothness_in_bands_equals_the_whole_image():
    """The mean field's buffered path filters a large image band by band (rows plus their halo): the same
    numbers as the whole-image convolution, at the image's top and bottom edges and between bands."""
    from pixelwise.crf.mean_field import _ExactSmoothness

    for h, w, c, b, theta_gamma in [(203, 2048, 20, 1, 1.0), (97, 4096, 20, 2, 3.0)]:
        smooth = _ExactSmoothness(h, w, theta_gamma, 3.0, torch.device("cpu"))
        q, add = torch.rand(b, h * w, c), torch.rand(b, h * w, c)
        out = torch.empty_like(q)
        assert torch.equal(smooth.message(q, add, out=out), smooth.message(q, add))
        assert torch.equal(smooth.message(q, None, out=out), smooth.message(q))


def test_settings_ranges_one_line_each():
    # NaN, negative weights and non-positive widths used to pass and give silently wrong maps
    for values, message in [
        ({"iterations": -1}, "crf.iterations=-1: a whole number >= 0 (0: no mean-field step)"),
        ({"iterations": 2.5}, "crf.iterations=2.5: a whole number >= 0 (0: no mean-field step)"),
        ({"w1": -1.0}, "crf.w1=-1.0: must be a number from 0 (kernel off) to 3.4e+38"),
        ({"w2": float("nan")}, "crf.w2=nan: must be a number from 0 (kernel off) to 3.4e+38"),
        # float32's infinity (the output was NaN), and widths that are 0 in float32 or blow the lattice's keys
        ({"w2": 1e300}, "crf.w2=1e+300: must be a number from 0 (kernel off) to 3.4e+38"),
        ({"theta_alpha": 0}, "crf.theta_alpha=0: must be a number from 0.01 to 3.4e+38 (pixels, or intensity levels)"),
        (
            {"theta_gamma": 1e-300},
            "crf.theta_gamma=1e-300: must be a number from 0.01 to 3.4e+38 (pixels, or intensity levels)",
        ),
        (
            {"theta_beta": float("inf")},
            "crf.theta_beta=inf: must be a number from 0.01 to 3.4e+38 (pixels, or intensity levels)",
        ),
        ({"theta_gamma": "3"}, "crf.theta_gamma='3': must be a number"),
    ]:
        with pytest.raises(ConfigError) as e:
            CRFSettings.from_dict(values)
        assert str(e.value) == message
    assert CRFSettings.from_dict({"w1": 0, "iterations": 0}).w1 == 0
    # numpy scalars (a grid from np.arange) are numbers too
    assert CRFSettings.from_dict({"iterations": np.int64(5), "w1": np.float32(4.0)}).iterations == 5


def test_inputs_and_widths_the_filters_cannot_take_are_one_line():
    """A NaN probability spread through the filters to every pixel (all class 0); a std a hundredth of a level gave
    an index error from the lattice's keys; a huge theta_gamma took time and memory for taps beyond the image
    (1e4: 3.7 s and 1.8 GB on 64x64) with the same result as its radius cut at the image's side."""
    image = torch.randint(0, 256, (1, 24, 32, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    probs = torch.softmax(torch.randn(1, 3, 24, 32, generator=torch.Generator().manual_seed(1)), 1)
    bad = probs.clone()
    bad[0, 0, 5, 5] = float("nan")
    with pytest.raises(ValueError, match="^the probabilities hold NaN or infinite values: the CRF would spread"):
        dense_crf_batch(image, bad)
    with pytest.raises(ConfigError, match="^dense CRF: feature range too large for 64-bit lattice keys"):
        dense_crf_batch(image, probs, theta_alpha=0.01, theta_beta=0.01)
    # theta_gamma 1e4 with its radius cut at the image: still the exact dense Gaussian
    img, p, _ = scene(0)
    params = dict(SMALL, w1=0.0, theta_gamma=1e4)
    out = dense_crf(img, p, smoothness_filter="exact", **params).double()
    assert (out - brute_force_crf(img, p, **params)).abs().max().item() < 1e-4


def test_a_grid_value_may_be_one_number_and_anything_else_not_a_list_is_one_line(tmp_path):
    """crf_search(grid={"w1": 3.0}) gave "TypeError: 'float' object is not iterable": one number is that value
    alone; a string (read character by character) or an empty list is refused."""
    from pixelwise.crf.search import grid_points
    from pixelwise.engine import crf_search

    from .test_engine import tiny_run

    base = CRFSettings()
    points = grid_points({"w1": 3.0, "theta_beta": [3, 5]}, base)
    assert [(p.w1, p.theta_beta) for p in points] == [(3.0, 3), (3.0, 5)]
    for grid, message in (
        ({"w1": "3"}, "CRF search grid w1='3': give a list of values (e.g. [3.0, 4.0, 5.0]) or one number"),
        ({"w1": []}, "CRF search grid w1=[]: give a list of values (e.g. [3.0, 4.0, 5.0]) or one number"),
        ([3.0], "CRF search grid [3.0]: give a dict of parameter: values (e.g. {'w1': [3.0, 4.0, 5.0]})"),
    ):
        with pytest.raises(ConfigError) as e:
            grid_points(grid, base)
        assert str(e.value) == message
    ckpt, root = tiny_run(tmp_path)
    result = crf_search(ckpt, grid={"w1": 3.0}, data_root=root, num_images=1, iterations=1, progress=False, write=False)
    assert [r["w1"] for r in result["results"]] == [3.0]
    with pytest.raises(ConfigError) as e:
        crf_search(ckpt, num_images="2", data_root=root, progress=False, write=False)
    assert (
        str(e.value)
        == "num_images='2' (--num-images): give a whole number >= 1 (the images the settings are scored on)"
    )
