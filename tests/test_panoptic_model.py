"""Panoptic-DeepLab (Cheng et al., CVPR 2020) as a builder option of DeepLab v3+ and the U-Nets: the instance
branch's outputs, layers and parameters, the model without it unchanged, and the paper's losses."""

import functools

import pytest
import torch
from torch import nn

from pixelwise.errors import ConfigError
from pixelwise.inference.optimize import optimize_for_inference
from pixelwise.inference.panoptic import find_instance_centers
from pixelwise.losses import CrossEntropyLoss, OHEMCrossEntropy, PanopticLoss
from pixelwise.models import build_model, model_arguments, model_logits
from pixelwise.models.modules import SeparableConv2d
from pixelwise.models.panoptic import PredictionConv, upsample_offsets
from pixelwise.models.registry import input_size_problem

SIZE = (65, 97)  # odd at every stride
SMALL_UNET = {"base_channels": 8}


def count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def conv(cin: int, cout: int, k: int = 1, *, groups: int = 1, bias: bool = False) -> int:
    return cin // groups * cout * k * k + (cout if bias else 0)


def bn(c: int) -> int:
    return 2 * c


def sep(cin: int, cout: int, k: int) -> int:
    """SeparableConv2d: depthwise k x k + BN, pointwise 1x1 + BN."""
    return conv(cin, cin, k, groups=cin) + bn(cin) + conv(cin, cout) + bn(cout)


CASES = [
    ("deeplabv3plus_mobilenetv2", {}),
    ("unet", SMALL_UNET),
    ("unet_resnet18", {}),
]


@pytest.mark.parametrize("name,kwargs", CASES)
@pytest.mark.parametrize("train", [True, False])
def test_outputs_at_the_input_size_in_train_and_eval(name, kwargs, train):
    torch.manual_seed(0)
    model = build_model(name, num_classes=3, instance_head="panoptic", **kwargs).train(train)
    x = torch.randn(2, 3, *SIZE)
    with torch.no_grad():
        out = model(x)
    assert set(out) == {"out", "center", "offset"}
    assert out["out"].shape == (2, 3, *SIZE)
    assert out["center"].shape == (2, 1, *SIZE)
    assert out["offset"].shape == (2, 2, *SIZE)
    assert all(torch.isfinite(v).all() for v in out.values())
    with torch.no_grad():
        assert torch.equal(model_logits(model.eval(), x), model(x)["out"])  # code that wants logits still works


@pytest.mark.parametrize("name,kwargs,semantic,instance", [
    ("deeplabv3plus_mobilenetv2", {}, ("aspp", "reduce", "decoder", "classifier"), ("instance",)),
    ("unet", SMALL_UNET, ("up", "decoder", "classifier"), ("instance",)),
    ("unet_resnet18", {}, ("blocks", "classifier"), ("instance",)),
])  # fmt: skip
def test_gradients_reach_each_decoder_from_its_own_outputs(name, kwargs, semantic, instance):
    torch.manual_seed(0)
    model = build_model(name, num_classes=2, instance_head="panoptic", **kwargs).train()
    x = torch.randn(2, 3, *SIZE)

    def grads(loss_of):
        model.zero_grad(set_to_none=True)
        out = model(x)
        loss_of(out).backward()
        return {
            part: any(p.grad is not None and p.grad.abs().sum() > 0 for p in getattr(model, part).parameters())
            for part in (*semantic, *instance)
        } | {"encoder": any(p.grad is not None and p.grad.abs().sum() > 0 for p in _encoder(model).parameters())}

    g = grads(lambda o: (o["center"] * torch.randn_like(o["center"])).sum() + (o["offset"] ** 2).sum())
    assert g["encoder"] and all(g[p] for p in instance) and not any(g[p] for p in semantic)
    g = grads(lambda o: (o["out"] * torch.randn_like(o["out"])).sum())
    assert g["encoder"] and all(g[p] for p in semantic) and not any(g[p] for p in instance)
    # both heads of the instance branch get their gradient
    g = grads(lambda o: o["offset"].abs().sum())
    assert any(p.grad.abs().sum() > 0 for p in model.instance.offset.parameters())


def _encoder(model: nn.Module) -> nn.Module:
    return model.backbone if hasattr(model, "backbone") else model.encoder


