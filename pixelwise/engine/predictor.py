"""One way to get a trained model ready for inference (as detectron2's ``DefaultPredictor``): the checkpoint
(or ONNX file) loaded once, the model prepared as eval/predict run it, its CRF settings resolved, and the
protocol an image's size and the free memory allow. ``pixelwise predict``'s run over files is
:func:`pixelwise.engine.prediction_files.predict`."""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from ..argmax import class_argmax
from ..crf import CRFSettings, settings_for
from ..data import image_to_tensor, read_image_stack, shift_image
from ..data.io import decode_image, page_count
from ..device import autocast, available_memory, check_amp, inference_dtype, resolve_amp, resolve_device
from ..errors import CheckpointError, ConfigError, DataError, ResourceError
from ..inference import InferenceSettings, InstanceSettings, batch_scores, optimize_for_inference, predict_outputs
from ..inference.instance_settings import CENTRE_KEYS
from ..inference.protocol import check_instance_protocol, inference_overrides
from ..models import input_channels, load_checkpoint, model_from_checkpoint
from ..models.registry import smallest_input
from ..models.stats import inference_bytes
from .builders import image_mode
from .instance_methods import InstanceOutput, decode
from .video import batch_probabilities

log = logging.getLogger(__name__)

ImageLike = np.ndarray | Image.Image | str | os.PathLike
"""What :meth:`Predictor.predict` takes: an array (``H x W`` or ``H x W x C``), a PIL image, or a file path."""

BACKENDS = ("auto", "torch", "onnxruntime")


def resolve_backend(checkpoint: str | os.PathLike, backend: str) -> str:
    """``auto``: onnxruntime for an ``.onnx`` file, else torch; any other value as given."""
    if backend == "auto":
        return "onnxruntime" if str(checkpoint).lower().endswith(".onnx") else "torch"
    return backend


MEMORY_SHARE = 0.7  # whole-image inference may use this share of the free memory before windows take over
CRFOption = CRFSettings | dict[str, Any] | bool | None


def run_inference(
    section: dict[str, Any] | None,
    overrides: dict[str, Any] | None = None,
    class_weights: Sequence[float] | None = None,
) -> InferenceSettings | None:
    """The inference protocol of a run (its config's ``inference`` section: scales, flip, rot90, class weight
    correction) with ``overrides`` (any :class:`~pixelwise.inference.InferenceSettings` fields) on top, or ``None``
    for the plain whole-image one (and for checkpoints from before the section existed); ``class_weights``: the
    run's ``train.class_weights``, which the class weight correction divides by."""
    # the caller's overrides checked by name and type (a raw TypeError named no valid key)
    section, overrides = dict(section or {}), inference_overrides(overrides)
    # an override replaces its own field; the run's window sizes belong to its sliding windows, so they go with
    # them (--mode whole over a slide run), and a new crop takes its own default stride, not the run's
    if overrides.get("mode") == "whole" or (section.get("mode", "whole") == "whole" and "mode" not in overrides):
        # a whole-image pass has no windows: the run's window settings go (older runs could record a blend for it)
        for key in ("crop", "stride", "blend") if overrides.get("mode") == "whole" else ("blend",):
            section.pop(key, None)
    elif "crop" in overrides and "stride" not in overrides:
        section.pop("stride", None)
    settings = InferenceSettings(**{**section, **overrides})
    if settings.class_weight_correction and settings.class_weights is None and class_weights is not None:
        settings = replace(settings, class_weights=tuple(class_weights))
    return None if settings.is_plain else settings


def image_size_problem(
    height: int,
    width: int,
    source: str,
    model: str,
    side: int,
    low: float = 1.0,
    scale: str = "inference scale",
    fix: str | None = None,
) -> str | None:
    """``None`` if the network sees an image of ``height x width`` at least ``side`` pixels a side (the model's
    total stride, :func:`~pixelwise.models.registry.smallest_input`) at its size and at ``low``, its smallest
    scale (``scale`` names where that comes from), else the one-line message: predict, eval and training's
    pre-flight check say it alike. ``fix``: what to do at that scale, with ``{least}`` the smallest scale that
    would do (default: leave out the inference scales below it)."""
    if min(height, width) < side:
        return (
            f"image {source} is {width}x{height}, smaller than model {model} takes "
            f"(at least {side}x{side} pixels, its total stride): upscale it or pad it"
        )
    h, w = max(1, round(height * low)), max(1, round(width * low))
    if min(h, w) < side:
        least = f"{side / min(height, width):.3g}"
        return (
            f"image {source} is {width}x{height}, and at {scale} {low} {w}x{h}, smaller than model {model} takes "
            f"(at least {side}x{side} pixels, its total stride): "
            + (fix or "leave out the scales below {least}, or upscale the image").format(least=least)
        )
    return None


