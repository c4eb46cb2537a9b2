"""Effects that use a segmentation: the background blurred (portrait mode), replaced by an image or a colour,
cut out (RGBA), and selected classes highlighted in their colour.

Every effect is a pure function of the image and the class probabilities; edges are soft because the mixing
weight is a probability, not a thresholded mask:

- ``alpha = sum of the foreground classes' probabilities`` (:func:`foreground_alpha`), per pixel in [0, 1]
  (refined by the dense CRF first when the predictor runs it);
- :func:`blur` / :func:`replace`: ``round(alpha * image + (1 - alpha) * background)`` (:func:`composite`), with
  the background the Gaussian-blurred image or the replacement. Where ``alpha`` is 1 the output is the input
  exactly, where it is 0 the background exactly;
- :func:`cutout`: the image's RGB with the alpha channel ``round(255 * alpha)`` (straight, not premultiplied);
- :func:`highlight`: ``round((1 - o * a) * image + o * sum_c p_c * colour_c)`` over the selected classes ``c``
  (``a = sum_c p_c``, ``o`` the opacity): a pixel none of the selected classes claims is left as it is.

Images are ``H x W x 3`` uint8 (``H x W`` or ``H x W x 1`` grey and float [0, 1] images are converted);
probabilities ``K x H x W`` as a numpy array or a tensor. :class:`Effect` bundles one effect with its settings
(``--effect``/``--foreground`` parsed by :meth:`Effect.from_spec`) for the image and video paths.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageColor

from ..data import read_image
from ..errors import ConfigError
from ..visualize import as_rgb8, overlay_palette

EFFECTS = ("blur", "replace", "cutout", "highlight")
EFFECT_SYNTAX = "blur[=SIGMA], replace=IMAGE_OR_COLOUR, cutout, highlight[=OPACITY]"
BLUR_SHARE = 0.02
"""Default blur strength: a Gaussian sigma of this share of the image's longer side (about 10 px at 480x360)."""
DIRECT_SIGMA = 8.0
"""Up to this sigma the blur is one exact separable convolution; above it the image is first shrunk (a large
sigma hides the loss) so that the kernel stays small: the cost stays flat in the strength."""
MAX_SIGMA = 1e6
"""Strengths beyond it blur as it does (any image that fits in memory is then one colour); 1e308 overflowed."""
MIN_SIGMA = 0.1
"""Strengths below it leave the image as it is: a neighbour's weight is under 1e-21, which moves no uint8 value."""
Probabilities = np.ndarray | torch.Tensor


def _numpy(x: Probabilities) -> np.ndarray:
    return x.detach().float().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x, dtype=np.float32)


def one_hot(mask: np.ndarray, num_classes: int) -> np.ndarray:
    """``H x W`` class indices as ``K x H x W`` float32 probabilities 0/1; an index outside ``0..K-1`` (the ignore
    value) belongs to no class. Effects from a hard mask, e.g. a ground-truth one."""
    mask = np.asarray(mask)
    return (np.arange(num_classes)[:, None, None] == mask[None]).astype(np.float32)


def foreground_alpha(probs: Probabilities, foreground: Sequence[int]) -> np.ndarray:
    """``H x W`` float32 in [0, 1]: the summed probability of the foreground classes at each pixel."""
    if not foreground:
        raise ConfigError("no foreground class given")
    if isinstance(probs, torch.Tensor):  # sum where the probabilities are (one GPU reduction, one small copy)
        alpha = probs[list(foreground)].float().sum(0).clamp_(0, 1)
        return alpha.cpu().numpy()
    return np.clip(_numpy(probs)[list(foreground)].sum(0), 0, 1)


