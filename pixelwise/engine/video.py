"""Prediction on videos: frames decoded one at a time (:mod:`pixelwise.data.video`), batched through a
:class:`~pixelwise.engine.Predictor`, optionally smoothed in time, and written as videos at the input's frame
rate and size:

- ``DIR/<stem>_overlay.mp4``: the class colours blended over each frame (H.264, else MPEG-4 part 2), with the
  input's audio passed through (copied, or re-encoded as AAC where the container does not take the codec);
- on request the class indices, losslessly: ``DIR/<stem>_masks.mkv`` (FFV1 grey, pixel value = class index) or
  ``DIR/masks/<stem>/000000.png`` ... (one PNG per frame);
- on request an effect (:mod:`pixelwise.inference.effects`): ``DIR/<stem>_effect.mp4``, or for ``cutout``
  ``DIR/<stem>_effect.mov`` (lossless RGBA: MP4's codecs have no alpha channel).

Temporal smoothing (:class:`TemporalEMA`) is an exponential moving average of the class probabilities,
``s_t = a * p_t + (1 - a) * s_(t-1)`` with ``s_0 = p_0``; ``a = 1`` is no smoothing. It starts again
(``s_t = p_t``) at a scene cut that :class:`SceneCutDetector` finds, so no labels of one shot carry into the
next. Flicker (:func:`label_change_rate`) is the fraction of pixels whose label changes between consecutive
frames.

The still-image path uses :func:`image_probabilities` for effects (``DIR/effect/<stem>.png``).
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from tqdm.auto import tqdm

from ..argmax import class_argmax
from ..data import write_image
from ..data.video import VideoWriter, decode_frames, probe_video
from ..errors import ConfigError, DataError
from ..inference import batch_scores
from ..inference.effects import Effect
from ..metrics import ConfusionMatrix
from ..visualize import colorize, overlay, overlay_palette

if TYPE_CHECKING:  # the predictor imports this module for still-image effects: no import back at run time
    from .predictor import Predictor

log = logging.getLogger(__name__)

MASK_OUTPUTS = ("video", "png")
DEFAULT_BATCH = 4


def check_video_model(predictor: Predictor, path: str | os.PathLike) -> None:
    """A ConfigError where the model's outputs are not its classes (the boundary method's extra channel): their
    argmax is not a label, and video does not decode instances."""
    outputs = predictor.meta.get("model", {}).get("num_classes", len(predictor.classes))
    if outputs != len(predictor.classes):
        raise ConfigError(
            f"{path}: video writes each frame's class labels, and this model's {outputs} outputs are not its "
            f"{len(predictor.classes)} classes (instances.method={predictor.instance_method.method}): predict the "
            "frames as images, which decodes them"
        )


def batch_probabilities(predictor: Predictor, batch: torch.Tensor, settings: Any = None) -> torch.Tensor:
    """``N x K x H x W`` float32 class probabilities of a normalised batch, with the predictor's protocol and
    CRF (``settings`` overrides its protocol, e.g. :meth:`Predictor.settings_for_size`)."""
    return batch_scores(
        predictor.model,
        batch.to(predictor.device),
        len(predictor.classes),
        device=predictor.device,
        amp=predictor.amp,
        settings=predictor.inference if settings is None else settings,
        crf=predictor.crf_args,
        probabilities=True,
    ).float()


@torch.inference_mode()
def image_probabilities(predictor: Predictor, image: np.ndarray, source: str = "image") -> torch.Tensor:
    """``K x H x W`` float32 probabilities of one ``H x W x C`` image, as :meth:`Predictor.predict` runs it (size
    checked, sliding windows when memory is short): its argmax is that method's prediction."""
    h, w = image.shape[:2]
    predictor.check_size(h, w, source)
    settings = predictor.settings_for_size(h, w, source)
    return batch_probabilities(predictor, predictor.normalise(image)[None], settings)[0]


# A cut: the mean absolute difference of two frames' 32x32 grey thumbnails (area averages), in grey levels 0..255,
# above 25. Measured on CamVid's 931 images (4 driving sequences, 480x360): frames 1/15 s apart (0016E5's 100
# pairs 2 frames apart) differ by 4.3 at the median, 9.3 at most, so consecutive frames of a moving car stay well
# below; images of different sequences (every third: 19,326 pairs) by 26.8 at least (1 % below 32.7, median 54). Images
# 1 s apart in one sequence (596 pairs) differ by 20.6 at the median: near the threshold and
# often above it, as footage at about 1 frame a second would be. The test videos' square moving 3 pixels a frame: under
# 5; a CamVid image moved 3 pixels: 3.6, 8 pixels: 5.7; a brightness change of N grey levels: N (a jump of 25 levels
# from one frame to the next, a tenth of the range, would count).
SCENE_CUT_THRESHOLD = 25.0
SCENE_CUT_SIZE = 32


