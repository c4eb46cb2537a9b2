import math

import numpy as np
import pytest
import torch
from torch import nn

from pixelwise.errors import ConfigError
from pixelwise.losses import build_loss, class_frequency_weights, list_losses, unet_weight_map

ALL_LOSSES = {
    "cross_entropy": {},
    "focal": {"gamma": 2.0, "alpha": [0.25, 0.5, 1.0, 2.0]},
    "dice": {},
    "lovasz": {},
    "lovasz_per_image": {"per_image": True},
    "ohem": {"thresh": 0.7, "min_kept": 10},
    "unet_weighted": {"foreground": 1},
    "sum": {"terms": [{"name": "cross_entropy"}, {"name": "dice", "weight": 0.5}]},
}


def make(key):
    kwargs = dict(ALL_LOSSES[key])
    return build_loss("lovasz" if key == "lovasz_per_image" else key, **kwargs)


def test_every_registered_loss_is_covered():
    assert set(list_losses()) <= {k.removesuffix("_per_image") for k in ALL_LOSSES}


@pytest.mark.parametrize("key", list(ALL_LOSSES))
def test_ignored_pixels_change_nothing(key):
    torch.manual_seed(0)
    loss_fn = make(key)
    logits = torch.randn(2, 4, 12, 10, requires_grad=True)
    target = torch.randint(0, 4, (2, 12, 10))
    target[:, :3] = 255
    target[1, 5:, 4:] = 255
    loss = loss_fn(logits, target)
    (grad,) = torch.autograd.grad(loss, logits)
    changed = logits.detach().clone()
    ignored = (target == 255).unsqueeze(1).expand_as(changed)
    changed[ignored] = torch.randn(int(ignored.sum())) * 50
    changed.requires_grad_(True)
    loss2 = loss_fn(changed, target)
    (grad2,) = torch.autograd.grad(loss2, changed)
    assert torch.isfinite(loss) and loss.item() > 0
    assert loss2.item() == pytest.approx(loss.item(), rel=1e-5, abs=1e-6)
    assert torch.allclose(grad, grad2, atol=1e-6)
    assert grad[ignored].abs().max() == 0


@pytest.mark.parametrize("key", list(ALL_LOSSES))
def test_all_ignored_is_zero_not_nan(key):
    logits = torch.randn(1, 4, 3, 3, requires_grad=True)
    loss = make(key)(logits, torch.full((1, 3, 3), 255))
    loss.backward()
    assert loss.item() == 0.0 and torch.isfinite(logits.grad).all()


@pytest.mark.parametrize("key", list(ALL_LOSSES))
def test_all_ignored_fp16_logits_are_zero_not_nan(key):
    """fp16 training (train.amp: fp16): the model's logits stay fp16, and their sum over a crop overflows to inf,
    which times 0 was NaN: the run stopped with "loss became nan". Lovász per image: one void image did it."""
    logits = torch.full((2, 4, 64, 64), 30.0, dtype=torch.float16, requires_grad=True)
    target = torch.full((2, 64, 64), 255)
    loss = make(key)(logits, target)
    loss.backward()
    assert loss.item() == 0.0 and torch.isfinite(logits.grad).all()
    if key == "lovasz_per_image":
        target[0] = torch.randint(0, 4, (64, 64))  # the other image labelled
        assert torch.isfinite(make(key)(logits.detach().clone().requires_grad_(), target))


@pytest.mark.parametrize("key", list(ALL_LOSSES))
def test_float64_logits_keep_their_precision(key):
    """Every loss took float64 logits to float32 (``.float()`` meant to raise fp16/bf16): the value in float32 and
    a float64 gradcheck failing."""
    torch.manual_seed(0)
    logits = torch.randn(1, 4, 3, 3, dtype=torch.float64, requires_grad=True)
    target = torch.randint(0, 4, (1, 3, 3))
    assert make(key)(logits, target).dtype == torch.float64
    if key in ("cross_entropy", "ohem", "focal"):  # with class weights (float32 buffers) too
        for extra in ({"weight": [1.0, 2.0, 0.5, 1.0]}, {"weight": [1.0, 2.0, 0.5, 1.0], "top_k_percent": 0.5}):
            if key != "cross_entropy" and "top_k_percent" in extra:
                continue
            args = {**ALL_LOSSES[key], **extra} if key != "focal" else {"alpha": extra["weight"]}
            assert build_loss(key, **args)(logits, target).dtype == torch.float64
    if key in ("cross_entropy", "focal", "dice", "unet_weighted"):  # smooth in the logits
        assert torch.autograd.gradcheck(lambda x: make(key)(x, target), (logits,))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ({"thresh": 70}, "loss 'ohem': thresh 70 must be a probability in [0, 1] (PSPNet's 0.7)"),
        ({"thresh": -1}, "loss 'ohem': thresh -1 must be a probability in [0, 1] (PSPNet's 0.7)"),
        ({"min_kept": -5}, "loss 'ohem': min_kept -5 must be a whole number >= 0 of pixels per image"),
        ({"min_kept": 2.5}, "loss 'ohem': min_kept 2.5 must be a whole number >= 0 of pixels per image"),
    ],
)
def test_ohem_settings_are_checked(args, message):
    with pytest.raises(ConfigError) as e:
        build_loss("ohem", **args)
    assert str(e.value) == message


