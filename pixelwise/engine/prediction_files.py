"""A prediction run over files (``pixelwise predict``, :func:`predict`) and what it writes: its inputs expanded,
its output folder made ready, and per input ``masks/``, ``color/``, ``overlay/`` (and ``instances/``,
``instance_overlay/``, ``effect/``), each written whole or not at all, and the manifest."""

from __future__ import annotations

import functools
import glob
import json
import logging
import os
import re
import shutil
import stat
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
from ..fileio import TEMP_SUFFIX, file_sha256, write_json
from ..inference import InferenceSettings
from ..inference.effects import Effect, one_hot
from ..visualize import colorize, instance_overlay, legend, overlay, overlay_palette
from .instance_methods import InstanceOutput
from .predictor import CRFOption, Predictor
from .video import TemporalEMA, check_video_model, image_probabilities, predict_video


def input_list(inputs: str | os.PathLike | Sequence[str | os.PathLike]) -> list[str | os.PathLike]:
    """``inputs`` as a list: a single path (a ``str`` or ``Path``) is one input, not its characters."""
    return [inputs] if isinstance(inputs, (str, os.PathLike)) else list(inputs)


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
    once = [q for q in paths if not (_where(q) in seen or seen.add(_where(q)))]
    if len(once) < len(paths):
        log.info("%d input(s) named more than once: each predicted once", len(paths) - len(once))
    return once


class PredictionErrors(DataError):
    """Some inputs could not be predicted (``skip_errors``); the others were written."""

    def __init__(self, message: str, written: list[dict[str, Any]], failed: list[dict[str, str]]) -> None:
        super().__init__(message)
        self.written, self.failed = written, failed


log = logging.getLogger(__name__)

OUTPUT_FOLDERS = ("masks", "color", "overlay")
MANIFEST = "manifest.json"
LEGEND = "legend.png"
# the manifest is saved again as outputs are written, at most this often (and at the end): a run killed with
# kill -9 leaves one that lists all but the last moments' files, and --overwrite finds those by name
MANIFEST_EVERY_S = 2.0


def _earlier_manifest_entries(out_dir: Path) -> list | None:
    """The ``files`` of the ``manifest.json`` an earlier prediction left in ``out_dir``; None where there is none
    of ours (no file, unreadable, or not written by pixelwise)."""
    try:
        earlier = json.loads((out_dir / MANIFEST).read_text())
        entries = earlier["files"] if isinstance(earlier, dict) and "pixelwise" in earlier else None
    except (OSError, ValueError, KeyError):
        entries = None
    return entries if isinstance(entries, list) else None


def own_legend(out_dir: Path) -> Path | None:
    """``out_dir/legend.png`` where an earlier prediction wrote it (its manifest lies beside it): no input, and
    replaced by this run's. None where there is no legend, or one of the user's own."""
    path = out_dir / LEGEND
    return path if path.is_file() and _earlier_manifest_entries(out_dir) is not None else None


def check_legend_free(out_dir: Path) -> None:
    """A ``legend.png`` in ``out_dir`` that no earlier prediction wrote is the user's: refused, never replaced."""
    path = out_dir / LEGEND
    if (path.exists() or path.is_symlink()) and own_legend(out_dir) is None:
        raise DataError(
            f"--out {out_dir} holds a {LEGEND} that no earlier prediction wrote (no manifest.json of ours beside it), "
            "and a prediction writes its own there: move or rename it, or choose another --out"
        )


