import pytest
import torch
from torch import nn

from pixelwise.errors import ConfigError
from pixelwise.inference import InferenceSettings, gaussian_window, predict_probs, window_starts


def pointwise_model(in_channels=3, classes=4, seed=0):
    torch.manual_seed(seed)
    return nn.Conv2d(in_channels, classes, 1).eval()  # translation- and flip-equivariant


def test_window_starts_cover_the_image():
    assert window_starts(10, 10, 5) == [0]
    assert window_starts(8, 10, 5) == [0]
    assert window_starts(25, 10, 6) == [0, 6, 12, 15]
    for size, crop, stride in [(97, 32, 20), (64, 64, 1), (100, 33, 33)]:
        covered = torch.zeros(size)
        for s in window_starts(size, crop, stride):
            covered[s : s + crop] = 1
            assert s + crop <= size
        assert covered.all()


@pytest.mark.parametrize("blend", ["uniform", "gaussian"])
def test_sliding_window_equals_whole_image_for_a_pointwise_model(blend):
    model = pointwise_model()
    x = torch.randn(2, 3, 45, 61)
    whole = predict_probs(model, x, 4)
    slide = predict_probs(model, x, 4, InferenceSettings(mode="slide", crop=(16, 20), stride=(9, 11), blend=blend))
    assert slide.shape == (2, 4, 45, 61)
    assert torch.allclose(whole, slide, atol=1e-6)
    assert torch.allclose(whole.sum(1), torch.ones(2, 45, 61), atol=1e-5)


def test_flip_and_scale_one_equal_whole_for_a_pointwise_model():
    model = pointwise_model()
    x = torch.randn(1, 3, 30, 40)
    whole = predict_probs(model, x, 4)
    assert torch.allclose(predict_probs(model, x, 4, InferenceSettings(flip=True)), whole, atol=1e-6)
    multi = predict_probs(model, x, 4, InferenceSettings(scales=(0.5, 1.0, 1.5), flip=True))
    assert multi.shape == whole.shape and torch.allclose(multi.sum(1), torch.ones(1, 30, 40), atol=1e-5)


def test_scales_average_the_resized_views_by_hand():
    """Each scale: the image resized bilinearly (30 x 40 -> 15 x 20, antialiased, and 45 x 60), the model's softmax
    there, resized back; the mean over the scales. A model that sees its input's size (a blur) tells the scales
    apart."""
    import torch.nn.functional as F

    torch.manual_seed(0)
    model = nn.Sequential(nn.AvgPool2d(5, 1, 2, count_include_pad=False), nn.Conv2d(3, 4, 1)).eval()
    x = torch.randn(1, 3, 30, 40)

    def view(size):
        shrink = size[0] < 30
        scaled = (
            F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=shrink)
            if size != (30, 40)
            else x
        )
        p = torch.softmax(model(scaled), 1)
        return F.interpolate(p, size=(30, 40), mode="bilinear", align_corners=False) if size != (30, 40) else p

    with torch.no_grad():
        expected = (view((15, 20)) + view((30, 40)) + view((45, 60))) / 3
        got = predict_probs(model, x, 4, InferenceSettings(scales=(0.5, 1.0, 1.5)))
        assert torch.allclose(got, expected, atol=1e-6)
        assert (got - predict_probs(model, x, 4)).abs().max() > 1e-2  # the scales do change this model's output