class SceneCutDetector:
    """Scene cuts (an edit to another shot) between consecutive frames: a frame is a cut when the mean absolute
    difference of its ``size x size`` grey thumbnail (area averages, grey levels 0..255) and the previous frame's
    is above ``threshold`` (:data:`SCENE_CUT_THRESHOLD`, measured on CamVid's driving sequences: motion within a
    shot stays far below it). Call it on each frame of one video in order; the first is no cut. ``cuts`` counts
    the cuts seen; :meth:`reset` before another video."""

    def __init__(self, threshold: float = SCENE_CUT_THRESHOLD, size: int = SCENE_CUT_SIZE) -> None:
        self.threshold = float(threshold)
        self.size = int(size)
        self.cuts = 0
        self._last: torch.Tensor | None = None

    def reset(self) -> None:
        self.cuts = 0
        self._last = None

    @staticmethod
    def thumbnail(image: np.ndarray, size: int = SCENE_CUT_SIZE) -> torch.Tensor:
        """The ``size x size`` float grey thumbnail (area averages, 0..255) of an ``H x W x C`` (or ``H x W``)
        uint8 frame: RGB weighted as BT.601 luma, one channel as it is."""
        x = torch.as_tensor(np.asarray(image))
        x = (x[..., None] if x.ndim == 2 else x[..., :3]).permute(2, 0, 1).float()
        x = torch.nn.functional.adaptive_avg_pool2d(x, size)  # first: the luma weighting commutes with the averages
        return x[0] if x.shape[0] == 1 else torch.einsum("chw,c->hw", x, torch.tensor([0.299, 0.587, 0.114]))

    @staticmethod
    def difference(a: np.ndarray, b: np.ndarray, size: int = SCENE_CUT_SIZE) -> float:
        """The mean absolute difference (grey levels) of two frames' thumbnails: the measure the cut rule uses."""
        thumbs = SceneCutDetector.thumbnail(a, size), SceneCutDetector.thumbnail(b, size)
        return float((thumbs[0] - thumbs[1]).abs().mean())

    def __call__(self, image: np.ndarray) -> bool:
        """Whether ``image`` starts a new shot (is a cut from the frame given before it)."""
        thumb = self.thumbnail(image, self.size)
        cut = self._last is not None and float((thumb - self._last).abs().mean()) > self.threshold
        self._last = thumb
        self.cuts += cut
        return cut


class TemporalEMA:
    """Exponential moving average of class probabilities over a frame sequence: ``s_0 = p_0``,
    ``s_t = alpha * p_t + (1 - alpha) * s_(t-1)``. ``alpha`` in (0, 1]; smaller is smoother and lags more;
    1 returns the input. Call it on consecutive batches of one video; :meth:`reset` before another. ``cuts``
    (one flag per frame, e.g. from :class:`SceneCutDetector`): the average starts again at a frame flagged,
    ``s_t = p_t``, so one shot's labels do not carry into the next."""

    def __init__(self, alpha: float) -> None:
        if not 0 < alpha <= 1:
            raise ConfigError(f"--smooth {alpha}: the moving average's factor must be in (0, 1] (1 = no smoothing)")
        self.alpha = float(alpha)
        self.state: torch.Tensor | None = None

    def reset(self) -> None:
        self.state = None

    def __call__(self, probs: torch.Tensor, cuts: Sequence[bool] | None = None) -> torch.Tensor:
        """The smoothed ``N x K x H x W`` probabilities of the next ``N`` frames (``cuts``: ``N`` flags, true
        where a frame starts a new shot)."""
        if cuts is not None and len(cuts) != probs.shape[0]:
            raise ValueError(f"{len(cuts)} cut flags for {probs.shape[0]} frames")
        if self.alpha == 1.0:
            return probs
        out = torch.empty_like(probs)
        for i in range(probs.shape[0]):  # sequential by nature: each frame needs the one before
            p = probs[i]
            if self.state is None or (cuts is not None and cuts[i]):
                self.state = p.clone()
            else:
                self.state = torch.lerp(self.state, p, self.alpha)
            out[i] = self.state
        return out


def label_change_rate(previous: np.ndarray | torch.Tensor, current: np.ndarray | torch.Tensor) -> float:
    """The fraction of pixels whose label differs between two ``H x W`` label maps."""
    a, b = np.asarray(previous), np.asarray(current)
    if a.shape != b.shape:
        raise ValueError(f"label maps of different sizes: {a.shape} and {b.shape}")
    return float(np.count_nonzero(a != b)) / max(1, a.size)