def test_deeplabv3plus_instance_branch_layers_and_parameters():
    """Dual ASPP, dual decoder: the instance branch's own ASPP on the 1/16 feature, its decoder through the 1/8
    and 1/4 features (1x1 convs to 64 and 32, 5x5 separable fusion to 128), 5x5 separable heads with 32."""
    plain = build_model("deeplabv3plus_mobilenetv2", num_classes=2)
    model = build_model("deeplabv3plus_mobilenetv2", num_classes=2, instance_head="panoptic")
    bb, branch = model.backbone, model.instance
    assert (model.high, model.mid, model.low) == ("stage4", "stage2", "stage1")
    assert [bb.info(n).reduction for n in (model.high, model.mid, model.low)] == [16, 8, 4]
    assert [p[0].out_channels for p in branch.project] == [64, 32]
    assert [f[3].out_channels for f in branch.fuse] == [128, 128]
    assert all(isinstance(f, SeparableConv2d) and f[0].kernel_size == (5, 5) for f in branch.fuse)
    for head, outputs in ((branch.center, 1), (branch.offset, 2)):
        assert isinstance(head[0], SeparableConv2d) and head[0][0].kernel_size == (5, 5)
        assert head[0][3].out_channels == 32 and head[1].out_channels == outputs
    assert [c[0].dilation[0] for c in branch.aspp.convs[1:4]] == [6, 12, 18]
    high, mid, low = 320, 32, 24  # MobileNetV2's channels at 1/16, 1/8, 1/4
    aspp = (
        conv(high, 256) + bn(256)  # 1x1
        + 3 * sep(high, 256, 3)  # rates 6, 12, 18
        + conv(high, 256) + bn(256)  # image pooling
        + conv(5 * 256, 256) + bn(256)  # projection
    )  # fmt: skip
    decoder = (
        conv(mid, 64) + bn(64) + sep(256 + 64, 128, 5)  # 1/8
        + conv(low, 32) + bn(32) + sep(128 + 32, 128, 5)  # 1/4
    )  # fmt: skip
    heads = sep(128, 32, 5) + conv(32, 1, bias=True) + sep(128, 32, 5) + conv(32, 2, bias=True)
    assert count(branch.aspp) == aspp
    assert count(branch) == aspp + decoder + heads == 844_163
    assert count(model) - count(plain) == count(branch)  # the backbone is shared
    with torch.no_grad():
        assert set(bb(torch.randn(1, 3, 64, 64))) == {"stage1", "stage2", "stage4"}
    os8 = build_model("deeplabv3plus_resnet50", num_classes=2, output_stride=8, instance_head="panoptic")
    assert (os8.mid, os8.low) == ("layer2", "layer1")  # the first 1/8 feature, not the dilated 1/8 layer4


def test_unet_instance_branch_is_a_second_decoder_of_the_same_shape():
    plain = build_model("unet", num_classes=2, **SMALL_UNET)
    model = build_model("unet", num_classes=2, instance_head="panoptic", **SMALL_UNET)
    widths = [8 * 2**i for i in range(5)]
    ups = sum(conv(widths[i + 1], widths[i], 2, bias=True) for i in range(4))
    blocks = sum(conv(2 * w, w, 3) + bn(w) + conv(w, w, 3) + bn(w) for w in widths[:4])
    heads = conv(8, 1, bias=True) + conv(8, 2, bias=True)
    assert count(model.instance) == ups + blocks + heads == count(plain.up) + count(plain.decoder) + heads
    assert count(model) - count(plain) == count(model.instance)
    assert [tuple(p.shape) for p in model.instance.decoder.parameters()] == [
        tuple(p.shape) for p in model.decoder.parameters()
    ]
    enc = build_model("unet_resnet18", num_classes=2, instance_head="panoptic")
    assert [tuple(p.shape) for p in enc.instance.blocks.parameters()] == [
        tuple(p.shape) for p in enc.blocks.parameters()
    ]


