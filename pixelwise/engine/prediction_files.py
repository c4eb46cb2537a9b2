"""A prediction run over files (``pixelwise predict``, :func:`predict`) and what it writes: its inputs expanded,
and per input ``masks/``, ``color/``, ``overlay/`` (and ``instances/``, ``instance_overlay/``, ``effect/``), each
written whole or not at all, and entered into the manifest as it is written. The output folder itself (what an
earlier run left there, ``--overwrite``): :mod:`pixelwise.engine.prediction_out_dir`."""

from __future__ import annotations

import glob
import logging
import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from .. import __version__
from ..argmax import class_argmax
from ..data import IMAGE_EXTENSIONS, image_to_uint8, write_image
from ..data.video import VIDEO_EXTENSIONS, is_video
from ..errors import ConfigError, DataError, ResourceError
from ..fileio import file_sha256, write_json
from ..inference import InferenceSettings
from ..inference.effects import Effect, one_hot
from ..visualize import colorize, instance_overlay, legend, overlay, overlay_palette
from .instance_methods import InstanceOutput
from .prediction_out_dir import (
    LEGEND,
    MANIFEST,
    check_inputs_kept,
    check_legend_free,
    earlier_outputs_left_out,
    input_list,
    prepare_out_dir,
    resolved_folder,
)
from .predictor import CRFOption, Predictor
from .video import TemporalEMA, check_video_model, image_probabilities, predict_video


def expand_inputs(inputs: str | os.PathLike | Sequence[str | os.PathLike]) -> list[Path]:
    """Files, folders (their images and videos, sorted) and glob patterns -> paths, in order, each file once
    (a folder and a file in it name that file twice); a single ``str`` or ``Path`` is one of them. A folder's
    files of other suffixes are left out, and said in the log."""
    paths: list[Path] = []
    for item in input_list(inputs):
        p = Path(item)
        if p.is_dir():
            files = sorted(q for q in p.iterdir() if not q.name.startswith(".") and q.is_file())
            known = [q for q in files if q.suffix.lower() in IMAGE_EXTENSIONS + VIDEO_EXTENSIONS]
            if len(known) < len(files):
                other = [q.name for q in files if q not in known]
                log.warning(
                    "%s: left out %d file(s) whose suffix is no image or video pixelwise reads (%s%s); name a file "
                    "itself to predict it anyway",
                    p,
                    len(other),
                    ", ".join(other[:3]),
                    ", ..." if len(other) > 3 else "",
                )
            paths += known
        elif p.is_file():
            paths.append(p)
        else:
            matches = sorted(Path(m) for m in glob.glob(str(item), recursive=True))
            if not matches:
                raise DataError(f"input {str(item)!r} is no file, folder or matching pattern")
            paths += [m for m in matches if m.is_file()]
    seen: set[Path] = set()  # by folder and name: two links to one file (DVC, git-annex) are two inputs
    once = [q for q in paths if not (resolved_folder(q) in seen or seen.add(resolved_folder(q)))]
    if len(once) < len(paths):
        log.info("%d input(s) named more than once: each predicted once", len(paths) - len(once))
    return once


class PredictionErrors(DataError):
    """Some inputs could not be predicted (``skip_errors``); the others were written."""

    def __init__(self, message: str, written: list[dict[str, Any]], failed: list[dict[str, str]]) -> None:
        super().__init__(message)
        self.written, self.failed = written, failed


log = logging.getLogger(__name__)

# the manifest is saved again as outputs are written, at most this often (and at the end): a run killed with
# kill -9 leaves one that lists all but the last moments' files, and --overwrite finds those by name
MANIFEST_EVERY_S = 2.0


def output_names(stem: str, pages: int) -> set[str]:
    """The file names (without suffix) that an input of ``pages`` pages writes under ``stem`` in each output
    folder: ``stem``, and for a stack ``stem_z0000`` ... per slice."""
    return {stem} if pages == 1 else {stem, *(f"{stem}_z{z:04d}" for z in range(pages))}


