"""Inference protocols: whole image, sliding window, multi-scale, flip and quarter turns, all composable.

``predict_probs`` averages softmax probabilities over the scales, flips and turns; each scale is
predicted on the whole (rescaled) image or by sliding windows (:mod:`.sliding_window`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from numbers import Integral, Real
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..crf import CRFSettings, apply_crf
from ..device import autocast
from ..errors import ConfigError
from ..models import model_logits
from .sliding_window import slide_probs


def _shown(size: Any) -> Any:
    """A size as given: the CLI's one-element list ``[8]`` as ``8``, as a config would write it."""
    return size[0] if isinstance(size, (list, tuple)) and len(size) == 1 else size


def _pair(v: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(v, (int, float)):
        return int(v), int(v)
    return int(v[0]), int(v[-1])  # [S] or [H, W]


@dataclass
class InferenceSettings:
    """How to turn a model into per-pixel probabilities.

    mode: ``whole`` or ``slide``; crop/stride: window size and step for ``slide`` (stride defaults
    to 2/3 of the crop); blend: ``uniform`` or ``gaussian``; scales: image scale factors (e.g.
    0.5-1.75 as DeepLab); flip: also predict the horizontally flipped image; rot90: also the image turned
    by 90, 180 and 270 degrees (with ``flip``, all 8 symmetries of the square: for images without a preferred
    orientation, such as electron microscopy or fluorescence); class_weight_correction: ``tau`` of the logit
    adjustment that undoes class-weighted training (Menon et al., ICLR 2021, "Long-tail learning via logit
    adjustment"): the averaged probabilities are divided by ``class_weights ** tau`` and renormalised (0 leaves
    them, 1 undoes the weights' prior shift fully); class_weights: the ``train.class_weights`` the model trained
    with (filled in from the checkpoint, not a config key).
    """

    mode: str = "whole"
    crop: int | tuple[int, int] | None = None
    stride: int | tuple[int, int] | None = None
    blend: str = "uniform"
    scales: Sequence[float] = field(default_factory=lambda: (1.0,))
    flip: bool = False
    rot90: bool = False
    window_batch: int = 4
    class_weight_correction: float = 0.0
    class_weights: Sequence[float] | None = None

    def __post_init__(self) -> None:
        for name in TYPED_KEYS:
            _check_type(name, getattr(self, name))
        if self.mode == "slide" and self.crop is None:
            raise ConfigError("sliding-window inference needs a crop size")
        if self.mode == "whole" and self.blend != "uniform":
            raise ConfigError(
                f"inference blend {self.blend} weights the windows of mode slide: add --mode slide, or leave it out"
            )
        if self.mode == "whole" and (self.crop is not None or self.stride is not None):
            # a whole-image pass has no windows: the sizes would be ignored without a word
            raise ConfigError(
                "inference crop/stride size the windows of mode slide: add --mode slide, or leave them out"
            )
        for name in ("crop", "stride"):
            value = getattr(self, name)
            sizes = [value] if isinstance(value, (int, float, str)) else list(value or [])
            whole = all(isinstance(v, Integral) and not isinstance(v, bool) for v in sizes)
            if value is not None and (not whole or len(sizes) not in (1, 2)):
                # a string would be read character by character ('64' as 6 x 4), 8.7 floored to 8
                raise ConfigError(f"inference {name} {value!r}: give one size or [height, width], whole pixels")
            if value is not None and any(v < 1 for v in _pair(value)):
                raise ConfigError(f"inference {name} must be at least 1 pixel, got {value}")
        if self.crop is not None and self.stride is not None:
            if any(s > c for s, c in zip(_pair(self.stride), _pair(self.crop), strict=True)):
                # windows further apart than their size leave pixels that no window predicts
                raise ConfigError(
                    f"inference stride {_shown(self.stride)} is larger than the crop {_shown(self.crop)}: the windows "
                    "would leave "
                    "pixels unpredicted; give a stride at most the crop (default: 2/3 of it)"
                )
        numbers = all(isinstance(s, Real) and not isinstance(s, bool) for s in self.scales)
        if not self.scales or not numbers or any(not s > 0 or not math.isfinite(s) for s in self.scales):
            raise ConfigError(f"inference scales must be positive, got {list(self.scales)}")
        if not math.isfinite(self.class_weight_correction):
            raise ConfigError(
                f"inference.class_weight_correction={self.class_weight_correction}: must be a finite number >= 0"
            )
        if self.class_weight_correction < 0:
            raise ConfigError(
                f"inference.class_weight_correction={self.class_weight_correction}: must be >= 0 (0: off, 1: undo "
                "the class weights' prior shift fully)"
            )

    @property
    def is_plain(self) -> bool:
        return (
            self.mode == "whole"
            and list(self.scales) == [1.0]
            and not self.flip
            and not self.rot90
            and not self.class_weight_correction
        )

    @property
    def views(self) -> list[tuple[int, bool]]:
        """The (quarter turns, horizontal flip) pairs averaged at each scale."""
        return [(k, f) for k in (range(4) if self.rot90 else (0,)) for f in ((False, True) if self.flip else (False,))]

    def describe(self) -> str:
        """One line for people: what is averaged, and how many network passes an image takes."""
        views = {1: "as is", 2: "and its mirror image", 4: "4 quarter turns", 8: "8 symmetries"}[len(self.views)]
        scales = "/".join(f"{s:g}" for s in self.scales)
        stride = "2/3 of it" if self.stride is None else self.stride
        where = "whole image" if self.mode == "whole" else f"{self.blend} windows of {self.crop} (stride {stride})"
        passes = len(self.scales) * len(self.views)
        text = f"{where}, scale{'s' if len(self.scales) > 1 else ''} {scales}, {views}: {passes} pass(es) per image"
        if self.mode == "slide":
            text += " (times its windows)"
        if self.class_weight_correction:
            text += f", class weights undone by tau {self.class_weight_correction:g}"
        return text


INFERENCE_KEYS = tuple(f.name for f in fields(InferenceSettings))
"""The keys of an ``inference=`` dict (Predictor, predict, evaluate_checkpoint, crf_search): the settings' fields."""
TYPED_KEYS = ("mode", "blend", "scales", "flip", "rot90", "window_batch", "class_weight_correction")
"""The fields whose value types :func:`inference_overrides` checks on their own (the window sizes, crop and stride,
are checked with the mode they belong to)."""


def _check_type(name: str, value: Any) -> None:
    """A ConfigError for a value of the wrong type (they stopped on raw TypeErrors: ``scales=1.0`` "'float' object is
    not iterable"); ``mode``/``blend`` by their names; the ranges are :class:`InferenceSettings`' own checks."""
    if name == "mode" and value not in ("whole", "slide"):
        raise ConfigError(f"inference mode {value!r}; valid: whole, slide")
    if name == "blend" and value not in ("uniform", "gaussian"):
        raise ConfigError(f"inference blend {value!r}; valid: uniform, gaussian")
    if name == "scales" and (isinstance(value, (str, bytes, Mapping)) or not isinstance(value, Iterable)):
        # a string would be read character by character
        raise ConfigError(f"inference scales={value!r}: give a list of scale factors, e.g. [0.75, 1.0, 1.25]")
    if name in ("flip", "rot90") and not isinstance(value, bool):
        raise ConfigError(f"inference {name}={value!r}: give true or false")
    if name == "window_batch" and (isinstance(value, bool) or not isinstance(value, Integral) or value < 1):
        raise ConfigError(f"inference window_batch={value!r}: give a whole number >= 1 (windows per network pass)")
    if name == "class_weight_correction" and (isinstance(value, bool) or not isinstance(value, Real)):
        raise ConfigError(f"inference.class_weight_correction={value!r}: must be a finite number >= 0")


def inference_overrides(values: Any) -> dict[str, Any]:
    """``inference=`` as :class:`~pixelwise.engine.Predictor` (and so predict, evaluate_checkpoint and crf_search)
    takes it over a run's own protocol, as a dict: ``None`` none; a mapping of :class:`InferenceSettings` fields,
    its keys checked against them and its values' types (a ConfigError naming the first bad one; the ranges and the
    settings' agreement are checked once they are combined with the run's)."""
    if values is None:
        return {}
    keys = ", ".join(INFERENCE_KEYS)
    if not isinstance(values, Mapping):
        raise ConfigError(
            f"inference={values!r}: give a dict of inference settings ({keys}), an InferenceSettings, or None"
        )
    unknown = sorted(str(k) for k in set(values) - set(INFERENCE_KEYS))
    if unknown:
        raise ConfigError(f"unknown inference key(s) {', '.join(unknown)}; valid: {keys}")
    for name in TYPED_KEYS:
        if name in values:
            _check_type(name, values[name])
    return dict(values)


@torch.inference_mode()
def predict_probs(
    model: nn.Module, image: torch.Tensor, num_classes: int, settings: InferenceSettings | None = None
) -> torch.Tensor:
    """Softmax probabilities ``N x K x H x W`` for a normalised ``N x C x H x W`` batch, averaged
    over ``settings.scales`` and (if ``settings.flip``/``rot90``) horizontal flips and quarter turns."""
    s = settings or InferenceSettings()
    h, w = image.shape[-2:]
    total = None
    for scale in s.scales:
        size = (max(1, round(h * scale)), max(1, round(w * scale)))
        scaled = image if size == (h, w) else rescale_image(image, size)
        for turns, flip in s.views:
            x = scaled.flip(-1) if flip else scaled
            x = torch.rot90(x, turns, (-2, -1)) if turns else x
            if s.mode == "slide":
                crop = _pair(s.crop)
                stride = _pair(s.stride) if s.stride is not None else tuple(max(1, c * 2 // 3) for c in crop)
                p = slide_probs(model, x, num_classes, crop, stride, s.blend, s.window_batch)
            else:
                p = F.softmax(model_logits(model, x).float(), dim=1)
            # one image-sized copy at a time: each step's input is freed as its output is made
            p = torch.rot90(p, -turns, (-2, -1)) if turns else p
            if flip:
                p = p.flip(-1)
            if p.shape[-2:] != (h, w):
                p = F.interpolate(p, size=(h, w), mode="bilinear", align_corners=False)
            total = p if total is None else total.add_(p)
            del p
    return correct_class_weights(total.div_(len(s.scales) * len(s.views)), s)


def rescale_image(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """An ``N x C x H x W`` batch resized bilinearly to ``size``, antialiased where it shrinks, as training's random
    scale (torchvision's resize) shrinks images: without it a network meets aliasing it never trained on
    (docs/results.md, "Antialiased inference scales")."""
    shrinks = size[0] < image.shape[-2] or size[1] < image.shape[-1]
    # torch's CPU antialiasing has no half-precision kernel: such images shrink in float32
    half_on_cpu = shrinks and image.dtype in (torch.bfloat16, torch.float16) and image.device.type == "cpu"
    x = image.float() if half_on_cpu else image
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=shrinks).to(image.dtype)


def correct_class_weights(probs: torch.Tensor, settings: InferenceSettings) -> torch.Tensor:
    """``N x K x H x W`` probabilities divided by ``class_weights ** class_weight_correction`` and renormalised:
    a model trained with class-weighted cross entropy predicts ``p(c | x)`` scaled by ``w_c``, which makes rare
    classes win pixels they should not."""
    tau = settings.class_weight_correction
    if not tau:
        return probs
    if settings.class_weights is None:
        raise ConfigError(
            "inference.class_weight_correction needs the class weights the model trained with (train.class_weights); "
            "this model records none: set it to 0"
        )
    if len(settings.class_weights) != probs.shape[1]:
        raise ConfigError(
            f"inference.class_weight_correction: {len(settings.class_weights)} class weights for a model with "
            f"{probs.shape[1]} classes"
        )
    w = torch.as_tensor(list(settings.class_weights), dtype=probs.dtype, device=probs.device).view(1, -1, 1, 1)
    # a class without training pixels has weight 0 (nothing to undo): left as predicted
    adjusted = probs * torch.where(w > 0, w, 1.0).pow(-tau)
    return adjusted.div_(adjusted.sum(1, keepdim=True).clamp_min(torch.finfo(probs.dtype).tiny))


def check_instance_protocol(settings: InferenceSettings | None) -> None:
    """ConfigError unless ``settings`` run the whole image at scale 1, which an instance model's decoding needs
    (its offsets and centres are in the image's own pixels; flips and quarter turns may be averaged)."""
    s = settings or InferenceSettings()
    if s.mode != "whole" or list(s.scales) != [1.0]:
        raise ConfigError(
            f"instance decoding runs on the whole image at scale 1 (flip and rot90 may be averaged); got mode "
            f"{s.mode!r}, scales {list(s.scales)}: remove the inference scales/mode for instance models"
        )


def _unturn_offsets(offset: torch.Tensor, turns: int, flip: bool) -> torch.Tensor:
    """``(dy, dx)`` vectors predicted on a view (the image flipped, then turned ``turns`` times by
    ``torch.rot90``) expressed in the image's own frame: each turn maps ``(dy, dx)`` to ``(-dx, dy)``, so undoing
    one maps ``(a, b)`` to ``(b, -a)``; the flip negates ``dx``."""
    dy, dx = offset[:, 0], offset[:, 1]
    for _ in range(turns % 4):
        dy, dx = dx, -dy
    return torch.stack([dy, -dx if flip else dx], 1)


@torch.inference_mode()
def predict_outputs(
    model: nn.Module, image: torch.Tensor, settings: InferenceSettings | None = None
) -> torch.Tensor | dict[str, torch.Tensor]:
    """The model's own output for instance decoding, averaged over the views of ``settings`` (flips and quarter
    turns; whole image at scale 1): class scores as the log of the averaged softmax probabilities (their softmax
    is that average; with ``class_weight_correction`` corrected), a centre heatmap (``"center"``) averaged,
    ``(dy, dx)`` offsets (``"offset"``) turned back with the image before averaging. Plain settings return
    ``model(image)`` unchanged."""
    s = settings or InferenceSettings()
    check_instance_protocol(s)
    if s.is_plain:
        return model(image)
    total: dict[str, torch.Tensor] = {}
    dict_output = False
    for turns, flip in s.views:
        x = image.flip(-1) if flip else image
        out = model(torch.rot90(x, turns, (-2, -1)) if turns else x)
        dict_output = isinstance(out, dict)
        for key, v in (out if dict_output else {"out": out}).items():
            v = v.float() if key in ("center", "offset") else F.softmax(v.float(), dim=1)
            v = torch.rot90(v, -turns, (-2, -1)) if turns else v
            v = v.flip(-1) if flip else v
            if key == "offset":
                v = _unturn_offsets(v, turns, flip)
            total[key] = v if key not in total else total[key] + v
    n = len(s.views)
    mean = {
        k: v / n if k in ("center", "offset") else torch.log(correct_class_weights(v / n, s).clamp_min(1e-30))
        for k, v in total.items()
    }
    return mean if dict_output else mean["out"]


def batch_scores(
    model: nn.Module,
    images: torch.Tensor,
    num_classes: int,
    *,
    device: torch.device,
    amp: str = "none",
    settings: InferenceSettings | None = None,
    crf: tuple[CRFSettings, Sequence[float], Sequence[float]] | None = None,
    probabilities: bool = False,
) -> torch.Tensor:
    """Class scores of a normalised batch whose argmax is the prediction: logits for the plain protocol
    (float32 probabilities with ``probabilities=True``), probabilities for the others or after the dense CRF
    (``crf=(settings, mean, std)``; ``mean``/``std`` undo the normalisation to give the CRF the RGB image)."""
    with autocast(device, amp):
        if settings is None or settings.is_plain:
            scores = model_logits(model, images)
            if crf is None and not probabilities:
                return scores
            scores = torch.softmax(scores.float(), 1)
        else:
            scores = predict_probs(model, images, num_classes, settings)
    if crf is not None:
        scores = apply_crf(scores, images, crf[1], crf[2], crf[0])
    return scores
