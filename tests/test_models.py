"""The model zoo: every registered model runs; architecture facts from the papers hold."""

import subprocess
import sys
import urllib.error

import pytest
import torch
import torchvision
from torch import nn

from pixelwise import PixelwiseError, build_model, list_models
from pixelwise.device import native_precisions
from pixelwise.errors import CheckpointError, ConfigError
from pixelwise.models import from_torchvision
from pixelwise.models.atrous_conv import AtrousConv2d
from pixelwise.models.backbones import ResNet
from pixelwise.models.fcn import coord_map, crop_offset
from pixelwise.models.modules import SeparableConv2d, bilinear_kernel, resize_to, upsample
from pixelwise.models.registry import smallest_input
from pixelwise.models.stats import inference_bytes, model_stats


def logits(out):
    return out["out"] if isinstance(out, dict) else out


@pytest.mark.slow
@pytest.mark.parametrize("name", list_models())
def test_forward_backward_batch1_train_mode_even_and_odd(name):
    torch.manual_seed(0)
    model = build_model(name, num_classes=3).train()
    for size in [(64, 64), (97, 83)]:
        x = torch.randn(1, 3, *size, requires_grad=True)
        out = logits(model(x))
        assert out.shape == (1, 3, *size)
        (out * torch.randn_like(out)).mean().backward()
        assert torch.isfinite(x.grad).all()  # (FCN's zero-initialised score layers make it 0 at first)
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        assert grads and all(torch.isfinite(g).all() for g in grads) and any(g.abs().sum() > 0 for g in grads)
        model.zero_grad()


def test_backbone_returns_only_the_features_its_head_reads():
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert set(build_model("deeplabv3_resnet50", num_classes=3).backbone(x)) == {"layer4"}
        assert set(build_model("deeplabv3plus_resnet50", num_classes=3).backbone(x)) == {"layer1", "layer4"}
        assert set(build_model("fcn16s_vgg16", num_classes=3).backbone(x)) == {"pool4", "pool5"}
        assert len(build_model("unet_resnet18", num_classes=3).backbone(x)) == 5  # every reduction
    with pytest.raises(KeyError, match="has no feature 'layer9'"):
        ResNet("resnet18").keep("layer4", "layer9")


def conv2_dilations(layer):
    return [block.conv2.dilation[0] for block in layer]