def test_ohem_min_kept_as_yaml_reads_1e5():
    """YAML 1.2 reads 1e5 as 100000.0: kthvalue() failed at the first batch with more valid pixels than that."""
    ohem = build_loss("ohem", min_kept=1e5)
    assert ohem.min_kept == 100_000 and isinstance(ohem.min_kept, int)
    logits, target = torch.randn(1, 3, 400, 400), torch.randint(0, 3, (1, 400, 400))
    assert torch.isfinite(ohem(logits, target))


def test_cross_entropy_hand_computed():
    logits = torch.tensor([[[[2.0, 5.0]], [[0.0, -1.0]]]])  # N=1, C=2, H=1, W=2; second pixel ignored
    loss = build_loss("cross_entropy")(logits, torch.tensor([[[0, 255]]]))
    assert loss.item() == pytest.approx(-math.log(math.exp(2) / (math.exp(2) + 1)))
    weighted = build_loss("cross_entropy", weight=[1.0, 3.0])
    logits = torch.tensor([[[[0.0, 0.0]], [[0.0, math.log(3.0)]]]])
    # pixel 0: class 0, p = 1/2, weight 1; pixel 1: class 1, p = 3/4, weight 3 -> weighted mean
    expected = (1 * math.log(2) + 3 * -math.log(0.75)) / 4
    assert weighted(logits, torch.tensor([[[0, 1]]])).item() == pytest.approx(expected)


def test_cross_entropy_pixel_weights_hand_computed():
    logits = torch.tensor([[[[0.0, 0.0, 0.0]], [[0.0, math.log(3.0), 0.0]]]])  # 1 x 2 x 1 x 3
    target = torch.tensor([[[0, 1, 255]]])
    terms = [math.log(2), -math.log(0.75)]  # the third pixel is ignored
    ce = build_loss("cross_entropy")
    assert ce(logits, target, torch.ones(1, 1, 3)).item() == pytest.approx(ce(logits, target).item())
    # pixel weights multiply each term; the mean still divides by the 2 labelled pixels
    w = torch.tensor([[[3.0, 1.0, 5.0]]])
    assert ce(logits, target, w).item() == pytest.approx((3 * terms[0] + terms[1]) / 2)
    # with class weights the denominator is their sum over the labelled pixels, as F.cross_entropy's mean
    weighted = build_loss("cross_entropy", weight=[1.0, 3.0])
    assert weighted(logits, target, w).item() == pytest.approx((3 * terms[0] + 3 * terms[1]) / 4)
    assert weighted(logits, target, torch.ones(1, 1, 3)).item() == pytest.approx(weighted(logits, target).item())
    # label smoothing too: weights of 1 give F.cross_entropy's own mean
    smooth = build_loss("cross_entropy", weight=[1.0, 3.0], label_smoothing=0.1)
    assert smooth(logits, target, torch.ones(1, 1, 3)).item() == pytest.approx(smooth(logits, target).item())
    with pytest.raises(ValueError, match=r"pixel weights \(1, 3\) do not fit the target \(1, 1, 3\)"):
        ce(logits, target, torch.ones(1, 3))


def test_bootstrapped_cross_entropy_keeps_the_hardest_share_of_pixels():
    """Panoptic-DeepLab's semantic loss (detectron2's DeepLabCE, top_k_percent_pixels): the mean of the largest
    pixel-weighted terms, that share of all pixels (ignored ones are 0 terms)."""
    p_true = [0.5, 0.75, 0.9, 0.2, 0.6]
    logits = torch.tensor([[[[0.0] * 5], [[math.log(p / (1 - p)) for p in p_true]]]])  # class 1's probabilities
    target = torch.tensor([[[1, 1, 1, 1, 255]]])
    terms = sorted([-math.log(p) for p in p_true[:4]] + [0.0], reverse=True)
    boot = build_loss("cross_entropy", top_k_percent=0.4)  # 2 of the 5 pixels
    assert boot(logits, target).item() == pytest.approx((terms[0] + terms[1]) / 2)
    # weight 10 on the easiest labelled pixel (p = 0.9) makes it the second hardest: 10 x 0.105 = 1.05 > 0.69
    w = torch.tensor([[[1.0, 1.0, 10.0, 1.0, 1.0]]])
    assert boot(logits, target, w).item() == pytest.approx((-math.log(0.2) - 10 * math.log(0.9)) / 2)
    assert build_loss("cross_entropy", top_k_percent=1.0)(logits, target).item() == pytest.approx(
        sum(terms) / 4
    )  # 1: the plain mean over the labelled pixels
    with pytest.raises(ConfigError) as e:
        build_loss("cross_entropy", top_k_percent=0)
    assert str(e.value) == "cross_entropy top_k_percent=0: the share of pixels kept, in (0, 1] (the paper's 0.2)"


