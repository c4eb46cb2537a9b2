import math

import pytest
import torch
from torch import nn

from pixelwise import build_model, list_models
from pixelwise.errors import ConfigError
from pixelwise.models.modules import mirror_pad
from pixelwise.models.stats import model_stats
from pixelwise.models.unet import UNet


@pytest.mark.parametrize("padding", ["same", "valid"])
@pytest.mark.parametrize("size", [(64, 64), (97, 83), (33, 50)])
def test_output_at_input_size(padding, size):
    model = build_model("unet", num_classes=3, base_channels=4, padding=padding)
    x = torch.randn(2, 3, *size, requires_grad=True)
    out = model(x)
    assert out.shape == (2, 3, *size)
    out.mean().backward()
    assert torch.isfinite(x.grad).all()


def test_paper_architecture_facts():
    model = build_model("unet", num_classes=2, in_channels=1, padding="valid", batch_norm=False)
    widths = [block[1][0].out_channels for block in model.encoder]
    assert widths == [64, 128, 256, 512, 1024]
    assert all(
        isinstance(up, nn.ConvTranspose2d) and up.kernel_size == (2, 2) and up.stride == (2, 2) for up in model.up
    )
    assert [up.out_channels for up in model.up] == [512, 256, 128, 64]
    assert [block[0][0].in_channels for block in model.decoder] == [1024, 512, 256, 128]  # skip concat
    assert model.classifier.kernel_size == (1, 1)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert model.valid_output_size(572) == 388  # Fig. 1 of the paper
    assert model.margin == 92
    assert model.valid_output_size(573) is None
    # about 31 M parameters, as the paper's network
    params, _ = model_stats("unet", num_classes=2)
    assert 31.0e6 < params < 31.1e6


def test_valid_unpadded_net_shape():
    model = build_model("unet", num_classes=2, base_channels=2, padding="valid").eval()
    with torch.no_grad():
        assert model._net(torch.randn(1, 3, 572, 572)).shape == (1, 2, 388, 388)


def test_overlap_tile_equals_whole_image_prediction():
    torch.manual_seed(0)
    whole = build_model("unet", num_classes=2, base_channels=4, padding="valid").eval()
    tiled = build_model("unet", num_classes=2, base_channels=4, padding="valid", tile_size=36).eval()
    tiled.load_state_dict(whole.state_dict())
    x = torch.randn(1, 3, 90, 75)
    with torch.no_grad():
        a, b = whole(x), tiled(x)
    assert a.shape == b.shape == (1, 2, 90, 75)
    # each output pixel sees only its mirrored receptive field: tiling changes nothing
    assert torch.allclose(a, b, atol=1e-5)


def test_mirror_pad_wider_than_image():
    x = torch.arange(4.0).view(1, 1, 1, 4)
    out = mirror_pad(x, 5, 0, 0, 0)
    assert out.shape[-1] == 9
    # reflect: ..., 1, 2, 3 | 0 1 2 3 mirrored repeatedly
    assert out[0, 0, 0].tolist() == [1.0, 2.0, 3.0, 2.0, 1.0, 0.0, 1.0, 2.0, 3.0]


@pytest.mark.parametrize(
    "pads", [(20, 1, 0, 0), (0, 13, 0, 0), (9, 2, 11, 0), (4, 3, 2, 1), (0, 0, 0, 0), (7, 7, 7, 7), (1, 30, 30, 1)]
)
def test_mirror_pad_is_an_endless_mirror_however_lopsided(pads):
    """Each padded pixel is the image's pixel at its position reflected into the image, period 2 (n - 1). Passes of
    F.pad went wrong once one side's pad exceeded the other's by more than the image (20 left, 1 right of 5 columns:
    '2, 1, 0, 1, 2, 3, 4, 3, 4, 3' where '4, 3, 2, 1, 0, 1, 2, 3, 4, 3' is the mirror)."""
    x = torch.randn(2, 3, 5, 6)
    left, right, top, bottom = pads

    def reflected(n: int, before: int, after: int) -> list[int]:
        out = []
        for i in range(-before, n + after):
            while not 0 <= i < n:  # reflect at the edges until inside
                i = -i if i < 0 else 2 * (n - 1) - i
            out.append(i)
        return out

    rows, cols = reflected(5, top, bottom), reflected(6, left, right)
    assert torch.equal(mirror_pad(x, *pads), x[:, :, rows][:, :, :, cols])
    one = torch.randn(1, 2, 1, 1)  # a single pixel: repeated
    assert torch.equal(mirror_pad(one, *pads), one.expand(1, 2, 1 + top + bottom, 1 + left + right))


def test_batch_norm_option_and_same_padding_odd_levels():
    model = build_model("unet", num_classes=5, base_channels=4, batch_norm=True, depth=3)
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert model(torch.randn(1, 3, 13, 29)).shape == (1, 5, 13, 29)


def test_registry_errors():
    assert "unet" in list_models()
    with pytest.raises(ConfigError, match="unknown model 'unett'.*available: .*unet"):
        build_model("unett", num_classes=2)
    with pytest.raises(ConfigError, match="no argument.*widht.*valid: .*base_channels"):
        build_model("unet", num_classes=2, widht=3)
    with pytest.raises(ConfigError, match="needs argument.*num_classes"):
        build_model("unet")
    with pytest.raises(ConfigError, match="^model 'unet': padding='full' should be one of 'same', 'valid'$"):
        build_model("unet", num_classes=2, padding="full")


def test_the_paper_s_net_starts_from_its_gaussian_init():
    """Sec. 3: weights from N(0, 2/N), N a neuron's incoming nodes; PyTorch's default (uniform, a third of that
    variance) let the valid, BN-free net's activations fade with depth (logits std 0.05 at width 16)."""
    torch.manual_seed(0)
    net = UNet(in_channels=3, num_classes=2, base_channels=16, padding="valid", batch_norm=False)
    convs = [m for m in net.encoder.modules() if isinstance(m, nn.Conv2d)]
    first, deep = convs[0], convs[-1]  # 3 -> 16 and 256 -> 256, 3x3
    assert (first.in_channels, deep.in_channels) == (3, 256)
    for conv in (first, deep):
        n = conv.in_channels * 9
        assert conv.weight.std().item() == pytest.approx(math.sqrt(2 / n), rel=0.1)
        assert not conv.bias.any()
    up = net.up[0]  # 256 -> 128, 2x2 stride 2: each output pixel takes one tap of each of the 256 inputs
    assert up.weight.std().item() == pytest.approx(math.sqrt(2 / 256), rel=0.05)
    with torch.no_grad():
        assert net.eval()(torch.randn(1, 3, 188, 188)).std() > 1.0
    # the instance branch's decoder too; its centre/offset predictors keep detectron2's near-zero start
    pan = UNet(in_channels=3, num_classes=2, base_channels=16, batch_norm=False, instance_head="panoptic")
    assert pan.instance.up[0].weight.std().item() == pytest.approx(math.sqrt(2 / 256), rel=0.05)
    assert pan.instance.center.weight.std().item() == pytest.approx(0.001, rel=0.2)
    bn = UNet(in_channels=3, num_classes=2, base_channels=16, batch_norm=True)  # not the paper's: torch's default
    bn_first = next(m for m in bn.encoder.modules() if isinstance(m, nn.Conv2d))
    assert bn_first.weight.abs().max() <= 1 / math.sqrt(27)