def _identity(path: Path) -> tuple[int, int] | None:
    """Which file lies at ``path`` (inode and mtime; None: none): an atomic write that landed puts another there."""
    try:
        st = os.lstat(path)
    except OSError:
        return None
    return st.st_ino, st.st_mtime_ns


def _write_entered(
    files: dict[str, Any],
    key: str,
    path: Path,
    picture: Image.Image | np.ndarray,
    wrote: Callable[[], None] | None,
    *,
    stack: bool = False,
    **options: Any,
) -> None:
    """``picture`` written to ``path`` (:func:`write_image`, ``options`` as there) and entered into the manifest
    entry ``files`` under ``key`` (``stack``: a slice's picture, also listed in ``slices[key]``; ``key`` names the
    first). Entered just before the write and taken out again where it stopped before the file landed: a run
    stopped at any moment lists every file it left and none it did not write. ``wrote`` is called after."""
    before = _identity(path)
    first = key not in files
    if first:
        files[key] = str(path)
    listed = files.setdefault("slices", {}).setdefault(key, []) if stack else None
    if listed is not None:
        listed.append(str(path))
    try:
        write_image(path, picture, **options)
    except BaseException:
        if _identity(path) in (None, before):  # not written: the file there (if any) is not this run's
            if first:
                del files[key]
            if listed is not None:
                listed.pop()
                if not listed:
                    del files["slices"][key]
                if not files["slices"]:
                    del files["slices"]
        raise
    if wrote is not None:
        wrote()


def _write_pictures(
    folder: Path,
    stem: str,
    pages: int,
    pictures: Iterable[np.ndarray],
    files: dict[str, Any],
    wrote: Callable[[], None] | None,
) -> None:
    """Each page's picture as ``folder/<stem>.png``, or for a stack ``folder/<stem>_z0000.png`` ... per slice
    (written as the iterable yields them), each entered into the manifest entry ``files`` as soon as it is written:
    the first under ``folder``'s name (as for one image), a stack's every slice under ``slices``."""
    paths = [folder / f"{stem}.png"] if pages == 1 else [folder / f"{stem}_z{z:04d}.png" for z in range(pages)]
    for path, picture in zip(paths, pictures, strict=True):
        _write_entered(files, folder.name, path, picture, wrote, stack=pages > 1)