def test_flip_averages_a_position_dependent_model():
    class LeftBias(nn.Module):  # class 0 on the left half of its input, class 1 on the right
        def forward(self, x):
            w = x.shape[-1]
            left = (torch.arange(w) < w // 2).float()
            return torch.stack([left, 1 - left])[None, :, None, :].expand(x.shape[0], 2, x.shape[-2], w) * 10

    x = torch.zeros(1, 3, 4, 8)
    p = predict_probs(LeftBias(), x, 2, InferenceSettings(flip=True))
    assert torch.allclose(p, torch.full_like(p, 0.5), atol=1e-4)  # the flip undoes the left/right preference


def test_rot90_averages_the_eight_symmetries_of_the_square():
    class TopBias(nn.Module):  # class 0 on the top half of its input, class 1 below: flips alone keep it
        def forward(self, x):
            h = x.shape[-2]
            top = (torch.arange(h) < h // 2).float()
            return torch.stack([top, 1 - top])[None, :, :, None].expand(x.shape[0], 2, h, x.shape[-1]) * 10

    x = torch.zeros(1, 3, 4, 6)  # not square: the quarter turns give 6x4 inputs, turned back to 4x6
    flipped = predict_probs(TopBias(), x, 2, InferenceSettings(flip=True))
    assert flipped[0, 0, 0].min() > 0.99 and flipped[0, 0, -1].max() < 0.01
    for settings in (InferenceSettings(rot90=True), InferenceSettings(rot90=True, flip=True)):
        p = predict_probs(TopBias(), x, 2, settings)
        assert p.shape == (1, 2, 4, 6)
        assert torch.allclose(p, torch.full_like(p, 0.5), atol=1e-4)  # each pixel is in 2 of the 4 turned halves
    assert len(InferenceSettings(rot90=True, flip=True).views) == 8 and len(InferenceSettings(rot90=True).views) == 4
    model = pointwise_model()  # rotation-equivariant: all 8 views agree with the plain pass
    y = torch.randn(2, 3, 9, 14)
    dihedral = predict_probs(model, y, 4, InferenceSettings(rot90=True, flip=True))
    assert torch.allclose(dihedral, predict_probs(model, y, 4), atol=1e-6)


def test_rot90_composes_with_sliding_windows_on_a_non_square_image():
    model = pointwise_model()
    x = torch.randn(1, 3, 13, 22)
    settings = InferenceSettings(mode="slide", crop=(8, 12), stride=(5, 7), rot90=True, flip=True, scales=(1.0, 0.7))
    plain = predict_probs(model, x, 4, InferenceSettings(scales=(1.0, 0.7)))
    assert torch.allclose(predict_probs(model, x, 4, settings), plain, atol=1e-5)


def test_gaussian_window_and_settings_errors():
    g = gaussian_window(9, 9)
    assert g[4, 4] == 1 and g[0, 0] < g[4, 0] < g[4, 4] and g.min() >= 1e-3
    with pytest.raises(ConfigError, match="needs a crop"):
        InferenceSettings(mode="slide")
    with pytest.raises(ConfigError, match="valid: whole, slide"):
        InferenceSettings(mode="tiles")
    whole_with_windows = r"^inference crop/stride size the windows of mode slide: add --mode slide, or leave them out$"
    for sizes in ({"crop": 512}, {"stride": 256}):  # ignored by a whole-image pass: refused instead
        with pytest.raises(ConfigError, match=whole_with_windows):
            InferenceSettings(**sizes)
    with pytest.raises(ConfigError, match=r"^inference stride must be at least 1 pixel, got 0$"):
        InferenceSettings(mode="slide", crop=64, stride=0)
    with pytest.raises(ConfigError, match=r"^inference crop must be at least 1 pixel, got \[64, -1\]$"):
        InferenceSettings(mode="slide", crop=[64, -1])
    # windows further apart than their size left unpredicted pixels (NaN, then class 0)
    with pytest.raises(ConfigError) as e:
        InferenceSettings(mode="slide", crop=4, stride=8)
    assert str(e.value) == (
        "inference stride 8 is larger than the crop 4: the windows would leave pixels unpredicted; give a stride at "
        "most the crop (default: 2/3 of it)"
    )
    with pytest.raises(ConfigError) as cli:  # the CLI's --crop 4 --stride 8 come as one-element lists: as above
        InferenceSettings(mode="slide", crop=[4], stride=[8])
    assert str(cli.value) == str(e.value)
    with pytest.raises(ConfigError, match=r"^inference stride \[4, 9\] is larger than the crop \[8, 8\]"):
        InferenceSettings(mode="slide", crop=[8, 8], stride=[4, 9])
    assert InferenceSettings(mode="slide", crop=8, stride=8).stride == 8  # abutting windows cover everything
    with pytest.raises(ConfigError, match=r"^inference crop \[64, 64, 64\]: give one size or \[height, width\]"):
        InferenceSettings(mode="slide", crop=[64, 64, 64])
    with pytest.raises(ConfigError, match=r"^inference scales must be positive, got \[1.0, nan\]$"):
        InferenceSettings(scales=[1.0, float("nan")])
    with pytest.raises(ConfigError, match=r"^inference scales must be positive, got \['a'\]$"):
        InferenceSettings(scales=["a"])  # a TypeError traceback before
    with pytest.raises(ConfigError, match=r"^inference.class_weight_correction=nan: must be a finite number >= 0$"):
        InferenceSettings(class_weight_correction=float("nan"))
    assert InferenceSettings().is_plain and not InferenceSettings(flip=True).is_plain
    assert not InferenceSettings(rot90=True).is_plain


class BrightestPointOracle(nn.Module):
    """A panoptic-style model that commutes with every flip and turn: class logits from each pixel's value, a
    Gaussian centre heatmap at the image's brightest pixel and, at every pixel, the ``(dy, dx)`` offset to it."""

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        n, _, h, w = x.shape
        flat = x[:, 0].reshape(n, -1).argmax(1)
        cy, cx = (flat // w).float().view(n, 1, 1), (flat % w).float().view(n, 1, 1)
        ys = torch.arange(h, dtype=torch.float32).view(1, h, 1).expand(n, h, w)
        xs = torch.arange(w, dtype=torch.float32).view(1, 1, w).expand(n, h, w)
        center = torch.exp(-((ys - cy) ** 2 + (xs - cx) ** 2) / 8.0).unsqueeze(1)
        offset = torch.stack([cy - ys, cx - xs], 1)
        return {"out": torch.cat([x, 2 * x - 1, -x], 1), "center": center, "offset": offset}


class ConstantOffsets(nn.Module):
    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        n, _, h, w = x.shape
        offset = torch.tensor([1.0, 2.0]).view(1, 2, 1, 1).expand(n, 2, h, w)
        return {"out": torch.zeros(n, 2, h, w), "center": torch.zeros(n, 1, h, w), "offset": offset}


def test_instance_outputs_average_views_with_offsets_turned_back():
    from pixelwise.inference import predict_outputs

    torch.manual_seed(5)
    image = torch.rand(2, 1, 9, 14)  # not square: the turns change the shape
    plain = BrightestPointOracle()(image)
    for settings in (
        InferenceSettings(flip=True),
        InferenceSettings(rot90=True),
        InferenceSettings(flip=True, rot90=True),
    ):
        averaged = predict_outputs(BrightestPointOracle(), image, settings)
        assert torch.allclose(averaged["offset"], plain["offset"], atol=1e-5), settings
        assert torch.allclose(averaged["center"], plain["center"], atol=1e-6)
        # class scores: the log of the averaged probabilities, whose softmax is that average
        assert torch.allclose(averaged["out"].softmax(1), plain["out"].softmax(1), atol=1e-6)
    # a model that ignores the image's orientation: (dy, dx) = (1, 2) everywhere in each view's frame
    constant = ConstantOffsets()
    flipped = predict_outputs(constant, image, InferenceSettings(flip=True))["offset"]
    assert torch.allclose(flipped[:, 0], torch.ones(2, 9, 14)) and torch.allclose(flipped[:, 1], torch.zeros(2, 9, 14))
    turned = predict_outputs(constant, image, InferenceSettings(rot90=True))["offset"]
    assert torch.allclose(turned, torch.zeros_like(turned), atol=1e-6)
    # one turn alone: the view's (1, 2) is (2, -1) in the image's frame (torch.rot90 turns counter-clockwise)
    from pixelwise.inference.protocol import _unturn_offsets

    one = _unturn_offsets(torch.tensor([1.0, 2.0]).view(1, 2, 1, 1), 1, False).flatten().tolist()
    assert one == [2.0, -1.0]
    # plain settings: the model's own output; a tensor output stays a tensor
    assert predict_outputs(constant, image, InferenceSettings())["offset"].shape == (2, 2, 9, 14)
    logits = predict_outputs(nn.Conv2d(1, 3, 1), image, InferenceSettings(flip=True))
    assert isinstance(logits, torch.Tensor) and logits.shape == (2, 3, 9, 14)
    with pytest.raises(ConfigError, match=r"^instance decoding runs on the whole image at scale 1 .* scales \[0.5\]"):
        predict_outputs(constant, image, InferenceSettings(scales=(0.5,)))


def test_class_weight_correction_divides_by_the_weights_to_the_power_tau():
    from pixelwise.inference.protocol import correct_class_weights

    probs = torch.tensor([0.6, 0.3, 0.1]).view(1, 3, 1, 1)
    weights = (1.0, 4.0, 0.25)
    full = correct_class_weights(probs, InferenceSettings(class_weight_correction=1.0, class_weights=weights))
    assert full.flatten().tolist() == pytest.approx([0.6 / 1.075, 0.075 / 1.075, 0.4 / 1.075])
    half = correct_class_weights(probs, InferenceSettings(class_weight_correction=0.5, class_weights=weights))
    assert half.flatten().tolist() == pytest.approx([0.6 / 0.95, 0.15 / 0.95, 0.2 / 0.95])
    assert correct_class_weights(probs, InferenceSettings(class_weights=weights)) is probs  # tau 0: unchanged
    # a class without training pixels (weight 0) is left as predicted, not divided by 0
    zero = correct_class_weights(probs, InferenceSettings(class_weight_correction=1.0, class_weights=(1.0, 4.0, 0.0)))
    assert zero.flatten().tolist() == pytest.approx([0.6 / 0.775, 0.075 / 0.775, 0.1 / 0.775])
    # through the protocol: a pointwise model whose class 1 wins by a little (probabilities 0.386, 0.472, 0.142)
    # loses it once its weight 4 is undone (0.386, 0.118, 0.142 before renormalising)
    model = nn.Conv2d(1, 3, 1, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([1.0, 1.2, 0.0]).view(3, 1, 1, 1))
    x = torch.ones(1, 1, 3, 5)
    assert predict_probs(model, x, 3, InferenceSettings()).argmax(1).unique().tolist() == [1]
    settings = InferenceSettings(class_weight_correction=1.0, class_weights=(1.0, 4.0, 1.0))
    corrected = predict_probs(model, x, 3, settings)
    assert corrected.argmax(1).unique().tolist() == [0]
    assert corrected[0, :, 0, 0].tolist() == pytest.approx([0.386 / 0.646, 0.118 / 0.646, 0.142 / 0.646], abs=2e-3)
    assert torch.allclose(corrected.sum(1), torch.ones(1, 3, 5))
    assert not InferenceSettings(class_weight_correction=0.5).is_plain
    with pytest.raises(ConfigError, match=r"^inference.class_weight_correction=-1: must be >= 0 \(0: off, 1: undo "):
        InferenceSettings(class_weight_correction=-1)
    with pytest.raises(ConfigError, match=r"needs the class weights the model trained with .* set it to 0$"):
        predict_probs(model, x, 3, InferenceSettings(class_weight_correction=1.0))
    with pytest.raises(ConfigError, match=r"2 class weights for a model with 3 classes$"):
        predict_probs(model, x, 3, InferenceSettings(class_weight_correction=1.0, class_weights=(1.0, 2.0)))


def test_window_sizes_must_be_whole_pixels():
    """InferenceSettings(crop="64") slid a 6 x 4 window ('64' read character by character); crop=8.7 became 8."""
    for crop in ("64", 8.7, True, [32, 48, 64]):
        with pytest.raises(ConfigError) as e:
            InferenceSettings(mode="slide", crop=crop)
        assert str(e.value) == f"inference crop {crop!r}: give one size or [height, width], whole pixels"
    assert InferenceSettings(mode="slide", crop=[32, 48], stride=16).stride == 16


def test_predictor_takes_paths_pil_images_and_arrays_of_either_channel_count(tmp_path):
    """The Python API as a user calls it: a path, a PIL image, a grey H x W array or a colour one, for a grey model
    (each gave a traceback but H x W x 1)."""
    import numpy as np
    from PIL import Image

    from pixelwise.config import load_config
    from pixelwise.engine import Predictor, train
    from pixelwise.errors import DataError

    from .conftest import write_dataset

    root = write_dataset(tmp_path / "data", splits={"train": 2, "val": 1}, size=(40, 32)).parent
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        "model: {name: unet, base_channels: 4, depth: 2, in_channels: 1}\n"
        "data: {dataset: toy, crop_size: 32, batch_size: 2, num_workers: 0, mean: [0.5], std: [0.25]}\n"
        "train: {iters: 2, eval_interval: 2}\n"
    )
    train(load_config(cfg), run_dir=tmp_path / "r", data_root=root, progress=False)
    predictor = Predictor(tmp_path / "r/best.pt")
    path = root / "toy/images/val/s00.png"
    rgb = np.asarray(Image.open(path).convert("RGB"))
    grey = np.asarray(Image.open(path).convert("L"))
    expected = predictor.predict(path)
    assert expected.shape == (32, 40)
    for given in (Image.open(path), rgb, grey, grey[..., None], np.dstack([rgb, np.full(grey.shape, 255, np.uint8)])):
        np.testing.assert_array_equal(predictor.predict(given), expected)
    assert predictor.predict_instances(rgb).semantic.shape == (32, 40)
    # PIL images made in memory (no file's tiles), colour and RGBA too
    for made in (Image.fromarray(rgb), Image.fromarray(rgb).convert("RGBA"), Image.fromarray(grey)):
        np.testing.assert_array_equal(predictor.predict(made), expected)
    with pytest.raises(DataError) as e:
        predictor.predict(np.zeros((2, 32, 40, 3), np.uint8), source="batch")
    assert str(e.value) == (
        "batch: an image is H x W (grey) or H x W x C with 1 to 4 channels (grey, grey + alpha, RGB, RGBA), got an "
        "array of shape (2, 32, 40, 3)"
    )
    np.testing.assert_array_equal(predictor.predict(rgb.astype(np.float32) / 255), expected)  # as read_image's
    for array, seen in ((rgb.astype(np.uint16) * 257, "uint16"), (rgb.astype(np.float32), "values 0..")):
        with pytest.raises(DataError) as e:  # raw 16-bit or 0..255 floats reached the network unscaled
            predictor.predict(array, source="raw")
        assert str(e.value).startswith("raw: an image array is uint8, or float in [0, 1] (as "), str(e.value)
        assert seen in str(e.value)
    Image.fromarray(grey).save(tmp_path / "two.tif", save_all=True, append_images=[Image.fromarray(grey)])
    with pytest.raises(DataError, match=r"two.tif has 2 pages: predict each of Predictor.read\("):
        predictor.predict(tmp_path / "two.tif")
    with pytest.raises(DataError, match=r"^stack has 2 pages: predict each page \(PIL.ImageSequence\) in turn$"):
        predictor.predict(Image.open(tmp_path / "two.tif"), source="stack")


def test_shrinking_scales_are_antialiased_as_training_scales_are():
    """Training's random scale shrinks with torchvision's antialiased resize; inference's scales below 1 fed the
    network plain bilinear samples (aliased) instead. Enlarging is plain bilinear in both."""
    import torch.nn.functional as F
    from torchvision.transforms.v2 import functional as TF

    from pixelwise.inference.protocol import rescale_image

    torch.manual_seed(0)
    image = torch.rand(1, 3, 37, 53)
    torch.testing.assert_close(rescale_image(image, (18, 26)), TF.resize(image, [18, 26], antialias=True))
    big = F.interpolate(image, size=(74, 106), mode="bilinear", align_corners=False)
    assert torch.equal(rescale_image(image, (74, 106)), big)
    seen = []

    class Recorder(nn.Module):
        def forward(self, x):
            seen.append(x)
            return torch.zeros(x.shape[0], 2, *x.shape[-2:])

    predict_probs(Recorder(), image, 2, InferenceSettings(scales=[0.5, 2.0]))
    torch.testing.assert_close(seen[0], TF.resize(image, [18, 26], antialias=True))
    assert torch.equal(seen[1], big)
    # half precision on a CPU (no antialiasing kernel there): shrunk in float32
    half = rescale_image(image.bfloat16(), (18, 26))
    assert half.dtype == torch.bfloat16
    torch.testing.assert_close(half, TF.resize(image.bfloat16().float(), [18, 26], antialias=True).bfloat16())


def test_the_inference_overrides_are_checked_by_name_and_type(tmp_path):
    """Predictor(inference={"nonsense": 1}) raised InferenceSettings.__init__()'s TypeError, which lists no valid
    keys; {"scales": 1.0} "'float' object is not iterable"; [1.0] dict()'s TypeError. Every entry point (predict,
    evaluate_checkpoint, crf_search) builds a Predictor."""
    from pixelwise.engine import Predictor, crf_search, evaluate_checkpoint
    from pixelwise.inference.protocol import inference_overrides

    from .test_engine import tiny_run

    ckpt, root = tiny_run(tmp_path)
    keys = "mode, crop, stride, blend, scales, flip, rot90, window_batch, class_weight_correction, class_weights"
    cases = [
        ({"nonsense": 1, "flips": True}, f"unknown inference key(s) flips, nonsense; valid: {keys}"),
        ([1.0], f"inference=[1.0]: give a dict of inference settings ({keys}), an InferenceSettings, or None"),
        ({"scales": 1.0}, "inference scales=1.0: give a list of scale factors, e.g. [0.75, 1.0, 1.25]"),
        ({"scales": "1"}, "inference scales='1': give a list of scale factors, e.g. [0.75, 1.0, 1.25]"),
        ({"flip": "yes"}, "inference flip='yes': give true or false"),
        ({"rot90": 1}, "inference rot90=1: give true or false"),
        ({"window_batch": 0}, "inference window_batch=0: give a whole number >= 1 (windows per network pass)"),
        ({"window_batch": 2.5}, "inference window_batch=2.5: give a whole number >= 1 (windows per network pass)"),
        ({"class_weight_correction": "1"}, "inference.class_weight_correction='1': must be a finite number >= 0"),
        ({"mode": ["slide"]}, "inference mode ['slide']; valid: whole, slide"),
        ({"blend": "gausian"}, "inference blend 'gausian'; valid: uniform, gaussian"),
        ({"window_batch": True}, "inference window_batch=True: give a whole number >= 1 (windows per network pass)"),
    ]
    for given, message in cases:
        with pytest.raises(ConfigError) as e:
            inference_overrides(given)
        assert str(e.value) == message
        with pytest.raises(ConfigError) as e:
            Predictor(ckpt, inference=given)
        assert str(e.value) == message
    with pytest.raises(ConfigError, match=r"^unknown inference key\(s\) nonsense; valid: "):
        evaluate_checkpoint(ckpt, inference={"nonsense": 1}, data_root=root, progress=False, num_workers=0)
    with pytest.raises(ConfigError, match=r"^inference scales=1.0: give a list"):
        crf_search(ckpt, inference={"scales": 1.0}, data_root=root, progress=False, write=False)
    assert Predictor(ckpt, inference={"scales": [1.0, 0.5], "flip": True}).inference.flip


def test_a_read_only_array_is_predicted_without_torch_s_not_writable_warning(tmp_path, monkeypatch):
    """A run with data.image_shift moved np.asarray(PIL image) (read-only) with torch.from_numpy, which warns "The
    given NumPy array is not writable" (once per process, so the check is on what reaches torch.from_numpy)."""
    import numpy as np
    from PIL import Image

    from pixelwise.engine import Predictor

    from .test_engine import tiny_run

    ckpt, root = tiny_run(tmp_path)
    predictor = Predictor(ckpt)
    predictor.meta["image_shift"] = [1, 0]
    writable = []
    real = torch.from_numpy

    def from_numpy(array):
        writable.append(array.flags.writeable)
        return real(array)

    monkeypatch.setattr(torch, "from_numpy", from_numpy)
    image = Image.open(root / "toy/images/val/s00.png")
    rgb, rgba = np.asarray(image.convert("RGB")), np.asarray(image.convert("RGBA"))
    assert not rgb.flags.writeable and not rgba.flags.writeable
    expected = predictor.predict(np.array(rgb))
    for given in (rgb, rgba, rgba[..., :3]):
        np.testing.assert_array_equal(predictor.predict(given), expected)
    assert writable and all(writable), writable