def recorded_class_weights(
    meta: dict[str, Any], checkpoint: str | os.PathLike, config: dict[str, Any] | None = None
) -> list[float] | None:
    """The class weights a run trained with: the checkpoint's ``meta.class_weights`` (``None``: trained without);
    for runs from before it was recorded, a list in the checkpoint's config, else the ``class_weights.json`` that
    training cached beside the checkpoint."""
    if "class_weights" in meta:
        return None if meta["class_weights"] is None else list(meta["class_weights"])
    n = len(meta.get("classes", []))
    given = ((config or {}).get("train") or {}).get("class_weights")
    if isinstance(given, list):
        return [float(w) for w in given] if len(given) == n else None
    if given is None:
        return None
    cache = Path(checkpoint).parent / "class_weights.json"
    if cache.is_file():
        try:
            cached = json.loads(cache.read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(cached, dict):
            return None
        weights = cached.get("weights")
        if cached.get("method") == given and isinstance(weights, list) and len(weights) == n:
            return [float(w) for w in weights]
    return None


def instance_decoding(
    section: dict[str, Any] | None, decoding: dict[str, Any] | None, checkpoint: str | os.PathLike
) -> InstanceSettings:
    """A run's ``instances`` section with ``decoding`` over it (:meth:`InstanceSettings.with_decoding`); only
    instance models have decoding settings."""
    settings = InstanceSettings.from_dict(section)
    if not decoding:
        return settings
    if not settings.enabled:
        raise ConfigError(
            f"{checkpoint}: --{next(iter(decoding)).replace('_', '-')} applies to instance models, and this one was "
            "trained without instances.method"
        )
    centre_keys = [k for k in CENTRE_KEYS if k in decoding]
    if centre_keys and settings.method != "panoptic":
        # they choose the centres of Panoptic-DeepLab's heatmap, which other methods have not
        raise ConfigError(
            f"{checkpoint}: --{centre_keys[0].replace('_', '-')} applies to panoptic models (their centre heatmap), "
            f"and this one decodes instances by {settings.method}: drop it"
        )
    return settings.with_decoding(decoding)


def check_crf_applies(checkpoint: str | os.PathLike, method: InstanceSettings, fix: str = "drop --crf") -> None:
    """A ConfigError for an instance model: its decoding reads the model's own outputs, so a CRF would be
    recorded (or tuned) but never applied; ``fix`` says what to do instead."""
    if method.enabled:
        raise ConfigError(
            f"{checkpoint}: the dense CRF refines a semantic model's scores, and this model decodes instances "
            f"(instances.method={method.method}), which it would not change: {fix}"
        )


def inference_model(
    ckpt: dict[str, Any], checkpoint: str | os.PathLike, device: torch.device, *, amp: str, compile: bool
) -> nn.Module:
    """A loaded checkpoint's model on ``device``, prepared as eval/predict run it
    (:func:`pixelwise.inference.optimize_for_inference`; half-precision weights under ``amp`` on CUDA)."""
    model = model_from_checkpoint(ckpt, str(checkpoint)).to(device)
    spec = ckpt["meta"]["model"]
    return optimize_for_inference(
        model,
        in_channels=input_channels(spec),
        compile=compile,
        dtype=inference_dtype(device, amp),
        example_size=max(64, smallest_input(spec)),  # a model with a larger total stride cannot run 64 x 64
    )


class Predictor:
    """A checkpoint (``backend="torch"``) or an ONNX file from ``pixelwise export`` (``"onnxruntime"``), ready
    to score normalised batches (:meth:`scores`) or raw images (:meth:`predict`).

    ``crf``: ``None``/``False`` no CRF; ``True`` the settings of the run's ``config.yaml`` (where
    ``crf-search`` writes), else the checkpoint's config, else the defaults; a dict overrides some of those;
    a :class:`~pixelwise.crf.CRFSettings` is used as given. ``inference`` likewise: ``None`` the run's own
    protocol (its config's ``inference`` section, e.g. half-size images), a dict of
    :class:`~pixelwise.inference.InferenceSettings` fields over it, an ``InferenceSettings`` as given (with the
    run's class weights filled in where its ``class_weight_correction`` needs them). ``decoding``: instance
    decoding settings over the run's (``pixelwise.inference.instance_settings.DECODING_KEYS``, e.g.
    ``{"center_threshold": 0.4}``)."""

    def __init__(
        self,
        checkpoint: str | os.PathLike,
        *,
        device: str = "auto",
        amp: str = "none",
        compile: bool = False,
        backend: str = "torch",
        inference: InferenceSettings | dict[str, Any] | None = None,
        crf: CRFOption = None,
        decoding: dict[str, Any] | None = None,
    ) -> None:
        self.checkpoint, self.amp, self.inference = checkpoint, check_amp(amp), inference
        # the sliding windows memory made of the protocol, last (predict() clears it before each input, so that a
        # stack any of whose pages took windows says so)
        self.last_switched: InferenceSettings | None = None
        self.ckpt: dict[str, Any] | None = None
        self.backend = backend = resolve_backend(checkpoint, backend)
        if backend == "onnxruntime":
            from ..inference.onnx_backend import OnnxModel

            # onnxruntime runs the graph as exported, on the CPU: settings it would ignore are refused, not recorded
            ignored = [
                f"--{flag}" for flag, used in (("device", device not in ("auto", "cpu")),
                                               ("amp", amp not in ("auto", "none")), ("compile", compile)) if used
            ]  # fmt: skip
            if ignored:
                raise ConfigError(
                    f"{', '.join(ignored)}: the onnxruntime backend runs the exported graph as it is (fp32, on the "
                    "CPU); drop them, or use --backend torch with the checkpoint"
                )
            self.device = torch.device("cpu")
            self.model: Any = OnnxModel(checkpoint)
            self.meta = self.model.meta
            self.amp = "none"
        elif backend == "torch":
            if str(checkpoint).lower().endswith(".onnx"):
                raise CheckpointError(
                    f"{checkpoint} is an ONNX file: predict and serve run it with --backend onnxruntime; eval and "
                    "crf-search need the run's .pt"
                )
            self.device = resolve_device(device)
            self.ckpt = load_checkpoint(checkpoint, map_location=self.device)
            self.meta = self.ckpt["meta"]
            run_amp = (self.ckpt.get("config") or {}).get("train", {}).get("amp")
            self.amp = amp = resolve_amp(amp, run_amp, self.device)
            self.model = inference_model(self.ckpt, checkpoint, self.device, amp=amp, compile=compile)
        else:
            raise ConfigError(f"backend {backend!r}; valid: {', '.join(BACKENDS)}")
        if not isinstance(inference, InferenceSettings):
            # the run's own protocol (config section ``inference``, e.g. half-size images) under any overrides given
            section = ((self.ckpt or {}).get("config") or {}).get("inference") or self.meta.get("inference")
            weights = recorded_class_weights(self.meta, checkpoint, (self.ckpt or {}).get("config"))
            self.inference = run_inference(section, inference, weights)
        elif inference.class_weight_correction and inference.class_weights is None:
            weights = recorded_class_weights(self.meta, checkpoint, (self.ckpt or {}).get("config"))
            self.inference = replace(inference, class_weights=tuple(weights) if weights else None)
        if self.inference is not None and self.inference.class_weight_correction and not self.inference.class_weights:
            why = "(trained without train.class_weights): set it to 0"
            if backend == "onnxruntime" and "class_weights" not in self.meta:
                # exported before export resolved an older run's weights: its checkpoint may well have them
                why = (
                    "(an older export: export it again from the run's checkpoint, which resolves them), or set it to 0"
                )
            raise ConfigError(
                f"{checkpoint}: inference.class_weight_correction={self.inference.class_weight_correction} needs the "
                f"class weights the model trained with, and it records none {why}"
            )
        if backend == "onnxruntime" and self.model.fixed_size is not None:
            self._check_fixed_size(checkpoint)
        self.crf = self._crf_settings(crf)
        self._smallest: int | None = None
        self._check_windows()
        self.image_mode = image_mode(input_channels(self.meta["model"]))
        self.instance_method = instance_decoding(self.meta.get("instances"), decoding, checkpoint)
        if self.instance_method.enabled:  # before any image is read (it was refused mid-evaluation)
            check_instance_protocol(self.inference)
        if self.crf is not None:
            check_crf_applies(checkpoint, self.instance_method)
        image_range = self.meta.get("image_range")
        self.image_range = tuple(image_range) if image_range else None

    def _check_fixed_size(self, checkpoint: str | os.PathLike) -> None:
        """A graph of one size refuses a protocol it would run only by resizing each scaled (or turned) copy back
        to that size, before any image is read."""
        from ..inference.onnx_backend import fixed_size_problem

        problem = fixed_size_problem(self.inference, self.model.fixed_size)
        if problem is not None:
            what, flags, override = problem
            h, w = self.model.fixed_size
            raise ConfigError(
                f"{checkpoint} takes one size ({h}x{w}): the inference protocol {what}; predict it with {flags} "
                f"(inference={override}), export it again without --static, or predict with the checkpoint"
            )

    def _crf_settings(self, crf: CRFOption) -> CRFSettings | None:
        if crf is None or crf is False or isinstance(crf, CRFSettings):
            return crf or None
        # an ONNX file carries the parameters of the checkpoint it came from (pixelwise export)
        stored = self.ckpt.get("config", {}).get("crf") if self.ckpt is not None else self.meta.get("crf")
        return settings_for(self.checkpoint, stored, crf if isinstance(crf, dict) else None)

    @property
    def classes(self) -> list[str]:
        return list(self.meta["classes"])

    @property
    def crf_args(self) -> tuple[CRFSettings, Sequence[float], Sequence[float]] | None:
        return None if self.crf is None else (self.crf, self.meta["mean"], self.meta["std"])

    def scores(self, images: torch.Tensor) -> torch.Tensor:
        """Scores (argmax = prediction) of a normalised ``N x C x H x W`` batch with the protocol and CRF."""
        return batch_scores(
            self.model,
            images.to(self.device),
            len(self.classes),
            device=self.device,
            amp=self.amp,
            settings=self.inference,
            crf=self.crf_args,
        )

    def normalise(self, image: np.ndarray) -> torch.Tensor:
        """An ``H x W x C`` image of :func:`pixelwise.data.read_image` (uint8, or float in [0, 1] for 16-bit
        and float sources) as the ``C x H x W`` network input."""
        shift = self.meta.get("image_shift")
        if shift is not None and any(shift):
            # the raw image, as training and eval's data set move it (integer images rounded alike); a read-only
            # array (np.asarray of a PIL image) is copied, as torch.from_numpy warns of it, others only where
            # not contiguous
            raw = np.ascontiguousarray(image) if image.flags.writeable else image.copy()
            moved = shift_image(torch.from_numpy(raw).movedim(-1, 0), shift)
            image = moved.movedim(0, -1).numpy()
        return image_to_tensor(image, self.meta["mean"], self.meta["std"], device=self.device)

    def as_input(self, image: ImageLike, source: str = "image") -> np.ndarray:
        """``image`` as this model takes it, ``H x W x C`` with its channel count: a file path (one page), a PIL
        image (decoded by :func:`pixelwise.data.read_image`'s rules), or an array ``H x W`` (grey) or ``H x W x C``;
        colour given to a grey model becomes its luminance as ``read_image`` makes it (ITU-R 601-2), grey given to
        a colour model is repeated, an alpha channel is dropped."""
        if isinstance(image, (str, os.PathLike)):
            pages = self.read(image)
            if len(pages) > 1:
                raise DataError(
                    f"{image} has {len(pages)} pages: predict each of Predictor.read({str(image)!r}) in turn"
                )
            return pages[0]
        if isinstance(image, Image.Image):
            pages = page_count(image, source)
            if pages > 1:  # an opened stack: decoding would take its current page without a word
                raise DataError(f"{source} has {pages} pages: predict each page (PIL.ImageSequence) in turn")
            return decode_image(image, Path(source), self.image_mode, self.image_range)
        array = np.asarray(image)
        if array.ndim == 2:
            array = array[..., None]
        if array.ndim != 3 or array.shape[2] not in (1, 2, 3, 4) or 0 in array.shape:
            raise DataError(
                f"{source}: an image is H x W (grey) or H x W x C with 1 to 4 channels (grey, grey + alpha, RGB, "
                f"RGBA), got an array of shape {array.shape}"
            )
        if array.dtype != np.uint8:
            # other integers (16-bit) and floats out of [0, 1] would reach the network at their raw scale:
            # read_image maps those with the run's image_range, which a bare array does not carry
            floating = np.issubdtype(array.dtype, np.floating)
            lo, hi = (float(array.min()), float(array.max())) if floating else (0.0, 0.0)
            if not floating or not (0.0 <= lo and hi <= 1.0):
                seen = f"values {lo:g}..{hi:g}" if floating else str(array.dtype)
                raise DataError(
                    f"{source}: an image array is uint8, or float in [0, 1] (as pixelwise.data.read_image returns "
                    f"16-bit and float images), got {seen}; give its file path to read it with the run's image_range"
                )
        if array.shape[2] in (2, 4):  # grey + alpha, RGBA: the alpha is dropped, as when reading a file
            array = array[..., : array.shape[2] - 1]
        want = 1 if self.image_mode == "L" else 3
        if array.shape[2] == 3 and want == 1:
            if array.dtype == np.uint8:  # Pillow's own conversion, as read_image makes it of a colour file
                array = np.asarray(Image.fromarray(np.ascontiguousarray(array)).convert("L"))[..., None]
            else:
                array = (array.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32))[..., None]
        elif array.shape[2] == 1 and want == 3:
            array = np.repeat(array, 3, axis=2)
        return array

    def read(self, path: str | os.PathLike) -> list[np.ndarray]:
        """The pages of an image file as this model takes them (one for a plain image; every slice of a
        TIFF stack), with the run's ``image_range`` for 16-bit and float images."""
        return read_image_stack(Path(path), self.image_mode, image_range=self.image_range)

    def check_size(self, height: int, width: int, source: str) -> None:
        """A one-line DataError for an image that the network would see smaller than its total stride allows: at
        its size, or at the protocol's smallest scale."""
        if getattr(self.model, "fixed_size", None) is not None:
            return  # an ONNX graph of a fixed size: every input is resized to it
        low = min(self.inference.scales) if self.inference is not None else 1.0
        problem = image_size_problem(height, width, source, self.meta["model"]["name"], self._smallest_side(), low)
        if problem:
            raise DataError(problem)

    def _smallest_side(self) -> int:
        if self._smallest is None:
            self._smallest = smallest_input(self.meta["model"])
        return self._smallest

    def _check_windows(self) -> None:
        """Sliding windows smaller than the model takes stop at once (not at the first image, as a traceback)."""
        s = self.inference
        if s is None or s.mode != "slide" or getattr(self.model, "fixed_size", None) is not None:
            return
        side = self._smallest_side()
        if min([s.crop] if isinstance(s.crop, (int, float)) else s.crop) < side:
            raise ConfigError(
                f"inference crop {s.crop}: windows smaller than model {self.meta['model']['name']} takes (at least "
                f"{side}x{side} pixels, its total stride); give a crop of at least {side}"
            )

    def settings_for_size(self, height: int, width: int, source: str, batch: int = 1) -> InferenceSettings | None:
        """The protocol for ``batch`` images of this size at a time: the configured one, except that a
        whole-image pass that would not fit in memory becomes a sliding window (said in the log)."""
        s = self.inference
        if self.ckpt is None or (s is not None and s.mode == "slide"):
            return s
        free = available_memory(self.device)
        if free is None:
            return s
        top = max(s.scales) if s is not None else 1.0  # the largest scale's pass is the biggest
        averaged = s is not None and (s.flip or s.rot90 or len(s.scales) > 1)
        need = (
            inference_bytes(self.meta["model"], round(height * top), round(width * top))
            * (1 + (s is not None and (s.flip or s.rot90)))
            * batch
        )
        # what windows cannot spare: the image's class probabilities, float32, blended at the largest scale with
        # their turned or flipped copy, and where averaged, the sum and a view resized to the image (measured with
        # an 11-class 4000x3000 image: 1.7 and 5.5 such buffers at scales 1 and 0.75/1/1.25 with flips)
        scaled = round(height * top) * round(width * top)
        pixels = 2 * height * width + 2 * scaled if averaged else height * width + scaled
        outputs = batch * len(self.classes) * 4 * pixels
        budget = MEMORY_SHARE * free
        if need + outputs <= budget:
            return s
        if outputs > budget:
            raise ResourceError(
                f"image {source} ({width}x{height}): its {len(self.classes)} class probabilities alone take about "
                f"{outputs / 2**30:.1f} GiB as blended and averaged, more than {MEMORY_SHARE:.0%} of the "
                f"{free / 2**30:.1f} GiB free, even in sliding windows: predict it in parts, at a smaller size, or "
                "where more memory is free"
            )
        scale = math.sqrt((budget - outputs) / need)
        # the windows slide over the image as each scale resized it: a share of the largest scale's side (at
        # scales 0.5 the whole image's side was taken, windows of almost the whole half-size image)
        crop = max(self._smallest or 1, 32, min(1024, int(min(height, width) * top * scale) // 32 * 32))
        log.warning(
            "image %s (%dx%d): a whole-image pass needs about %.1f GiB, more than %.0f%% of the %.2f GiB free: "
            "predicting it in %dx%d sliding windows (set --mode slide --crop N yourself to choose)",
            source,
            width,
            height,
            (need + outputs) / 2**30,
            100 * MEMORY_SHARE,
            free / 2**30,
            crop,
            crop,
        )
        # the same protocol (scales, flips, turns) in windows
        windows = replace(
            s or InferenceSettings(), mode="slide", crop=crop, stride=None, blend="gaussian", window_batch=1
        )
        self.last_switched = windows
        return windows

    @property
    def thing_classes(self) -> list[int]:
        """The classes whose objects an instance model counts (recorded at training)."""
        return list(self.meta.get("thing_classes") or range(1, len(self.classes)))

    @torch.inference_mode()
    def predict_instances(self, image: ImageLike, source: str = "image") -> InstanceOutput:
        """Semantic classes and instances of one image (:meth:`as_input`: a path, a PIL image or an array): the
        model's instance method (whole image), or for a semantic model the connected components of its thing
        classes."""
        image = self.as_input(image, source)
        h, w = image.shape[:2]
        self.check_size(h, w, source)
        return self.instances_of(self.normalise(image)[None].to(self.device), source)

    @torch.inference_mode()
    def outputs_of(
        self, x: torch.Tensor, inference: InferenceSettings | None = None
    ) -> torch.Tensor | dict[str, torch.Tensor]:
        """An instance model's raw outputs for a normalised batch on this device, under the run's precision and
        averaged over the views of ``inference`` (default: the run's protocol), before decoding."""
        with autocast(self.device, self.amp):
            return predict_outputs(self.model, x, self.inference if inference is None else inference)

    @torch.inference_mode()
    def instances_of(self, x: torch.Tensor, source: str = "image") -> InstanceOutput:
        """:meth:`predict_instances` of an image already normalised into a ``1 x C x H x W`` batch on this
        device (a data set's item)."""
        h, w = x.shape[-2:]
        method = self.instance_method
        if method.enabled:
            return decode(method, self.outputs_of(x), len(self.classes), self.thing_classes)[0]
        # a semantic model: its own protocol (scales, windows, CRF) gives the classes, components the instances
        probs = batch_probabilities(self, x, self.settings_for_size(h, w, source))
        components = InstanceSettings(method="connected_components")
        # decode takes logits: the log of the probabilities gives them back through its softmax
        return decode(components, torch.log(probs.clamp_min(1e-30)), len(self.classes), self.thing_classes)[0]

    @torch.inference_mode()
    def predict(self, image: ImageLike, source: str = "image") -> np.ndarray:
        """``H x W`` uint8 class indices of one image (:meth:`as_input`: a path, a PIL image, or an array
        ``H x W`` or ``H x W x C``)."""
        image = self.as_input(image, source)
        if self.instance_method.enabled:
            return self.predict_instances(image, source).semantic.astype(np.uint8)
        h, w = image.shape[:2]
        self.check_size(h, w, source)
        settings = self.settings_for_size(h, w, source)
        x = self.normalise(image)[None].to(self.device)
        scores = batch_scores(
            self.model, x, len(self.classes), device=self.device, amp=self.amp, settings=settings, crf=self.crf_args
        )
        return class_argmax(scores)[0].to(torch.uint8).cpu().numpy()

    def describe(self) -> dict[str, Any]:
        return {"checkpoint": str(self.checkpoint), "crf": None if self.crf is None else asdict(self.crf)}