def prepare_out_dir(out_dir: Path, overwrite: bool, keep: Iterable[Path] = ()) -> None:
    """``out_dir`` made ready for a prediction run: never a file, and never a non-empty folder unless
    ``overwrite`` (another run's files would be mixed with these), which first removes the outputs an earlier
    prediction's ``manifest.json`` lists, and those of an interrupted one it could not list yet
    (:func:`_unlisted_outputs`); other files, and ``keep`` (this run's inputs), are left."""
    if out_dir.exists() and not out_dir.is_dir():
        raise DataError(f"--out {out_dir} is a file: give a folder for the masks, colours and overlays")
    if out_dir.is_dir() and not overwrite:
        existing = sorted(p for p in out_dir.rglob("*") if p.is_file())
        if existing:
            raise DataError(
                f"--out {out_dir} is not empty ({len(existing)} files, e.g. {existing[0].relative_to(out_dir)}): "
                "pass --overwrite to replace what is there, or choose another folder"
            )
    if out_dir.is_dir() and overwrite and any(out_dir.iterdir()):
        _remove_earlier_prediction(out_dir, keep)
    for sub in OUTPUT_FOLDERS:
        (out_dir / sub).mkdir(parents=True, exist_ok=True)


OUTPUT_KEYS = ("masks", "color", "overlay", "instances", "instance_overlay", "effect")  # a manifest entry's outputs


def _earlier_outputs(out_dir: Path, entries: list) -> Iterable[tuple[str, Path, bool, bool]]:
    """(key, path, inside an output folder, an older stack's) of each output an earlier prediction's manifest
    ``entries`` list, as it lies in ``out_dir`` (the manifest holds paths as they were typed, maybe from another
    working directory): out_dir/<output folder>/<name>, or out_dir/<name> for a video's files."""
    for entry in entries:
        if not isinstance(entry, dict):
            continue
        slices = entry.get("slices") if isinstance(entry.get("slices"), dict) else {}
        # a stack written before manifests listed every slice: its other slices are found by name
        older_stack = not slices and str(entry.get("pages", "1")).isdigit() and int(entry.get("pages", "1")) > 1
        listed_values = [(key, entry.get(key)) for key in OUTPUT_KEYS]
        listed_values += [(key, v) for key in OUTPUT_KEYS for v in (slices.get(key) or [])]
        for key, value in listed_values:
            if not isinstance(value, str) or Path(value).name in ("", ".", ".."):
                continue
            listed = Path(value)
            inside = listed.parent.name in OUTPUT_KEYS
            yield (
                key,
                (out_dir / listed.parent.name / listed.name if inside else out_dir / listed.name),
                inside,
                older_stack,
            )


def _earlier_inputs(out_dir: Path, entries: list) -> list[Path]:
    """The inputs of the earlier prediction in ``out_dir``: its manifest's ``inputs`` (all it was to predict,
    written before any output) and each entry's ``image`` or ``video``."""
    try:
        earlier = json.loads((out_dir / MANIFEST).read_text())
        named = earlier.get("inputs") if isinstance(earlier, dict) else None
    except (OSError, ValueError):
        named = None
    named = list(named) if isinstance(named, list) else []
    named += [e.get(k) for e in entries if isinstance(e, dict) for k in ("image", "video")]
    return [Path(n) for n in named if isinstance(n, str) and Path(n).stem]