def test_focal_hand_computed_and_gamma_zero_is_cross_entropy():
    torch.manual_seed(1)
    logits = torch.randn(2, 3, 5, 4)
    target = torch.randint(0, 3, (2, 5, 4))
    target[0, 0] = 255
    ce = build_loss("cross_entropy")(logits, target)
    assert build_loss("focal", gamma=0.0)(logits, target).item() == pytest.approx(ce.item(), rel=1e-6)
    # one pixel, p_t = 0.8: -(0.2^2) * log 0.8 * alpha
    logits = torch.log(torch.tensor([0.8, 0.2])).view(1, 2, 1, 1)
    loss = build_loss("focal", gamma=2.0, alpha=[0.25, 0.75])(logits, torch.zeros(1, 1, 1, dtype=torch.long))
    assert loss.item() == pytest.approx(-0.25 * 0.2**2 * math.log(0.8), rel=1e-5)


def test_dice_hand_computed():
    probs = torch.tensor([[0.9, 0.2], [0.1, 0.8]])  # classes x pixels
    logits = torch.log(probs).view(1, 2, 1, 2)
    target = torch.tensor([[[0, 1]]])
    d0 = (2 * 0.9 + 1) / (0.9 + 0.2 + 1 + 1)
    d1 = (2 * 0.8 + 1) / (0.1 + 0.8 + 1 + 1)
    loss = build_loss("dice", smooth=1.0)(logits, target)
    assert loss.item() == pytest.approx(1 - (d0 + d1) / 2, rel=1e-5)
    # a class absent from the target is left out with classes="present"
    only0 = build_loss("dice", smooth=1.0)(logits, torch.tensor([[[0, 0]]]))
    assert only0.item() == pytest.approx(1 - (2 * 1.1 + 1) / (1.1 + 2 + 1), rel=1e-5)


def test_lovasz_hand_computed():
    probs = torch.tensor([[0.8, 0.3], [0.2, 0.7]])  # classes x pixels; labels 0, 1
    logits = torch.log(probs).view(1, 2, 1, 2)
    # class 0: errors (0.2, 0.3) -> sorted 0.3 (bg), 0.2 (fg); Lovasz gradient (0.5, 0.5) -> 0.25
    # class 1: errors (0.2, 0.3) -> sorted 0.3 (fg), 0.2 (bg); gradient (1, 0) -> 0.3
    loss = build_loss("lovasz")(logits, torch.tensor([[[0, 1]]]))
    assert loss.item() == pytest.approx(0.275, rel=1e-5)
    perfect = build_loss("lovasz")(torch.tensor([[[[20.0, -20.0]], [[-20.0, 20.0]]]]), torch.tensor([[[0, 1]]]))
    assert perfect.item() < 1e-6


@pytest.mark.parametrize("per_image, chunked", [(False, False), (True, False), (False, True)])
def test_lovasz_matches_the_per_class_definition_with_absent_and_ignored(per_image, chunked, monkeypatch):
    if chunked:  # one class per sort, as on a batch too large for one
        monkeypatch.setattr("pixelwise.losses.region._SORT_ELEMENTS", 1)
    # Berman et al.'s Jaccard surrogate class by class (sort, Lovasz gradient, dot): the loss sorts all
    # classes at once, which must give the same value and gradient.
    torch.manual_seed(0)
    logits = torch.randn(3, 4, 5, 7, requires_grad=True)
    target = torch.randint(0, 3, (3, 5, 7))  # class 3 absent
    target[0, 0, :3] = 255
    target[2] = 255  # no labelled pixel: 0 in the per-image mean with either `classes`, as the authors' code

    def reference(classes):
        if per_image:
            return torch.stack([one(classes, i) for i in range(len(target))]).mean()
        return one(classes, slice(None))

    def one(classes, i):
        probs = torch.softmax(logits[i], -3).movedim(-3, -1)[target[i] != 255]
        labels = target[i][target[i] != 255]
        if not len(labels):
            return logits.sum() * 0
        losses = []
        for c in range(4):
            fg = (labels == c).float()
            if classes == "present" and fg.sum() == 0:
                continue
            errors, order = (fg - probs[:, c]).abs().sort(descending=True)
            g = fg[order]
            jaccard = 1 - (g.sum() - g.cumsum(0)) / (g.sum() + (1 - g).cumsum(0))
            losses.append(torch.dot(errors, torch.cat([jaccard[:1], jaccard[1:] - jaccard[:-1]])))
        return torch.stack(losses).mean()

    for classes in ("present", "all"):
        expected = reference(classes)
        (grad_expected,) = torch.autograd.grad(expected, logits)
        got = build_loss("lovasz", classes=classes, per_image=per_image)(logits, target)
        (grad_got,) = torch.autograd.grad(got, logits)
        assert got.item() == pytest.approx(expected.item(), rel=1e-6)
        assert torch.allclose(grad_got, grad_expected, atol=1e-7)
    assert reference("all").item() != pytest.approx(reference("present").item())