def test_valid_unet_overlap_tile_assembles_the_instance_outputs():
    torch.manual_seed(0)
    kwargs = {"num_classes": 2, "base_channels": 4, "depth": 2, "padding": "valid", "instance_head": "panoptic"}
    whole = build_model("unet", **kwargs).eval()
    tiled = build_model("unet", tile_size=20, **kwargs).eval()
    tiled.load_state_dict(whole.state_dict())
    x = torch.randn(1, 3, 45, 37)
    with torch.no_grad():
        a, b = whole(x), tiled(x)
    for key, channels in (("out", 2), ("center", 1), ("offset", 2)):
        assert a[key].shape == (1, channels, 45, 37)
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-5)


# --- the model without the option is the model of today --------------------------------------
BEFORE = {"deeplabv3plus_mobilenetv2": 2_714_930, "unet": 31_037_698}  # num_classes=2, before the option existed


@pytest.mark.parametrize("name", sorted(BEFORE))
def test_without_the_option_nothing_changes(name):
    torch.manual_seed(0)
    plain = build_model(name, num_classes=2)
    torch.manual_seed(0)
    none = build_model(name, num_classes=2, instance_head=None)
    torch.manual_seed(0)
    panoptic = build_model(name, num_classes=2, instance_head="panoptic")
    assert count(plain) == BEFORE[name]
    assert model_arguments(name)["instance_head"] is None
    shapes = {k: v.shape for k, v in plain.state_dict().items()}
    assert {k: v.shape for k, v in none.state_dict().items()} == shapes
    extra = {k: v.shape for k, v in panoptic.state_dict().items() if not k.startswith("instance.")}
    assert extra == shapes  # the semantic half keeps its names: a plain checkpoint loads into it
    missing, unexpected = panoptic.load_state_dict(plain.state_dict(), strict=False)
    assert not unexpected and missing and all(k.startswith("instance.") for k in missing)
    x = torch.randn(1, 3, *SIZE)
    with torch.no_grad():
        y = plain.eval()(x)
        assert isinstance(y, torch.Tensor) and torch.equal(y, none.eval()(x))  # same init, same forward
        assert torch.equal(panoptic.eval()(x)["out"], y)  # the instance branch leaves the semantic output alone


@pytest.mark.parametrize("name", ["deeplabv3plus_resnet50", "deeplabv3plus_xception65", "unet_resnet34"])
def test_every_family_builder_takes_the_option(name):
    assert model_arguments(name)["instance_head"] is None


@pytest.mark.parametrize("name", ["deeplabv3plus_resnet101", "unet", "unet_resnet18"])
def test_unknown_instance_head_is_one_line_listing_the_valid_values(name):
    with pytest.raises(ConfigError) as info:
        build_model(name, num_classes=2, instance_head="mask_rcnn")
    message = str(info.value)
    assert "\n" not in message and "instance_head" in message and "'mask_rcnn'" in message and "panoptic" in message


def test_runs_on_the_meta_device_for_the_input_size_checks():
    spec = {"name": "unet", "num_classes": 2, "instance_head": "panoptic", **SMALL_UNET}
    assert input_size_problem(spec, *SIZE) is None
    spec = {"name": "deeplabv3plus_mobilenetv2", "num_classes": 2, "instance_head": "panoptic"}
    assert input_size_problem(spec, *SIZE) is None


def test_upsampled_offsets_are_rescaled_to_input_pixels():
    """detectron2 multiplies the 4x upsampled offsets by 4, the stride, also where the input is no multiple of it
    (65 x 97: 17 x 25 cells; the ratio of the sizes, 65 / 17, was used before, with the cells stretched to it)."""
    offset = torch.stack([torch.full((17, 25), 1.0), torch.full((17, 25), -2.0)])[None]
    up = upsample_offsets(offset, 4, SIZE)
    assert up.shape == (1, 2, *SIZE)
    torch.testing.assert_close(up[0, 0], torch.full(SIZE, 4.0))
    torch.testing.assert_close(up[0, 1], torch.full(SIZE, -8.0))
    assert upsample_offsets(offset, 4, (17, 25)) is offset
    # a map of another cell count (a backbone that rounds down: 16 x 24 over 65 x 97) is resized, each axis's
    # vectors scaled by its own ratio
    fewer = offset[..., :16, :24]
    up = upsample_offsets(fewer, 4, SIZE)
    torch.testing.assert_close(up[0, 0], torch.full(SIZE, 65 / 16))
    torch.testing.assert_close(up[0, 1], torch.full(SIZE, -2.0 * 97 / 24))


