"""Any backbone under the family builders (issue 14): timm models by ``timm/<model>``, channels and reductions from
timm's ``feature_info``, output stride through timm's ``output_stride``, pretrained weights from local files;
today's model names are presets that build the same models as before."""

import functools
import json
import urllib.error

import pytest
import timm  # noqa: E402  (a dependency: a broken install fails here rather than skipping these tests)
import torch
import torch.nn.functional as F

from pixelwise import PixelwiseError, build_model
from pixelwise.errors import CheckpointError, ConfigError
from pixelwise.models import model_arguments
from pixelwise.models.backbones import TIMM_FAMILIES, backbone_rows, build_backbone, timm_output_strides
from pixelwise.models.deeplab import default_rates
from pixelwise.models.fcn import upsample_to
from pixelwise.models.modules import BilinearUpsample
from pixelwise.models.registry import input_size_problem

# one small model per timm family
FAMILIES = {
    "resnet10t": "ResNet",
    "efficientnet_b0": "EfficientNet",
    "mobilenetv3_small_050": "MobileNetV3",
    "regnetx_002": "RegNet",
    "convnext_atto": "ConvNeXt",
    "resnest14d": "ResNeSt",
}
H, W = 65, 97  # odd, and not multiples of any stride
K = 3  # classes


def count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@functools.lru_cache
def timm_features(name: str) -> tuple[int, list[int], list[int]]:
    """timm's own ``features_only`` model: parameter count, channels, reductions."""
    body = timm.create_model(name, features_only=True)
    return count(body), body.feature_info.channels(), body.feature_info.reduction()


# --- the heads' parameters, by hand from the channels -------------------------------------------
def sep(cin: int, cout: int) -> int:
    """A 3x3 depthwise-separable conv with BN after each part (DeepLab v3+)."""
    return 9 * cin + 2 * cin + cin * cout + 2 * cout


def deeplabv3plus_head(high: int, low: int) -> int:
    aspp = (high * 256 + 512) + 3 * sep(high, 256) + (high * 256 + 512) + (5 * 256 * 256 + 512)
    decoder = (low * 48 + 96) + sep(256 + 48, 256) + sep(256, 256)
    return aspp + decoder + 256 * K + K


def double_conv(cin: int, cout: int) -> int:
    return 9 * cin * cout + 2 * cout + 9 * cout * cout + 2 * cout


def unet_head(channels: list[int], reductions: list[int]) -> int:
    """The U-Net decoder on the features (shallow to deep): widths 16 x reduction (at most 256), then 16 at 1/1."""
    skips = list(reversed(channels[:-1]))  # 1/16, 1/8, ...
    widths = [min(16 * r, 256) for r in reversed(reductions[:-1])] + [16]
    total, cin = 0, channels[-1]
    for width, skip in zip(widths, skips + [0], strict=True):
        total += double_conv(cin + skip, width)
        cin = width
    return total + widths[-1] * K + K


def fcn8s_head(c32: int, c16: int, c8: int) -> int:
    scores = sum(c * K + K for c in (c32, c16, c8))
    return scores + 2 * K * K * 4 * 4 + K * K * 16 * 16  # two 2x transposed convs, one 8x (kernels 2f, no bias)


def pspnet_head(high: int) -> int:
    width = high // 4
    stages = 4 * (high * width + 2 * width)
    return stages + 9 * (high + 4 * width) * 512 + 1024 + 512 * K + K