def test_ohem_keeps_only_hard_pixels():
    # p_true per pixel: 0.9, 0.6, 0.3, 0.95 -> with thresh 0.7 and min_kept 1, pixels 2 and 3 (0.6, 0.3)
    p = torch.tensor([0.9, 0.6, 0.3, 0.95])
    logits = torch.log(torch.stack([p, 1 - p])).view(1, 2, 1, 4)
    target = torch.zeros(1, 1, 4, dtype=torch.long)
    loss = build_loss("ohem", thresh=0.7, min_kept=1)(logits, target)
    assert loss.item() == pytest.approx(-(math.log(0.6) + math.log(0.3)) / 2, rel=1e-5)
    # min_kept raises the threshold: the 3 hardest pixels
    loss = build_loss("ohem", thresh=0.1, min_kept=3)(logits, target)
    assert loss.item() == pytest.approx(-(math.log(0.6) + math.log(0.3) + math.log(0.9)) / 3, rel=1e-5)


def test_weighted_sum():
    torch.manual_seed(2)
    logits, target = torch.randn(1, 3, 6, 6), torch.randint(0, 3, (1, 6, 6))
    total = build_loss("sum", terms=[{"name": "cross_entropy", "weight": 2.0}, {"name": "dice", "smooth": 0.5}])
    expected = 2 * build_loss("cross_entropy")(logits, target) + build_loss("dice", smooth=0.5)(logits, target)
    assert total(logits, target).item() == pytest.approx(expected.item(), rel=1e-6)
    with pytest.raises(ConfigError, match="valid: "):
        build_loss("focal", beta=1)
    with pytest.raises(ConfigError, match="available: "):
        build_loss("sum", terms=[{"weight": 1}])


@pytest.mark.parametrize("factor", [None, 1.0, 0.5])
def test_class_weights_reach_summed_terms(factor):
    """``train.class_weights`` with a list of terms: each term that takes class weights gets them, and a
    term's ``weight`` stays its scalar factor (once a TypeError without a factor, silently dropped with one)."""
    from pixelwise.engine.builders import build_criterion

    torch.manual_seed(3)
    logits, target = torch.randn(2, 3, 5, 7), torch.randint(0, 3, (2, 5, 7))
    target[0, 0, :3] = 255
    class_weights = [0.5, 2.0, 4.0]
    ce_term = {"name": "cross_entropy"} if factor is None else {"name": "cross_entropy", "weight": factor}
    cfg = {"loss": [ce_term, {"name": "dice", "weight": 0.25}], "loss_args": {}}
    total = build_criterion(cfg, 255, class_weights)(logits, target)
    weighted_ce = torch.nn.functional.cross_entropy(
        logits, target, weight=torch.tensor(class_weights), ignore_index=255
    )
    dice = build_loss("dice")(logits, target)
    expected = (1.0 if factor is None else factor) * weighted_ce + 0.25 * dice
    assert total.item() == pytest.approx(expected.item(), rel=1e-6)
    # the single-name form is unchanged
    single = build_criterion({"loss": "cross_entropy", "loss_args": {}}, 255, class_weights)(logits, target)
    assert single.item() == pytest.approx(weighted_ce.item(), rel=1e-6)
    with pytest.raises(ConfigError, match="no loss term takes class weights"):
        build_criterion({"loss": [{"name": "dice"}], "loss_args": {}}, 255, class_weights)
    with pytest.raises(ConfigError, match=r"'weight' is the term's factor \(a number\), got \[1, 2\]"):
        build_loss("sum", terms=[{"name": "cross_entropy", "weight": [1, 2]}])