def _response_centre(model, size: int, key: str = "out") -> tuple[float, float]:
    """Where a model's output answers a 3 x 3 dot at (40, 40) of a blank image: the centroid of |change| in a
    49 x 49 window about it."""
    blank = torch.zeros(1, 3, size, size)
    dot = blank.clone()
    dot[..., 39:42, 39:42] = 3.0
    with torch.no_grad():
        a, b = model(blank), model(dot)
    a, b = (a[key], b[key]) if isinstance(a, dict) else (a, b)
    change = (b - a).abs().sum(1)[0, 16:65, 16:65].double()
    yy, xx = torch.meshgrid(torch.arange(49.0), torch.arange(49.0), indexing="ij")
    total = change.sum()
    return float((change * yy).sum() / total) + 16, float((change * xx).sum() / total) + 16


def test_outputs_stay_where_the_network_put_them_at_sizes_no_multiple_of_the_stride():
    """A map of ceil(H / s) cells resized to H pixels stretched its pitch to H / ceil(H / s): on sizes no multiple
    of the stride the scores, centres and offsets moved by up to 1.4 px here (a review measured 2.3 px at 513 x
    513). Upsampled by the stride and cut, they stay where they are at a multiple (LR-ASPP: 96), or at a size with
    the same cells (DeepLab v3+, whose image pooling sees the extra cells: 97 against 100 and 111; DeepLab v2's
    ResNet: 97 against 99 and 103)."""
    torch.manual_seed(0)
    lraspp = build_model("lraspp", num_classes=3).eval()
    at_96 = _response_centre(lraspp, 96)
    for size in (97, 99, 111):
        assert _response_centre(lraspp, size) == pytest.approx(at_96, abs=0.05)
    panoptic = build_model("deeplabv3plus_mobilenetv2", num_classes=3, instance_head="panoptic").eval()
    for key in ("out", "center", "offset"):
        at_97 = _response_centre(panoptic, 97, key)
        for size in (100, 111):
            assert _response_centre(panoptic, size, key) == pytest.approx(at_97, abs=0.05)
    deeplabv2 = build_model("deeplabv2_resnet101", num_classes=3).eval()  # ASPP on ResNet's 1/8 (a resize moved 0.7 px)
    at_97 = _response_centre(deeplabv2, 97)
    for size in (99, 103):  # 13 cells each
        assert _response_centre(deeplabv2, size) == pytest.approx(at_97, abs=0.05)
    # the deep-supervision branch of PSPNet and DeepLab v3 (training mode's "aux", on ResNet's layer3: 1/8 for
    # PSPNet's output stride 8, 1/16 for DeepLab v3's 16)
    for name, sizes in (("pspnet", (97, 99, 103)), ("deeplabv3", (97, 100, 111))):
        model = build_model(name, num_classes=3, backbone="resnet18", aux_head=True).eval()
        with_aux = functools.partial(model, return_aux=True)
        at_97 = _response_centre(with_aux, sizes[0], "aux")
        for size in sizes[1:]:  # 13 (7) cells each
            assert _response_centre(with_aux, size, "aux") == pytest.approx(at_97, abs=0.05), (name, size)


def _wide_bump() -> torch.Tensor:
    """A 1 x 1 x 41 x 41 float32 bump whose top is flat to within bf16's resolution (8 significant bits) over
    several pixels but has one exact maximum in float32."""
    yy, xx = torch.meshgrid(torch.arange(41.0), torch.arange(41.0), indexing="ij")
    return (0.9 * torch.exp(-((yy - 20) ** 2 + (xx - 20) ** 2) / (2 * 15.0**2)))[None, None]