def run(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(x)


# --- timm families under DeepLab v3+, U-Net, FCN-8s and PSPNet ----------------------------------
@pytest.mark.parametrize("output_stride", [8, 16, 32])
@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_deeplabv3plus_at_each_output_stride(name, output_stride):
    torch.manual_seed(0)
    model = build_model("deeplabv3plus", num_classes=K, backbone=f"timm/{name}", output_stride=output_stride)
    params, channels, reductions = timm_features(name)
    bb = model.backbone
    assert [f.channels for f in bb.feature_info] == channels  # read from timm's feature_info
    high, low = bb.info(model.high), bb.info(model.low)
    assert high.reduction == output_stride and low.reduction == 4 and high.channels == channels[-1]
    assert [c[0].dilation[0] for c in model.aspp.convs[1:4]] == list(default_rates(output_stride))
    assert count(bb) == params  # timm's own count: dilation adds no parameters
    assert count(model) == params + deeplabv3plus_head(high.channels, low.channels)
    x = torch.randn(1, 3, H, W)
    assert run(model, x).shape == (1, K, H, W)
    with torch.no_grad():
        f = bb(x)
    # the deepest feature is at 1/output_stride (ceil or floor, by the model's padding)
    assert abs(f[model.high].shape[-2] - H / output_stride) < 1 and abs(f[model.high].shape[-1] - W / output_stride) < 1


@pytest.mark.parametrize("name", ["convnext_atto", "resnest14d"])
def test_training_step_reaches_the_backbone(name):
    torch.manual_seed(0)
    model = build_model("deeplabv3plus", num_classes=K, backbone=f"timm/{name}").train()
    out = model(torch.randn(2, 3, H, W))  # ResNeSt: batch norm on pooled vectors needs 2 samples in training
    (out * torch.randn_like(out)).mean().backward()
    first = next(p for p in model.backbone.parameters() if p.dim() == 4)
    assert first.grad is not None and torch.isfinite(first.grad).all() and first.grad.abs().sum() > 0


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_unet_on_timm(name):
    model = build_model("unet", num_classes=K, backbone=f"timm/{name}")
    params, channels, reductions = timm_features(name)
    assert count(model.backbone) == params
    assert count(model) == params + unet_head(channels, reductions)
    assert run(model, torch.randn(1, 3, H, W)).shape == (1, K, H, W)


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_fcn8s_and_pspnet_on_timm(name):
    params, channels, reductions = timm_features(name)
    at = dict(zip(reductions, channels, strict=True))
    fcn = build_model("fcn8s", num_classes=K, backbone=f"timm/{name}")
    assert [fcn.backbone.info(n).reduction for n in fcn.features] == [32, 16, 8]
    assert count(fcn) == params + fcn8s_head(at[32], at[16], at[8])
    x = torch.randn(1, 3, H, W)
    assert run(fcn, x).shape == (1, K, H, W)
    psp = build_model("pspnet", num_classes=K, backbone=f"timm/{name}")  # output stride 8, the paper's
    assert psp.backbone.info(psp.high).reduction == 8
    assert count(psp) == params + pspnet_head(channels[-1])
    assert run(psp, x).shape == (1, K, H, W)


def test_deeplabv3_aux_head_and_one_input_channel():
    model = build_model("deeplabv3", num_classes=K, backbone="timm/regnetx_002", aux_head=True, in_channels=1)
    names = [f.name for f in model.backbone.feature_info]
    assert model.high == names[-1] and model.aux_feature == names[-2]
    out = model.train()(torch.randn(2, 1, H, W))
    assert set(out) == {"out", "aux"} and out["out"].shape == out["aux"].shape == (2, K, H, W)


def test_fcn_upsampling_is_bilinear_interpolation_at_initialisation():
    """The learned upsampling on a one-pixel replicate-padded map, cropped: F.interpolate's bilinear exactly."""
    x = torch.randn(1, K, 3, 5)
    for f in (2, 8, 32):
        up = upsample_to(BilinearUpsample(K, f), x, (3 * f, 5 * f))
        assert (up - F.interpolate(x, scale_factor=f, mode="bilinear")).abs().max() < 1e-5
    assert upsample_to(BilinearUpsample(K, 2), x, (5, 9)).shape[-2:] == (5, 9)  # any size: a crop


# --- output stride ------------------------------------------------------------------------------
def test_unsupported_output_stride_is_one_line_naming_the_supported_ones():
    for stride in (8, 16):
        with pytest.raises(ConfigError) as info:
            build_model("deeplabv3plus", num_classes=K, backbone="timm/edgenext_xx_small", output_stride=stride)
        assert (
            str(info.value)
            == f"backbone timm/edgenext_xx_small does not support output_stride {stride}; it supports 32"
        )
    with pytest.raises(ConfigError) as info:
        build_model("pspnet", num_classes=K, backbone="timm/densenet121")  # PSPNet's default 8
    assert str(info.value) == "backbone timm/densenet121 does not support output_stride 8; it supports 32"
    with pytest.raises(ConfigError) as info:
        build_model("deeplabv3", num_classes=K, backbone="vgg16")  # DeepLab's default 16
    assert str(info.value) == "backbone vgg16 does not support output_stride 16; it supports 8, 32"
    with pytest.raises(ConfigError, match=r"^output_stride must be one of 8, 16, 32; got 4$"):
        build_model("deeplabv3plus", num_classes=K, backbone="timm/convnext_atto", output_stride=4)
    # the same models at a stride they have
    model = build_model("deeplabv3plus", num_classes=K, backbone="timm/edgenext_xx_small", output_stride=32)
    assert run(model, torch.randn(1, 3, H, W)).shape == (1, K, H, W)
    assert timm_output_strides("edgenext_xx_small") == (32,) and timm_output_strides("convnext_atto") == (8, 16, 32)


def test_vgg16_backbone_at_output_stride_8_and_32():
    os8 = build_model("deeplabv3", num_classes=K, backbone="vgg16", output_stride=8)
    assert os8.backbone.info(os8.high).reduction == 8 and [c[0].dilation[0] for c in os8.aspp.convs[1:4]] == [
        12,
        24,
        36,
    ]
    os32 = build_model("deeplabv3plus", num_classes=K, backbone="vgg16", output_stride=32)
    assert os32.backbone.info(os32.low).name == "pool2" and os32.backbone.info(os32.high).reduction == 32
    assert run(os32, torch.randn(1, 3, H, W)).shape == (1, K, H, W)


def test_rates_follow_the_output_stride_unless_given():
    for stride, rates in ((16, [6, 12, 18]), (8, [12, 24, 36])):
        model = build_model("deeplabv3", num_classes=K, backbone="timm/mobilenetv3_small_050", output_stride=stride)
        assert [c[0].dilation[0] for c in model.aspp.convs[1:4]] == rates
    given = build_model("deeplabv3plus", num_classes=K, backbone="timm/resnet10t", output_stride=8, rates=[2, 4, 6])
    assert [c[0].dilation[0] for c in given.aspp.convs[1:4]] == [2, 4, 6]


# --- names and arguments ------------------------------------------------------------------------
def test_family_builders_and_their_arguments():
    for name, default in (("deeplabv3", "resnet50"), ("deeplabv3plus", "resnet50"), ("pspnet", "resnet50")):
        assert model_arguments(name)["backbone"] == default
    for name in ("fcn8s", "fcn16s", "fcn32s"):
        assert model_arguments(name)["backbone"] == "vgg16"
    assert model_arguments("unet")["backbone"] is None  # the paper's network
    assert model_arguments("deeplabv3plus")["multi_grid"] == "auto"


def test_bad_values_are_one_line_config_errors():
    with pytest.raises(ConfigError) as info:
        build_model("deeplabv3plus", num_classes=K, backbone="resnet77")
    assert str(info.value) == (
        "unknown backbone 'resnet77'; valid: resnet18, resnet34, resnet50, resnet101, vgg16, xception65, mobilenetv2, "
        "or timm/<model> for a timm model with features_only (pixelwise models --backbones)"
    )
    # a plain ViT said only "it supports none of 8, 16, 32", and users tried other strides
    with pytest.raises(ConfigError) as info:
        build_model("deeplabv3plus", num_classes=K, backbone="timm/vit_tiny_patch16_224")
    assert str(info.value) == (
        "backbone timm/vit_tiny_patch16_224 does not support output_stride 16; it supports none of 8, 16, 32: it has "
        "no feature pyramid (stages at 1/8 to 1/32, which a plain ViT lacks); choose a convolutional or hierarchical "
        "one (e.g. timm/convnext_tiny, timm/resnet50)"
    )
    cases = [
        (dict(backbone="timm/no_such_model"), "timm .* has no model 'no_such_model'"),
        (dict(backbone="timm/convnext_atto", multi_grid=[1, 2, 4]), "multi_grid applies to the backbones resnet18"),
        (dict(backbone="resnet50", multi_grid=[1, 2]), r"multi_grid needs 3 unit rates for resnet50's last stage"),
        (dict(multi_grid="yes"), "multi_grid must be 'auto', null or a list"),
    ]
    for kwargs, pattern in cases:
        with pytest.raises(ConfigError, match=pattern) as info:
            build_model("deeplabv3plus", num_classes=K, **kwargs)
        assert "\n" not in str(info.value)
    with pytest.raises(ConfigError, match=r"^unet with backbone resnet34 takes no depth, padding \(the paper"):
        build_model("unet", num_classes=K, backbone="resnet34", padding="valid", depth=3)
    with pytest.raises(ConfigError, match=r"^unet takes decoder_channels only with a backbone"):
        build_model("unet", num_classes=K, decoder_channels=[64, 32])


def test_meta_device_size_checks_take_timm_specs():
    spec = {"name": "deeplabv3plus", "backbone": "timm/convnext_atto", "num_classes": 2}
    assert input_size_problem(spec, H, W) is None
    # models that take one size, or sizes their strides divide: their own reason, not a minimum that is not one
    # (Swin's assertion escaped as a traceback; HRNet "needed at least 29x29" at 97x131)
    swin = {"name": "deeplabv3", "backbone": "timm/swin_tiny_patch4_window7_224", "num_classes": 3, "output_stride": 32}
    assert (
        input_size_problem(swin, 97, 131)
        == "model deeplabv3 does not run at 97x131: Input height (97) doesn't match model (224)."
    )
    hrnet = {"name": "deeplabv3", "backbone": "timm/hrnet_w18_small", "num_classes": 3, "output_stride": 32}
    assert input_size_problem(hrnet, 97, 131).startswith("model deeplabv3 does not run at 97x131: ")
    assert input_size_problem({"name": "unet", "num_classes": 2}, 8, 8) == (
        "model unet needs inputs of at least 16x16 pixels (its total stride)"
    )


# --- presets: the same models as before the family builders -------------------------------------
# num_classes=3 parameter counts of today's names, taken before the family builders existed
PRESETS = [
    ("deeplabv3_resnet50", 39_043_907, "deeplabv3", {"backbone": "resnet50"}),
    ("deeplabv3plus_resnet50", 26_691_507, "deeplabv3plus", {"backbone": "resnet50"}),
    ("deeplabv3plus_mobilenetv2", 2_715_187, "deeplabv3plus", {"backbone": "mobilenetv2"}),
    ("deeplabv3plus_xception65", 41_050_787, "deeplabv3plus", {"backbone": "timm/xception65"}),
    ("pspnet_resnet50", 46_583_363, "pspnet", {}),
    ("unet_resnet34", 24_436_275, "unet", {"backbone": "resnet34"}),
    ("unet", 31_037_763, "unet", {}),
    pytest.param("fcn8s_vgg16", 134_277_737, "fcn8s", {}, marks=pytest.mark.slow),
]


@pytest.mark.parametrize(("preset", "params", "family", "kwargs"), PRESETS)
def test_presets_are_the_family_builders_with_their_backbone(preset, params, family, kwargs):
    torch.manual_seed(0)
    old = build_model(preset, num_classes=K)
    torch.manual_seed(0)
    new = build_model(family, num_classes=K, **kwargs)
    assert count(old) == count(new) == params
    a, b = old.state_dict(), new.state_dict()
    assert list(a) == list(b)
    assert all(torch.equal(a[k], b[k]) for k in a)  # same modules built in the same order: same initial weights


# --- pretrained weights -------------------------------------------------------------------------
@pytest.mark.parametrize(("name", "suffix"), [("regnetx_002", ".pth"), ("convnext_atto", ".safetensors")])
def test_pretrained_local_file_round_trip(tmp_path, name, suffix):
    """A random state dict of the full timm model, saved, loaded through pretrained_backbone, compared with timm's
    own loading of the same file (``pretrained_cfg_overlay=dict(file=...)``) tensor by tensor."""
    torch.manual_seed(1)
    state = timm.create_model(name).state_dict()
    path = tmp_path / f"{name}{suffix}"
    if suffix == ".pth":
        torch.save(state, path)
    else:
        from safetensors.torch import save_file

        save_file(state, str(path))
    ref = timm.create_model(name, features_only=True, pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))
    torch.manual_seed(0)
    model = build_model("deeplabv3plus", num_classes=K, backbone=f"timm/{name}", pretrained_backbone=str(path))
    got, want = model.backbone.body.state_dict(), ref.state_dict()
    assert list(got) == list(want) and all(torch.equal(got[k], want[k]) for k in want)
    torch.manual_seed(0)
    fresh = build_model("deeplabv3plus", num_classes=K, backbone=f"timm/{name}").backbone.body.state_dict()
    assert any(not torch.equal(fresh[k], want[k]) for k in want)  # the file's weights, not the initialisation
    # one input channel: the RGB stem summed over its input channels
    grey = build_model("unet", num_classes=K, in_channels=1, backbone=f"timm/{name}", pretrained_backbone=str(path))
    stem = next(k for k, v in grey.backbone.body.state_dict().items() if v.dim() == 4)
    assert torch.allclose(grey.backbone.body.state_dict()[stem], want[stem].sum(1, keepdim=True))