def two_cells(gap: int = 4, size: int = 64) -> np.ndarray:
    """Membrane (0) everywhere, two square cells (1) separated by a ``gap``-pixel membrane."""
    mask = np.zeros((size, size), np.uint8)
    mask[10:54, 6:30] = 1
    mask[10:54, 30 + gap : 58] = 1
    return mask


def test_unet_weight_map_peaks_between_the_cells():
    mask = two_cells(gap=4)
    w = unet_weight_map(mask, w0=10.0, sigma=5.0, foreground=1)
    gap_weight = w[30, 30:34]
    # across a 4-pixel gap, distances between pixel centres to the two cells add up to d1 + d2 = 5:
    # w = w_c(membrane) + w0 * exp(-25 / 50)
    n, n_cell = mask.size, mask.sum()
    wc_membrane, wc_cell = n / (2 * (n - n_cell)), n / (2 * n_cell)
    assert gap_weight == pytest.approx(wc_membrane + 10 * math.exp(-(5**2) / 50), rel=1e-4)
    assert w.max() == pytest.approx(gap_weight.max(), rel=1e-6)
    assert w[30, 15] == pytest.approx(wc_cell)  # inside a cell: class weight only
    assert w[2, 2] < wc_membrane + 0.01  # far from both cells: (almost) no border term
    assert w[5, 31] < gap_weight[0]  # above the gap, further from both cells
    wide = unet_weight_map(two_cells(gap=12), w0=10.0, sigma=5.0)
    assert wide[30, 30:42].max() < gap_weight.max()  # wider gap, lower weight
    # one object: no second-nearest distance, no border term
    single = np.zeros((20, 20), np.uint8)
    single[5:15, 5:15] = 1
    assert unet_weight_map(single, class_balance=False).max() == 1.0
    ignored = mask.copy()
    ignored[0, 0] = 255
    assert unet_weight_map(ignored)[0, 0] == 0


def test_class_frequency_weights_hand_computed():
    counts, image_counts = [10, 30, 0], [40, 40, 0]  # class 2 absent
    assert class_frequency_weights(counts, method="inverse_frequency") == pytest.approx([2.0, 2 / 3, 0.0])
    # freq = 10/40, 30/40; median = 0.5 -> 2, 2/3
    assert class_frequency_weights(counts, image_counts, "median_frequency") == pytest.approx([2.0, 2 / 3, 0.0])
    counts, image_counts = [10, 30, 5], [40, 40, 10]  # freq .25 .75 .5 -> median .5
    assert class_frequency_weights(counts, image_counts) == pytest.approx([2.0, 2 / 3, 1.0])


@pytest.mark.realdata
def test_median_frequency_weights_on_camvid_match_segnet(data_root):
    from pixelwise.data import SegmentationDataset

    ds = SegmentationDataset(data_root, "camvid", "train")
    counts, image_counts = ds.class_counts()
    assert counts[2] == 623_349 and counts[3] == 20_076_880  # Pole, Road (classes.json / README)
    w = dict(zip(ds.info.classes, class_frequency_weights(counts, image_counts), strict=True))
    # the data set README's own check against SegNet's prototxt: Pole 4.79, Pedestrian 6.37, Road 0.149
    assert w["Pole"] == pytest.approx(4.79, abs=0.01)
    assert w["Pedestrian"] == pytest.approx(6.37, abs=0.01)
    assert w["Road"] == pytest.approx(0.149, abs=0.001)


def test_classes_of_weight_zero_alone_give_zero_not_nan():
    """A crop holding only a class of weight 0 (and ignored pixels): 0 with a zero gradient, as an all-ignored
    batch (F.cross_entropy divides 0 by 0); OHEM keeping no pixel likewise."""
    torch.manual_seed(0)
    logits = torch.randn(1, 2, 4, 4, requires_grad=True)
    target = torch.zeros(1, 4, 4, dtype=torch.long)
    target[0, 0] = 255
    for loss in (
        build_loss("cross_entropy", weight=[0.0, 1.0]),
        build_loss("ohem", min_kept=5, weight=[0.0, 1.0]),
        build_loss("sum", terms=[{"name": "cross_entropy"}, {"name": "dice"}], class_weights=[0.0, 1.0]),
    ):
        value = loss(logits, target)
        value.backward()
        assert torch.isfinite(value) and torch.isfinite(logits.grad).all(), loss
        logits.grad = None
    ce = build_loss("cross_entropy", weight=[0.0, 1.0])
    assert ce(logits, target).item() == 0.0
    pixel = ce(logits, target, pixel_weights=torch.ones(1, 4, 4))
    assert pixel.item() == 0.0
    confident = torch.zeros(1, 2, 4, 4)
    confident[:, 0] = 20.0  # every pixel sure of class 0: above the threshold, and min_kept 0 keeps none
    assert build_loss("ohem", min_kept=0)(confident, torch.zeros(1, 4, 4, dtype=torch.long)).item() == 0.0