@dataclass
class FlickerMeter:
    """Flicker of a label sequence: the mean of :func:`label_change_rate` over consecutive frames (``update``
    frame by frame; memory holds one frame)."""

    total: float = 0.0
    pairs: int = 0
    _last: np.ndarray | None = field(default=None, init=False, repr=False)

    def update(self, labels: np.ndarray) -> None:
        labels = np.asarray(labels)
        if self._last is not None:
            self.total += label_change_rate(self._last, labels)
            self.pairs += 1
        self._last = labels.copy()

    @property
    def value(self) -> float:
        """Mean changed fraction per frame pair (NaN for fewer than two frames)."""
        return self.total / self.pairs if self.pairs else float("nan")


def flicker(labels: Iterable[np.ndarray]) -> float:
    """The mean fraction of pixels whose label changes between consecutive frames of ``labels``."""
    meter = FlickerMeter()
    for frame in labels:
        meter.update(frame)
    return meter.value


def sequence_scores(
    predictions: Sequence[np.ndarray], targets: Sequence[np.ndarray], num_classes: int, ignore_index: int = 255
) -> dict[str, Any]:
    """A predicted sequence against its ground truth: the mIoU of each frame (classes absent from both
    prediction and truth of that frame left out, as :class:`~pixelwise.metrics.ConfusionMatrix` does), their
    mean, the whole sequence's mIoU, and the flicker of the prediction beside that of the ground truth (the
    label changes the scene itself makes; ignored pixels counted as their own label)."""
    if len(predictions) != len(targets):
        raise ValueError(f"{len(predictions)} predictions for {len(targets)} ground-truth frames")
    whole = ConfusionMatrix(num_classes, ignore_index)
    per_frame = []
    for pred, target in zip(predictions, targets, strict=True):
        p, t = torch.as_tensor(np.asarray(pred)).long(), torch.as_tensor(np.asarray(target)).long()
        cm = ConfusionMatrix(num_classes, ignore_index)
        cm.update(p, t)
        whole.update(p, t)
        per_frame.append(cm.compute()["miou"])
    return {
        "frames": len(predictions),
        "miou_per_frame": per_frame,
        "mean_frame_miou": float(np.nanmean(per_frame)) if per_frame else float("nan"),
        "miou": whole.compute()["miou"],
        "flicker": flicker(predictions),
        "flicker_ground_truth": flicker(targets),
    }


