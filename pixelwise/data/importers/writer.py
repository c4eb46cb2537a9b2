"""The writer of the native layout: :func:`run_import` converts a :class:`~.plan.Plan`'s items on a thread pool
(PNG decoding and encoding, zlib and file copies release the GIL; threads also share the big annotation files of
COCO instead of pickling them to processes) into a staging folder (:mod:`.staging`), each item checked as data
check will read it, and returns the :class:`~.summary.ImportSummary`. Nothing is ever written under SRC."""

from __future__ import annotations

import contextlib
import io
import logging
import os
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

from ...errors import DataError
from ...fileio import write_json
from ..info import MASKS_ORIENTED, DatasetInfo, thing_indices
from ..io import IMAGE_EXTENSIONS, check_instance_classes, check_pixels, open_image, orient_array, probe_image
from .plan import Converted, Item, Plan
from .staging import commit, staging_folder
from .summary import ImportSummary

log = logging.getLogger(__name__)

SPLIT_ORDER = ("train", "val", "test")
IGNORE_COLOUR = (255, 255, 255)
"""The colour the written palette PNG masks show ignore pixels in (only their look: the pixels hold the index)."""


# errors of a converter that are no malformed file: our own bugs and the machine's limits
OURS_OR_THE_MACHINES = (MemoryError, AttributeError, NameError, AssertionError, RecursionError)

T = TypeVar("T")
R = TypeVar("R")


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


def _save_png(image: Image.Image, path: Path, exif: Image.Exif | None = None) -> None:
    image.save(path, format="PNG", compress_level=6, **({"exif": exif} if exif else {}))


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
                    _save_png(im, out, exif=im.getexif())  # its orientation, which the copied files keep too
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
                _save_png(im, out, exif=im.getexif())  # its orientation, which the copied files keep too
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
    except OURS_OR_THE_MACHINES:  # a bug of ours, or out of memory: the import stops (all or nothing)
        raise
    except Exception as e:  # a reader's own error on one malformed file (scipy, numpy, Pillow): skip that item
        log.debug("cannot convert %s", source, exc_info=True)
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
    except DataError as e:  # this item's files (others, e.g. a full disk, stop the import: all or nothing)
        for p in written:
            p.unlink(missing_ok=True)
        res.skipped.append((source, str(e)))
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
    staging = staging_folder(final)
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
        commit(staging, final)
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