def test_ohem_keeps_min_kept_pixels_per_image():
    """mmsegmentation's OHEMPixelSampler keeps min_kept x batch size: with every pixel above the threshold, the
    loss is the mean over the hardest 3 x 2 pixels."""
    torch.manual_seed(0)
    logits = torch.randn(2, 2, 4, 4)
    logits[:, 0] += 8.0  # every pixel confident of class 0, the truth
    target = torch.zeros(2, 4, 4, dtype=torch.long)
    per_pixel = torch.nn.functional.cross_entropy(logits, target, reduction="none").flatten()
    expected = per_pixel.topk(6).values.mean()
    assert build_loss("ohem", thresh=1e-6, min_kept=3)(logits, target).item() == pytest.approx(expected.item())


def test_focal_below_gamma_one_keeps_finite_gradients_and_checks_its_inputs():
    logits = torch.tensor([[[[40.0]], [[0.0]]]], requires_grad=True)  # p_t = 1 to float precision
    loss = build_loss("focal", gamma=0.5)(logits, torch.zeros(1, 1, 1, dtype=torch.long))
    loss.backward()
    assert torch.isfinite(logits.grad).all() and loss.item() == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match="target holds class 7 but the logits have 2 classes"):
        build_loss("focal")(torch.randn(1, 2, 2, 2), torch.full((1, 2, 2), 7))
    with pytest.raises(ConfigError) as e:
        build_loss("focal", alpha=[0.5, 0.5, 0.5])(torch.randn(1, 2, 2, 2), torch.zeros(1, 2, 2, dtype=torch.long))
    assert str(e.value) == "focal alpha has 3 values for 2 classes: give one per class"


def test_the_criterion_gives_class_weights_to_a_named_sum_and_refuses_two_sources():
    from pixelwise.config import DEFAULTS
    from pixelwise.engine.builders import build_criterion

    train = {**DEFAULTS["train"], "loss": "sum", "loss_args": {"terms": [{"name": "cross_entropy"}, {"name": "dice"}]}}
    loss = build_criterion(train, 255, [0.5, 2.0])  # was: "no loss term takes class weights"
    assert loss.terms[0].weight.tolist() == [0.5, 2.0]
    one = {**DEFAULTS["train"], "loss": "cross_entropy", "loss_args": {"weight": [1.0, 1.0]}}
    with pytest.raises(ConfigError) as e:
        build_criterion(one, 255, [0.5, 2.0])  # the loss_args' weights silently won
    assert str(e.value) == ("train.loss_args.weight and train.class_weights both give class weights: keep one of them")


def test_weight_map_arguments_are_checked_and_the_verb_is_one_call(tmp_path):
    from PIL import Image

    from pixelwise.losses import write_weight_map

    mask = np.zeros((20, 30), np.uint8)
    mask[3:9, 3:12], mask[11:18, 3:12] = 1, 1
    for w0, sigma, message in (
        (10.0, 0.0, "U-Net weight map sigma=0.0: must be a finite number > 0 of pixels (the paper's 5)"),
        (10.0, float("nan"), "U-Net weight map sigma=nan: must be a finite number > 0 of pixels (the paper's 5)"),
        (-5.0, 5.0, "U-Net weight map w0=-5.0: must be a finite number >= 0 (the paper's 10; 0: no border term)"),
    ):
        with pytest.raises(ConfigError) as e:
            unet_weight_map(mask, w0, sigma)
        assert str(e.value) == message
        with pytest.raises(ConfigError) as e:
            build_loss("unet_weighted", w0=w0, sigma=sigma)
        assert str(e.value) == message  # the loss checks its arguments as the map does
    Image.fromarray(mask).save(tmp_path / "m.png")
    weights = write_weight_map(tmp_path / "m.png", tmp_path / "w.png", w0=10.0, sigma=5.0)
    np.testing.assert_array_equal(weights, unet_weight_map(mask, 10.0, 5.0))
    assert Image.open(tmp_path / "w.png").size[0] > 0


def test_a_nested_sum_hands_the_class_weights_to_its_terms():
    loss = build_loss(
        "sum", terms=[{"name": "sum", "terms": [{"name": "cross_entropy"}]}, {"name": "dice"}], class_weights=[0.5, 2.0]
    )
    assert loss.terms[0].terms[0].weight.tolist() == [0.5, 2.0]  # was: trained unweighted without a word


