"""The onnxruntime backend: an ONNX file written by ``pixelwise export``, called like a model."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ..errors import CheckpointError, PixelwiseError
from .protocol import InferenceSettings, _pair, rescale_image

log = logging.getLogger(__name__)
META_KEY = "pixelwise_meta"  # the ONNX metadata entry holding the checkpoint's meta (classes, palette, ...)


def onnxruntime_module():
    try:
        import onnxruntime
    except ImportError:
        raise PixelwiseError("onnxruntime is not installed: pip install 'pixelwise[onnx]'") from None
    return onnxruntime


def fixed_size_problem(
    settings: InferenceSettings | None, size: tuple[int, int]
) -> tuple[str, str, dict[str, Any]] | None:
    """What of the protocol ``settings`` a graph of one ``size`` (``H, W``) cannot run whatever the image's size, as
    ``(what, flags, override)``: the words after "the inference protocol", the predict flags that leave it out, and
    they as an ``inference=`` override; ``None`` where it runs (one scale, quarter turns of a square, windows of the
    graph's size). The backend would resize each such copy to the graph's size: all scales but one, or the turned
    views, lost."""
    if settings is None:
        return None
    h, w = size
    problems: list[tuple[str, str, dict[str, Any]]] = []
    if settings.mode == "slide":
        crop = _pair(settings.crop)
        if crop != (h, w):
            what = f"predicts in {crop[0]}x{crop[1]} windows, which the graph would each resize to {h}x{w}"
            problems.append((what, f"--crop {h} {w}", {"crop": [h, w]}))
    else:  # windows of the graph's size run at any scale and turn
        if len(set(settings.scales)) > 1:
            scales = "/".join(f"{s:g}" for s in settings.scales)
            what = f"averages scales {scales}, whose copies the graph would each resize to {h}x{w}"
            problems.append((what, "--scales 1", {"scales": [1.0]}))
        if settings.rot90 and h != w:
            what = f"averages quarter turns (rot90), whose {w}x{h} copies the graph would each resize to {h}x{w}"
            problems.append((what, "--no-rot90", {"rot90": False}))
    if not problems:
        return None
    whats, flags, overrides = zip(*problems, strict=True)
    return "; it ".join(whats), " ".join(flags), {k: v for o in overrides for k, v in o.items()}


class OnnxModel:
    """An ONNX file run by onnxruntime, called like a model: ``N x C x H x W`` tensor -> logits."""

    def __init__(self, path: str | os.PathLike, providers: list[str] | None = None) -> None:
        ort = onnxruntime_module()
        path = Path(path)
        if not path.is_file():
            raise CheckpointError(f"ONNX file {path} does not exist")
        try:
            self.session = ort.InferenceSession(str(path), providers=providers or ort.get_available_providers())
        except Exception as e:
            raise CheckpointError(f"cannot load ONNX file {path}: {str(e).splitlines()[0]}") from None
        props = self.session.get_modelmeta().custom_metadata_map
        if META_KEY not in props:
            raise CheckpointError(f"{path} was not exported by pixelwise (no {META_KEY} metadata)")
        self.meta = json.loads(props[META_KEY])
        first = self.session.get_inputs()[0]
        self.input = first.name
        # Dimensions fixed at export are ints; dynamic ones are names (or None).
        self.fixed_batch = first.shape[0] if isinstance(first.shape[0], int) else None
        fixed_hw = first.shape[2:]
        self.fixed_size = tuple(fixed_hw) if all(isinstance(d, int) for d in fixed_hw) else None
        self.path, self._resize_said = path, False

    def __call__(self, x: torch.Tensor) -> torch.Tensor | dict[str, torch.Tensor]:
        """Logits at the input's size; for a graph with the instance branch (outputs ``logits``, ``center``,
        ``offset``) the model's dict ``{"out", "center", "offset"}``. A graph exported at a fixed size (e.g.
        PSPNet's adaptive pooling) gets the input resized (bilinear) to that size and returns logits resized back."""
        x = x.detach().float().cpu()
        size = tuple(x.shape[-2:])
        if self.fixed_size is not None and size != self.fixed_size:
            if len(self.session.get_outputs()) > 1:  # centres and offsets are in pixels: no resize undoes it
                raise CheckpointError(
                    f"{self.path} is an instance graph exported at a fixed {self.fixed_size[0]}x{self.fixed_size[1]}:"
                    f" it cannot take a {size[0]}x{size[1]} image; export it again without --static (or at this "
                    "size), or predict with the checkpoint"
                )
            if not self._resize_said:  # once: every other image of another size is resized the same way
                self._resize_said = True
                log.warning(
                    "%s was exported at a fixed %dx%d: inputs of other sizes (here %dx%d) are resized to it and the "
                    "scores back, which blurs them; export at the size you predict (--size H W), or use the checkpoint",
                    self.path, *self.fixed_size, *size,
                )  # fmt: skip
            x = rescale_image(x, self.fixed_size)
        chunks = x.split(self.fixed_batch) if self.fixed_batch else [x]
        runs = [self.session.run(None, {self.input: c.numpy()}) for c in chunks]
        outs = [torch.cat([torch.from_numpy(r[i]) for r in runs]) for i in range(len(runs[0]))]
        if outs[0].shape[-2:] != size:
            outs[0] = F.interpolate(outs[0], size=size, mode="bilinear", align_corners=False)
        if len(outs) == 3:
            return dict(zip(("out", "center", "offset"), outs, strict=True))
        return outs[0]

    def eval(self) -> OnnxModel:
        return self

    def to(self, *args: Any, **kwargs: Any) -> OnnxModel:
        return self
