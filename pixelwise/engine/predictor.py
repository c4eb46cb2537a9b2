"""One way to get a trained model ready for inference (as detectron2's ``DefaultPredictor``): the checkpoint
(or ONNX file) loaded once, the model prepared as eval/predict run it, its CRF settings resolved; and
``pixelwise predict``, which writes masks, colour masks and overlays for images."""

from __future__ import annotations

import glob
import logging
import os
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn
from tqdm.auto import tqdm

from ..crf import CRFSettings, settings_for
from ..data.dataset import IMAGE_EXTENSIONS, read_image
from ..device import inference_dtype, resolve_device
from ..errors import CheckpointError, ConfigError, DataError
from ..inference import InferenceSettings, batch_scores, optimize_for_inference
from ..models import input_channels, load_checkpoint, model_from_checkpoint
from ..visualize import colorize, overlay
from .builders import image_mode

log = logging.getLogger(__name__)

BACKENDS = ("torch", "onnxruntime")
CRFOption = CRFSettings | dict[str, Any] | bool | None


def inference_model(
    ckpt: dict[str, Any], checkpoint: str | os.PathLike, device: torch.device, *, amp: str, compile: bool
) -> nn.Module:
    """A loaded checkpoint's model on ``device``, prepared as eval/predict run it
    (:func:`pixelwise.inference.optimize_for_inference`; half-precision weights under ``amp`` on CUDA)."""
    model = model_from_checkpoint(ckpt, str(checkpoint)).to(device)
    return optimize_for_inference(
        model, in_channels=input_channels(ckpt["meta"]["model"]), compile=compile, dtype=inference_dtype(device, amp)
    )


class Predictor:
    """A checkpoint (``backend="torch"``) or an ONNX file from ``pixelwise export`` (``"onnxruntime"``), ready
    to score normalised batches (:meth:`scores`) or raw images (:meth:`predict`).

    ``crf``: ``None``/``False`` no CRF; ``True`` the settings of the run's ``config.yaml`` (where
    ``crf-search`` writes), else the checkpoint's config, else the defaults; a dict overrides some of those;
    a :class:`~pixelwise.crf.CRFSettings` is used as given."""

    def __init__(
        self,
        checkpoint: str | os.PathLike,
        *,
        device: str = "auto",
        amp: str = "none",
        compile: bool = False,
        backend: str = "torch",
        inference: InferenceSettings | None = None,
        crf: CRFOption = None,
    ) -> None:
        self.checkpoint, self.amp, self.inference = checkpoint, amp, inference
        self.ckpt: dict[str, Any] | None = None
        if backend == "onnxruntime":
            from ..inference.onnx_backend import OnnxModel

            self.device = torch.device("cpu")
            self.model: Any = OnnxModel(checkpoint)
            self.meta = self.model.meta
        elif backend == "torch":
            if str(checkpoint).lower().endswith(".onnx"):
                raise CheckpointError(f"{checkpoint} is an ONNX file: run it with --backend onnxruntime")
            self.device = resolve_device(device)
            self.ckpt = load_checkpoint(checkpoint, map_location=self.device)
            self.meta = self.ckpt["meta"]
            self.model = inference_model(self.ckpt, checkpoint, self.device, amp=amp, compile=compile)
        else:
            raise ConfigError(f"backend {backend!r}; valid: {', '.join(BACKENDS)}")
        self.crf = self._crf_settings(crf)
        self.image_mode = image_mode(input_channels(self.meta["model"]))
        self._mean = torch.tensor(self.meta["mean"], device=self.device).view(-1, 1, 1)
        self._std = torch.tensor(self.meta["std"], device=self.device).view(-1, 1, 1)

    def _crf_settings(self, crf: CRFOption) -> CRFSettings | None:
        if crf is None or crf is False or isinstance(crf, CRFSettings):
            return crf or None
        stored = (self.ckpt or {}).get("config", {}).get("crf")
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
        """An ``H x W x C`` uint8 image as the ``C x H x W`` network input."""
        x = torch.from_numpy(image).to(self.device).permute(2, 0, 1).float().div_(255)
        return x.sub_(self._mean).div_(self._std)

    @torch.inference_mode()
    def predict(self, image: np.ndarray) -> np.ndarray:
        """``H x W`` uint8 class indices of one ``H x W x C`` uint8 image."""
        return self.scores(self.normalise(image)[None]).argmax(1)[0].to(torch.uint8).cpu().numpy()

    def describe(self) -> dict[str, Any]:
        return {"checkpoint": str(self.checkpoint), "crf": None if self.crf is None else asdict(self.crf)}


def expand_inputs(inputs: Sequence[str | os.PathLike]) -> list[Path]:
    """Files, folders (their images, sorted) and glob patterns -> image paths, in order."""
    paths: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            paths += sorted(q for q in p.iterdir() if q.suffix.lower() in IMAGE_EXTENSIONS)
        elif p.is_file():
            paths.append(p)
        else:
            matches = sorted(Path(m) for m in glob.glob(str(item), recursive=True))
            if not matches:
                raise DataError(f"input {str(item)!r} is no file, folder or matching pattern")
            paths += [m for m in matches if m.is_file()]
    return paths


def predict(
    checkpoint: str | os.PathLike,
    inputs: Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    *,
    device: str = "auto",
    alpha: float = 0.5,
    amp: str = "none",
    inference: InferenceSettings | None = None,
    crf: CRFOption = None,
    backend: str = "torch",
    compile: bool = False,
    progress: bool = True,
) -> list[dict[str, str]]:
    """For each input image write ``out_dir/masks/<stem>.png`` (class indices), ``color/<stem>.png``
    (palette colours) and ``overlay/<stem>.png``. One image at a time: memory stays flat.
    ``backend="onnxruntime"`` runs an ONNX file written by ``pixelwise export`` instead of a checkpoint;
    ``compile`` as :func:`pixelwise.inference.optimize_for_inference` (torch backend); ``crf`` as
    :class:`Predictor`."""
    predictor = Predictor(
        checkpoint, device=device, amp=amp, compile=compile, backend=backend, inference=inference, crf=crf
    )
    out_dir = Path(out_dir)
    paths = expand_inputs(inputs)
    if not paths:
        raise DataError(f"no images found in {', '.join(map(str, inputs))}")
    for sub in ("masks", "color", "overlay"):
        (out_dir / sub).mkdir(parents=True, exist_ok=True)
    written: list[dict[str, str]] = []
    used: set[str] = set()
    for path in tqdm(paths, desc="predict", unit="img", disable=not progress, dynamic_ncols=True):
        image = read_image(path, predictor.image_mode)
        pred = predictor.predict(image)
        stem = path.stem
        while stem in used:  # same stem from two folders: keep both
            stem += "_"
        used.add(stem)
        color = colorize(pred, predictor.meta["palette"])
        files = {"image": str(path)}
        for sub, array in (("masks", pred), ("color", color), ("overlay", overlay(image, color, alpha))):
            files[sub] = str(out_dir / sub / f"{stem}.png")
            Image.fromarray(array).save(files[sub])
        written.append(files)
    return written