def test_resnet_output_stride_and_multi_grid():
    x = torch.randn(1, 3, 64, 64)
    for os_, expected in [(32, [4, 8, 16, 32]), (16, [4, 8, 16, 16]), (8, [4, 8, 8, 8])]:
        net = ResNet("resnet50", output_stride=os_).eval()
        reductions = [f.reduction for f in net.feature_info if f.name.startswith("layer")]
        assert reductions == expected
        with torch.no_grad():
            f = net(x)
        assert [f[f"layer{i}"].shape[-1] for i in range(1, 5)] == [64 // r for r in expected]
        assert [f.channels for f in net.feature_info] == [64, 256, 512, 1024, 2048]
    # DeepLab v3 multi-grid (1, 2, 4): rates 2, 4, 8 at output stride 16, doubled at 8
    v3 = build_model("deeplabv3_resnet50", num_classes=3, output_stride=16)
    assert conv2_dilations(v3.backbone.layer4) == [2, 4, 8]
    assert conv2_dilations(v3.backbone.layer3) == [1] * 6
    v3 = build_model("deeplabv3_resnet101", num_classes=3, output_stride=8)
    assert conv2_dilations(v3.backbone.layer4) == [4, 8, 16]
    assert conv2_dilations(v3.backbone.layer3) == [1] + [2] * 22  # torchvision's pattern
    assert v3.backbone.layer4[0].conv2.stride == (1, 1) and v3.backbone.layer2[0].conv2.stride == (2, 2)
    plain = build_model("deeplabv3_resnet50", num_classes=3, output_stride=8, multi_grid=None)
    assert conv2_dilations(plain.backbone.layer4) == [2, 4, 4]


def test_deeplabv3_aspp():
    for os_, rates in [(16, (6, 12, 18)), (8, (12, 24, 36))]:
        model = build_model("deeplabv3_resnet50", num_classes=5, output_stride=os_)
        convs = model.aspp.convs
        assert convs[0][0].kernel_size == (1, 1)
        assert tuple(c[0].dilation[0] for c in convs[1:4]) == rates
        assert all(c[0].kernel_size == (3, 3) and c[0].out_channels == 256 for c in convs[1:4])
        assert isinstance(convs[4][0], nn.AdaptiveAvgPool2d)  # image pooling
        assert model.aspp.project[0].in_channels == 5 * 256
        assert any(isinstance(m, nn.BatchNorm2d) for m in model.aspp.modules())
        assert model.classifier.in_channels == 256 and model.classifier.out_channels == 5
    aux = build_model("deeplabv3_resnet50", num_classes=5, aux_head=True).train()
    out = aux(torch.randn(2, 3, 65, 65))
    assert set(out) == {"out", "aux"} and out["aux"].shape == (2, 5, 65, 65)
    assert isinstance(aux.eval()(torch.randn(1, 3, 33, 33)), torch.Tensor)


@pytest.mark.parametrize(
    "name,low_channels",
    [("deeplabv3plus_resnet50", 256), ("deeplabv3plus_xception65", 256), ("deeplabv3plus_mobilenetv2", 24)],
)
def test_deeplabv3plus_decoder(name, low_channels):
    model = build_model(name, num_classes=4)
    bb = model.backbone
    assert bb.info(model.low).reduction == 4 and bb.info(model.low).channels == low_channels
    assert bb.info(model.high).reduction == 16
    assert model.reduce[0].out_channels == 48 and model.reduce[0].in_channels == low_channels
    first = model.decoder[0]
    assert isinstance(first, SeparableConv2d) and first[0].in_channels == 256 + 48
    assert first[0].groups == 256 + 48  # depthwise
    assert all(isinstance(c, SeparableConv2d) for c in model.aspp.convs[1:4])
    assert [c[0].dilation[0] for c in model.aspp.convs[1:4]] == [6, 12, 18]
    os8 = build_model(name, num_classes=4, output_stride=8)
    assert os8.backbone.info(os8.high).reduction == 8
    assert [c[0].dilation[0] for c in os8.aspp.convs[1:4]] == [12, 24, 36]
    with torch.no_grad():
        f = os8.eval().backbone(torch.randn(1, 3, 64, 64))
    assert f[os8.high].shape[-1] == 8 and f[os8.low].shape[-1] == 16


def test_xception65_is_the_aligned_xception():
    model = build_model("deeplabv3plus_xception65", num_classes=2)
    assert model.backbone.info("stage4").channels == 2048
    n_sep = sum(1 for m in model.backbone.modules() if isinstance(m, nn.Conv2d) and m.groups > 1)
    # entry flow 3 x 3 + middle flow 16 x 3 + exit flow 3 + 3 separable convs (aligned Xception-65)
    assert n_sep == 9 + 48 + 6


def test_deeplab_v1_largefov():
    model = build_model("deeplabv1_vgg16_largefov", num_classes=21)
    pools = [m for m in model.backbone.features if isinstance(m, nn.MaxPool2d)]
    assert [p.stride for p in pools] == [2, 2, 2, 1, 1] and all(p.kernel_size == 3 for p in pools)
    conv5 = [m for m in model.backbone.features if isinstance(m, nn.Conv2d)][-3:]
    assert all(c.dilation == (2, 2) for c in conv5)
    (head,) = model.branches
    assert head.fc6.kernel_size == (3, 3) and head.fc6.dilation == (12, 12) and head.fc6.out_channels == 1024
    assert head.fc7.kernel_size == (1, 1) and head.fc7.out_channels == 1024
    assert model.backbone.info("pool5").reduction == 8
    params, _ = model_stats("deeplabv1_vgg16_largefov", num_classes=21)
    assert 20.4e6 < params < 20.6e6  # "about 20.5 M"


def test_deeplab_v2_aspp_l():
    vgg = build_model("deeplabv2_vgg16", num_classes=21)
    assert [b.fc6.dilation[0] for b in vgg.branches] == [6, 12, 18, 24]
    res = build_model("deeplabv2_resnet101", num_classes=21)
    assert [c.dilation[0] for c in res.aspp] == [6, 12, 18, 24]
    assert all(c.in_channels == 2048 and c.out_channels == 21 for c in res.aspp)
    assert res.backbone.info("layer4").reduction == 8 and len(res.backbone.layer3) == 23
    # the branches' scores are summed: zeroing all but one leaves that branch's output
    res.eval()
    x = torch.randn(1, 3, 40, 40)
    with torch.no_grad():
        f = res.backbone(x)["layer4"]
        total = sum(c(f) for c in res.aspp)
        assert torch.allclose(res(x), torch.nn.functional.interpolate(total, (40, 40), mode="bilinear"), atol=1e-5)


def test_fcn_offsets_and_upsampling():
    # derived crop offsets equal those of the reference Caffe models (voc-fcn{32,16,8}s)
    assert build_model("fcn32s_vgg16", num_classes=21).offsets == {"out": 19}
    assert build_model("fcn16s_vgg16", num_classes=21).offsets == {"pool4": 5, "out": 27}
    fcn8 = build_model("fcn8s_vgg16", num_classes=21)
    assert fcn8.offsets == {"pool4": 5, "pool3": 9, "out": 31}
    assert fcn8.backbone.features[0].padding == (100, 100)
    assert fcn8.fc6.kernel_size == (7, 7) and fcn8.fc6.out_channels == 4096 and fcn8.fc7.kernel_size == (1, 1)
    assert torch.equal(fcn8.upscore8.weight, bilinear_kernel(21, 16)) and fcn8.upscore8.stride == (8, 8)
    # sec. 4.3: the final upsampling fixed bilinear, the 2x ones learned unless learnable_upsampling=False
    learned = {n for n, p in fcn8.named_parameters() if p.requires_grad and "upscore" in n}
    assert learned == {"upscore2.weight", "upscore_pool4.weight"}
    assert not build_model("fcn32s_vgg16", num_classes=21).upscore.weight.requires_grad
    fixed = build_model("fcn8s_vgg16", num_classes=21, learnable_upsampling=False)
    assert not any(p.requires_grad for n, p in fixed.named_parameters() if "upscore" in n)
    other = build_model("fcn8s", backbone="resnet18", num_classes=3)
    assert [n for n, p in other.named_parameters() if p.requires_grad and "up" in n] == ["up2.0.weight", "up2.1.weight"]
    params, _ = model_stats("fcn8s_vgg16", num_classes=21)
    assert 134.0e6 < params < 134.7e6  # "about 134 M" (Caffe's FCN-8s)
    # a transposed conv with the bilinear kernel interpolates: constants stay constant inside
    up = torch.nn.functional.conv_transpose2d(torch.ones(1, 2, 5, 5), bilinear_kernel(2, 4), stride=2)
    assert torch.allclose(up[..., 2:-2, 2:-2], torch.ones(1))


def test_coord_map_arithmetic():
    conv = nn.Conv2d(1, 1, 3, padding=1)
    assert coord_map([conv]) == (1.0, 0.0)
    pool = nn.MaxPool2d(2, 2)
    assert coord_map([pool]) == (2.0, 0.5)
    assert coord_map([pool, nn.ConvTranspose2d(1, 1, 4, stride=2)]) == (1.0, -1.0)
    assert crop_offset((1.0, -1.0), (1.0, 0.0)) == 1
    with pytest.raises(ValueError):
        crop_offset((2.0, 0.0), (1.0, 0.0))


def test_pyramid_pooling():
    psp = build_model("pspnet_resnet50", num_classes=3)
    assert psp.ppm.bins == (1, 2, 3, 6) and psp.ppm.out_channels == 4096
    assert all(stage[1].out_channels == 512 for stage in psp.ppm.stages)
    assert psp.backbone.info("layer4").reduction == 8
    spp = build_model("pspnet_resnet50", num_classes=3, bins=(1, 2, 4))
    assert [stage[0].output_size for stage in spp.ppm.stages] == [1, 2, 4]
    with torch.no_grad():
        y = spp.ppm.eval()(torch.randn(1, 2048, 7, 9))
    assert y.shape == (1, 2048 + 3 * 682, 7, 9)


def test_encoder_unet():
    model = build_model("unet_resnet34", num_classes=3)
    assert [b[0][0].in_channels for b in model.blocks] == [512 + 256, 256 + 128, 128 + 64, 64 + 64, 32]
    assert model.skips == ["layer3", "layer2", "layer1", "stem"]


# --- pretrained weights from local files --------------------------------------------------------
def test_pretrained_resnet_from_torchvision_and_timm_layouts(tmp_path, caplog):
    import logging

    import timm

    caplog.set_level(logging.INFO, logger="pixelwise")

    tv = torchvision.models.resnet50().state_dict()
    torch.save(tv, tmp_path / "tv.pth")
    model = build_model("deeplabv3_resnet50", num_classes=3, pretrained_backbone=str(tmp_path / "tv.pth"))
    assert torch.equal(model.backbone.layer3[2].conv2.weight, tv["layer3.2.conv2.weight"])
    assert torch.equal(model.backbone.bn1.running_var, tv["bn1.running_var"])
    assert "unexpected 2 ['fc.bias', 'fc.weight']" in caplog.text  # reported

    from safetensors.torch import save_file

    tm = timm.create_model("resnet34").state_dict()
    save_file(tm, str(tmp_path / "r34.safetensors"))
    unet = build_model(
        "unet_resnet34", num_classes=2, in_channels=1, pretrained_backbone=str(tmp_path / "r34.safetensors")
    )
    assert torch.equal(unet.backbone.layer4[1].conv1.weight, tm["layer4.1.conv1.weight"])
    # RGB first conv adapted to one input channel by summing its filters
    assert torch.allclose(unet.backbone.conv1.weight, tm["conv1.weight"].sum(1, keepdim=True))


def test_pretrained_vgg_for_fcn_and_deeplab(tmp_path):
    vgg = torchvision.models.vgg16().state_dict()
    torch.save(vgg, tmp_path / "vgg16.pth")
    fcn = build_model("fcn32s_vgg16", num_classes=2, pretrained_backbone=str(tmp_path / "vgg16.pth"))
    assert torch.equal(fcn.backbone.features[28].weight, vgg["features.28.weight"])
    assert torch.equal(fcn.fc6.weight, vgg["classifier.0.weight"].view(4096, 512, 7, 7))
    assert torch.equal(fcn.fc7.weight[..., 0, 0], vgg["classifier.3.weight"])
    v1 = build_model("deeplabv1_vgg16_largefov", num_classes=2, pretrained_backbone=str(tmp_path / "vgg16.pth"))
    fc6 = vgg["classifier.0.weight"].view(4096, 512, 7, 7)
    assert torch.equal(v1.branches[0].fc6.weight, fc6[::4, :, ::3, ::3])  # decimated 7x7 -> 3x3, 4096 -> 1024
    assert torch.equal(v1.branches[0].fc7.weight[..., 0, 0], vgg["classifier.3.weight"][::4, ::4])


def test_pretrained_files_of_another_depth_or_without_fc_layers_are_refused(tmp_path):
    """A ResNet-18 file for a ResNet-34 backbone loaded what fitted and left layer1.2, ... at random (reported in
    the log only); a VGG-16 file of its features only said that none of its 0 tensors fits."""
    torch.save(torchvision.models.resnet18().state_dict(), tmp_path / "r18.pth")
    with pytest.raises(CheckpointError) as e:
        build_model("unet_resnet34", num_classes=2, pretrained_backbone=str(tmp_path / "r18.pth"))
    assert str(e.value) == (
        f"pretrained_backbone {tmp_path / 'r18.pth'} lacks 80 of the 180 tensors of the ResNet it is for "
        "(e.g. layer1.2.bn1.bias, layer1.2.bn1.running_mean, layer1.2.bn1.running_var): weights of another model or "
        "depth, or parameters without their batch-norm statistics? give that backbone's own whole state dict"
    )
    # the other way: a deeper file's extra blocks were left out silently (logged only), and a file of the
    # parameters alone left every batch-norm statistic at 0 / 1, another network in eval mode
    torch.save(torchvision.models.resnet34().state_dict(), tmp_path / "r34.pth")
    with pytest.raises(CheckpointError) as e:
        build_model("unet_resnet18", num_classes=2, pretrained_backbone=str(tmp_path / "r34.pth"))
    assert str(e.value) == (
        f"pretrained_backbone {tmp_path / 'r34.pth'} has 96 tensors the ResNet it is for lacks (e.g. "
        "layer1.2.bn1.bias, layer1.2.bn1.num_batches_tracked, layer1.2.bn1.running_mean): weights of a deeper or "
        "other model? give that backbone's own file"
    )
    r18 = torchvision.models.resnet18()
    torch.save(dict(r18.named_parameters()), tmp_path / "params.pth")
    with pytest.raises(CheckpointError, match=r"lacks 40 of the 100 tensors .* without their batch-norm statistics"):
        build_model("unet_resnet18", num_classes=2, pretrained_backbone=str(tmp_path / "params.pth"))
    torch.save(r18.state_dict(), tmp_path / "r18.pth")  # the whole file, its fc included: loads
    build_model("unet_resnet18", num_classes=2, pretrained_backbone=str(tmp_path / "r18.pth"))
    vgg = torchvision.models.vgg16().state_dict()
    torch.save({k: v for k, v in vgg.items() if k.startswith("features.")}, tmp_path / "features.pth")
    for name in ("fcn8s_vgg16", "deeplabv1_vgg16_largefov"):
        with pytest.raises(CheckpointError) as e:
            build_model(name, num_classes=2, pretrained_backbone=str(tmp_path / "features.pth"))
        assert str(e.value) == (
            f"pretrained_backbone {tmp_path / 'features.pth'} has no fc6/fc7 (torchvision's classifier.0/classifier.3 "
            "or timm's pre_logits.fc1/fc2): the VGG-16 nets start their fc6/fc7 from ImageNet's; give the whole "
            "VGG-16 state dict, not its features only"
        )


def test_pretrained_timm_xception(tmp_path):
    import timm

    full = timm.create_model("xception65")
    state = full.state_dict()
    torch.save(state, tmp_path / "x65.pth")
    model = build_model("deeplabv3plus_xception65", num_classes=2, pretrained_backbone=str(tmp_path / "x65.pth"))
    # timm's features_only net renames blocks.N -> blocks_N; compare tensors by value
    own = list(model.backbone.body.state_dict().values())
    ref = [v for k, v in state.items() if not k.startswith("head")]
    assert len(own) == len(ref) > 300 and all(torch.equal(a, b) for a, b in zip(own, ref, strict=True))
    bad = tmp_path / "r18.pth"
    torch.save(torchvision.models.resnet18().state_dict(), bad)
    with pytest.raises(CheckpointError, match=r"r18.pth: none of its 122 tensors fits the model"):
        build_model("deeplabv3plus_xception65", num_classes=2, pretrained_backbone=str(bad))


def test_unreadable_weight_files_are_one_line(tmp_path):
    """A truncated safetensors file (whatever the suffix's case), and a legacy (pre-zip) torch file holding
    objects, each with its own reason, not safetensors' traceback or "not a PyTorch file"."""
    import argparse

    from safetensors.torch import save_file

    from pixelwise.models.weights import read_state_file

    save_file({"a": torch.zeros(3)}, str(tmp_path / "w.safetensors"))
    (tmp_path / "cut.safetensors").write_bytes((tmp_path / "w.safetensors").read_bytes()[:9])
    torch.save({"a": torch.zeros(3)}, tmp_path / "W.SAFETENSORS")  # a torch file under that name
    for name, reason in (("cut.safetensors", "invalid header length"), ("W.SAFETENSORS", "header too large")):
        with pytest.raises(CheckpointError) as e:
            read_state_file(tmp_path / name)
        assert str(e.value) == (
            f"cannot load pretrained_backbone {tmp_path / name}: it is not a safetensors file (truncated, or another "
            f"format: Error while deserializing header: {reason})"
        )
    legacy = tmp_path / "legacy.pth"
    torch.save(
        {"state_dict": {"a": torch.zeros(3)}, "args": argparse.Namespace(lr=1)},
        legacy,
        _use_new_zipfile_serialization=False,
    )
    with pytest.raises(CheckpointError) as e:
        read_state_file(legacy)
    assert "it holds Python objects besides tensors and plain types" in str(e.value)
    torch.save({"a": torch.zeros(3)}, legacy, _use_new_zipfile_serialization=False)  # a plain legacy one loads
    assert list(read_state_file(legacy)) == ["a"]
    for name, data in (("random.pth", bytes(range(256)) * 4), ("json.pth", b'{"a": 1}')):  # not torch files at all
        (tmp_path / name).write_bytes(data)
        with pytest.raises(CheckpointError) as e:
            read_state_file(tmp_path / name)
        assert str(e.value).endswith("it is not a PyTorch file (truncated, or another format)"), str(e.value)


def test_weight_file_without_read_permission(tmp_path, monkeypatch):
    """A file the user may not read is said to be that, not "not a PyTorch/safetensors file" (the reader's
    PermissionError is simulated: the tests may run as root, who reads every file)."""
    import safetensors.torch

    from pixelwise.models.weights import read_state_file, torch_load

    def denied(path, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(torch, "load", denied)
    monkeypatch.setattr(safetensors.torch, "load_file", denied)
    reason = "permission denied: make it readable (chmod u+r) or give a copy you can read"
    for name in ("w.pth", "w.safetensors"):
        (tmp_path / name).write_bytes(b"x")
        with pytest.raises(CheckpointError) as e:
            read_state_file(tmp_path / name)
        assert str(e.value) == f"cannot load pretrained_backbone {tmp_path / name}: {reason}"
    with pytest.raises(CheckpointError) as e:
        torch_load(tmp_path / "w.pth", "checkpoint")
    assert str(e.value) == f"cannot load checkpoint {tmp_path / 'w.pth'}: {reason}"


def test_pretrained_errors(tmp_path, monkeypatch):
    with pytest.raises(CheckpointError, match="does not exist"):
        build_model("unet_resnet18", num_classes=2, pretrained_backbone=str(tmp_path / "none.pth"))
    torch.save({"conv1.weight": torch.zeros(3, 3)}, tmp_path / "bad.pth")
    with pytest.raises(CheckpointError, match=r"conv1.weight has shape \(3, 3\)"):
        build_model("unet_resnet18", num_classes=2, pretrained_backbone=str(tmp_path / "bad.pth"))

    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(PixelwiseError, match="could not download torchvision's pretrained weights for resnet50"):
        build_model("deeplabv3_resnet50", num_classes=2, pretrained_backbone=True)

    import timm

    real = timm.create_model
    monkeypatch.setattr(
        timm, "create_model", lambda *a, pretrained=False, **k: offline() if pretrained else real(*a, **k)
    )
    with pytest.raises(PixelwiseError, match="offline, pass a local file: pretrained_backbone="):
        build_model("deeplabv3plus_mobilenetv2", num_classes=2, pretrained_backbone=True)


# --- torchvision compatibility ------------------------------------------------------------------
@pytest.mark.parametrize("name", ["deeplabv3_resnet50", "deeplabv3_resnet101"])
def test_from_torchvision_gives_the_same_outputs(name):
    torch.manual_seed(0)
    tv = getattr(torchvision.models.segmentation, name)(
        weights=None, weights_backbone=None, num_classes=6, aux_loss=True
    )
    for m in tv.modules():  # non-trivial batch-norm statistics
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    tv.eval()
    model = from_torchvision(tv.state_dict(), name=name)
    x = torch.randn(2, 3, 96, 88)  # multiples of the stride, 8: elsewhere torchvision stretches its 1/8 map
    with torch.no_grad():
        ref, out = tv(x), model(x, return_aux=True)
    # float rounding only (the ASPP's large rates run as the 1x1/1x3 convs they reduce to on this small map)
    for key in ("out", "aux"):
        assert (ref[key] - out[key]).abs().max() < 1e-5 * ref[key].abs().max().clamp(min=1)
    assert ref["out"].abs().max() > 0.1  # not trivially equal


def test_from_torchvision_keeps_its_heads_dropout():
    """torchvision's ASPP drops half of its projection (0.5), ours 0.1: fine-tuning converted weights trained
    another head. Its FCNHead (the aux) drops 0.1, as ours."""
    tv = torchvision.models.segmentation.deeplabv3_resnet50(weights=None, weights_backbone=None, num_classes=3,
                                                             aux_loss=True)  # fmt: skip
    ours = from_torchvision(tv)

    def rates(m):
        return sorted(x.p for x in m.modules() if isinstance(x, nn.Dropout))

    assert rates(ours.aspp) == rates(tv.classifier) == [0.5]
    assert rates(ours.aux) == rates(tv.aux_classifier) == [0.1]
    assert rates(build_model("deeplabv3_resnet50", num_classes=3).aspp) == [0.1]  # the paper's


def test_from_torchvision_without_aux_and_via_init_from(tmp_path):
    from pixelwise.models.weights import init_weights

    tv = torchvision.models.segmentation.deeplabv3_resnet50(
        weights=None, weights_backbone=None, num_classes=4, aux_loss=False
    ).eval()
    model = from_torchvision(tv)
    assert model.aux is None
    torch.save(tv.state_dict(), tmp_path / "tv.pth")
    same = build_model(
        "deeplabv3_resnet50", num_classes=4, output_stride=8, multi_grid=None, rates=[12, 24, 36], head_conv=True
    )
    init_weights(same, tmp_path / "tv.pth")
    x = torch.randn(1, 3, 48, 48)  # a multiple of the stride, 8 (elsewhere torchvision stretches its 1/8 map)
    with torch.no_grad():
        assert (tv(x)["out"] - same.eval()(x)).abs().max() < 1e-4
    other = build_model(
        "deeplabv3_resnet50", num_classes=7, output_stride=8, multi_grid=None, rates=[12, 24, 36], head_conv=True
    )
    with pytest.raises(CheckpointError, match="a checkpoint for 4 classes, a model for 7"):
        init_weights(other, tmp_path / "tv.pth")
    init_weights(other, tmp_path / "tv.pth", partial=True)  # everything but the classifier
    assert torch.equal(other.aspp.project[0].weight, same.aspp.project[0].weight)


BF16_FCN_TRAIN = """
import torch
from pixelwise import build_model
torch.manual_seed(0)
model = build_model("fcn8s_vgg16", num_classes=3).train()
for _ in range(4):
    x = torch.randn(2, 3, 65, 79, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x)
    (out.float() * torch.randn_like(out, dtype=torch.float32)).mean().backward()
print("done")
"""


@pytest.mark.parametrize(("name", "kwargs"), [("fcn8s_vgg16", {}), ("fcn8s", {"backbone": "resnet18"})])
def test_fcn_score_layers_run_in_fp32_under_cpu_bf16_autocast(name, kwargs):
    """What keeps the crash below away, checked on any CPU: under bf16 autocast FCN's score layers take and
    give fp32 while the rest of the net runs in bf16."""
    torch.manual_seed(0)
    model = build_model(name, num_classes=3, **kwargs).train()
    layers = [model.score_fr] if hasattr(model, "score_fr") else list(model.score)
    body = model.backbone.forward

    def fp32_body(x):  # fast on CPUs that emulate bf16; its features go on in bf16, as autocast would give them
        with torch.autocast("cpu", enabled=False):
            return {k: v.bfloat16() for k, v in body(x).items()}

    model.backbone.forward = fp32_body
    seen = []
    for layer in layers:
        layer.register_forward_hook(lambda _m, i, o: seen.append((i[0].dtype, o.dtype)))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(torch.randn(1, 3, 33, 47))
    assert seen == [(torch.float32, torch.float32)] * len(layers)
    assert out.dtype == torch.bfloat16


@pytest.mark.slow
@pytest.mark.skipif(
    "bf16" not in native_precisions(torch.device("cpu")),
    reason="the crash was seen with native bf16 (AMX); this CPU has neither AVX-512 BF16 nor AMX, so bf16 is "
    "emulated and these steps take minutes",
)
def test_fcn_bf16_training_on_cpu_does_not_corrupt_memory():
    """oneDNN's bf16 weight gradient of a 4096-input conv with under 16 outputs (FCN's score_fr) corrupts
    the heap on CPU (PyTorch 2.14; the process aborts within a few steps). FCN keeps that layer in fp32.
    In a subprocess: the failure is a crash."""
    proc = subprocess.run([sys.executable, "-c", BF16_FCN_TRAIN], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0 and "done" in proc.stdout, proc.stderr[-2000:]


@pytest.mark.parametrize(
    ("groups", "rate", "size"),
    [(1, 4, (3, 5)), (6, 6, (7, 4)), (1, 5, (5, 5)), (1, 2, (9, 9)), (6, 36, (32, 32)), (1, (3, 7), (5, 6))],
)
def test_atrous_conv_skips_padding_taps_exactly(groups, rate, size):
    """Where the rate reaches the map's height or width, AtrousConv2d drops the kernel rows/columns that
    only ever read padding (DeepLab v3 sec. 3.3): outputs and gradients equal nn.Conv2d's."""
    torch.manual_seed(0)
    padding = rate if isinstance(rate, int) else tuple(rate)
    ref = nn.Conv2d(6, 6, 3, padding=padding, dilation=rate, groups=groups)
    atrous = AtrousConv2d(6, 6, 3, padding=padding, dilation=rate, groups=groups)
    atrous.load_state_dict(ref.state_dict())
    x = torch.randn(2, 6, *size, requires_grad=True)
    x2 = x.detach().clone().requires_grad_(True)
    a, b = ref(x), atrous(x2)
    assert (a - b).abs().max() < 1e-5
    g = torch.randn_like(a)
    (a * g).sum().backward()
    (b * g).sum().backward()
    assert (x.grad - x2.grad).abs().max() < 1e-5
    assert (ref.weight.grad - atrous.weight.grad).abs().max() < 1e-5 and ref.bias.grad.allclose(atrous.bias.grad)


def test_atrous_conv_traces_the_full_convolution(tmp_path):
    """Exported at a size where the rate exceeds the map, the ONNX graph must still be right at larger sizes."""
    ort = pytest.importorskip("onnxruntime")
    conv = AtrousConv2d(3, 4, 3, padding=6, dilation=6).eval()
    torch.onnx.export(
        conv,
        (torch.randn(1, 3, 4, 4),),
        str(tmp_path / "c.onnx"),
        dynamo=False,
        input_names=["x"],
        dynamic_axes={"x": {2: "h", 3: "w"}},
    )
    x = torch.randn(1, 3, 20, 17)
    got = ort.InferenceSession(str(tmp_path / "c.onnx")).run(None, {"x": x.numpy()})[0]
    with torch.no_grad():
        assert (torch.from_numpy(got) - conv(x)).abs().max() < 1e-4


def test_atrous_conv_bf16_tap_products_on_cpu(monkeypatch):
    """In bf16 on CPU a 1024+-channel conv with a large rate runs as per-tap matrix products (oneDNN's
    dilated bf16 kernels are slow there): same function as the fp32 conv within bf16 rounding, gradients too."""
    from pixelwise.models import atrous_conv as modules

    calls = []
    real = modules._conv_as_tap_products
    monkeypatch.setattr(modules, "_conv_as_tap_products", lambda *a: calls.append(1) or real(*a))
    torch.manual_seed(0)
    ref = nn.Conv2d(1024, 16, 3, padding=12, dilation=12)
    atrous = AtrousConv2d(1024, 16, 3, padding=12, dilation=12)
    atrous.load_state_dict(ref.state_dict())
    x = torch.randn(2, 1024, 20, 27, requires_grad=True)
    x2 = x.detach().clone().requires_grad_(True)
    r = ref(x)
    g = torch.randn_like(r)
    (r * g).sum().backward()
    assert not calls and torch.allclose(atrous(x2), r, atol=1e-5)  # fp32: oneDNN's conv
    with torch.autocast("cpu", dtype=torch.bfloat16):
        a = atrous(x2)
    assert calls and a.dtype == torch.bfloat16 and a.shape == r.shape

    def rel(u, v):
        return float((u.float() - v).norm() / v.norm())

    assert rel(a, r) < 1e-2
    (a.float() * g).sum().backward()
    assert rel(x2.grad, x.grad) < 2e-2 and rel(atrous.weight.grad, ref.weight.grad) < 2e-2


def test_lraspp_is_torchvisions_head_on_the_1_16_and_1_8_features():
    """LR-ASPP (Howard et al. 2019, Fig. 10): the same function as torchvision's LRASPPHead given the same
    weights, on the backbone's last (1/16) and 1/8 features, where the input is a multiple of 16 (elsewhere
    torchvision stretches the 1/16 map over the 1/8 one: modules.upsample); logits at the input size, odd sizes
    too."""
    from torchvision.models.segmentation.lraspp import LRASPPHead

    torch.manual_seed(0)
    model = build_model("lraspp", num_classes=5, backbone="timm/mobilenetv3_large_100").eval()
    bb = model.backbone
    high, low = bb.info(model.high), bb.info(model.low)
    assert (high.reduction, low.reduction) == (16, 8) and (high.channels, low.channels) == (960, 40)
    ref = LRASPPHead(low.channels, high.channels, 5, 128).eval()
    renamed = {"cbr": "conv", "scale": "gate"}
    for k, v in ref.state_dict().items():
        if v.is_floating_point():  # BN statistics too: nothing left at a trivial value
            v.uniform_(0.5, 1.5) if k.endswith("running_var") else v.normal_()
    state = {renamed.get(k.split(".")[0], k.split(".")[0]) + k[k.index(".") :]: v for k, v in ref.state_dict().items()}
    state["gate.1.bias"] = torch.zeros(128)  # torchvision's gate conv has no bias; ours does (the paper is silent)
    model.load_state_dict({**model.state_dict(), **state})
    with torch.no_grad():
        for size in [(64, 96), (97, 83)]:
            x = torch.randn(2, 3, *size)
            f = bb(x)
            assert set(f) == {model.high, model.low}
            expected = ref({"low": f[model.low], "high": f[model.high]})
            if size[0] % 16 == 0 and size[1] % 16 == 0:
                torch.testing.assert_close(model.head(f), expected)
            assert model.head(f).shape == expected.shape and model(x).shape == (2, 5, *size)


def test_heads_take_the_backbones_own_feature_at_a_reduction_not_a_dilated_one():
    """At output stride 8 the stages after stage 2 are dilated and stay at 1/8: LR-ASPP's 1/8 branch is stage 2
    (40 channels, torchvision's ``stage_indices[-4]``), not the last stage again; below the output stride the
    deepest feature at a reduction is still taken (DeepLab v3+'s 1/4 decoder input)."""
    for output_stride in (8, 16, 32):
        model = build_model("lraspp", num_classes=3, output_stride=output_stride)
        low = model.backbone.info(model.low)
        assert (model.low, low.reduction, low.channels) == ("stage2", 8, 40) and model.high == "stage4"
    for output_stride in (8, 16):
        model = build_model("deeplabv3plus_resnet50", num_classes=3, output_stride=output_stride)
        assert model.backbone.at_reduction(4, "test") == "layer1"
        assert model.backbone.at_reduction(output_stride, "test") == ("layer2" if output_stride == 8 else "layer3")


def test_lraspp_fine_skip_adds_the_scored_1_4_feature_to_the_upsampled_1_8_scores():
    """``fine_reduction=4``: the paper's 1/8 scores upsampled to 1/4 plus the 1/4 feature's own 1x1 scores; the
    paper's head is kept unchanged inside it, and without the option there is no fine branch."""
    torch.manual_seed(0)
    model = build_model("lraspp", num_classes=3, backbone="timm/mobilenetv3_large_100", fine_reduction=4).eval()
    bb = model.backbone
    assert bb.info(model.fine).reduction == 4 and model.fine_classifier.in_channels == bb.info(model.fine).channels
    with torch.no_grad():
        for size in [(64, 96), (97, 83)]:
            x = torch.randn(1, 3, *size)
            f = bb(x)
            assert set(f) == {model.high, model.low, model.fine}
            fine = f[model.fine]
            plain = model.high_classifier(
                upsample(model.conv(f[model.high]) * model.gate(f[model.high]), 2, f[model.low].shape[-2:])
            )
            plain = plain + model.low_classifier(f[model.low])
            expected = upsample(plain, 2, fine.shape[-2:]) + model.fine_classifier(fine)
            torch.testing.assert_close(model.head(f), expected)
            assert model.head(f).shape[-2:] == fine.shape[-2:] and model(x).shape == (1, 3, *size)
    plain_model = build_model("lraspp", num_classes=3, backbone="timm/mobilenetv3_large_100")
    assert plain_model.fine is None and not any(k.startswith("fine") for k in plain_model.state_dict())
    with pytest.raises(ConfigError, match=r"^model\.fine_reduction must be 4 or null \(no fine skip\), got 2$"):
        build_model("lraspp", num_classes=3, fine_reduction=2)


def test_shape_checks_never_load_the_pretrained_backbone():
    """A run trained from a local backbone file predicts on a machine without that file: the size and memory
    checks build the model on the meta device for its shapes only."""
    spec = {"name": "unet", "num_classes": 2, "backbone": "resnet18"}
    missing = {**spec, "pretrained_backbone": "/nonexistent/backbone.pth"}
    with pytest.raises(CheckpointError, match="does not exist"):
        build_model(**missing)  # building for real does read it
    assert smallest_input(missing) == smallest_input(spec)
    assert inference_bytes(missing, 64, 96) == inference_bytes(spec, 64, 96) > 0


def test_empty_or_non_positive_pyramids_are_refused():
    """pspnet(bins=[]) divided by zero; deeplabv3(rates=[]) silently used (6, 12, 18); deeplabv2_vgg16(rates=[])
    built a net whose forward failed."""
    rates = "model.rates must list at least one atrous rate, each a whole number >= 1 (e.g. [6, 12, 18]), got "
    for name, kwargs, message in (
        ("pspnet", {"backbone": "resnet18", "bins": []}, "model.bins must list at least one pooling grid size, "
         "each a whole number >= 1 (the paper's [1, 2, 3, 6]), got []"),
        ("pspnet", {"backbone": "resnet18", "bins": [1, 0]}, "model.bins must list at least one pooling grid size, "
         "each a whole number >= 1 (the paper's [1, 2, 3, 6]), got [1, 0]"),
        ("deeplabv3", {"backbone": "resnet18", "rates": []}, rates + "[]"),
        ("deeplabv3plus", {"backbone": "resnet18", "rates": [6, -1]}, rates + "[6, -1]"),
        ("deeplabv2_vgg16", {"rates": []}, rates + "[]"),
    ):  # fmt: skip
        with pytest.raises(ConfigError) as e:
            build_model(name, num_classes=2, **kwargs)
        assert str(e.value) == message
    assert build_model("deeplabv3", backbone="resnet18", num_classes=2, rates=[3]).aspp.rates == (3,)


def test_a_users_model_without_postponed_annotations_is_type_checked_too():
    """A builder whose module lacks `from __future__ import annotations` has real types, not strings, as
    annotations: their checks were skipped (`width: "x"` reached the builder)."""
    import sys
    import types

    from pixelwise.models import register_model
    from pixelwise.models.registry import _BUILDERS

    module = types.ModuleType("users_own_model")  # compiled without the __future__ import
    exec(
        "from typing import Literal\n"
        "def users_own_net(\n"
        "    *, num_classes: int, width: int = 8, mode: Literal['a', 'b'] = 'a', p: float | None = None\n"
        "):\n"
        "    return ('built', width)\n",
        module.__dict__,
    )
    sys.modules["users_own_model"] = module
    try:
        register_model(module.users_own_net)
        for kwargs, message in (
            ({"width": "x"}, "model 'users_own_net': width='x' should be int"),
            ({"width": True}, "model 'users_own_net': width=True should be int"),
            ({"mode": "c"}, "model 'users_own_net': mode='c' should be one of 'a', 'b'"),
            ({"p": "0.5"}, "model 'users_own_net': p='0.5' should be float | None"),
        ):
            with pytest.raises(ConfigError) as e:
                build_model("users_own_net", num_classes=2, **kwargs)
            assert str(e.value) == message
        assert build_model("users_own_net", num_classes=2, width=4, mode="b", p=None) == ("built", 4)
    finally:
        _BUILDERS.pop("users_own_net", None)
        sys.modules.pop("users_own_model", None)


def test_builder_argument_errors_are_one_line_config_errors():
    from pixelwise.models import register_model
    from pixelwise.models.weights import load_weights

    cases = [
        ("unet", {"padding": "foo"}, "model 'unet': padding='foo' should be one of 'same', 'valid'"),
        (
            "unet",
            {"backbone": "resnet18", "decoder_channels": [8, 8]},
            "model 'unet': decoder_channels needs 5 entries",
        ),
        ("deeplabv3", {"backbone": "resnet18", "multi_grid": [1, 0]}, "model 'deeplabv3': multi_grid [1, 0]: unit "),
        (
            "deeplabv3",
            {"backbone": "resnet18", "multi_grid": [1, "2"]},
            "model 'deeplabv3': multi_grid=[1, '2'] should be a list of int | str | None",
        ),
        ("unet", {"num_classes": 3.0}, "model 'unet': num_classes=3.0, must be a whole number >= 1"),
        ("unet", {"num_classes": 0}, "model 'unet': num_classes=0, must be a whole number >= 1"),
        ("unet", {"base_channels": -4}, "model 'unet': base_channels (-4) and depth (4) must be >= 1"),
        # a YAML string or fraction where a number or width is meant: a TypeError or IndexError deep in torch
        ("unet", {"depth": "4"}, "model 'unet': depth='4' should be int"),
        ("unet", {"base_channels": 4.5}, "model 'unet': base_channels=4.5 should be int"),
        ("unet", {"dropout": "0.1"}, "model 'unet': dropout='0.1' should be float"),
        ("unet", {"depth": 0}, "model 'unet': base_channels (64) and depth (0) must be >= 1"),
        ("unet", {"batch_norm": 1}, "model 'unet': batch_norm=1 should be bool"),
        (
            "deeplabv3",
            {"backbone": "resnet18", "multi_grid": [1, 2.5]},
            "model 'deeplabv3': multi_grid=[1, 2.5] should",
        ),
    ]
    for name, kwargs, start in cases:
        with pytest.raises(ConfigError) as e:
            build_model(name, **{"num_classes": 2, **kwargs})
        assert str(e.value).startswith(start), str(e.value)
    with pytest.raises(ConfigError, match=r"^model 'unet': .*dropout"):
        build_model("unet", num_classes=2, dropout=1.5)

    def catch_all(*, num_classes: int, **extra):  # its extra keys could never be given (build_model checks them)
        return nn.Identity()

    with pytest.raises(TypeError, match="no positional ones, no \\*\\*kwargs"):
        register_model(catch_all)
    # the classifier of an aux-head model is named as such, as without the aux head
    a = build_model("deeplabv3", num_classes=21, backbone="resnet18", aux_head=True)
    b = build_model("deeplabv3", num_classes=5, backbone="resnet18", aux_head=True)
    with pytest.raises(CheckpointError, match=r"\(a checkpoint for 21 classes, a model for 5\)$"):
        load_weights(b, a.state_dict(), "ck")


def test_a_whole_models_weights_give_their_backbone(tmp_path):
    """A pixelwise checkpoint (or smp's encoder.*, Lightning's model.*) as pretrained_backbone: its backbone's."""
    from pixelwise.models.weights import save_checkpoint

    source = build_model("deeplabv3", num_classes=7, backbone="resnet18")
    save_checkpoint(tmp_path / "run.pt", {"model": source.state_dict(), "meta": {"model": {"name": "deeplabv3"}}})
    torch.save({f"model.encoder.{k}": v for k, v in source.backbone.state_dict().items()}, tmp_path / "lit.pth")
    for name in ("run.pt", "lit.pth"):
        model = build_model("unet", num_classes=2, backbone="resnet18", pretrained_backbone=str(tmp_path / name))
        for key, value in source.backbone.state_dict().items():
            assert torch.equal(model.backbone.state_dict()[key], value), (name, key)
    # a timm backbone's weights sit under backbone.body. in a pixelwise model
    lraspp = build_model("lraspp", num_classes=7)
    save_checkpoint(tmp_path / "lraspp.pt", {"model": lraspp.state_dict(), "meta": {"model": {"name": "lraspp"}}})
    again = build_model("lraspp", num_classes=3, pretrained_backbone=str(tmp_path / "lraspp.pt"))
    for key, value in lraspp.backbone.state_dict().items():
        assert torch.equal(again.backbone.state_dict()[key], value), key


@pytest.mark.parametrize("name", ["fcn8s_vgg16", "deeplabv1_vgg16_largefov"])
def test_vgg_heads_drop_single_values_as_caffe(name):
    """Caffe's drop6/drop7 (FCN, DeepLab-LargeFOV) zero single values; Dropout2d zeroed whole channels."""
    torch.manual_seed(0)
    drops = [m for m in build_model(name, num_classes=3).modules() if isinstance(m, nn.modules.dropout._DropoutNd)]
    assert drops  # FCN applies one module after fc6 and fc7
    for drop in drops:
        zeroed = (drop.train()(torch.ones(1, 16, 8, 8)) == 0).float().mean((2, 3))
        assert ((zeroed > 0) & (zeroed < 1)).all()  # every channel partly dropped, none whole


@pytest.mark.parametrize("height", [64, 65, 67, 70])
def test_upsample_keeps_each_cell_where_its_stride_puts_it(height):
    """Cell i of a stride-4 map sits at pixel 4 i + 1.5 (bilinear, half-pixel centres) at any input size: a ramp
    v_i = i comes back as (p + 0.5) / 4 - 0.5 at pixel p. resize_to stretched the ceil(H / 4) cells over H pixels
    (at 65: pitch 65 / 17 = 3.82, pixel 60 off by 0.8 of a cell)."""
    cells = -(-height // 4)
    ramp = torch.arange(float(cells)).view(1, 1, cells, 1).expand(1, 1, cells, 3)
    up = upsample(ramp, 4, (height, 12))
    assert up.shape == (1, 1, height, 12)
    p = torch.arange(float(height))
    inside = (p >= 2) & (p <= 4 * cells - 3)  # clamped at the ends, as at multiples
    torch.testing.assert_close(up[0, 0, inside, 0], ((p + 0.5) / 4 - 0.5)[inside])
    if height % 4 == 0:
        torch.testing.assert_close(up, resize_to(ramp, (height, 12)))
    # a map of another number of cells (a backbone that rounds down; VGG's Caffe pooling): resized, as before
    for rows in (height // 4 - 1, height // 4 + 1 + (height % 4 > 0)):
        other = torch.rand(1, 1, rows, 3)
        torch.testing.assert_close(upsample(other, 4, (height, 12)), resize_to(other, (height, 12)))


def test_other_heads_on_vgg_at_output_stride_8_resize_too():
    """VGG at output stride 8 is DeepLab's Caffe-pooling variant for every head: at 65 x 65 (9 cells, as many as
    ceil(65 / 8)) DeepLab v3 took the stride path, at 64 x 64 the resize."""
    torch.manual_seed(0)
    model = build_model("deeplabv3", num_classes=3, backbone="vgg16", output_stride=8).eval()
    assert not model.backbone.stride_grid and model.backbone.stride_ratio(model.high) is None
    for size in ((64, 64), (65, 65)):
        x = torch.randn(1, 3, *size)
        with torch.no_grad():
            scores = model.classifier(model.head_conv(model.aspp(model.backbone(x)[model.high])))
            torch.testing.assert_close(model(x), resize_to(scores, size))
    resnet = build_model("deeplabv3plus", num_classes=3, output_stride=16).backbone
    assert resnet.stride_grid and (resnet.stride_ratio("layer3", "layer1"), resnet.stride_ratio("layer1")) == (4, 4)


@pytest.mark.parametrize("name", ["deeplabv1_vgg16_largefov", "deeplabv2_vgg16"])
def test_deeplab_on_vgg_keeps_its_resize(name):
    """DeepLab v1/v2's VGG pools as Caffe did (3x3, stride 2, padding 1, rounding up): its cells sit at 8 i, not
    where the stride's upsampling puts them; its outputs stay those of the resize at every size, also at
    8 k + 1 (DeepLab's own 321 and 513), where the cell count happens to be ceil(H / 8)."""
    torch.manual_seed(0)
    model = build_model(name, num_classes=3).eval()
    for size, cells in (((64, 72), (9, 10)), ((65, 65), (9, 9)), ((121, 97), (16, 13))):
        x = torch.randn(1, 3, *size)
        with torch.no_grad():
            pool5 = model.backbone(x)["pool5"]
            assert tuple(pool5.shape[-2:]) == cells
            score = sum(branch(pool5) for branch in model.branches)
            torch.testing.assert_close(model(x), resize_to(score, size))


def test_pretrained_backbone_of_another_type_is_one_line():
    """1, 2.5 or a list was a TypeError from Path() deep in the backbone (0 or [] was taken for false)."""
    for name, kwargs in (("unet_resnet18", {}), ("deeplabv3", {"backbone": "timm/mobilenetv3_small_050"})):
        for value, shown in ((1, "1"), (2.5, "2.5"), (["w.pth"], "['w.pth']"), (0, "0")):
            with pytest.raises(ConfigError) as e:
                build_model(name, num_classes=2, pretrained_backbone=value, **kwargs)
            assert str(e.value) == f"model.pretrained_backbone must be true, false or a weights file path, not {shown}"


def test_pretrained_backbone_path_expands_the_home_folder(tmp_path, monkeypatch):
    """`~/weights/r18.pth` was read as a folder named `~` in the working directory."""
    monkeypatch.setenv("HOME", str(tmp_path))
    state = torchvision.models.resnet18().state_dict()
    torch.save(state, tmp_path / "r18.pth")
    model = build_model("unet_resnet18", num_classes=2, pretrained_backbone="~/r18.pth")
    torch.testing.assert_close(model.backbone.layer4[1].conv2.weight, state["layer4.1.conv2.weight"])
    with pytest.raises(CheckpointError) as e:
        build_model("unet_resnet18", num_classes=2, pretrained_backbone="~/none.pth")
    assert str(e.value) == f"pretrained_backbone {tmp_path / 'none.pth'} does not exist"


def test_same_padded_unet_refuses_tile_size():
    """tile_size is the valid U-Net's overlap-tile output size: with padding same it was ignored silently. A config
    is refused; the builder still takes it, for the checkpoints of runs that set it (they must load)."""
    from pixelwise.config import validate_config

    config = {"model": {"name": "unet", "tile_size": 64}, "data": {"dataset": "toy"}}
    with pytest.raises(ConfigError) as e:
        validate_config(config)
    assert str(e.value) == (
        "model.tile_size applies to padding: valid (the overlap-tile prediction); a same-padded U-Net runs on the "
        "whole image: remove model.tile_size, or set model.padding: valid"
    )
    config["model"]["padding"] = "valid"
    assert validate_config(config)["model"]["tile_size"] == 64
    assert build_model("unet", num_classes=2, base_channels=4, depth=2, tile_size=64).tile_size == 64
    assert build_model("unet", num_classes=2, base_channels=4, depth=2, padding="valid", tile_size=20).tile_size == 20


@pytest.mark.parametrize("form", ["ddp_wrapped", "safetensors"])
def test_init_from_takes_state_dicts_as_pretrained_backbone_does(tmp_path, form):
    """A state dict saved from a DDP model under "state_dict" (as many training scripts do): pretrained_backbone
    took it, train.init_from refused it ("66 unexpected key(s) ['module....'"); safetensors, which both take."""
    from safetensors.torch import save_file

    from pixelwise.models.weights import init_weights

    torch.manual_seed(0)
    source = build_model("unet", num_classes=3, base_channels=4, depth=2)
    if form == "ddp_wrapped":
        path = tmp_path / "ddp.pt"
        torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in source.state_dict().items()}}, path)
    else:
        path = tmp_path / "w.safetensors"
        save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))
    target = build_model("unet", num_classes=3, base_channels=4, depth=2)
    init_weights(target, path)
    pairs = zip(source.state_dict().values(), target.state_dict().values(), strict=True)
    assert all(torch.equal(a, b) for a, b in pairs)