def write_prediction(
    out_dir: Path,
    stem: str,
    source: Path,
    pages: list[np.ndarray],
    preds: list[np.ndarray],
    palette: Sequence[Sequence[int]],
    alpha: float,
    *,
    files: dict[str, Any] | None = None,
    wrote: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """``masks/<stem>.png``, ``color/<stem>.png``, ``overlay/<stem>.png`` of one image; for a stack of
    ``n`` pages the masks as one multi-page ``masks/<stem>.tif`` (slice order kept) and the pictures as
    ``color/<stem>_z0000.png`` ... per slice. Returns the manifest entry: ``files`` where given, each output
    entered as soon as it is written (``wrote`` called after each)."""
    files = {} if files is None else files
    files["image"] = str(source)
    contrast = overlay_palette(palette)
    pictures = [
        (colorize(pred, palette), overlay(image_to_uint8(page), colorize(pred, contrast), alpha))
        for page, pred in zip(pages, preds, strict=True)
    ]
    if len(pages) == 1:
        _write_entered(files, "masks", out_dir / "masks" / f"{stem}.png", preds[0], wrote)
    else:
        files["pages"] = len(pages)
        first, *rest = (Image.fromarray(p) for p in preds)
        tiff = {"save_all": True, "append_images": rest, "compression": "tiff_deflate"}
        _write_entered(files, "masks", out_dir / "masks" / f"{stem}.tif", first, wrote, **tiff)
    for sub, index in (("color", 0), ("overlay", 1)):
        _write_pictures(out_dir / sub, stem, len(pages), (p[index] for p in pictures), files, wrote)
    return files


def write_instances(
    out_dir: Path,
    stem: str,
    pages: list[np.ndarray],
    found: list[InstanceOutput],
    alpha: float,
    *,
    files: dict[str, Any] | None = None,
    wrote: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """``instances/<stem>.png`` (16-bit ids, 0 = none; a multi-page TIFF for a stack) and
    ``instance_overlay/<stem>.png`` (each instance its own colour, with its contour); entered into ``files`` (a
    manifest entry) as :func:`write_prediction` does."""
    for sub in ("instances", "instance_overlay"):
        (out_dir / sub).mkdir(exist_ok=True)
    if any(int(f.instances.max(initial=0)) > 65535 for f in found):
        raise DataError(f"{stem}: more than 65535 instances, beyond a 16-bit instance map")
    maps = [Image.fromarray(f.instances.astype(np.uint16)) for f in found]
    files = {} if files is None else files
    files["instance_count"] = sum(int(f.classes.size) for f in found)
    if len(maps) == 1:
        _write_entered(files, "instances", out_dir / "instances" / f"{stem}.png", maps[0], wrote)
    else:
        tiff = {"save_all": True, "append_images": maps[1:], "compression": "tiff_deflate"}
        _write_entered(files, "instances", out_dir / "instances" / f"{stem}.tif", maps[0], wrote, **tiff)
    pictures = (
        instance_overlay(image_to_uint8(page), f.instances, alpha) for page, f in zip(pages, found, strict=True)
    )
    _write_pictures(out_dir / "instance_overlay", stem, len(pages), pictures, files, wrote)
    return files


def write_effect(
    out_dir: Path,
    stem: str,
    pages: list[np.ndarray],
    probs: list[torch.Tensor],
    effect: Effect,
    *,
    files: dict[str, Any] | None = None,
    wrote: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """``effect/<stem>.png`` (RGBA for cutout); for a stack ``effect/<stem>_z0000.png`` ... per slice; entered
    into ``files`` (a manifest entry) as :func:`write_prediction` does."""
    (out_dir / "effect").mkdir(exist_ok=True)
    pictures = (effect.apply(page, p) for page, p in zip(pages, probs, strict=True))
    files = {} if files is None else files
    _write_pictures(out_dir / "effect", stem, len(pages), pictures, files, wrote)
    return files


def predict(
    checkpoint: str | os.PathLike,
    inputs: str | os.PathLike | Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    *,
    device: str = "auto",
    alpha: float = 0.5,
    amp: str = "none",
    inference: InferenceSettings | dict[str, Any] | None = None,
    crf: CRFOption = None,
    backend: str = "auto",
    compile: bool = False,
    overwrite: bool = False,
    skip_errors: bool = False,
    progress: bool = True,
    effect: str | None = None,
    foreground: str | Sequence[str | int] | None = None,
    smooth: float | None = None,
    video_masks: str | None = None,
    batch_size: int = 4,
    audio: bool = True,
    decoding: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """For each input image (``inputs``: files, folders and glob patterns, or a single one as a ``str`` or
    ``Path``) write ``out_dir/masks/<stem>.png`` (class indices), ``color/<stem>.png``
    (palette colours) and ``overlay/<stem>.png`` (a multi-page TIFF: every slice, see
    :func:`~pixelwise.engine.prediction_files.write_prediction`), and ``out_dir/manifest.json`` (the checkpoint's
    path and sha256, the settings, the inputs, every file written and every input that failed; saved again as files
    are written, at most every :data:`MANIFEST_EVERY_S` seconds, and at the end, Ctrl-C included). One image at a time:
    memory stays flat. A non-empty ``out_dir`` needs ``overwrite``. ``skip_errors`` carries on past unreadable images
    and raises :class:`PredictionErrors` at the end. ``backend="onnxruntime"`` (``"auto"``, the default, for an
    ``.onnx`` file) runs an ONNX file written by
    ``pixelwise export`` instead of a checkpoint; ``compile`` as :func:`pixelwise.inference.optimize_for_inference`
    (torch backend); ``crf`` as :class:`Predictor`.

    ``effect`` (``blur[=SIGMA]``, ``replace=IMAGE_OR_COLOUR``, ``cutout``, ``highlight[=OPACITY]``) on the
    ``foreground`` classes (names or indices; :meth:`pixelwise.inference.effects.Effect.from_spec`) also writes
    ``effect/<stem>.png``. A video input (:data:`pixelwise.data.video.VIDEO_EXTENSIONS`) is predicted frame by
    frame by :func:`pixelwise.engine.video.predict_video`: ``<stem>_overlay.mp4``, the effect as
    ``<stem>_effect.mp4``, with ``video_masks`` (``video``/``png``) the class indices; ``smooth``, ``batch_size``
    and ``audio`` as there. ``decoding`` as :class:`Predictor`."""
    out_dir = Path(out_dir)
    inputs = input_list(inputs)
    if not 0 <= alpha <= 1:  # NaN too
        raise ConfigError(f"--alpha {alpha}: the overlay's opacity must be between 0 and 1")
    if smooth is not None:
        TemporalEMA(smooth)  # its range, checked before anything is written
    if batch_size < 1:
        raise ConfigError(f"--batch-size {batch_size}: must be >= 1 (video frames per forward pass)")
    if foreground is not None and effect is None:
        raise ConfigError("--foreground chooses the classes an --effect keeps: add --effect, or leave it out")
    # an earlier prediction's files in an --out that is also the input folder are no inputs; a user's own are
    paths = earlier_outputs_left_out(inputs, expand_inputs(inputs), out_dir)
    if not paths:
        raise DataError(f"no images or videos found in {', '.join(map(str, inputs))}")
    check_inputs_kept(paths, out_dir, effect=effect is not None, video_masks=video_masks)
    predictor = Predictor(
        checkpoint,
        device=device,
        amp=amp,
        compile=compile,
        backend=backend,
        inference=inference,
        crf=crf,
        decoding=decoding,
    )
    chosen = None
    if effect is not None:  # checked before anything is written
        chosen = Effect.from_spec(effect, predictor.classes, predictor.meta["palette"], foreground)
    for path in paths:  # a model video cannot run stops here, not after the images before the video are written
        if is_video(path):
            check_video_model(predictor, path)
            break
    else:  # the video flags do nothing without a video: said, as --crf-* without --crf is
        given = [flag for flag, value in (("--smooth", smooth), ("--video-masks", video_masks)) if value is not None]
        if given:
            verb, them = ("apply", "them") if len(given) > 1 else ("applies", "it")
            raise ConfigError(f"{' and '.join(given)} {verb} to videos, and no input is one: drop {them}")
    check_legend_free(out_dir)
    prepare_out_dir(out_dir, overwrite, keep=paths)
    written: list[dict[str, Any]] = []
    failed: list[dict[str, str]] = []
    used: set[str] = set()
    manifest = {
        "pixelwise": __version__,
        "checkpoint": str(Path(checkpoint).resolve()),
        "sha256": file_sha256(checkpoint),
        "backend": predictor.backend,
        "settings": {
            "amp": predictor.amp,
            "alpha": alpha,
            "inference": None if predictor.inference is None else asdict(predictor.inference),
            "crf": None if predictor.crf is None else asdict(predictor.crf),
            "effect": None if chosen is None else chosen.describe(),
            "smooth": smooth,
            "decoding": predictor.instance_method.decoding if predictor.instance_method.enabled else None,
        },
        "inputs": [str(p) for p in paths],  # before any output: a killed run's are found by these names
        "files": written,
        "failed": failed,
    }
    saved_at = time.monotonic()

    def wrote() -> None:  # after each output file: the manifest saved again, now and then
        nonlocal saved_at
        if time.monotonic() - saved_at >= MANIFEST_EVERY_S:
            write_json(out_dir / MANIFEST, manifest)
            saved_at = time.monotonic()

    try:
        write_json(out_dir / MANIFEST, manifest)  # first: the legend below is known as ours even if killed
        # which colour is which class, in the colour masks and in the overlays (vivid where the palette is grey)
        write_image(out_dir / LEGEND, legend(predictor.classes, predictor.meta["palette"]))
        for path in tqdm(paths, desc="predict", unit="img", disable=not progress, dynamic_ncols=True):
            stem = path.stem
            predictor.last_switched = None
            try:
                if is_video(path):
                    while stem in used:  # same stem from two folders: keep both
                        stem += "_"
                    video = predict_video(
                        predictor,
                        path,
                        out_dir,
                        stem=stem,
                        alpha=alpha,
                        batch_size=batch_size,
                        smooth=smooth,
                        effect=chosen,
                        masks=video_masks,
                        audio=audio,
                        progress=progress,
                    )
                    used.add(stem)
                    if predictor.last_switched is not None:  # its frames in sliding windows: said, as for images
                        video["inference"] = asdict(predictor.last_switched)
                    written.append(video)
                    wrote()
                    continue
                pages = predictor.read(path)
                # the names this input's files take (a stack's slices: <stem>_z0000 ...): none may be another's
                while not used.isdisjoint(output_names(stem, len(pages))):
                    stem += "_"
                probs = None
                if predictor.instance_method.enabled:
                    found = [predictor.predict_instances(page, str(path)) for page in pages]
                    preds = [f.semantic.astype(np.uint8) for f in found]
                    if chosen is not None:  # as serve: the effect from the decoded mask (outputs may not be classes)
                        probs = [torch.from_numpy(one_hot(pred, len(predictor.classes))) for pred in preds]
                elif chosen is not None:  # the effect needs probabilities: their argmax is the prediction
                    probs = [image_probabilities(predictor, page, str(path)) for page in pages]
                    found, preds = None, [class_argmax(p, 0).to(torch.uint8).cpu().numpy() for p in probs]
                else:
                    found, preds = None, [predictor.predict(page, str(path)) for page in pages]
            except (DataError, ResourceError) as e:
                if isinstance(e, ResourceError):  # about the machine: name the image it could not do
                    e = ResourceError(f"{path}: {e}")
                failed.append({"image": str(path), "error": str(e)})  # the manifest says so, stopped or not
                if not skip_errors:
                    raise e from None
                log.warning("skipped: %s", e)
                continue
            used.update(output_names(stem, len(pages)))
            # listed before its outputs are written, each entered as it is: a run stopped part way through this
            # input lists the files it left (the entry says "incomplete" until its last is written)
            files: dict[str, Any] = {"image": str(path), "incomplete": True}
            written.append(files)
            if predictor.last_switched is not None:  # not the settings above: the manifest says what this one ran
                files["inference"] = asdict(predictor.last_switched)
            write_prediction(
                out_dir, stem, path, pages, preds, predictor.meta["palette"], alpha, files=files, wrote=wrote
            )
            if found is not None:
                write_instances(out_dir, stem, pages, found, alpha, files=files, wrote=wrote)
            if probs is not None and chosen is not None:
                write_effect(out_dir, stem, pages, probs, chosen, files=files, wrote=wrote)
            del files["incomplete"]
    finally:
        write_json(out_dir / MANIFEST, manifest)
    if failed:
        names = "; ".join(f"{Path(f['image']).name}" for f in failed[:5])
        raise PredictionErrors(
            f"{len(failed)} of {len(paths)} image(s) could not be predicted ({names}"
            f"{'; ...' if len(failed) > 5 else ''}); the others were written, see {out_dir / MANIFEST}",
            written,
            failed,
        )
    return written
