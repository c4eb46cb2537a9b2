"""What every importer shares: the plan a format reader makes of SRC, the parallel writer of the native layout,
the staging folder that makes an import all or nothing, and the summary.

A format module turns SRC into a :class:`Plan` (classes, the items of each split, what it left out and why, and a
``convert`` function); :func:`run_import` then converts the items on a thread pool (PNG decoding and encoding,
zlib and file copies release the GIL; threads also share the big annotation files of COCO instead of pickling
them to processes), writes the native layout into a hidden staging folder beside ``DST/NAME`` and renames it into
place only when everything went through, so that a failed or interrupted import leaves nothing half written and
``--overwrite`` replaces the old data set in one step. Nothing is ever written under SRC.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import secrets
import shutil
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from PIL import Image, UnidentifiedImageError
from tqdm.auto import tqdm

from ...errors import ConfigError, DataError
from ...fileio import write_json
from ..check import text_table
from ..info import MASKS_ORIENTED, DatasetInfo, thing_indices
from ..io import IMAGE_EXTENSIONS, check_instance_classes, check_pixels, open_image, orient_array, probe_image

log = logging.getLogger(__name__)

SPLIT_ORDER = ("train", "val", "test")
IGNORE_COLOUR = (255, 255, 255)
"""The colour the written palette PNG masks show ignore pixels in (only their look: the pixels hold the index)."""


T = TypeVar("T")
R = TypeVar("R")


@dataclass
class Item:
    """One image to import: its split and output stem, its source image file (None when the annotation embeds
    the image, as LabelMe's ``imageData``), the annotation file named in messages, and the format's own data."""

    split: str
    stem: str
    image: Path | None
    label: Path | None = None
    data: Any = None


@dataclass
class Converted:
    """What a format's converter made of an :class:`Item`.

    ``mask``: ``H x W`` uint8 class indices (the ignore index where unlabelled), None for an unlabelled split.
    ``instances``: ``H x W`` integer ids (0 = none), None where the split has no instance maps.
    ``image_bytes``/``image_suffix``: an image embedded in the annotation, written as it is; ``image``: the
    image file when the annotation names it (LabelMe's ``imagePath``), instead of :attr:`Item.image`.
    ``skipped``: parts of this item left out (``(file, why)``); the item itself is written.
    ``unknown``: values the palette does not know (colours, labels) -> pixels or shapes; any of them fails the
    import at the end, with the list (they are never guessed)."""

    mask: np.ndarray | None = None
    instances: np.ndarray | None = None
    image_bytes: bytes | None = None
    image_suffix: str | None = None
    image: Path | None = None
    skipped: list[tuple[str, str]] = field(default_factory=list)
    unknown: dict[Any, int] = field(default_factory=dict)


@dataclass
class Plan:
    """A format reader's view of SRC: the classes, the items per split, what it left out and why, and how to
    convert one item. ``unlabelled`` names the splits without masks (e.g. test splits whose labels are not
    published), ``instance_splits`` those with instance maps. ``stored_frame``: the annotations are drawn on the
    stored pixels of the image (COCO, VOC, ...), so that a mask is turned with its image's EXIF orientation, which
    pixelwise applies when it reads the image; False where the annotation tool drew on the oriented image
    (LabelMe). ``unknown_message`` turns the collected unknown values into the one-line error."""

    classes: list[str]
    palette: list[list[int]]
    splits: dict[str, list[Item]]
    convert: Callable[[Item], Converted]
    ignore_index: int = 255
    instance_classes: list[str] | None = None
    unlabelled: set[str] = field(default_factory=set)
    instance_splits: set[str] = field(default_factory=set)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    stored_frame: bool = True
    unknown_message: Callable[[dict[Any, tuple[int, list[str]]]], str] | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class ImportSummary:
    """The result of :func:`pixelwise.data.importers.import_dataset`: what was written where, per split the
    images, masks and instance maps written and the pixels of each class, and everything left out and why."""

    format: str
    source: Path
    dest: Path
    classes: list[str]
    ignore_index: int
    workers: int
    images: dict[str, int] = field(default_factory=dict)
    masks: dict[str, int] = field(default_factory=dict)
    instance_maps: dict[str, int] = field(default_factory=dict)
    instances: dict[str, int] = field(default_factory=dict)
    histogram: dict[str, list[int]] = field(default_factory=dict)
    ignore_pixels: dict[str, int] = field(default_factory=dict)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def total_images(self) -> int:
        return sum(self.images.values())

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready data: paths as strings, skipped entries as ``{"file", "reason"}``."""
        return {
            "format": self.format,
            "source": str(self.source),
            "dest": str(self.dest),
            "classes": list(self.classes),
            "ignore_index": self.ignore_index,
            "workers": self.workers,
            "images": dict(self.images),
            "masks": dict(self.masks),
            "instance_maps": dict(self.instance_maps),
            "instances": dict(self.instances),
            "histogram": {k: list(v) for k, v in self.histogram.items()},
            "ignore_pixels": dict(self.ignore_pixels),
            "skipped": [{"file": f, "reason": r} for f, r in self.skipped],
            "notes": list(self.notes),
            "seconds": self.seconds,
        }

    def format_text(self, max_files: int = 3) -> str:
        """A readable report: where, the notes, images per split, pixels per class per split, and what was
        skipped grouped by reason (``max_files`` file names per reason)."""
        workers = f"{self.workers} worker" + ("s" if self.workers != 1 else "")
        lines = [
            f"imported {self.format} from {self.source} into {self.dest}: {len(self.classes)} classes, ignore "
            f"{self.ignore_index}, {self.total_images} images in {self.seconds:.1f} s ({workers})"
        ]
        lines += [f"note: {n}" for n in self.notes]
        splits = list(self.images)
        rows = [["split", "images", "masks", "instance maps", "instances"]]
        for s in splits:
            has_inst = s in self.instance_maps
            rows.append(
                [
                    s,
                    str(self.images[s]),
                    str(self.masks.get(s, 0)) if s in self.masks else "-",
                    str(self.instance_maps[s]) if has_inst else "-",
                    str(self.instances.get(s, 0)) if has_inst else "-",
                ]
            )
        lines += ["", *text_table(rows)]
        labelled = [s for s in splits if s in self.histogram]
        if labelled:
            rows = [["class", *(f"{s} pixels" for s in labelled), *(f"{s} %" for s in labelled)]]
            totals = [max(1, sum(self.histogram[s]) + self.ignore_pixels[s]) for s in labelled]
            names = [*self.classes, f"(ignore {self.ignore_index})"]
            for i, name in enumerate(names):
                values = [self.histogram[s][i] if i < len(self.classes) else self.ignore_pixels[s] for s in labelled]
                rows.append(
                    [
                        name,
                        *(f"{v:,}" for v in values),
                        *(f"{100 * v / t:.2f}" for v, t in zip(values, totals, strict=True)),
                    ]
                )
            lines += ["", *text_table(rows)]
        if self.skipped:
            groups: dict[str, list[str]] = {}
            for file, reason in self.skipped:
                groups.setdefault(reason, []).append(file)
            lines += ["", f"skipped ({len(self.skipped)}):"]
            for reason, files in groups.items():
                names = ", ".join(files[:max_files]) + (
                    f" and {len(files) - max_files} more" if len(files) > max_files else ""
                )
                lines.append(f"  {reason} ({len(files)}): {names}")
        else:
            lines += ["", "skipped: nothing"]
        return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------------------
# destination: refuse a non-empty DST/NAME, stage, commit


def check_destination(src: Path, dst: Path, name: str, overwrite: bool) -> Path:
    """``DST/NAME``, after refusing a name that is not one folder, a destination inside SRC (or holding it: an
    overwrite would delete the source), and a non-empty destination without ``overwrite``."""
    if not name or name in (".", "..") or "/" in name or os.sep in name or name.startswith("."):
        raise ConfigError(f"--name {name!r} must be a plain folder name (no '/', not starting with '.')")
    final = dst / name
    s, f = src.resolve(), final.resolve()
    if s == f or s in f.parents or f in s.parents:
        raise ConfigError(
            f"destination {final} and source {src} overlap: the import never writes under SRC; choose another DST"
        )
    if final.exists():
        if not final.is_dir():
            raise DataError(f"{final} exists and is not a folder: remove it, or choose another --name")
        if any(final.iterdir()) and not overwrite:
            raise DataError(f"{final} is not empty: pass --overwrite to replace it, or choose another --name")
    return final


def _staging_folder(final: Path) -> Path:
    """A new hidden folder beside ``final`` with the permissions any new folder gets (``mkdtemp``'s 0700 would
    stay on the data set after the rename, unreadable to the other users of a shared data root)."""
    while True:
        staging = final.parent / f".{final.name}.import-{secrets.token_hex(4)}"
        try:
            staging.mkdir()
            return staging
        except FileExistsError:
            continue


def _commit(staging: Path, final: Path) -> None:
    """Rename the finished staging folder to ``final``; an old ``final`` is moved aside first and deleted after,
    so that a crash in between leaves either data set whole."""
    old = None
    if final.exists():
        if any(final.iterdir()):
            old = final.parent / f".{final.name}.old-{os.getpid()}"
            os.replace(final, old)
        else:
            final.rmdir()
    os.replace(staging, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


# ----------------------------------------------------------------------------------------------------------------
# writing one item


@dataclass
class _Result:
    written: bool = False
    histogram: np.ndarray | None = None
    instances: int | None = None
    oriented: bool = False
    skipped: list[tuple[str, str]] = field(default_factory=list)
    unknown: dict[Any, int] = field(default_factory=dict)


def _mask_palette(palette: list[list[int]], ignore_index: int) -> list[int]:
    flat = [0] * 768
    for i, colour in enumerate(palette[:256]):
        flat[3 * i : 3 * i + 3] = colour
    if 0 <= ignore_index < 256 and ignore_index >= len(palette):
        flat[3 * ignore_index : 3 * ignore_index + 3] = IGNORE_COLOUR
    return flat


def _save_png(image: Image.Image, path: Path) -> None:
    image.save(path, format="PNG", compress_level=6)


def _write_image(item: Item, conv: Converted, folder: Path, link: bool) -> Path:
    """The item's image in ``folder`` as it is (copied, or hard-linked with ``link``), or re-encoded to PNG
    (lossless) when its file type is not one pixelwise reads."""
    if conv.image_bytes is not None:
        out = folder / f"{item.stem}{conv.image_suffix or '.png'}"
        if out.suffix.lower() not in IMAGE_EXTENSIONS:
            out = out.with_suffix(".png")
            name = f"{item.label} (imageData)"  # Pillow's messages name no file
            try:
                with open_image(io.BytesIO(conv.image_bytes), "the image embedded in", name) as im:
                    _save_png(im, out)
            except DataError:
                raise
            except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
                raise DataError(f"cannot read the image embedded in {name}: {e}") from None
        else:
            out.write_bytes(conv.image_bytes)
        return out
    src = conv.image or item.image
    assert src is not None
    if src.suffix.lower() not in IMAGE_EXTENSIONS:
        out = folder / f"{item.stem}.png"
        try:
            with Image.open(src) as im:
                _save_png(im, out)
        except (UnidentifiedImageError, OSError, ValueError) as e:
            raise DataError(f"cannot read image {src}: {e}") from None
        return out
    out = folder / f"{item.stem}{src.suffix}"
    if link:
        try:
            os.link(src, out)
            return out
        except OSError:  # another file system, or links not allowed there: copy instead
            pass
    shutil.copyfile(src, out)
    return out


def _process(item: Item, plan: Plan, staging: Path, link: bool) -> _Result:
    res = _Result()
    source = str(item.label or item.image)
    try:
        conv = plan.convert(item)
    except DataError as e:
        res.skipped.append((source, str(e)))
        return res
    except Exception as e:  # a reader's own error on one malformed file (scipy, numpy, Pillow): skip that item
        log.debug("cannot convert %s", source, exc_info=True)  # the traceback, should it be a bug of ours
        res.skipped.append((source, f"cannot convert: {_error_line(e)}"))
        return res
    res.skipped += conv.skipped
    res.unknown = conv.unknown
    labelled = item.split not in plan.unlabelled
    if labelled and conv.mask is None:
        res.skipped.append((source, "no mask for this image"))
        return res
    with_instances = item.split in plan.instance_splits
    if with_instances and conv.instances is None:
        res.skipped.append((source, "no instance map for this image"))
        return res
    image_src = conv.image or item.image
    if conv.image_bytes is None and (image_src is None or not image_src.is_file()):
        res.skipped.append((str(image_src or source), "image file missing"))
        return res
    written: list[Path] = []
    try:
        image = _write_image(item, conv, staging / "images" / item.split, link)
        written.append(image)
        # every pixel, not the header alone: a truncated file's header reads, and data check then fails on it
        check_pixels(image, image_src or source)
        (w, h), pages, orientation = probe_image(image)
        if pages > 1:
            raise DataError(f"image {image_src or image.name} has {pages} pages; one image per file is needed")
        if not labelled:
            res.written = True
            return res
        mask, inst = conv.mask, conv.instances
        assert mask is not None
        if orientation != 1 and plan.stored_frame:
            raw = (h, w) if orientation in (5, 6, 7, 8) else (w, h)  # the stored (width, height)
            if mask.shape != (raw[1], raw[0]):
                raise DataError(
                    f"annotation {source} is {mask.shape[1]}x{mask.shape[0]} but image {image_src} is {raw[0]}x{raw[1]}"
                )
            mask = orient_array(mask, orientation)
            inst = None if inst is None else orient_array(inst, orientation)
            res.oriented = True
        if mask.shape != (h, w):
            raise DataError(
                f"annotation {source} is {mask.shape[1]}x{mask.shape[0]} but image {image_src or image.name} is {w}x{h}"
            )
        if mask.dtype != np.uint8 and mask.size and (mask.min() < 0 or mask.max() > 255):
            raise DataError(f"annotation {source} holds label values outside 0..255")
        mask = np.ascontiguousarray(mask, dtype=np.uint8)
        hist = np.bincount(mask.ravel(), minlength=256)
        n = len(plan.classes)
        bad = [int(v) for v in np.flatnonzero(hist) if v >= n and v != plan.ignore_index]
        if bad:
            raise DataError(f"annotation {source} holds label value(s) {bad[:5]}, no class of the {n}")
        mask_path = staging / "masks" / item.split / f"{item.stem}.png"
        if inst is not None:
            if inst.shape != mask.shape:
                raise DataError(f"instance annotation of {source} is not the size of its mask")
            if inst.size and int(inst.max()) > 65535:
                raise DataError(f"{source} has instance ids above 65535, more than a 16-bit instance map holds")
            things = thing_indices(plan.classes, plan.instance_classes)  # as data check will read the result
            check_instance_classes(inst, mask, plan.ignore_index, Path(source), things, plan.classes)
        # a palette PNG: the pixels are the class indices pixelwise reads, the palette only shows them in colour
        indexed = Image.frombytes("P", (w, h), mask.tobytes())
        indexed.putpalette(_mask_palette(plan.palette, plan.ignore_index))
        _save_png(indexed, mask_path)
        written.append(mask_path)
        if inst is not None:
            inst_path = staging / "instances" / item.split / f"{item.stem}.png"
            _save_png(Image.fromarray(np.ascontiguousarray(inst, dtype=np.uint16)), inst_path)
            written.append(inst_path)
            res.instances = int(np.count_nonzero(np.bincount(inst.ravel().astype(np.int64))[1:]))
        res.histogram = hist
        res.written = True
        return res
    except Exception as e:  # DataError, or a reader's own error on this item's files: skip it, keep the rest
        for p in written:
            p.unlink(missing_ok=True)
        if not isinstance(e, DataError):
            log.debug("cannot write %s", source, exc_info=True)
        res.skipped.append((source, str(e) if isinstance(e, DataError) else f"cannot write: {_error_line(e)}"))
        res.oriented = False
        return res


def _error_line(e: Exception) -> str:
    """An unexpected error as one line: its type (which says what failed where the message alone does not)."""
    text = " ".join(str(e).split())
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


# ----------------------------------------------------------------------------------------------------------------
# the run


def ordered_map(fn: Callable[[T], R], items: Iterable[T], workers: int) -> Iterator[tuple[T, R]]:
    """``(item, fn(item))`` in the order of ``items``, computed by ``workers`` threads with at most
    ``4 x workers`` items in flight, so that a large split streams instead of queueing every result."""
    if workers <= 1:
        for item in items:
            yield item, fn(item)
        return
    pool = ThreadPoolExecutor(workers, thread_name_prefix="pixelwise-import")
    pending: deque[tuple[T, Future[R]]] = deque()
    source = iter(items)
    try:
        for item in source:
            pending.append((item, pool.submit(fn, item)))
            if len(pending) >= 4 * workers:
                break
        while pending:
            item, future = pending.popleft()
            result = future.result()
            nxt = next(source, None)
            if nxt is not None:
                pending.append((nxt, pool.submit(fn, nxt)))
            yield item, result
    finally:
        for _, future in pending:
            future.cancel()
        pool.shutdown(wait=True, cancel_futures=True)


def _shared_between_splits(plan: Plan) -> list[str]:
    """A note per pair of splits that list the same source file (a VOC id in both train.txt and val.txt): the
    image is imported into both, as listed, and the scores on the second flatter the model trained on the first."""
    first: dict[Path, str] = {}
    shared: dict[tuple[str, str], list[str]] = {}
    for split in _sorted_splits(plan.splits):
        for item in plan.splits[split]:
            source = item.image or item.label
            if source is None:
                continue
            seen = first.setdefault(source, split)
            if seen != split:
                shared.setdefault((seen, split), []).append(source.name)
    return [
        f"{len(names)} image(s) in both split {a!r} and split {b!r} (e.g. {names[0]}), imported into both: scores on "
        f"{b!r} will flatter a model trained on {a!r}; list each image in one split"
        for (a, b), names in shared.items()
    ]


def _sorted_splits(splits: Iterable[str]) -> list[str]:
    return sorted(splits, key=lambda s: (SPLIT_ORDER.index(s) if s in SPLIT_ORDER else len(SPLIT_ORDER), s))


def run_import(
    fmt: str,
    src: Path,
    final: Path,
    plan: Plan,
    *,
    workers: int,
    link: bool = False,
    progress: bool = True,
) -> ImportSummary:
    """Write ``plan`` into ``final`` (checked by :func:`check_destination`) through a staging folder beside it."""
    start = time.perf_counter()
    if len(plan.classes) > plan.ignore_index:
        # masks are 8-bit and the ignore value is one of them: class 255 would be ignored, 256 and up do not fit
        raise DataError(
            f"{src}: {len(plan.classes)} classes, more than 8-bit masks hold ({plan.ignore_index} at most, "
            f"background included; {plan.ignore_index} marks ignored pixels): merge or leave out categories"
        )
    # the folders this import creates (DST and any missing parents), removed again if it fails
    created = [p for p in (final.parent, *final.parent.parents) if not p.exists()]
    final.parent.mkdir(parents=True, exist_ok=True)
    summary = ImportSummary(fmt, src, final, list(plan.classes), plan.ignore_index, workers)
    summary.notes = list(plan.notes) + _shared_between_splits(plan)
    summary.skipped = list(plan.skipped)
    for note in plan.notes:  # the summary lists them (the CLI prints it): debug here, not twice on screen
        log.debug("%s: %s", fmt, note)
    unknown: dict[Any, tuple[int, list[str]]] = {}
    n = len(plan.classes)
    staging = _staging_folder(final)
    try:
        oriented = 0
        for split in _sorted_splits(plan.splits):
            items = plan.splits[split]
            seen: set[str] = set()
            unique = []
            for item in items:
                if item.stem in seen:
                    summary.skipped.append(
                        (str(item.label or item.image), f"a second image of stem {item.stem!r} in split {split!r}")
                    )
                    continue
                seen.add(item.stem)
                unique.append(item)
            if not unique:
                summary.notes.append(f"split {split!r}: nothing to import")
                continue
            labelled = split not in plan.unlabelled
            (staging / "images" / split).mkdir(parents=True)
            if labelled:
                (staging / "masks" / split).mkdir(parents=True)
            if split in plan.instance_splits:
                (staging / "instances" / split).mkdir(parents=True)
            hist = np.zeros(256, dtype=np.int64)
            count = masks = instance_total = 0
            results = ordered_map(lambda it: _process(it, plan, staging, link), unique, workers)
            # closing: on an error or Ctrl-C the pool stops (and its threads finish) before staging is removed
            with (
                contextlib.closing(results),
                tqdm(
                    results,
                    total=len(unique),
                    desc=f"import {fmt} {split}",
                    unit="img",
                    disable=not progress,
                    leave=False,
                ) as bar,
            ):
                for item, res in bar:
                    summary.skipped += res.skipped
                    for key, value in res.unknown.items():
                        total, files = unknown.get(key, (0, []))
                        unknown[key] = (total + value, [*files, str(item.label or item.image)])
                    if not res.written:
                        continue
                    count += 1
                    oriented += res.oriented
                    if res.histogram is not None:
                        masks += 1
                        hist += res.histogram
                    instance_total += res.instances or 0
            if count == 0:
                shutil.rmtree(staging / "images" / split, ignore_errors=True)
                shutil.rmtree(staging / "masks" / split, ignore_errors=True)
                shutil.rmtree(staging / "instances" / split, ignore_errors=True)
                summary.notes.append(f"split {split!r}: every image was skipped")
                continue
            summary.images[split] = count
            if labelled:
                summary.masks[split] = masks
                summary.histogram[split] = hist[:n].tolist()
                summary.ignore_pixels[split] = int(hist[plan.ignore_index]) if plan.ignore_index >= n else 0
            if split in plan.instance_splits:
                summary.instance_maps[split] = count
                summary.instances[split] = instance_total
        if unknown:
            if plan.unknown_message is None:  # a format without a palette never reports unknown values
                raise AssertionError(f"{fmt}: unknown values without a message: {list(unknown)[:5]}")
            raise DataError(plan.unknown_message(unknown))
        if not summary.images:
            raise DataError(f"nothing imported from {src}: every image was skipped ({_first_reason(summary)})")
        if oriented:
            summary.notes.append(
                f"{oriented} mask(s) turned with their image's EXIF orientation (pixelwise reads images oriented)"
            )
        classes_json: dict[str, Any] = {
            "classes": list(plan.classes),
            "palette": [list(map(int, c)) for c in plan.palette],
            "ignore_index": plan.ignore_index,
        }
        if plan.instance_classes is not None:
            classes_json["instance_classes"] = list(plan.instance_classes)
        if oriented or not plan.stored_frame:  # the masks are drawn on the turned images: data check need not warn
            classes_json[MASKS_ORIENTED] = True
        classes_json.update(plan.extra)
        write_json(staging / "classes.json", classes_json)
        DatasetInfo.load(staging.parent, staging.name)  # what we wrote must read back
        _commit(staging, final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        for folder in created:  # deepest first; one that something else has written into stays
            try:
                folder.rmdir()
            except OSError:
                break
        raise
    summary.seconds = time.perf_counter() - start
    log.info(
        "%s: %d images into %s in %.1f s (%d skipped)",
        fmt,
        summary.total_images,
        final,
        summary.seconds,
        len(summary.skipped),
    )
    return summary


def _first_reason(summary: ImportSummary) -> str:
    return summary.skipped[0][1] if summary.skipped else "no images found"


# ----------------------------------------------------------------------------------------------------------------
# helpers the formats share


def read_index_png(path: Path, what: str = "annotation") -> np.ndarray:
    """An 8-bit single-channel PNG (grey or palette) as its stored indices; DataError otherwise."""
    try:
        with open_image(path, what) as im:
            if im.mode not in ("L", "P"):
                raise DataError(f"{what} {path} has mode {im.mode!r}, not an 8-bit index PNG")
            return np.array(im)
    except DataError:
        raise
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise DataError(f"cannot read {what} {path}: {e}") from None


def read_rgb_png(path: Path, what: str = "annotation") -> np.ndarray:
    """An image as ``H x W x 3`` uint8 (palette images mapped to their colours, alpha dropped)."""
    try:
        with open_image(path, what) as im:
            return np.array(im.convert("RGB"))
    except DataError:
        raise
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise DataError(f"cannot read {what} {path}: {e}") from None


def read_int_png(path: Path, what: str = "annotation") -> np.ndarray:
    """A single-channel integer PNG (8, 16 or 32 bits) as int64."""
    try:
        with open_image(path, what) as im:
            if im.mode not in ("L", "P", "I", "I;16", "I;16B", "I;16L", "I;16N"):
                raise DataError(f"{what} {path} has mode {im.mode!r}, not a single-channel integer PNG")
            return np.array(im).astype(np.int64)
    except DataError:
        raise
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise DataError(f"cannot read {what} {path}: {e}") from None


def lut(mapping: dict[int, int], size: int = 256, default: int = 255) -> np.ndarray:
    """A lookup table of ``size`` entries: ``mapping`` where given, ``default`` elsewhere."""
    table = np.full(size, default, dtype=np.int64)
    for k, v in mapping.items():
        table[k] = v
    return table


def relabel(ids: np.ndarray) -> np.ndarray:
    """Instance ids (0 = none) renumbered 1..K in increasing order of the original id, as uint16."""
    uniq, inverse = np.unique(ids, return_inverse=True)
    new = np.arange(len(uniq), dtype=np.int64)
    if not (uniq.size and uniq[0] == 0):  # no background among the ids: the first id becomes 1
        new += 1
    return new[inverse.reshape(ids.shape)].astype(np.uint16)


def read_list(path: Path) -> list[str]:
    """The ids of a split list, one a line (UTF-8, a BOM dropped): the whole line, stripped (an id with spaces
    stays whole), except VOC's two-column form ``ID FLAG`` (``2007_000032 1``, ``... -1``, ``... 0``), whose first
    word is the id; only those three flags, so that ``frame 12`` stays whole."""
    ids = []
    for line in path.read_text(encoding="utf-8-sig").splitlines():
        words = line.split()
        if words:
            two_column = len(words) == 2 and words[1] in ("-1", "0", "1")
            ids.append(words[0] if two_column else line.strip())
    return ids


def require_dir(path: Path, fmt: str, what: str) -> Path:
    if not path.is_dir():
        raise DataError(f"{path} does not exist: {fmt} SRC must be {what}")
    return path


def describe_unknown(
    what: str, source: str, fix: str, unknown: dict[Any, tuple[int, list[str]]], unit: str = "px", limit: int = 8
) -> str:
    """One line listing unknown values, most frequent first, each with its count and first files."""
    parts = []
    for key, (count, files) in sorted(unknown.items(), key=lambda kv: -kv[1][0])[:limit]:
        shown = ", ".join(Path(f).name for f in files[:3]) + (f" +{len(files) - 3} more" if len(files) > 3 else "")
        parts.append(f"{key} ({count:,} {unit} in {shown})")
    more = f"; and {len(unknown) - limit} more" if len(unknown) > limit else ""
    return f"{len(unknown)} {what} not in {source}: {'; '.join(parts)}{more}; {fix}"