def test_the_heatmap_is_computed_in_float32_so_a_flat_peak_keeps_one_centre():
    """Under bf16 autocast a plain 1x1 conv rounds the bump's top to a plateau of equal values, and the keypoint
    NMS keeps each of them (several centres for one object: DSB2018 val AP 0.67 instead of 0.83); the heads'
    prediction conv computes in float32, also with its weights stored in bf16 as inference stores them."""
    x = _wide_bump()
    plain, ours = nn.Conv2d(1, 1, 1), PredictionConv(1, 1, 1)
    for conv in (plain, ours):
        nn.init.ones_(conv.weight)
        nn.init.zeros_(conv.bias)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        rounded, exact = plain(x), ours(x)
    assert rounded.dtype == torch.bfloat16 and exact.dtype == torch.float32
    assert len(find_instance_centers(rounded, threshold=0.1)[0]) > 1  # the failure this guards against
    centers, _ = find_instance_centers(exact, threshold=0.1)
    assert centers.tolist() == [[20, 20]]
    torch.testing.assert_close(exact, x)
    ours.to(torch.bfloat16)  # optimize_for_inference(dtype=bf16) stores every weight in bf16
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert ours(x.to(torch.bfloat16)).dtype == torch.float32


@pytest.mark.parametrize("name,kwargs", CASES)
@pytest.mark.parametrize("weights", [None, torch.bfloat16])
def test_instance_outputs_are_float32_on_the_bf16_inference_path(name, kwargs, weights):
    """What eval/predict run under bf16: batch norm folded, autocast, weights kept in float32 (CPU) or stored in
    bf16 (CUDA); the heatmap and offsets come out in float32 (the semantic logits may stay bf16)."""
    model = build_model(name, num_classes=2, instance_head="panoptic", **kwargs).eval()
    model = optimize_for_inference(model, dtype=weights)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(torch.randn(1, 3, *SIZE))
    assert out["center"].dtype == out["offset"].dtype == torch.float32


# --- losses ----------------------------------------------------------------------------------
class Constant(nn.Module):
    """A semantic criterion that records its inputs and returns ``value`` (with a graph)."""

    def __init__(self, value: float) -> None:
        super().__init__()
        self.value, self.seen = value, None

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        self.seen = (logits, target)
        return logits.sum() * 0.0 + self.value


def tiny():
    """Two 2x2 images; hand-computed below."""
    outputs = {
        "out": torch.zeros(2, 2, 2, 2, requires_grad=True),
        "center": torch.tensor([[[[0.5, 1.0], [0.0, 2.0]]], [[[0.0, 0.0], [0.0, 1.0]]]], requires_grad=True),
        "offset": torch.tensor(
            [[[[1.0, 2.0], [0.0, 0.0]], [[0.0, 0.0], [3.0, 0.0]]], torch.zeros(2, 2, 2).tolist()], requires_grad=True
        ),
    }
    targets = {
        "mask": torch.zeros(2, 2, 2, dtype=torch.long),
        "center": torch.tensor([[[[1.0, 1.0], [0.0, 0.0]]], [[[0.0, 0.0], [0.0, 0.0]]]]),
        "center_weights": torch.tensor([[[1.0, 1.0], [1.0, 0.0]], [[0.0, 0.0], [0.0, 1.0]]]),  # N x H x W
        "offset": torch.stack(
            [torch.tensor([[[0.0, 0.0], [0.0, 0.0]], [[0.0, 1.0], [0.0, 0.0]]]), torch.zeros(2, 2, 2)]
        ),
        "offset_weights": torch.tensor([[[1.0, 1.0], [0.0, 0.0]], [[0.0, 0.0], [0.0, 0.0]]]),
    }
    return outputs, targets


def test_panoptic_loss_by_hand():
    outputs, targets = tiny()
    semantic = Constant(0.5)
    loss_fn = PanopticLoss(semantic)
    loss = loss_fn(outputs, targets)
    # centre: squared errors 0.25, 0, 0, (4: weight 0) | (0, 0, 0: weight 0), 1 -> (0.25 + 1) / 4 weighted pixels
    center = (0.25 + 1.0) / 4
    # offsets: |1-0| + |0-0| = 1 and |2-0| + |0-1| = 3 on the two weighted pixels (|0| + |3| = 3 has weight 0):
    # the two channels summed per pixel, divided by the number of weighted pixels (not 2x)
    offset = (1.0 + 3.0) / 2
    assert loss_fn.last_parts == pytest.approx({"semantic": 0.5, "center": 200 * center, "offset": 0.01 * offset})
    assert loss.item() == pytest.approx(0.5 + 200 * center + 0.01 * offset)
    assert semantic.seen[0] is outputs["out"] and semantic.seen[1] is targets["mask"]
    # weight maps N x 1 x H x W and a centre target N x H x W give the same
    alt = dict(targets, center=targets["center"][:, 0], center_weights=targets["center_weights"][:, None])
    alt["offset_weights"] = targets["offset_weights"][:, None]
    assert PanopticLoss(Constant(0.5))(outputs, alt).item() == pytest.approx(loss.item())
    weighted = PanopticLoss(Constant(0.0), center_weight=1.0, offset_weight=1.0)(outputs, targets)
    assert weighted.item() == pytest.approx(center + offset)