def _unlisted_outputs(out_dir: Path, entries: list, keep: set[Path]) -> Iterable[Path]:
    """What an earlier prediction killed (``kill -9``, a power cut) may have written after its manifest was last
    saved: files in predict's own output folders (and its videos in ``out_dir``) named as it names the outputs of
    one of its inputs (:func:`_earlier_inputs`; a stem may take ``_`` suffixes, a stack ``_z0000`` ...), and their
    temporary files (``.NAME.<hex>.tmp``, a video's ``.NAME.partial.mp4``), and those of the manifest and the legend.
    Only files modified since the manifest was saved (anything the run wrote before, it lists): a data set's own
    ``masks/a.png`` that a killed run never reached stays. Never a link, a folder's other files, nor ``keep``."""
    try:
        saved = (out_dir / MANIFEST).stat().st_mtime_ns
    except OSError:
        return
    inputs = _earlier_inputs(out_dir, entries)
    videos = [p for p in inputs if is_video(p)]

    def stems(paths: Iterable[Path]) -> str:
        return "|".join(sorted({re.escape(p.stem) for p in paths}, key=len, reverse=True)) or "(?!)"

    @functools.cache
    def patterns(kind: str) -> list[re.Pattern]:
        """The names a killed run's outputs of ``kind`` take; compiled only where a recent file needs them (one
        alternation of every input's stem: a folder of 100 000 earlier outputs is not matched file by file)."""
        tmp = rf"\.[0-9a-f]{{8}}{re.escape(TEMP_SUFFIX)}"
        if kind == "image":
            image = rf"(?:{stems(inputs)})_*(_z\d{{4}})?\.(png|tif)"
            return [re.compile(image), re.compile(rf"\.{image}{tmp}")]
        video = rf"(?:{stems(videos)})_*_(overlay|effect|masks)"
        if kind == "root":  # a video's outputs, as finished and as encoded; a temporary manifest or legend
            return [
                re.compile(rf"{video}\.(mp4|mov|mkv)"),
                re.compile(rf"\.{video}\.partial\.(mp4|mov|mkv)"),
                re.compile(rf"\.({re.escape(MANIFEST)}|{re.escape(LEGEND)}){tmp}"),
            ]
        if kind == "frame":
            return [re.compile(r"\d{6}\.png"), re.compile(rf"\.\d{{6}}\.png{tmp}")]
        return [re.compile(rf"(?:{stems(videos)})_*")]  # a video's frames folder

    def ours(folder: Path, kind: str) -> Iterable[Path]:
        if folder.is_symlink() or not folder.is_dir():
            return
        for path in folder.iterdir():
            try:
                st = path.lstat()  # first: a run that ended normally listed everything older than its manifest
            except OSError:
                continue
            if not stat.S_ISREG(st.st_mode) or st.st_mtime_ns < saved:
                continue
            if any(n.fullmatch(path.name) for n in patterns(kind)) and _where(path) not in keep:
                yield path

    yield from ours(out_dir, "root")
    for sub in OUTPUT_KEYS:
        yield from ours(out_dir / sub, "image")
    masks = out_dir / "masks"
    if videos and masks.is_dir() and not masks.is_symlink():  # a video's masks as PNGs: masks/<stem>/000000.png
        for folder in sorted(p for p in masks.iterdir() if patterns("folder")[0].fullmatch(p.name)):
            yield from ours(folder, "frame")


def _remove_earlier_prediction(out_dir: Path, keep: Iterable[Path] = ()) -> None:
    """The outputs an earlier prediction's ``manifest.json`` lists (and the other slices of a stack's), and those
    of an interrupted one it could not list yet (:func:`_unlisted_outputs`), so that the folder holds this run's
    alone; never its inputs nor ``keep``, nothing outside ``out_dir``, nothing without a manifest of ours (a folder
    such as a data set's own ``masks/`` stays as it is)."""
    entries = _earlier_manifest_entries(out_dir)
    if entries is None:
        log.warning("%s holds no manifest.json of an earlier prediction: nothing in it is removed", out_dir)
        return
    kept = {_where(Path(p)) for p in keep}
    unlisted = list(_unlisted_outputs(out_dir, entries, kept))  # (before the listed go: it reads their manifest)
    for path in unlisted:
        path.unlink(missing_ok=True)
    for folder in {p.parent for p in unlisted if p.parent.parent == out_dir / "masks"}:
        if not any(folder.iterdir()):  # a video's frames folder, now empty
            folder.rmdir()
    for key, path, inside, older_stack in _earlier_outputs(out_dir, entries):
        if path.is_symlink() or not path.exists():
            continue
        if path.is_dir():  # a video's masks as PNGs: a folder of its own under masks/, nothing else
            if inside and key == "masks":
                shutil.rmtree(path)
            continue
        siblings = [path]
        if older_stack and path.stem.endswith("_z0000"):  # the manifest names the first
            siblings = sorted(path.parent.glob(f"{path.stem[: -len('_z0000')]}_z[0-9][0-9][0-9][0-9]{path.suffix}"))
        for p in siblings:
            p.unlink(missing_ok=True)
    (out_dir / MANIFEST).unlink(missing_ok=True)
    (out_dir / LEGEND).unlink(missing_ok=True)