@pytest.mark.parametrize(("name", "wrap"), [("convnext_atto", "lightning"), ("twins_pcpvt_small", None)])
def test_pretrained_files_of_flattened_and_wrapped_timm_models(tmp_path, name, wrap):
    """A Lightning file (``model.``-prefixed keys, under ``state_dict``) of a model whose features version flattens
    its module lists, and a plain file of one timm wraps whole (``FeatureGetterNet``: keys under ``model.``): both
    were "none of its tensors fits the model". The loaded tensors are timm's own loading of the same weights."""
    torch.manual_seed(1)
    state = timm.create_model(name).state_dict()
    plain = tmp_path / f"{name}.pth"
    torch.save(state, plain)
    path = plain
    if wrap == "lightning":
        path = tmp_path / f"{name}.ckpt"
        torch.save({"state_dict": {f"model.{k}": v for k, v in state.items()}}, path)
    ref = timm.create_model(name, features_only=True, pretrained=True, pretrained_cfg_overlay=dict(file=str(plain)))
    got, want = build_backbone(f"timm/{name}", pretrained=str(path)).body.state_dict(), ref.state_dict()
    assert list(got) == list(want) and all(torch.equal(got[k], want[k]) for k in want)


def test_pretrained_file_of_another_model_is_refused(tmp_path):
    torch.save(timm.create_model("resnet10t").state_dict(), tmp_path / "r10.pth")
    with pytest.raises(CheckpointError, match=r"r10.pth: none of its \d+ tensors fits the model"):
        build_model(
            "deeplabv3plus", num_classes=K, backbone="timm/regnetx_002", pretrained_backbone=str(tmp_path / "r10.pth")
        )