def composite(image: np.ndarray, background: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """``round(alpha * image + (1 - alpha) * background)`` as uint8: the soft-edged mix behind blur and replace."""
    a = np.asarray(alpha, dtype=np.float32)[..., None]
    out = a * image.astype(np.float32) + (1 - a) * background.astype(np.float32)
    return np.rint(out).clip(0, 255).astype(np.uint8)


def _gaussian_kernel(sigma: float) -> torch.Tensor:
    radius = max(1, math.ceil(3 * sigma))
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


def _separable_blur(x: torch.Tensor, sigma_y: float, sigma_x: float) -> torch.Tensor:
    """``1 x C x H x W`` float blurred by a Gaussian of ``sigma_y`` / ``sigma_x`` pixels down / across; borders
    replicated (reflection needs the image to be larger than the kernel, which a strong blur of a small image is
    not)."""
    c = x.shape[1]
    k = _gaussian_kernel(sigma_x).to(x.device)
    r = k.numel() // 2
    x = F.conv2d(F.pad(x, (r, r, 0, 0), mode="replicate"), k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    k = _gaussian_kernel(sigma_y).to(x.device)
    r = k.numel() // 2
    return F.conv2d(F.pad(x, (0, 0, r, r), mode="replicate"), k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def default_sigma(height: int, width: int) -> float:
    """The blur strength when none is given: :data:`BLUR_SHARE` of the longer side, so that a picture looks the
    same at any resolution."""
    return max(1.0, BLUR_SHARE * max(height, width))


@torch.inference_mode()
def gaussian_blur(image: np.ndarray, sigma: float) -> np.ndarray:
    """``H x W x 3`` uint8 blurred by a Gaussian of standard deviation ``sigma`` pixels."""
    if not sigma > 0:
        raise ConfigError(f"blur strength {sigma}: must be > 0 (a Gaussian sigma in pixels)")
    if sigma < MIN_SIGMA:  # moves no pixel; far smaller underflowed to 0 in float32, a NaN kernel (black)
        return np.array(image, dtype=np.uint8)
    sigma = min(sigma, MAX_SIGMA)
    h, w = image.shape[:2]
    if not image.flags.writeable:  # torch.from_numpy warns on read-only arrays (e.g. np.asarray of a PIL image)
        image = image.copy()
    x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].float()
    factor = max(1, int(sigma // DIRECT_SIGMA))
    # each axis shrunk by the factor, or as far as it keeps 2 pixels: a wide flat image (16 x 4000, sigma 4000)
    # blurred directly took a 24000-tap kernel across (38 s), a shrunk long side takes a few
    fy, fx = max(1, min(factor, h // 2)), max(1, min(factor, w // 2))
    if fy > 1 or fx > 1:
        # area-average down, blur the rest of the way, bilinear up: sigma^2 = (small blur * f)^2 + ~f^2/12
        small = F.interpolate(x, size=(h // fy, w // fx), mode="area")
        rest_y, rest_x = (math.sqrt(max(sigma**2 - f**2 / 12.0, 1.0)) / f for f in (fy, fx))
        x = F.interpolate(_separable_blur(small, rest_y, rest_x), size=(h, w), mode="bilinear", align_corners=False)
    else:
        x = _separable_blur(x, sigma, sigma)
    return x[0].permute(1, 2, 0).round_().clamp_(0, 255).to(torch.uint8).numpy()


def blur(image: np.ndarray, alpha: np.ndarray, sigma: float | None = None) -> np.ndarray:
    """Portrait mode: the background (``1 - alpha``) blurred with a Gaussian of ``sigma`` pixels (default
    :func:`default_sigma`), the foreground (``alpha``) kept."""
    image = as_rgb8(image)
    sigma = default_sigma(*image.shape[:2]) if sigma is None else sigma
    return composite(image, gaussian_blur(image, sigma), alpha)


def parse_colour(text: str) -> tuple[int, int, int] | None:
    """``#00b140``, ``0,177,64``, ``rgb(0,177,64)`` or a CSS name (``green``) as RGB; None if it is none of those."""
    parts = text.split(",")
    try:  # int() refuses over 4300 digits with a ValueError
        if len(parts) == 3 and all(p.strip().isdecimal() for p in parts):
            rgb = tuple(int(p) for p in parts)
        else:
            rgb = ImageColor.getrgb(text)[:3]
    except ValueError:
        return None
    # ImageColor passes rgb(300,0,0) and hsl(0,100%,150%) through: as uint8 they wrapped to another colour
    return rgb if all(0 <= v <= 255 for v in rgb) else None  # type: ignore[return-value]


def fit_background(background: np.ndarray, height: int, width: int) -> np.ndarray:
    """A replacement background resized to cover ``height x width`` with its aspect ratio kept (scaled, then
    cropped about the centre): the picture is never stretched and never leaves a border."""
    background = as_rgb8(background)
    bh, bw = background.shape[:2]
    if (bh, bw) == (height, width):
        return background
    scale = max(height / bh, width / bw)
    sh, sw = max(height, round(bh * scale)), max(width, round(bw * scale))
    resized = np.asarray(Image.fromarray(background).resize((sw, sh), Image.Resampling.BICUBIC))
    top, left = (sh - height) // 2, (sw - width) // 2
    return np.ascontiguousarray(resized[top : top + height, left : left + width])


def replace(image: np.ndarray, alpha: np.ndarray, background: np.ndarray | Sequence[int]) -> np.ndarray:
    """The background replaced: by an image (``H' x W' x 3``, resized to cover, :func:`fit_background`) or a
    colour (three ints)."""
    image = as_rgb8(image)
    h, w = image.shape[:2]
    bg = np.asarray(background)
    if bg.ndim == 1:
        bg = np.broadcast_to(bg.astype(np.uint8), (h, w, 3))
    else:
        bg = fit_background(bg, h, w)
    return composite(image, bg, alpha)


def cutout(image: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """``H x W x 4`` uint8 RGBA: the image's colours with ``round(255 * alpha)`` as alpha (straight alpha, so a
    viewer composites it over anything)."""
    image = as_rgb8(image)
    a = np.rint(np.asarray(alpha, dtype=np.float32) * 255).clip(0, 255).astype(np.uint8)
    return np.concatenate([image, a[..., None]], axis=-1)


def highlight(
    image: np.ndarray,
    probs: Probabilities,
    classes: Sequence[int],
    palette: Sequence[Sequence[int]],
    opacity: float = 0.5,
) -> np.ndarray:
    """The selected classes tinted with their palette colour at ``opacity``, each in proportion to its
    probability; pixels that none of them claims are unchanged."""
    if not 0 < opacity <= 1:
        raise ConfigError(f"highlight opacity {opacity}: must be in (0, 1]")
    image = as_rgb8(image)
    p = _numpy(probs)[list(classes)]  # S x H x W
    colours = np.asarray([palette[c] for c in classes], dtype=np.float32)  # S x 3
    tint = np.einsum("shw,sc->hwc", p, colours)
    a = p.sum(0)[..., None]
    out = (1 - opacity * a) * image.astype(np.float32) + opacity * tint
    return np.rint(out).clip(0, 255).astype(np.uint8)


def class_list(classes: Sequence[str]) -> str:
    return ", ".join(f"{i} {name}" for i, name in enumerate(classes))


def parse_classes(text: str | Sequence[str | int], classes: Sequence[str], option: str = "--foreground") -> list[int]:
    """``"person,car"`` / ``"8,9"`` / ``["Car", 9]`` -> class indices (names case-insensitive, in the order given,
    duplicates dropped); a ConfigError naming the classes on an unknown name or index."""
    items = [s.strip() for s in text.split(",")] if isinstance(text, str) else [str(s).strip() for s in text]
    lower = {name.lower(): i for i, name in enumerate(classes)}
    out: list[int] = []
    for item in items:
        if not item:
            continue
        # not isdigit: int("²") fails; nor int() of over 4300 digits (no such class anyway)
        index = int(item) if item.isdecimal() and len(item) < 100 else lower.get(item.lower())
        if index is None or not 0 <= index < len(classes):
            raise ConfigError(f"{option} {item!r}: no such class; the model's classes are {class_list(classes)}")
        if index not in out:
            out.append(index)
    if not out:
        raise ConfigError(f"{option} names no class; the model's classes are {class_list(classes)}")
    return out


def default_foreground(classes: Sequence[str], effect: str) -> list[int]:
    """Every class but one named ``background`` (any case); a model without such a class needs ``--foreground``."""
    names = [c.lower() for c in classes]
    if "background" in names and len(classes) > 1:
        return [i for i, c in enumerate(names) if c != "background"]
    raise ConfigError(
        f"--effect {effect} needs --foreground CLASS[,CLASS...]; the model's classes are {class_list(classes)}"
    )


@dataclass
class Effect:
    """One effect with its settings, applied by :meth:`apply` to an image and its ``K x H x W`` probabilities.

    ``foreground``: the class indices whose summed probability is the alpha (the classes tinted, for
    ``highlight``); ``sigma``: blur strength in pixels (None: :func:`default_sigma`); ``background``: for
    ``replace``, an RGB colour or an ``H x W x 3`` image (resized to each frame's size once and cached);
    ``opacity``: for ``highlight``; ``palette``: the model's class colours (``highlight``)."""

    name: str
    foreground: list[int]
    sigma: float | None = None
    background: tuple[int, int, int] | np.ndarray | None = None
    background_source: str | None = None
    opacity: float = 0.5
    palette: list[list[int]] = field(default_factory=list)
    _fitted: dict[tuple[int, int], np.ndarray] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.name not in EFFECTS:
            raise ConfigError(f"--effect {self.name!r}; valid: {EFFECT_SYNTAX}")
        if self.name == "replace" and self.background is None:
            raise ConfigError("--effect replace needs a background: replace=IMAGE_OR_COLOUR")
        if isinstance(self.background, tuple) and not all(0 <= v <= 255 for v in self.background):
            raise ConfigError(f"--effect replace={self.background}: each colour channel must be 0 to 255")
        if self.name == "highlight" and not self.palette:
            raise ConfigError("--effect highlight needs the model's palette")
        if self.sigma is not None and not (math.isfinite(self.sigma) and self.sigma > 0):  # nan passes "<= 0"
            raise ConfigError(
                f"--effect blur={self.sigma}: the strength must be a finite number > 0 (a Gaussian sigma in pixels)"
            )
        if not 0 < self.opacity <= 1:
            raise ConfigError(f"--effect highlight={self.opacity}: the opacity must be in (0, 1]")

    @property
    def rgba(self) -> bool:
        """Whether the output has an alpha channel (cutout)."""
        return self.name == "cutout"

    @classmethod
    def from_spec(
        cls,
        spec: str,
        classes: Sequence[str],
        palette: Sequence[Sequence[int]],
        foreground: str | Sequence[str | int] | None = None,
    ) -> Effect:
        """The effect of a command-line ``--effect`` value (``blur``, ``blur=25``, ``replace=beach.jpg``,
        ``replace=#00b140``, ``replace=0,177,64``, ``cutout``, ``highlight``, ``highlight=0.7``) and
        ``--foreground`` (names or indices, :func:`parse_classes`; default :func:`default_foreground`)."""
        name, _, value = spec.partition("=")
        name = name.strip().lower()
        if name not in EFFECTS or (value and name == "cutout"):
            raise ConfigError(f"--effect {spec!r}; valid: {EFFECT_SYNTAX}")
        fg = default_foreground(classes, name) if foreground is None else parse_classes(foreground, classes)
        # highlight tints in the overlays' colours (a grey palette made vivid, as legend.png shows them)
        kwargs: dict[str, Any] = {"palette": overlay_palette(palette)}
        if name in ("blur", "highlight") and value:
            try:
                number = float(value)
            except ValueError:
                raise ConfigError(f"--effect {spec!r}: {value!r} is not a number; valid: {EFFECT_SYNTAX}") from None
            kwargs["sigma" if name == "blur" else "opacity"] = number
        if name == "replace":
            if not value:
                raise ConfigError(f"--effect {spec!r}: give the background, replace=IMAGE_OR_COLOUR")
            kwargs["background"], kwargs["background_source"] = read_background(value), value
        return cls(name, fg, **kwargs)

    def apply(self, image: np.ndarray, probs: Probabilities) -> np.ndarray:
        """The effect on one ``H x W x C`` image with its ``K x H x W`` probabilities: ``H x W x 3`` uint8
        (``H x W x 4`` RGBA for cutout)."""
        if self.name == "highlight":
            return highlight(image, probs, self.foreground, self.palette, self.opacity)
        alpha = foreground_alpha(probs, self.foreground)
        if self.name == "blur":
            return blur(image, alpha, self.sigma)
        if self.name == "cutout":
            return cutout(image, alpha)
        return replace(image, alpha, self._background(*alpha.shape))

    def _background(self, height: int, width: int) -> np.ndarray | tuple[int, int, int]:
        if isinstance(self.background, tuple):
            return self.background
        key = (height, width)
        if key not in self._fitted:  # a video's frames share one size: resize the picture once
            self._fitted = {key: fit_background(self.background, height, width)}
        return self._fitted[key]

    def describe(self) -> dict[str, Any]:
        """The settings, for a manifest."""
        out: dict[str, Any] = {"effect": self.name, "foreground": list(self.foreground)}
        if self.name == "blur":
            out["sigma"] = self.sigma if self.sigma is not None else f"{BLUR_SHARE} x the longer side"
        if self.name == "replace":
            out["background"] = self.background_source or (
                list(self.background) if isinstance(self.background, tuple) else "array"
            )
        if self.name == "highlight":
            out["opacity"] = self.opacity
        return out


def read_background(value: str | os.PathLike) -> tuple[int, int, int] | np.ndarray:
    """``replace=``'s value: an existing image file (read as RGB), else a colour (:func:`parse_colour`)."""
    path = Path(value)
    if path.is_file():
        return as_rgb8(read_image(path, "RGB"))
    colour = parse_colour(str(value))
    if colour is None:
        raise ConfigError(
            f"--effect replace={value}: no such image file, and not a colour (e.g. #00b140, green, 0,177,64; "
            "each channel 0 to 255)"
        )
    return colour