def test_loss_values_are_checked_when_the_config_is_loaded(tmp_path):
    """Values a loss cannot take were a traceback at the first step (label smoothing 2, per-class weights of
    another length) after the run folder was written, or trained silently the wrong way (a negative factor,
    weight or focal gamma): one line at load, or, where the classes are needed, before anything is written."""
    from pixelwise.config import DEFAULTS, load_config
    from pixelwise.engine.builders import build_criterion

    path = tmp_path / "c.yaml"
    path.write_text("model: {name: unet}\ndata: {dataset: toy}\n")
    cases = {
        "train.loss_args={label_smoothing: 2}": "train.loss: cross_entropy label_smoothing=2: must be in [0, 1]",
        "train.loss=[{name: dice, weight: -1}]": (
            "train.loss: loss term 'dice': weight -1, the term's factor, must be a number >= 0"
        ),
        "train.loss_args={weight: [1, -2]}": "train.loss: loss weight [1, -2]: give numbers >= 0 (one per class)",
    }
    for flag, message in cases.items():
        with pytest.raises(ConfigError) as e:
            load_config(path, [flag])
        assert str(e.value) == message
    with pytest.raises(ConfigError) as e:
        load_config(path, ["train.loss=focal", "train.loss_args={gamma: -2}"])
    assert str(e.value) == "train.loss: loss 'focal': gamma -2 must be a number >= 0 (0: cross entropy)"
    train = {**DEFAULTS["train"], "loss": "cross_entropy", "loss_args": {"weight": [1.0, 2.0, 3.0]}}
    build_criterion(train, 255, None)  # the classes unknown: nothing to try it on
    with pytest.raises(ConfigError) as e:
        build_criterion(train, 255, None, num_classes=2)
    assert str(e.value) == (
        "train.loss 'cross_entropy' cannot run on the data set's 2 classes: cross_entropy weight has 3 values for 2 "
        "classes: give one per class"
    )


def test_loss_argument_types_are_checked_when_the_config_is_loaded(tmp_path):
    """A YAML string, fraction or boolean where a loss takes a whole number: `ignore_index: '255'` was a torch
    TypeError traceback at start, `ignore_index: true` silently ignored class 1 (a bool is an int)."""
    from pixelwise.config import DEFAULTS, load_config
    from pixelwise.engine.builders import build_criterion

    path = tmp_path / "c.yaml"
    path.write_text("model: {name: unet}\ndata: {dataset: toy}\n")
    for loss, value in (("dice", "'255'"), ("lovasz", "true"), ("focal", "255.0"), ("cross_entropy", "true")):
        with pytest.raises(ConfigError) as e:
            load_config(path, [f"train.loss={loss}", f"train.loss_args.ignore_index={value}"])
        shown = {"'255'": "'255'", "true": "True", "255.0": "255.0"}[value]
        assert str(e.value) == f"train.loss: loss {loss!r}: ignore_index={shown} should be int"
    with pytest.raises(ConfigError) as e:
        load_config(path, ["train.loss=lovasz", "train.loss_args.per_image='no'"])  # a string, and true
    assert str(e.value) == "train.loss: loss 'lovasz': per_image='no' should be bool"
    with pytest.raises(ConfigError) as e:  # the loss's own check, where it has one, says what the value means
        load_config(path, ["train.loss=dice", "train.loss_args.classes=3"])
    assert str(e.value) == "train.loss: dice: classes must be 'present' or 'all', got 3"
    # a TypeError of the loss's own at its trial run is one line too, not a traceback
    train = {**DEFAULTS["train"], "loss": "cross_entropy", "loss_args": {}}

    class Odd(nn.Module):
        def forward(self, logits, target):
            raise TypeError("where() received an invalid combination of arguments")

    import pixelwise.engine.builders as builders

    real = builders._build_criterion
    builders._build_criterion = lambda *args: Odd()
    try:
        with pytest.raises(ConfigError) as e:
            build_criterion(train, 255, None, num_classes=2)
    finally:
        builders._build_criterion = real
    assert str(e.value) == (
        "train.loss 'cross_entropy' cannot run on the data set's 2 classes: where() received an invalid combination "
        "of arguments"
    )