def test_semantic_weights_reach_the_semantic_criterion():
    outputs, targets = tiny()
    with torch.no_grad():
        outputs["out"][0, 1, 0, 0] += 2.0  # a pixel whose cross entropy differs from the others'
    weights = torch.tensor([[[3.0, 1.0], [1.0, 1.0]], [[1.0, 1.0], [1.0, 1.0]]])
    ce = CrossEntropyLoss()
    loss_fn = PanopticLoss(ce)
    loss_fn(outputs, dict(targets, semantic_weights=weights))
    expected = ce(outputs["out"], targets["mask"], weights).item()
    assert loss_fn.last_parts["semantic"] == pytest.approx(expected)
    assert expected > ce(outputs["out"], targets["mask"]).item()  # the weighted pixel counts 3 times
    loss_fn(outputs, targets)  # no map: the criterion's plain mean
    assert loss_fn.last_parts["semantic"] == pytest.approx(ce(outputs["out"], targets["mask"]).item())


def test_zero_weights_contribute_nothing():
    outputs, targets = tiny()
    targets = dict(targets, center_weights=torch.zeros(2, 2, 2), offset_weights=torch.zeros(2, 2, 2))
    loss_fn = PanopticLoss(Constant(0.25))
    loss = loss_fn(outputs, targets)
    assert loss.item() == pytest.approx(0.25) and torch.isfinite(loss)
    assert loss_fn.last_parts["center"] == 0.0 and loss_fn.last_parts["offset"] == 0.0
    loss.backward()
    assert torch.equal(outputs["center"].grad, torch.zeros(2, 1, 2, 2))
    assert torch.equal(outputs["offset"].grad, torch.zeros(2, 2, 2, 2))
    # where a weight is 0 the prediction does not matter
    outputs, targets = tiny()
    base = PanopticLoss(Constant(0.0))(outputs, targets).item()
    with torch.no_grad():
        outputs["center"][0, 0, 1, 1] += 100.0  # centre weight 0 there
        outputs["offset"][0, :, 1, 0] -= 100.0  # offset weight 0 there
    assert PanopticLoss(Constant(0.0))(outputs, targets).item() == pytest.approx(base)


def test_panoptic_loss_trains_both_branches_of_a_model():
    torch.manual_seed(0)
    model = build_model("deeplabv3plus_mobilenetv2", num_classes=2, instance_head="panoptic").train()
    n, (h, w) = 2, SIZE
    mask = torch.randint(0, 2, (n, h, w))
    mask[0, :5] = 255  # ignored
    targets = {
        "mask": mask,
        "center": torch.rand(n, 1, h, w),
        "center_weights": (mask != 255).float(),
        "offset": torch.randn(n, 2, h, w) * 10,
        "offset_weights": (mask == 1).float(),
    }
    loss_fn = PanopticLoss(OHEMCrossEntropy(min_kept=100))
    loss = loss_fn(model(torch.randn(n, 3, h, w)), targets)
    loss.backward()
    assert torch.isfinite(loss) and set(loss_fn.last_parts) == {"semantic", "center", "offset"}
    assert sum(loss_fn.last_parts.values()) == pytest.approx(loss.item(), rel=1e-5)
    for part in (model.classifier, model.decoder, model.instance.center, model.instance.offset, model.instance.fuse):
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in part.parameters())
    # the offsets are judged in input pixels: a wrong target shape is refused
    with pytest.raises(ValueError, match="offset target"):
        PanopticLoss(CrossEntropyLoss())(model(torch.randn(n, 3, h, w)), dict(targets, offset=targets["offset"][:, :1]))
