"""The effects at the pixel level: where alpha is 1 the output is the input exactly, where it is 0 the blurred or
replaced background exactly, in between the blend; the cutout's alpha is round(255 * p); highlight leaves the
other classes' pixels alone; and the --effect / --foreground parsing with its one-line errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from pixelwise.errors import ConfigError
from pixelwise.inference.effects import (
    Effect,
    blur,
    composite,
    cutout,
    default_sigma,
    fit_background,
    foreground_alpha,
    gaussian_blur,
    highlight,
    one_hot,
    parse_classes,
    parse_colour,
    replace,
)

CLASSES = ["background", "person", "car"]
PALETTE = [[0, 0, 0], [220, 20, 60], [0, 0, 142]]


@pytest.fixture
def scene():
    """A random image, softmax probabilities of three classes and an alpha with exact 0s, 1s and values between."""
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)
    probs = torch.softmax(torch.from_numpy(rng.normal(0, 2, (3, 30, 40))).float(), 0).numpy()
    alpha = rng.uniform(0, 1, (30, 40)).astype(np.float32)
    alpha[:10] = 1.0
    alpha[10:20] = 0.0
    return image, probs, alpha


def blend(image, background, alpha):
    """The documented formula, written out independently of composite()."""
    a = alpha.astype(np.float32)[..., None]
    return np.rint(a * image.astype(np.float32) + (1 - a) * background.astype(np.float32)).astype(np.uint8)


def test_blur_keeps_the_foreground_and_blurs_the_background_exactly(scene):
    image, _, alpha = scene
    out = blur(image, alpha, sigma=3.0)
    background = gaussian_blur(image, 3.0)
    assert not np.array_equal(background, image)
    np.testing.assert_array_equal(out[:10], image[:10])  # alpha = 1
    np.testing.assert_array_equal(out[10:20], background[10:20])  # alpha = 0
    np.testing.assert_array_equal(out[20:], blend(image, background, alpha)[20:])  # in between
    assert np.abs(out[20:].astype(int) - image[20:]).sum() > 0


def test_blur_strength_default_and_large_sigmas():
    flat = np.full((48, 64, 3), 77, np.uint8)
    for sigma in (0.5, 3.0, 20.0, 200.0):  # replicated borders: a flat image stays flat at any strength
        np.testing.assert_array_equal(gaussian_blur(flat, sigma), flat)
    assert default_sigma(360, 480) == pytest.approx(9.6)
    rng = np.random.default_rng(1)
    noise = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    spread = [gaussian_blur(noise, s).astype(float).std() for s in (1.0, 4.0, 16.0)]
    assert spread[0] > spread[1] > spread[2]  # stronger is smoother, through the shrink path too
    with pytest.raises(ConfigError, match="must be > 0"):
        gaussian_blur(noise, 0)


def test_a_strong_blur_of_a_wide_flat_image_shrinks_its_long_side():
    """16 x 1000 at sigma 100 took the direct path (its short side under twice the shrink factor): a 600-tap
    kernel, 0.9 s at sigma 1000 and 38 s for 16 x 4000 (a server's one worker held by a 266-byte upload). Its long
    side shrinks now: as close to the direct blur as a square image's shrink path is (at most 5 levels away from
    the sides, where the direct blur's replicated edge pixel weighs in over 3 sigma)."""
    import torch

    from pixelwise.inference.effects import _separable_blur

    rng = np.random.default_rng(0)
    for h, w, sigma in ((16, 1000, 100), (40, 600, 60)):  # the second took the shrink path before too
        image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        image[:, : w // 2] //= 4
        x = torch.from_numpy(image).permute(2, 0, 1)[None].float()
        direct = _separable_blur(x, sigma, sigma)[0].permute(1, 2, 0).round().clamp(0, 255).numpy()
        away = np.abs(gaussian_blur(image, sigma).astype(float) - direct)[:, 3 * sigma : w - 3 * sigma]
        assert away.max() <= 5 and away.mean() < 2.5
    flat = np.full((16, 4000, 3), 90, np.uint8)
    np.testing.assert_array_equal(gaussian_blur(flat, 4000), flat)


def test_replace_with_a_colour_and_with_an_image(scene):
    image, _, alpha = scene
    out = replace(image, alpha, (0, 177, 64))
    green = np.broadcast_to(np.array([0, 177, 64], np.uint8), image.shape)
    np.testing.assert_array_equal(out[:10], image[:10])
    np.testing.assert_array_equal(out[10:20], green[10:20])
    np.testing.assert_array_equal(out[20:], blend(image, green, alpha)[20:])

    picture = np.random.default_rng(2).integers(0, 256, (60, 120, 3), dtype=np.uint8)  # other size and aspect
    fitted = fit_background(picture, 30, 40)
    assert fitted.shape == (30, 40, 3)
    out = replace(image, alpha, picture)
    np.testing.assert_array_equal(out[:10], image[:10])
    np.testing.assert_array_equal(out[10:20], fitted[10:20])
    np.testing.assert_array_equal(out[20:], blend(image, fitted, alpha)[20:])


def test_fit_background_covers_without_stretching():
    # a 2:1 picture, half red half blue left to right, into a square: scaled to cover, centre kept
    picture = np.zeros((50, 100, 3), np.uint8)
    picture[:, :50, 0] = 255
    picture[:, 50:, 2] = 255
    fitted = fit_background(picture, 40, 40)
    assert fitted.shape == (40, 40, 3)
    assert (fitted[:, :15, 0] == 255).all() and (fitted[:, 25:, 2] == 255).all()
    np.testing.assert_array_equal(fit_background(picture, 50, 100), picture)  # same size: as is


def test_cutout_alpha_is_the_rounded_probability(scene):
    image, probs, _ = scene
    alpha = foreground_alpha(probs, [1, 2])
    np.testing.assert_allclose(alpha, probs[1] + probs[2], atol=1e-6)
    out = cutout(image, alpha)
    assert out.shape == (30, 40, 4) and out.dtype == np.uint8
    np.testing.assert_array_equal(out[..., :3], image)
    np.testing.assert_array_equal(out[..., 3], np.rint(255 * (probs[1] + probs[2])).clip(0, 255).astype(np.uint8))


def test_foreground_alpha_of_tensors_equals_numpy(scene):
    _, probs, _ = scene
    np.testing.assert_allclose(foreground_alpha(torch.from_numpy(probs), [2]), foreground_alpha(probs, [2]))
    assert foreground_alpha(probs, [0, 1, 2]).max() <= 1.0  # sums just over 1 by rounding are clipped


def test_highlight_tints_the_chosen_classes_and_leaves_the_others():
    rng = np.random.default_rng(3)
    image = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    mask = rng.integers(0, 3, (20, 30))
    mask[0, 0] = 255  # an ignored pixel belongs to no class
    probs = one_hot(mask, 3)
    out = highlight(image, probs, [1, 2], PALETTE, opacity=0.4)
    others = ~np.isin(mask, [1, 2])
    np.testing.assert_array_equal(out[others], image[others])
    for c in (1, 2):
        sel = mask == c
        want = np.rint(0.6 * image[sel].astype(np.float32) + 0.4 * np.float32(PALETTE[c])).astype(np.uint8)
        np.testing.assert_array_equal(out[sel], want)
    only_car = highlight(image, probs, [2], PALETTE)
    np.testing.assert_array_equal(only_car[mask == 1], image[mask == 1])


def test_soft_edges_follow_the_probability():
    image = np.full((1, 5, 3), 200, np.uint8)
    background = np.zeros((1, 5, 3), np.uint8)
    alpha = np.array([[0.0, 0.25, 0.5, 0.75, 1.0]], np.float32)
    assert composite(image, background, alpha)[0, :, 0].tolist() == [0, 50, 100, 150, 200]


def test_grey_and_float_images_become_rgb():
    grey = np.full((4, 5, 1), 0.5, np.float32)  # as read_image gives a 16-bit grey image
    out = cutout(grey, np.ones((4, 5), np.float32))
    assert out.shape == (4, 5, 4) and (out[..., :3] == 128).all() and (out[..., 3] == 255).all()


def test_grey_alpha_and_16_bit_arrays_take_every_effect():
    """Grey + alpha (H x W x 2) was a broadcast error in blur, replace and highlight and gave cutout a third
    colour channel from the alpha; 16-bit integers were taken as floats in [0, 1] (every pixel 0 or 255)."""
    probs = np.zeros((3, 4, 5), np.float32)
    probs[1] = 1.0
    alpha = np.ones((4, 5), np.float32)  # all foreground: every effect keeps the image's colours
    for image in (
        np.dstack([np.full((4, 5), 128, np.uint8), np.full((4, 5), 7, np.uint8)]),  # grey + alpha
        np.full((4, 5, 3), 128 * 257, np.uint16),  # 16-bit RGB
        np.full((4, 5), 128 * 257, np.uint16),  # 16-bit grey
    ):
        assert (blur(image, alpha, 2.0) == 128).all()
        assert (replace(image, alpha, (0, 255, 0)) == 128).all()
        out = cutout(image, alpha)
        assert out.shape == (4, 5, 4) and (out[..., :3] == 128).all() and (out[..., 3] == 255).all()
        tinted = highlight(image, probs, [2], PALETTE)  # a class no pixel is: unchanged
        assert tinted.shape == (4, 5, 3) and (tinted == 128).all()


def test_a_blur_of_any_finite_strength_runs():
    """1e308 passed the finite check and overflowed in the shrink path's sigma**2 (a traceback)."""
    rng = np.random.default_rng(2)
    image = rng.integers(0, 256, (8, 12, 3), dtype=np.uint8)
    for sigma in (1e6, 1e308):
        out = gaussian_blur(image, sigma)
        assert out.shape == image.shape and out.std(axis=(0, 1)).max() < 8  # next to one colour
    np.testing.assert_array_equal(gaussian_blur(image, 1e308), gaussian_blur(image, 1e6))
    with pytest.raises(ConfigError, match="must be > 0"):
        gaussian_blur(image, float("nan"))


def test_parse_classes_by_name_or_index():
    assert parse_classes("person,car", CLASSES) == [1, 2]
    assert parse_classes("Car, 1 ,car", CLASSES) == [2, 1]
    assert parse_classes(["PERSON", 2], CLASSES) == [1, 2]
    with pytest.raises(ConfigError) as e:
        parse_classes("person,dog", CLASSES)
    assert str(e.value) == "--foreground 'dog': no such class; the model's classes are 0 background, 1 person, 2 car"
    with pytest.raises(ConfigError, match="'7': no such class"):
        parse_classes("7", CLASSES)
    with pytest.raises(ConfigError, match="names no class"):
        parse_classes(" , ", CLASSES)


def test_parse_colour():
    assert parse_colour("#00b140") == (0, 177, 64)
    assert parse_colour("0,177,64") == (0, 177, 64)
    assert parse_colour("green") == (0, 128, 0)
    assert parse_colour("0,300,0") is None and parse_colour("beach.jpg") is None


def test_effect_from_spec(tmp_path, scene):
    image, probs, _ = scene
    e = Effect.from_spec("blur=4", CLASSES, PALETTE)
    assert (e.name, e.sigma, e.foreground) == ("blur", 4.0, [1, 2])  # default: all but "background"
    np.testing.assert_array_equal(e.apply(image, probs), blur(image, probs[1] + probs[2], 4.0))
    e = Effect.from_spec("highlight=0.7", CLASSES, PALETTE, foreground="car")
    assert (e.opacity, e.foreground) == (0.7, [2])
    assert Effect.from_spec("cutout", CLASSES, PALETTE).rgba
    e = Effect.from_spec("replace=#ff0000", CLASSES, PALETTE, foreground="person")
    assert e.background == (255, 0, 0) and e.describe()["background"] == "#ff0000"
    picture = np.random.default_rng(4).integers(0, 256, (10, 10, 3), dtype=np.uint8)
    Image.fromarray(picture).save(tmp_path / "beach.png")
    e = Effect.from_spec(f"replace={tmp_path / 'beach.png'}", CLASSES, PALETTE)
    want = replace(image, foreground_alpha(probs, [1, 2]), picture)
    np.testing.assert_array_equal(e.apply(image, probs), want)
    np.testing.assert_array_equal(e.apply(image, torch.from_numpy(probs)), want)


@pytest.mark.parametrize(
    ("spec", "foreground", "message"),
    [
        ("sepia", None, "--effect 'sepia'; valid: blur[=SIGMA], replace=IMAGE_OR_COLOUR, cutout, highlight[=OPACITY]"),
        ("blur=strong", None, "--effect 'blur=strong': 'strong' is not a number; valid: blur[=SIGMA], "),
        ("blur=0", None, "--effect blur=0.0: the strength must be a finite number > 0 (a Gaussian sigma in pixels)"),
        ("blur=nan", None, "--effect blur=nan: the strength must be a finite number > 0 (a Gaussian sigma in pixels)"),
        ("blur=inf", None, "--effect blur=inf: the strength must be a finite number > 0 (a Gaussian sigma in pixels)"),
        ("highlight=nan", None, "--effect highlight=nan: the opacity must be in (0, 1]"),
        ("highlight=2", None, "--effect highlight=2.0: the opacity must be in (0, 1]"),
        ("replace", None, "--effect 'replace': give the background, replace=IMAGE_OR_COLOUR"),
        ("replace=nowhere.jpg", None, "--effect replace=nowhere.jpg: no such image file, and not a colour"),
        ("cutout", "dog", "--foreground 'dog': no such class; the model's classes are 0 background, 1 person, 2 car"),
    ],
)
def test_effect_spec_errors(spec, foreground, message):
    with pytest.raises(ConfigError) as e:
        Effect.from_spec(spec, CLASSES, PALETTE, foreground=foreground)
    assert str(e.value).startswith(message) and "\n" not in str(e.value)


def test_a_model_without_a_background_class_needs_foreground():
    with pytest.raises(ConfigError) as e:
        Effect.from_spec("blur", ["Sky", "Road", "Car"], PALETTE)
    assert str(e.value) == (
        "--effect blur needs --foreground CLASS[,CLASS...]; the model's classes are 0 Sky, 1 Road, 2 Car"
    )


def test_highlight_tints_a_grey_palette_in_the_overlays_colours():
    """A mask-style palette ([0,0,0], [1,1,1]) 'highlighted' class 1 by darkening the image; the overlays and
    legend.png show that class in a vivid colour, which the highlight now uses too."""
    from pixelwise.visualize import overlay_palette

    palette = [[0, 0, 0], [1, 1, 1]]
    effect = Effect.from_spec("highlight=0.5", ["background", "cell"], palette, foreground="cell")
    assert effect.palette == overlay_palette(palette) and effect.palette[1] != [1, 1, 1]
    image = np.full((2, 3, 3), 128, np.uint8)
    probs = torch.zeros(2, 2, 3)
    probs[1] = 1.0  # every pixel is the cell
    out = effect.apply(image, probs)
    expected = np.round(0.5 * 128 + 0.5 * np.asarray(effect.palette[1]))
    assert np.abs(out.astype(float) - expected).max() <= 1


@pytest.mark.parametrize(
    "colour", ["rgb(300,0,0)", "rgb(200%,0%,0%)", "hsl(0,100%,150%)", "rgb(99999999999999999999,0,0)"]
)
def test_a_colour_channel_outside_0_to_255_is_refused(colour):
    """They wrapped silently (rgb(300,0,0) painted (44,0,0)), or overflowed in a traceback."""
    assert parse_colour(colour) is None and parse_colour("1" * 4400 + ",0,0") is None
    with pytest.raises(ConfigError) as e:
        Effect.from_spec(f"replace={colour}", CLASSES, PALETTE)
    assert str(e.value) == (
        f"--effect replace={colour}: no such image file, and not a colour (e.g. #00b140, green, 0,177,64; "
        "each channel 0 to 255)"
    )
    with pytest.raises(ConfigError) as e:
        Effect("replace", [1], background=(300, 0, 0))
    assert str(e.value) == "--effect replace=(300, 0, 0): each colour channel must be 0 to 255"


def test_an_index_of_thousands_of_digits_is_no_such_class():
    """Over 4300 digits int() raised ValueError: a traceback from the CLI, a 500 from the server."""
    with pytest.raises(ConfigError) as e:
        parse_classes("1" * 4400, CLASSES)
    assert (
        str(e.value)
        == f"--foreground '{'1' * 4400}': no such class; the model's classes are 0 background, 1 person, 2 car"
    )


def test_a_blur_too_small_to_move_a_pixel_leaves_the_image():
    """sigma 1e-50 underflowed to 0 in float32: a NaN kernel blackened the background."""
    image = np.random.default_rng(3).integers(0, 256, (6, 8, 3), dtype=np.uint8)
    for sigma in (1e-50, 1e-46, 1e-3):
        np.testing.assert_array_equal(gaussian_blur(image, sigma), image)
        np.testing.assert_array_equal(Effect("blur", [1], sigma=sigma).apply(image, np.zeros((3, 6, 8))), image)
