"""The output folder of a prediction run (``pixelwise predict --out``): what an earlier run left there (its
``manifest.json``, the outputs it lists, and those a killed run wrote after its manifest was last saved), made
ready for this run (``--overwrite`` removes the earlier run's outputs, never a user's files or this run's inputs),
and the inputs that must not be an output of this run or of the earlier one."""

from __future__ import annotations

import functools
import json
import logging
import os
import re
import shutil
import stat
from collections.abc import Iterable, Sequence
from pathlib import Path

from ..data.video import is_video
from ..errors import DataError
from ..fileio import TEMP_SUFFIX

log = logging.getLogger(__name__)


def input_list(inputs: str | os.PathLike | Sequence[str | os.PathLike]) -> list[str | os.PathLike]:
    """``inputs`` as a list: a single path (a ``str`` or ``Path``) is one input, not its characters."""
    return [inputs] if isinstance(inputs, (str, os.PathLike)) else list(inputs)


OUTPUT_FOLDERS = ("masks", "color", "overlay")
MANIFEST = "manifest.json"
LEGEND = "legend.png"


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

    @functools.cache
    def patterns(kind: str) -> list[re.Pattern]:
        """The names a killed run's outputs of ``kind`` take; compiled only where a recent file needs them (one
        alternation of every input's stem: a folder of 100 000 earlier outputs is not matched file by file)."""
        tmp = rf"\.[0-9a-f]{{8}}{re.escape(TEMP_SUFFIX)}"
        if kind == "image":
            image = rf"(?:{stem_alternation(inputs)})_*(_z\d{{4}})?\.(png|tif)"
            return [re.compile(image), re.compile(rf"\.{image}{tmp}")]
        video = rf"(?:{stem_alternation(videos)})_*_(overlay|effect|masks)"
        if kind == "root":  # a video's outputs, as finished and as encoded; a temporary manifest or legend
            return [
                re.compile(rf"{video}\.(mp4|mov|mkv)"),
                re.compile(rf"\.{video}\.partial\.(mp4|mov|mkv)"),
                re.compile(rf"\.({re.escape(MANIFEST)}|{re.escape(LEGEND)}){tmp}"),
            ]
        if kind == "frame":
            return [re.compile(r"\d{6}\.png"), re.compile(rf"\.\d{{6}}\.png{tmp}")]
        return [re.compile(rf"(?:{stem_alternation(videos)})_*")]  # a video's frames folder

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
            if any(n.fullmatch(path.name) for n in patterns(kind)) and resolved_folder(path) not in keep:
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
    kept = {resolved_folder(Path(p)) for p in keep}
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


def resolved_folder(path: Path) -> Path:
    """``path`` with its folder resolved (not the file: a link in --out is itself replaced by an output)."""
    return path.absolute().parent.resolve() / path.name


def earlier_outputs_left_out(
    inputs: str | os.PathLike | Sequence[str | os.PathLike], paths: list[Path], out_dir: Path
) -> list[Path]:
    """``paths`` without the files an earlier prediction into ``out_dir`` wrote (its manifest lists them; with
    --out an input folder a re-run took them as inputs); one named as an input itself is refused, as --overwrite
    removes it before it is read."""
    entries = _earlier_manifest_entries(out_dir)
    earlier = {resolved_folder(path) for _, path, _, _ in _earlier_outputs(out_dir, entries or [])}
    earlier |= {resolved_folder(out_dir / LEGEND)} if entries is not None else set()

    def listed(path: Path) -> bool:  # (or in a listed folder: a video's masks as PNGs)
        return resolved_folder(path) in earlier or resolved_folder(path).parent in earlier

    legend = resolved_folder(out_dir / LEGEND)  # ours alone: left out quietly, as a shell's "photos/*.png" names it
    for item in input_list(inputs):
        if Path(item).is_file() and listed(Path(item)) and resolved_folder(Path(item)) != legend:
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
        return re.compile(rf"(?P<stem>{stem_alternation(inputs)})_*{tail}", re.IGNORECASE)

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
        where = resolved_folder(path)
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


def stem_alternation(paths: Iterable[Path]) -> str:
    """A regex alternation of the stems of ``paths`` (longest first, so that ``a_b`` is not taken as ``a``), or one
    that matches nothing: the names predict gives an input's outputs start with its stem."""
    return "|".join(sorted({re.escape(p.stem) for p in paths}, key=len, reverse=True)) or "(?!)"