def test_pretrained_true_offline_is_one_line(monkeypatch):
    real = timm.create_model

    def offline(*args, pretrained=False, **kwargs):
        if pretrained:
            raise urllib.error.URLError("[Errno -2] Name or service not known")
        return real(*args, **kwargs)

    monkeypatch.setattr(timm, "create_model", offline)
    with pytest.raises(PixelwiseError) as info:
        build_model("unet", num_classes=K, backbone="timm/convnext_atto", pretrained_backbone=True)
    assert str(info.value) == (
        "could not get timm's pretrained weights for convnext_atto (URLError: <urlopen error [Errno -2] Name or "
        "service not known>); offline, pass a local file: pretrained_backbone=/path/to/convnext_atto.pth"
    )
    # the architecture is checked before any download
    with pytest.raises(ConfigError, match="does not support output_stride 16"):
        build_model("deeplabv3plus", num_classes=K, backbone="timm/densenet121", pretrained_backbone=True)
    # an empty path (a config's `pretrained_backbone: ""`) built without weights, without a word
    for empty in ("", "  "):
        with pytest.raises(ConfigError) as info:
            build_model("unet", num_classes=K, backbone="timm/convnext_atto", pretrained_backbone=empty)
        assert str(info.value) == (
            "model.pretrained_backbone is an empty path: give a weights file, true (the library's weights) or false"
        )