def test_write_weight_map_replaces_no_file_without_overwrite(tmp_path):
    """``write_weight_map(mask, mask)`` turned the mask itself into a heat map: the CLI checked --out, the library
    function did not."""
    from PIL import Image

    from pixelwise.losses import write_weight_map

    mask = np.zeros((20, 30), np.uint8)
    mask[3:9, 3:12], mask[11:18, 3:12] = 1, 1
    Image.fromarray(mask).save(tmp_path / "m.png")
    before = (tmp_path / "m.png").read_bytes()
    for overwrite in (False, True):  # its own input: not even with overwrite
        with pytest.raises(ConfigError) as e:
            write_weight_map(tmp_path / "m.png", tmp_path / "m.png", overwrite=overwrite)
        assert str(e.value) == (
            f"--out {tmp_path / 'm.png'} is the mask it is computed from: choose another file for the weight map"
        )
    assert (tmp_path / "m.png").read_bytes() == before
    (tmp_path / "w.png").write_bytes(b"keep")
    with pytest.raises(ConfigError) as e:
        write_weight_map(tmp_path / "m.png", tmp_path / "w.png")
    assert str(e.value) == f"--out {tmp_path / 'w.png'} exists: pass --overwrite to replace it, or choose another file"
    assert (tmp_path / "w.png").read_bytes() == b"keep"
    write_weight_map(tmp_path / "m.png", tmp_path / "w.png", overwrite=True)
    assert Image.open(tmp_path / "w.png").format == "PNG"
    assert not [p.name for p in tmp_path.iterdir() if p.name not in ("m.png", "w.png")]  # no temporary left


@pytest.mark.parametrize("key", list(ALL_LOSSES))
def test_every_loss_checks_its_target(key):
    """Only focal checked its target: a class beyond the logits' was torch's IndexError (cross_entropy, ohem) or
    RuntimeError (dice, lovasz), a target of another shape a size mismatch, and a fractional float target was
    floored silently by .long()."""
    name = {"lovasz_per_image": "lovasz", "sum": "cross_entropy"}.get(key, key)  # a sum: its first term says
    loss = make(key)
    logits = torch.randn(2, 4, 6, 6)
    cases = {
        "class 6": (
            torch.full((2, 6, 6), 6),
            f"{name} target holds class 6 but the logits have 4 classes: give "
            "classes 0..3, or ignore_index 255 for unlabelled pixels",
        ),
        "class 4, one past the last": (
            torch.full((2, 6, 6), 4),
            f"{name} target holds class 4 but the logits have 4 classes: give "
            "classes 0..3, or ignore_index 255 for unlabelled pixels",
        ),
        "class -1": (
            torch.full((2, 6, 6), -1),
            f"{name} target holds class -1 but the logits have 4 classes: give "
            "classes 0..3, or ignore_index 255 for unlabelled pixels",
        ),
        "shape": (
            torch.zeros(2, 6, 5, dtype=torch.long),
            f"{name} target of shape (2, 6, 5) does not fit logits of "
            "shape (2, 4, 6, 6): give N x H x W class indices for N x C x H x W logits",
        ),
        "fractions": (
            torch.zeros(2, 6, 6) + 0.5,
            f"{name} target holds fractions, not class indices: give whole class numbers (an integer tensor)",
        ),
    }
    for case, (target, message) in cases.items():
        target[:, 0] = 255 if case != "shape" else 0  # ignored pixels never count as a class
        with pytest.raises(ValueError) as e:
            loss(logits, target)
        assert str(e.value) == message, case
    target = torch.randint(0, 4, (2, 6, 6))
    target[:, 0] = 255
    assert loss(logits, target.float()).item() == pytest.approx(loss(logits, target).item())  # whole floats: classes


@pytest.mark.parametrize("name", ["cross_entropy", "ohem"])
def test_class_weights_of_another_length_are_one_line(name):
    """weight=[1.0, 2.0] for 3 classes was torch's "weight tensor should be defined either for all or no
    classes"."""
    with pytest.raises(ConfigError) as e:
        build_loss(name, weight=[1.0, 2.0])(torch.randn(1, 3, 4, 4), torch.zeros(1, 4, 4, dtype=torch.long))
    assert str(e.value) == f"{name} weight has 2 values for 3 classes: give one per class"


@pytest.mark.parametrize("value", ["0.2", True, None])
def test_top_k_percent_must_be_a_number(value):
    """A string was a TypeError comparing it with 0, True passed as 1."""
    with pytest.raises(ConfigError) as e:
        build_loss("cross_entropy", top_k_percent=value)
    assert str(e.value) == (
        f"cross_entropy top_k_percent={value!r}: the share of pixels kept, in (0, 1] (the paper's 0.2)"
    )


def test_loss_builders_take_keyword_only_arguments_and_are_documented():
    from torch import nn

    from pixelwise.losses import loss_arguments, register_loss

    for f in (list_losses, loss_arguments, register_loss):
        assert f.__doc__, f.__name__

    class Positional(nn.Module):
        def __init__(self, gamma: float = 2.0) -> None:
            super().__init__()

    class Everything(nn.Module):
        def __init__(self, *, gamma: float = 2.0, **kwargs) -> None:
            super().__init__()

    for cls in (Positional, Everything):
        with pytest.raises(TypeError) as e:
            register_loss("test_only")(cls)
        assert str(e.value) == (
            "loss 'test_only' must take named keyword-only arguments (no positional ones, no **kwargs)"
        )
    assert "test_only" not in list_losses()
