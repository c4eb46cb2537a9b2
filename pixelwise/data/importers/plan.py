"""What a format reader makes of SRC, a :class:`Plan` (the classes, the items of each split, what it left out and
why, and how to convert one item into a :class:`Converted`), and the helpers the readers share to make it: reading
annotation PNGs and split lists, lookup tables, instance ids renumbered, unknown values listed."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from ...errors import DataError
from ..io import open_image


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


# ----------------------------------------------------------------------------------------------------------------
# helpers the formats share


@contextmanager
def _annotation_png(path: Path, what: str) -> Iterator[Image.Image]:
    """The opened annotation file; what fails while it is opened or read is one DataError naming it."""
    try:
        with open_image(path, what) as im:
            yield im
    except DataError:
        raise
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise DataError(f"cannot read {what} {path}: {e}") from None


def read_index_png(path: Path, what: str = "annotation") -> np.ndarray:
    """An 8-bit single-channel PNG (grey or palette) as its stored indices; DataError otherwise."""
    with _annotation_png(path, what) as im:
        if im.mode not in ("L", "P"):
            raise DataError(f"{what} {path} has mode {im.mode!r}, not an 8-bit index PNG")
        return np.array(im)


def read_rgb_png(path: Path, what: str = "annotation") -> np.ndarray:
    """An image as ``H x W x 3`` uint8 (palette images mapped to their colours, alpha dropped)."""
    with _annotation_png(path, what) as im:
        return np.array(im.convert("RGB"))


def read_int_png(path: Path, what: str = "annotation") -> np.ndarray:
    """A single-channel integer PNG (8, 16 or 32 bits) as int64."""
    with _annotation_png(path, what) as im:
        if im.mode not in ("L", "P", "I", "I;16", "I;16B", "I;16L", "I;16N"):
            raise DataError(f"{what} {path} has mode {im.mode!r}, not a single-channel integer PNG")
        return np.array(im).astype(np.int64)


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


def read_json_object(path: Path, kind: str, what: str = "") -> dict[str, Any]:
    """A JSON file (UTF-8, a BOM dropped) holding an object; a DataError naming the file otherwise, saying it is not
    ``kind`` (what it should be) when it holds something else. ``what`` prefixes the file in read errors."""
    try:
        data = json.loads(path.read_text(encoding="utf-8-sig"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read {what}{path}: {e}") from None
    if not isinstance(data, dict):
        raise DataError(f"{path} is not {kind}")
    return data


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
