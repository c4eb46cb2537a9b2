"""The data check: read every image/mask pair of a data set and report every problem at once.

:func:`check_dataset` reads each file with the readers the data set uses (:mod:`pixelwise.data.io`) and
collects, per split:

errors (training or evaluation would stop on them)
    unreadable files, two files of one stem, images without masks and masks without images, multi-page
    images, image/mask (and image/instance-map) size mismatches, label values that are no class, 0/255
    masks in a 2-class data set without a value_map, float images outside [0, 1] without an image_range.
warnings
    images smaller than :data:`SMALL_IMAGE` pixels on a side, masks that are mostly ignore (more than
    :data:`~pixelwise.data.io.MOSTLY_IGNORE` of their pixels), classes that never occur in the split.

It also counts the pixels of each class per split (value_map applied) and, where ``instances/<split>``
exists, the instances. Each kind of warning is also logged once per split (not once per file).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
from tqdm.auto import tqdm

from ..errors import DataError
from .dataset import list_split, size_mismatch_message
from .info import MASKS_ORIENTED, DatasetInfo
from .io import (
    MOSTLY_IGNORE,
    check_instance_classes,
    check_mask_values,
    count_instances,
    mask_histogram,
    multipage_message,
    probe_image,
    read_image,
    read_instances,
    read_mask,
)

log = logging.getLogger(__name__)

SMALL_IMAGE = 32
"""Images with a side shorter than this many pixels are warned about (too small for most networks' strides)."""

_SPLIT_ORDER = ("train", "val", "test")


class Problem(NamedTuple):
    """One problem: the file (or folder) it is about, the message, ``"error"`` or ``"warning"``, the split."""

    file: str
    message: str
    level: str
    split: str


@dataclass
class SplitReport:
    """What one split holds: file counts, pixels per class (value_map applied), ignored pixels, instances."""

    split: str
    images: int = 0
    masks: int = 0
    labelled: bool = False
    histogram: list[int] = field(default_factory=list)
    ignore_pixels: int = 0
    instances: int | None = None
    never_occurring: list[str] = field(default_factory=list)
    mostly_ignore: int = 0
    small: int = 0
    seconds: float = 0.0


@dataclass
class DataCheckReport:
    """The result of :func:`check_dataset`: per-split summaries and every problem found."""

    root: Path
    name: str
    info: DatasetInfo
    splits: dict[str, SplitReport] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def errors(self) -> list[tuple[str, str]]:
        """``(file, message)`` of every error."""
        return [(p.file, p.message) for p in self.problems if p.level == "error"]

    @property
    def warnings(self) -> list[tuple[str, str]]:
        """``(file, message)`` of every warning."""
        return [(p.file, p.message) for p in self.problems if p.level == "warning"]

    @property
    def ok(self) -> bool:
        """True when there are no errors (warnings allowed)."""
        return not any(p.level == "error" for p in self.problems)

    def to_dict(self) -> dict:
        """The report as JSON-ready data: data set, classes, per-split summaries, problems."""
        return {
            "root": str(self.root),
            "dataset": self.name,
            "classes": list(self.info.classes),
            "ok": self.ok,
            "seconds": self.seconds,
            "splits": {name: asdict(s) for name, s in self.splits.items()},
            "problems": [p._asdict() for p in self.problems],
        }

    def format(self, max_problems: int | None = 50) -> str:
        """A readable text report: splits, pixels per class per split, then the problems (at most
        ``max_problems`` per split and level; None for all)."""
        splits = list(self.splits.values())
        lines = [
            f"data set {self.name!r} under {self.root}: {len(self.info.classes)} classes, ignore "
            f"{self.info.ignore_index}" + (f", value_map {self.info.value_map}" if self.info.value_map else "")
        ]
        rows = [["split", "images", "masks", "instances", "errors", "warnings", "seconds"]]
        for s in splits:
            errors = sum(p.split == s.split and p.level == "error" for p in self.problems)
            warns = sum(p.split == s.split and p.level == "warning" for p in self.problems)
            rows.append(
                [
                    s.split,
                    str(s.images),
                    str(s.masks) if s.labelled else "-",
                    "-" if s.instances is None else str(s.instances),
                    str(errors),
                    str(warns),
                    f"{s.seconds:.1f}",
                ]
            )
        lines += ["", *text_table(rows)]
        labelled = [s for s in splits if s.labelled and s.histogram]
        if labelled:
            rows = [["class", *(f"{s.split} pixels" for s in labelled), *(f"{s.split} %" for s in labelled)]]
            totals = [max(1, sum(s.histogram) + s.ignore_pixels) for s in labelled]
            names = [*self.info.classes, f"(ignore {self.info.ignore_index})"]
            for i, name in enumerate(names):
                values = [s.histogram[i] if i < len(s.histogram) else s.ignore_pixels for s in labelled]
                rows.append(
                    [
                        name,
                        *(f"{v:,}" for v in values),
                        *(f"{100 * v / t:.2f}" for v, t in zip(values, totals, strict=True)),
                    ]
                )
            lines += ["", *text_table(rows)]
        if self.problems:
            lines.append("")
            for split in dict.fromkeys(p.split for p in self.problems):
                for level in ("error", "warning"):
                    found = [p for p in self.problems if p.split == split and p.level == level]
                    shown = found if max_problems is None else found[:max_problems]
                    lines += [f"{level} [{split}] {p.message}" for p in shown]
                    if len(found) > len(shown):
                        lines.append(f"{level} [{split}] ... and {len(found) - len(shown)} more {level}s")
        verdict = "OK" if self.ok else f"{len(self.errors)} error(s)"
        lines += ["", f"{verdict}, {len(self.warnings)} warning(s) ({self.seconds:.1f} s)"]
        return "\n".join(lines)


def text_table(rows: list[list[str]]) -> list[str]:
    """Rows of cells as aligned text lines (first column left, the others right), a rule under the header."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    out = [
        "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True)))
        for r in rows
    ]
    out.insert(1, "  ".join("-" * w for w in widths))
    return out


@dataclass
class _Item:
    problems: list[tuple[str, str, str]] = field(default_factory=list)  # (file, message, level)
    histogram: np.ndarray | None = None
    instances: int | None = None
    mostly_ignore: bool = False
    small: bool = False
    turned: bool = False  # a labelled image with an EXIF orientation: read turned, its mask as stored


def _check_item(image: Path, mask: Path | None, instances: Path | None, info: DatasetInfo) -> _Item:
    item = _Item()
    size: tuple[int, int] | None = None  # (width, height) as read
    m: np.ndarray | None = None
    orientation = 1
    try:
        _, pages, orientation = probe_image(image)
        item.turned = mask is not None and 2 <= orientation <= 8  # what read_image turns (an invalid tag: nothing)
        if pages > 1:
            item.problems.append((str(image), multipage_message(image, pages), "error"))
        else:
            array = read_image(image, None, image_range=info.image_range)
            size = (array.shape[1], array.shape[0])
            if min(size) < SMALL_IMAGE:
                item.small = True
                item.problems.append(
                    (str(image), f"image {image} is {size[0]}x{size[1]}, smaller than {SMALL_IMAGE} px", "warning")
                )
    except DataError as e:
        item.problems.append((str(image), str(e), "error"))
    if mask is not None:
        try:
            m = read_mask(mask, info)
            if size is not None and (m.shape[1], m.shape[0]) != size:
                msize = (m.shape[1], m.shape[0])
                message = size_mismatch_message(mask, msize, image, size, orientation)
                item.problems.append((str(mask), message, "error"))
            hist = mask_histogram(m)
            item.histogram = hist
            check_mask_values(hist, info, mask)
            ignored = hist[info.ignore_index] / max(1, m.size)
            if ignored > MOSTLY_IGNORE:
                item.mostly_ignore = True
                item.problems.append(
                    (str(mask), f"mask {mask} is {100 * ignored:.0f} % ignore ({info.ignore_index})", "warning")
                )
        except DataError as e:
            item.problems.append((str(mask), str(e), "error"))
    if instances is not None:
        try:
            inst = read_instances(instances)
            isize = (inst.shape[1], inst.shape[0])
            item.instances = count_instances(inst)
            if size is not None and isize != size:
                message = size_mismatch_message(instances, isize, image, size, orientation, kind="instance map")
                item.problems.append((str(instances), message, "error"))
            elif m is not None and m.shape == inst.shape:
                check_instance_classes(inst, m, info.ignore_index, instances, info.thing_classes, info.classes)
        except DataError as e:
            item.problems.append((str(instances), str(e), "error"))
    return item


def dataset_splits(root: str | os.PathLike, name: str) -> list[str]:
    """The splits of a data set (its ``images/`` subfolders), train, val and test first; a DataError without an
    ``images`` folder."""
    folder = Path(root) / name / "images"
    if not folder.is_dir():
        raise DataError(f"data set {name!r} has no images folder: {folder} does not exist")
    found = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    return sorted(found, key=lambda s: (_SPLIT_ORDER.index(s) if s in _SPLIT_ORDER else len(_SPLIT_ORDER), s))


def _names(paths: list[str], limit: int = 3) -> str:
    names = [Path(p).name for p in paths[:limit]]
    return ", ".join(names) + (f" and {len(paths) - limit} more" if len(paths) > limit else "")


def check_dataset(
    root: str | os.PathLike,
    name: str,
    splits: str | Sequence[str] | None = None,
    *,
    progress: bool = True,
    num_workers: int | None = None,
    warn: bool = True,
) -> DataCheckReport:
    """Read every image, mask and instance map of the given splits (a list, or one split's name as a ``str``;
    default: every folder under ``images/``) and report every problem. ``num_workers`` threads read files
    (default: the CPU count, at most 8). With ``warn``, each kind of warning is also logged once per split.
    DataError only if the data set itself (classes.json, the images folder) is missing or invalid."""
    start = time.perf_counter()
    root = Path(root)
    if isinstance(splits, str):  # one split, not its letters
        splits = [splits]
    info = DatasetInfo.load(root, name)
    report = DataCheckReport(root, name, info)
    workers = max(1, num_workers if num_workers is not None else min(8, os.cpu_count() or 1))
    n = info.num_classes
    with ThreadPoolExecutor(workers) as pool:
        for split in list(splits) if splits is not None else dataset_splits(root, name):
            t0 = time.perf_counter()
            summary = SplitReport(split)
            report.splits[split] = summary

            def add(file: str | Path, message: str, level: str = "error", split: str = split) -> None:
                report.problems.append(Problem(str(file), message, level, split))

            try:
                files = list_split(root, name, split)
            except DataError as e:
                add(root / name / "images" / split, str(e))
                continue
            for file, message in files.problems + files.instance_problems:
                add(file, message)
            summary.images = len(files.images)
            summary.labelled = files.masks is not None
            summary.masks = len(files.masks or {})
            inst = files.instances
            jobs = [
                (image, (files.masks or {}).get(stem), (inst or {}).get(stem)) for stem, image in files.images.items()
            ]
            results = pool.map(lambda job: _check_item(*job, info), jobs)
            hist = np.zeros(256, dtype=np.int64)
            instances = 0
            mostly: list[str] = []
            small: list[str] = []
            turned: list[str] = []
            for (image, mask, _), item in tqdm(
                zip(jobs, results, strict=True),
                total=len(jobs),
                desc=f"check {name}/{split}",
                unit="img",
                disable=not progress,
                leave=False,
            ):
                for file, message, level in item.problems:
                    add(file, message, level)
                if item.histogram is not None:
                    hist += item.histogram
                instances += item.instances or 0
                if item.mostly_ignore:
                    mostly.append(str(mask))
                if item.small:
                    small.append(str(image))
                if item.turned:
                    turned.append(str(image))
            if summary.labelled:
                summary.histogram = hist[:n].tolist()
                summary.ignore_pixels = int(hist[info.ignore_index]) if info.ignore_index >= n else 0
                summary.never_occurring = [c for c, v in zip(info.classes, summary.histogram, strict=True) if v == 0]
            summary.instances = instances if inst is not None else None
            summary.mostly_ignore, summary.small = len(mostly), len(small)
            if summary.never_occurring and summary.masks:
                message = (
                    f"class(es) {', '.join(repr(c) for c in summary.never_occurring)} never occur in split "
                    f"{split!r} of {name!r} ({summary.masks} masks)"
                )
                add(files.mask_dir, message, "warning")
                if warn:
                    log.warning("%s", message)
            if turned and not info.extra.get(MASKS_ORIENTED):
                # the size check cannot tell (a half turn, a square image): a mask drawn on the stored pixels
                # would train on labels turned away from their image
                message = (
                    f"{len(turned)} labelled image(s) of split {split!r} of {name!r} carry an EXIF orientation "
                    f"({_names(turned)}): pixelwise reads them turned, as viewers show them, so their masks must "
                    "be drawn on the turned image; if a mask follows the stored pixels, strip the image's tag "
                    "(e.g. exiftool -Orientation= FILE) or turn the mask"
                )
                add(str(files.image_dir), message, "warning")
                if warn:
                    log.warning("%s", message)
            if warn and mostly:
                log.warning(
                    "%d of %d masks of split %r of %r are mostly ignore (more than %d %% of their pixels): %s",
                    len(mostly),
                    summary.masks,
                    split,
                    name,
                    round(100 * MOSTLY_IGNORE),
                    _names(mostly),
                )
            if warn and small:
                log.warning(
                    "%d of %d images of split %r of %r are smaller than %d px: %s",
                    len(small),
                    summary.images,
                    split,
                    name,
                    SMALL_IMAGE,
                    _names(small),
                )
            summary.seconds = time.perf_counter() - t0
    report.seconds = time.perf_counter() - start
    return report


def require_valid(
    root: str | os.PathLike, name: str, splits: list[str] | tuple[str, ...], *, progress: bool = True
) -> DataCheckReport:
    """:func:`check_dataset` as a pre-flight (``pixelwise train`` runs it): a DataError naming the first error
    and how many there are, so that a bad file stops the run before its first step, not hours into it."""
    report = check_dataset(root, name, splits, progress=progress)
    errors = report.errors
    if errors:
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        raise DataError(
            f"data check of {name!r} ({', '.join(splits)}): {errors[0][1]}{more}; "
            f"`pixelwise data check {name}` lists every problem (or train with --no-check-data to skip the check)"
        )
    return report
