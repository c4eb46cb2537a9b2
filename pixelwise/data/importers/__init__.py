"""Import the standard data set formats into pixelwise's native layout (``pixelwise data import``).

:func:`import_dataset` reads SRC as the format's own documentation lays it out and writes ``DST/NAME/`` in the
native layout (:mod:`pixelwise.data.dataset`): ``images/<split>/`` (the source files copied, or hard-linked, as
they are; re-encoded to PNG only when pixelwise cannot read their file type), ``masks/<split>/*.png`` (8-bit class
indices, 255 = ignore, stored as palette PNGs so they also show in colour), ``instances/<split>/*.png`` (16-bit,
0 = none) where the format has objects, and ``classes.json`` (names, palette, ignore index, instance classes). Each
format, its split and class mapping and what it leaves out are in its module and in ``docs/importers.md``:

==================  ======================================================================================
``voc``             Pascal VOC 2012 segmentation (:mod:`.voc`)
``sbd``             SBD merged with VOC 2012: train_aug and VOC val (:mod:`.voc`)
``cityscapes``      Cityscapes fine annotations, 19 train ids (:mod:`.cityscapes`)
``ade20k``          ADE20K SceneParsing, 150 classes (:mod:`.ade20k`)
``coco``            COCO instance annotations (:mod:`.coco`; needs pycocotools)
``coco-panoptic``   COCO panoptic annotations (:mod:`.coco`)
``coco-stuff``      COCO-Stuff stuffthingmaps, 171 classes (:mod:`.coco`)
``rgb``             colour masks in the native layout with a palette (:mod:`.rgb`)
``labelme``         LabelMe JSON polygons (:mod:`.labelme`)
==================  ======================================================================================

SRC is only read. A non-empty ``DST/NAME`` is refused unless ``overwrite``; the import is written into a hidden
staging folder beside it and renamed into place at the end, so a failed import leaves nothing behind and an
overwrite replaces the old data set in one step.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from ...errors import ConfigError, DataError
from ...lazy_imports import lazy_exports

if TYPE_CHECKING:
    from .plan import Plan
    from .summary import ImportSummary

FORMATS: dict[str, str] = {
    "voc": ".voc",
    "sbd": ".voc",
    "cityscapes": ".cityscapes",
    "ade20k": ".ade20k",
    "coco": ".coco",
    "coco-panoptic": ".coco",
    "coco-stuff": ".coco",
    "rgb": ".rgb",
    "labelme": ".labelme",
}
"""Format name -> the module of its reader, ``plan_<format>`` (``-`` read as ``_``), which plans the import. The
readers (and numpy, Pillow and torch with them) load when a format is used, so the CLI lists the names quickly."""

PALETTE_FORMATS = ("rgb", "labelme")
"""The formats that take ``palette`` (a classes.json giving the classes and their colours)."""


def format_reader(fmt: str) -> Callable[[Path, Path | None], Plan]:
    """The reader of ``fmt`` (a key of :data:`FORMATS`): given the source folder and the palette file (or
    ``None``), it returns the import's :class:`~.plan.Plan`."""
    return getattr(importlib.import_module(FORMATS[fmt], __name__), "plan_" + fmt.replace("-", "_"))


def default_workers() -> int:
    """Threads an import uses by default: the CPUs this process may run on, at most 8."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    return max(1, min(8, cpus))


def import_dataset(
    format: str,
    src: str | os.PathLike,
    dst: str | os.PathLike,
    *,
    name: str | None = None,
    overwrite: bool = False,
    workers: int | None = None,
    palette: str | os.PathLike | None = None,
    link: bool = False,
    progress: bool = True,
) -> ImportSummary:
    """Import the data set at ``src``, in the layout of ``format`` (one of :data:`FORMATS`), into
    ``dst/name`` (``name`` defaults to the format's name) in pixelwise's native layout.

    ``overwrite``: replace a non-empty ``dst/name`` (refused otherwise). ``workers``: threads converting images
    (default :func:`default_workers`). ``palette``: for ``rgb`` and ``labelme``, a classes.json giving the
    classes (and their colours, and an optional ``ignore_color`` for ``rgb``). ``link``: hard-link the images
    instead of copying them, where the file system allows (they then share their bytes with the source: edit them
    only by replacing the file). ``progress``: a progress bar per split.

    Returns the :class:`ImportSummary` (images per split, pixels per class, what was skipped and why).
    ConfigError for a wrong argument, DataError (one line naming the file) for a source that is not in the
    format's layout, a non-empty destination, or colours/labels the palette does not know."""
    fmt = str(format).lower()
    if fmt not in FORMATS:
        raise ConfigError(f"unknown import format {format!r}; choose one of {', '.join(FORMATS)}")
    src_path, dst_path = Path(src).expanduser(), Path(dst).expanduser()
    if not src_path.is_dir():
        raise DataError(f"source {src_path} is not a folder")
    if palette is not None and fmt not in PALETTE_FORMATS:
        raise ConfigError(f"--palette is for the {' and '.join(PALETTE_FORMATS)} formats, not {fmt}")
    palette_path = None if palette is None else Path(palette).expanduser()
    if palette_path is not None and not palette_path.is_file():
        raise DataError(f"palette file {palette_path} does not exist")
    n_workers = default_workers() if workers is None else int(workers)
    if n_workers < 1:
        raise ConfigError(f"--workers must be at least 1, not {workers}")
    from .staging import check_destination
    from .writer import run_import

    final = check_destination(src_path, dst_path, name or fmt, overwrite)
    plan = format_reader(fmt)(src_path, palette_path)
    return run_import(fmt, src_path, final, plan, workers=n_workers, link=link, progress=progress)


__getattr__, __dir__ = lazy_exports(__name__, {".summary": ["ImportSummary"]})

__all__ = ["FORMATS", "PALETTE_FORMATS", "ImportSummary", "default_workers", "format_reader", "import_dataset"]