def _where(path: Path) -> Path:
    """``path`` with its folder resolved (not the file: a link in --out is itself replaced by an output)."""
    return path.absolute().parent.resolve() / path.name


def earlier_outputs_left_out(
    inputs: str | os.PathLike | Sequence[str | os.PathLike], paths: list[Path], out_dir: Path
) -> list[Path]:
    """``paths`` without the files an earlier prediction into ``out_dir`` wrote (its manifest lists them; with
    --out an input folder a re-run took them as inputs); one named as an input itself is refused, as --overwrite
    removes it before it is read."""
    entries = _earlier_manifest_entries(out_dir)
    earlier = {_where(path) for _, path, _, _ in _earlier_outputs(out_dir, entries or [])}
    earlier |= {_where(out_dir / LEGEND)} if entries is not None else set()

    def listed(path: Path) -> bool:  # (or in a listed folder: a video's masks as PNGs)
        return _where(path) in earlier or _where(path).parent in earlier

    legend = _where(out_dir / LEGEND)  # ours alone: left out quietly, as a shell's "photos/*.png" names it
    for item in input_list(inputs):
        if Path(item).is_file() and listed(Path(item)) and _where(Path(item)) != legend:
            raise DataError(
                f"input {item} is an output of the earlier prediction in --out {out_dir}, which --overwrite removes: "
                "copy it elsewhere first, or choose another --out"
            )
    return [p for p in paths if not listed(p)]


def check_inputs_kept(
    paths: list[Path], out_dir: Path, *, effect: bool = False, video_masks: str | None = None
) -> None:
    """An input where this run writes one of its outputs (``a_overlay.mp4`` beside ``a.mp4`` with --out their
    folder; ``overlay/b.png`` with --out its parent) would be replaced, maybe before it is read: refused. Only the
    outputs this run writes (``effect``, ``video_masks`` as :func:`predict`'s); names are matched loosely (a stem
    may take ``_`` suffixes, a stack ``_z0000`` ...): a false alarm costs a rename."""

    def names(inputs: list[Path], tail: str) -> re.Pattern:
        stems = "|".join(sorted({re.escape(p.stem) for p in inputs}, key=len, reverse=True)) or "(?!)"
        return re.compile(rf"(?P<stem>{stems})_*{tail}", re.IGNORECASE)

    videos = [p for p in paths if is_video(p)]
    written = [
        r"overlay\.mp4",
        *([r"effect\.(mp4|mov)"] if effect else []),
        *([r"masks\.mkv"] if video_masks == "video" else []),
    ]
    video_files = names(videos, rf"_({'|'.join(written)})")
    video_mask_folders = names(videos if video_masks == "png" else [], "")
    folders = {"masks", "color", "overlay", "instances", "instance_overlay", *(["effect"] if effect else [])}
    image_files = names([p for p in paths if not is_video(p)], r"(_z\d{4})?\.(png|tif)")
    owners = {p.stem.lower(): p for p in reversed(paths)}  # the first input of each stem
    root = out_dir.absolute().resolve()
    for path in paths:
        where = _where(path)
        if not where.parent.is_relative_to(root):
            continue
        folder, name = where.parent.relative_to(root).parts, where.name
        if folder == ():  # a video's files
            match = video_files.fullmatch(name)
        elif len(folder) == 1 and folder[0] in folders:  # an image's
            match = image_files.fullmatch(name)
        else:  # a video's masks as PNGs
            frame = len(folder) == 2 and folder[0] == "masks" and re.fullmatch(r"\d{6}\.png", name)
            match = video_mask_folders.fullmatch(folder[1]) if frame else None
        if match:
            raise DataError(
                f"input {path} is where this run writes an output of {owners[match['stem'].lower()]}, and would be "
                "replaced: choose an --out outside the input folders"
            )


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