def test_checkpoint_rebuilds_without_the_pretrained_file(tmp_path):
    from pixelwise.models.weights import model_from_checkpoint

    path = tmp_path / "w.pth"
    torch.save(timm.create_model("regnetx_002").state_dict(), path)
    spec = {"name": "deeplabv3plus", "num_classes": K, "backbone": "timm/regnetx_002", "pretrained_backbone": str(path)}
    model = build_model(**spec)
    path.unlink()  # another machine
    ckpt = {"model": model.state_dict(), "meta": {"model": spec}}
    x = torch.randn(1, 3, H, W)
    assert torch.equal(run(model_from_checkpoint(ckpt), x), run(model, x))


# --- ONNX ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "spec",
    [
        {"name": "deeplabv3plus", "backbone": "timm/efficientnet_b0", "output_stride": 16},
        {"name": "unet", "backbone": "timm/convnext_atto"},
        {"name": "fcn8s", "backbone": "timm/mobilenetv3_small_050"},
    ],
    ids=lambda s: f"{s['name']}-{s['backbone']}",
)
def test_onnx_export(tmp_path, spec):
    """pixelwise's export: a dynamic graph, checked by onnxruntime at 65x97 and at another odd size and batch,
    within 1e-3 of the largest logit."""
    pytest.importorskip("onnxruntime")
    from pixelwise.export import export_onnx
    from pixelwise.models.weights import save_checkpoint

    spec = {**spec, "num_classes": K}
    torch.manual_seed(0)
    model = build_model(**spec)
    for m in model.modules():  # non-trivial batch-norm statistics
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
    for p in model.parameters():  # FCN's zero-initialised score layers would give all-zero logits
        if not p.any():
            p.data.normal_(0, 0.01)
    meta = {"model": spec, "classes": [str(i) for i in range(K)], "palette": [[0, 0, 0]] * K, "mean": [0.5] * 3,
            "std": [0.25] * 3}  # fmt: skip
    save_checkpoint(tmp_path / "m.pt", {"model": model.state_dict(), "meta": meta})
    report = export_onnx(tmp_path / "m.pt", tmp_path / "m.onnx", height=H, width=W)
    assert report["exporter"] == "torchscript" and report["dynamic"] and "failures" not in report
    assert set(report["max_abs_diff"]) == {f"1x{H}x{W}", f"2x{H - 13}x{W + 7}", "relative"}
    assert report["max_abs_diff"]["relative"] < 1e-3