def batches(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    """Consecutive lists of ``size`` items (the last may be shorter)."""
    if size < 1:
        raise ConfigError(f"batch size {size}: must be >= 1")
    batch: list[Any] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _fps_text(fps: Any) -> str:
    return str(fps) if getattr(fps, "denominator", 1) != 1 else str(int(fps))


def _audio_text(writers: dict[str, VideoWriter]) -> str:
    """What happened to the audio, of every video that carries it: one wording when they agree, else each
    output's (Opus is copied into the overlay's MP4 but re-encoded as AAC for a cutout's MOV, which takes no Opus)."""
    told = {key: writers[key].audio for key in ("overlay", "effect") if key in writers}
    if not told:
        return "none (no picture video)"
    if len(set(told.values())) == 1:
        return next(iter(told.values()))
    return "; ".join(f"{key}: {text}" for key, text in told.items())


def predict_video(
    predictor: Predictor,
    path: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    stem: str | None = None,
    alpha: float = 0.5,
    batch_size: int = DEFAULT_BATCH,
    smooth: float | None = None,
    effect: Effect | None = None,
    masks: str | None = None,
    overlay_video: bool = True,
    codec: str = "auto",
    audio: bool = True,
    progress: bool = True,
) -> dict[str, Any]:
    """Predict every frame of the video ``path`` and write, in ``out_dir``, ``<stem>_overlay.mp4`` (class colours
    at opacity ``alpha``), and with ``masks="video"`` ``<stem>_masks.mkv`` (lossless) or ``masks="png"``
    ``masks/<stem>/000000.png`` ..., and with ``effect`` ``<stem>_effect.mp4`` (``.mov`` for cutout): the input's
    frame rate, size and timing. Frames go through the model ``batch_size`` at a time; memory stays flat in the
    video's length. ``smooth``: the factor of :class:`TemporalEMA` (None: none). ``audio``: pass the input's
    audio through (else dropped). Returns the manifest entry: the files, frame count, rate, size, codec, what
    happened to the audio, frames per second and the flicker of the written labels, and with ``smooth`` the
    number of scene cuts, where the average started again (``scene_cuts``)."""
    path, out_dir = Path(path), Path(out_dir)
    stem = stem or path.stem
    if masks not in (None, *MASK_OUTPUTS):
        raise ConfigError(f"video masks {masks!r}; valid: {', '.join(MASK_OUTPUTS)}")
    if not overlay_video and masks is None and effect is None:
        raise ConfigError("nothing to write: ask for the overlay, the masks or an effect")
    check_video_model(predictor, path)
    info = probe_video(path)
    predictor.check_size(info.height, info.width, str(path))
    # frames go through batch_size at a time: windows where that many whole frames would not fit, as for images
    settings = predictor.settings_for_size(info.height, info.width, str(path), batch=batch_size)
    ema = TemporalEMA(smooth) if smooth is not None else None
    scenes = SceneCutDetector() if ema is not None else None  # the average starts again at a cut
    out_dir.mkdir(parents=True, exist_ok=True)
    files: dict[str, Any] = {"video": str(path)}
    writers: dict[str, VideoWriter] = {}
    audio_from = path if audio else None
    palette = predictor.meta["palette"]
    contrast = overlay_palette(palette)
    mask_dir = out_dir / "masks" / stem
    meter = FlickerMeter()
    frames = 0
    start = time.perf_counter()
    made_mask_dir = False
    try:
        size = {
            "fps": info.fps,
            "width": info.width,
            "height": info.height,
            "sample_aspect_ratio": info.sample_aspect_ratio,
        }
        if overlay_video:
            files["overlay"] = str(out_dir / f"{stem}_overlay.mp4")
            writers["overlay"] = VideoWriter(files["overlay"], codec=codec, audio_from=audio_from, **size)
        if effect is not None:
            files["effect"] = str(out_dir / f"{stem}_effect.{'mov' if effect.rgba else 'mp4'}")
            kind = "rgba" if effect.rgba else "rgb"
            writers["effect"] = VideoWriter(files["effect"], kind=kind, codec=codec, audio_from=audio_from, **size)
        if masks == "video":
            files["masks"] = str(out_dir / f"{stem}_masks.mkv")
            writers["masks"] = VideoWriter(files["masks"], kind="mask", **size)
        elif masks == "png":
            made_mask_dir = not mask_dir.exists()  # (with --overwrite, an earlier run's frames may be there)
            mask_dir.mkdir(parents=True, exist_ok=True)
            files["masks"] = str(mask_dir)
        bar = tqdm(
            total=info.expected_frames, desc=stem, unit="frame", disable=not progress, dynamic_ncols=True, smoothing=0.1
        )
        with bar, torch.inference_mode():
            for batch in batches(decode_frames(path, predictor.image_mode), batch_size):
                images = [image for _, image in batch]
                x = torch.stack([predictor.normalise(image) for image in images])
                probs = batch_probabilities(predictor, x, settings)
                if ema is not None and scenes is not None:
                    probs = ema(probs, [scenes(image) for image in images])
                labels = class_argmax(probs).to(torch.uint8).cpu().numpy()
                for (t, image), label, p in zip(batch, labels, probs, strict=True):
                    meter.update(label)
                    if "overlay" in writers:
                        writers["overlay"].write(overlay(image, colorize(label, contrast), alpha), t)
                    if "effect" in writers:
                        writers["effect"].write(effect.apply(image, p), t)  # type: ignore[union-attr]
                    if "masks" in writers:
                        writers["masks"].write(label, t)
                    elif masks == "png":
                        write_image(mask_dir / f"{frames:06d}.png", label)
                    frames += 1
                bar.update(len(batch))
        if frames == 0:  # (an empty or broken file: the writers have nothing to finish, and would say so obscurely)
            raise DataError(f"video {path}: no frame could be decoded")
        for writer in writers.values():
            writer.close()
        if masks == "png" and not made_mask_dir:  # --overwrite: frames past this video's end are another's
            for stale in mask_dir.glob("[0-9]" * 6 + ".png"):
                if int(stale.stem) >= frames:
                    stale.unlink()
    except BaseException:
        for writer in writers.values():
            writer.discard()  # a shortened video that looks whole, and that no manifest lists, would mislead
        if made_mask_dir:
            shutil.rmtree(mask_dir, ignore_errors=True)
        elif masks == "png":  # only this run's frames (the one being saved too): an earlier run's other files stay
            for i in range(frames + 1):
                (mask_dir / f"{i:06d}.png").unlink(missing_ok=True)
        raise
    seconds = time.perf_counter() - start
    rgb = writers.get("overlay") or writers.get("effect")
    audio_text = "dropped (asked for)" if not audio else _audio_text(writers)
    files.update(
        {
            "frames": frames,
            "fps": _fps_text(info.fps),
            "size": info.size,
            "codec": rgb.codec if rgb is not None else "ffv1",
            "audio": audio_text,
            "smooth": smooth,
            "flicker": round(meter.value, 6),
            **({"scene_cuts": scenes.cuts} if scenes is not None else {}),
            "frames_per_second": round(frames / seconds, 2) if seconds > 0 else None,
        }
    )
    log.debug(  # the CLI prints the same facts from the returned entry
        "%s: %d frames %s at %s fps -> %s (%s; audio %s), %.1f frames/s",
        path,
        frames,
        info.size,
        files["fps"],
        out_dir,
        files["codec"],
        audio_text,
        frames / max(seconds, 1e-9),
    )
    return files