# --- what works ---------------------------------------------------------------------------------
def test_models_backbones_lists_ours_and_the_checked_timm_families(capsys):
    from pixelwise.cli import main

    assert main(["models", "--backbones", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows == backbone_rows()
    assert main(["models", "--backbones"]) == 0
    text = capsys.readouterr().out
    assert "ConvNeXt" in text and "timm/convnext_tiny" in text and "Known not to work" in text
    # the builders named as taking backbone= are the registry's (lraspp was left out)
    from pixelwise.models import list_models, model_arguments

    named = text.split("backbone=... in ")[1].split(" (FCN")[0].replace("fcn8s/16s/32s", "fcn8s, fcn16s, fcn32s")
    takes = {n for n in list_models() if "backbone" in model_arguments(n)}
    assert set(named.replace(" and ", ", ").split(", ")) == takes
    ours = {r["name"]: r["output_strides"] for r in rows if r["kind"] == "pixelwise"}
    assert ours["resnet101"] == [8, 16, 32] and ours["vgg16"] == [8, 32] and "xception65" in ours
    timm_rows = {r["name"]: r for r in rows if r["kind"] == "timm"}
    assert (
        timm_rows["ConvNeXt"]["output_strides"] == [8, 16, 32]
        and "timm/convnext_tiny" in timm_rows["ConvNeXt"]["details"]
    )
    assert timm_rows["DenseNet"]["output_strides"] == [32]
    for name in (
        "convnext_tiny",
        "efficientnet_b3",
        "regnety_016",
        "mobilenetv3_large_100",
        "resnest50d",
    ):  # the issue's
        assert any(name in fam.examples for fam in TIMM_FAMILIES)
    assert set(FAMILIES) <= {e for fam in TIMM_FAMILIES for e in fam.examples}


@pytest.mark.slow
@pytest.mark.parametrize("family", TIMM_FAMILIES, ids=lambda f: f.family)
def test_every_listed_family_builds_at_its_strides_only(family):
    """On the meta device (shapes only): each example builds at exactly the listed output strides and DeepLab v3+
    and U-Net on it run at 65x97."""
    for name in family.examples:
        assert timm_output_strides(name) == family.output_strides, name
        for spec in (
            {"name": "deeplabv3plus", "output_stride": min(family.output_strides)},
            {"name": "unet"},
        ):
            assert input_size_problem({**spec, "backbone": f"timm/{name}", "num_classes": K}, H, W) is None, name
