"""A data set's ``classes.json`` (:class:`DatasetInfo`) and where data sets live (:func:`resolve_data_root`).

Keys read from ``classes.json``:

``classes``
    the class names, in index order (required).
``palette``
    an ``[r, g, b]`` per class (default: Pascal VOC's colour map).
``ignore_index``
    the mask value that marks unlabelled pixels (default 255).
``num_classes``
    optional; must equal the number of ``classes``.
``value_map``
    optional ``{"stored value": class index or the ignore value}``: masks are mapped through it when read
    (values not named keep their value), e.g. ``{"255": 1}`` for 0/255 binary masks.
``image_range``
    optional ``[low, high]``: 16-bit, 32-bit integer and float images are mapped to ``[0, 1]`` by
    ``(x - low) / (high - low)`` (values outside are clipped). Default: the type's range (16-bit: 0..65535;
    float: taken as already in [0, 1]). 8-bit images are always read as they are.

``masks_oriented``
    optional ``true``: the masks are drawn on the images as their EXIF orientation turns them (``pixelwise data
    import`` writes it where it turned masks, or read them so drawn): ``data check`` does not warn about
    labelled images with an orientation tag.

Every other key is kept in :attr:`DatasetInfo.extra`.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DataError

DATA_ROOT_ENV = "PIXELWISE_DATA"
MASKS_ORIENTED = "masks_oriented"


def resolve_data_root(*candidates: str | os.PathLike | None) -> Path:
    """The first of ``candidates`` that is set, else ``$PIXELWISE_DATA``, else ``./data``.

    Callers pass, in order of precedence, the ``--data-root`` flag and the config's ``data.root``.
    """
    for value in (*candidates, os.environ.get(DATA_ROOT_ENV)):
        if value:
            return Path(value).expanduser()
    return Path("data")


def default_palette(n: int) -> list[list[int]]:
    """Pascal VOC's bit-interleaved colour map, for data sets without a palette."""
    out = []
    for i in range(n):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        out.append([r, g, b])
    return out


def check_colour(value: Any, path: str | os.PathLike, what: str) -> tuple[int, int, int]:
    """``value`` as an ``(r, g, b)`` colour, or a DataError naming ``path`` and ``what``."""
    if (
        not isinstance(value, (list, tuple))
        or len(value) != 3
        or not all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 255 for v in value)
    ):
        raise DataError(f"{path}: {what} must be [r, g, b] with integers 0..255, not {value!r}")
    return int(value[0]), int(value[1]), int(value[2])


def thing_indices(classes: Sequence[str], instance_classes: Sequence[str] | None) -> list[int]:
    """Indices of the classes whose objects are counted one by one (``"instance_classes"`` of classes.json, the
    "things" of panoptic segmentation); none or empty: every class but the first."""
    if instance_classes:
        return [list(classes).index(c) for c in instance_classes]
    return list(range(1, len(classes)))


@dataclass
class DatasetInfo:
    """What ``classes.json`` says: class names, palette (RGB per class), the ignore value, the optional
    mask value map and image value range; ``path`` is the file it came from (None if built by hand)."""

    name: str
    classes: list[str]
    palette: list[list[int]]
    ignore_index: int = 255
    extra: dict[str, Any] = field(default_factory=dict)
    value_map: dict[int, int] = field(default_factory=dict)
    image_range: tuple[float, float] | None = None
    instance_classes: list[str] = field(default_factory=list)
    path: Path | None = None

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def thing_classes(self) -> list[int]:
        """Indices of the classes whose objects are counted one by one (:func:`thing_indices`)."""
        return thing_indices(self.classes, self.instance_classes)

    @property
    def source(self) -> str:
        """The classes.json file, for messages."""
        return str(self.path) if self.path is not None else f"the classes.json of {self.name!r}"

    def mask_lut(self) -> np.ndarray | None:
        """The 256-entry uint8 lookup table of :attr:`value_map` (identity elsewhere), None without one."""
        if not self.value_map:
            return None
        lut = np.arange(256, dtype=np.uint8)
        for stored, target in self.value_map.items():
            lut[stored] = target
        return lut

    @classmethod
    def load(cls, root: str | os.PathLike, name: str) -> DatasetInfo:
        path = Path(root) / name / "classes.json"
        if not path.is_file():
            raise DataError(
                f"no data set {name!r} under data root {str(root)!r}: {path} does not exist "
                f"(the data root is --data-root, else a config's data.root, else ${DATA_ROOT_ENV}, else ./data)"
            )
        try:
            # UTF-8, a BOM dropped: Notepad's "UTF-8 with BOM", as the importers read their JSON
            raw = json.loads(path.read_text(encoding="utf-8-sig"))
            listed = raw["classes"]
        except UnicodeDecodeError:  # UTF-16 (Notepad's "Unicode", PowerShell 5's >)
            raise DataError(f"{path} is not UTF-8 text: save it as UTF-8") from None
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise DataError(f"{path}: not a valid classes.json ({e}); it needs a 'classes' list") from None
        # a mapping would be read in key order (not by its values), a string letter by letter
        names = (str, int, float)
        if (
            not isinstance(listed, list)
            or not listed
            or not all(isinstance(c, names) for c in listed)
            or any(isinstance(c, bool) for c in listed)
        ):
            raise DataError(
                f'{path}: "classes" must list the class names in index order, e.g. ["background", "road"], not '
                f"{json.dumps(listed)[:60]}"
            )
        classes = [str(c) for c in listed]
        if "num_classes" in raw and raw["num_classes"] != len(classes):
            raise DataError(
                f'{path}: "num_classes" is {raw["num_classes"]!r} but "classes" lists {len(classes)} names; '
                f'make them agree (or drop "num_classes")'
            )
        for i, name_i in enumerate(classes):
            if name_i in classes[:i]:
                raise DataError(
                    f"{path}: class {name_i!r} is listed twice (entries {classes.index(name_i)} and {i}); "
                    "class names must differ"
                )
        palette = raw.get("palette") or default_palette(len(classes))
        if not isinstance(palette, list) or len(palette) != len(classes):
            count = len(palette) if isinstance(palette, list) else repr(palette)
            raise DataError(f"{path}: {len(classes)} classes but {count} palette entries")
        palette = [list(check_colour(c, path, f"palette entry {i}")) for i, c in enumerate(palette)]
        ignore = raw.get("ignore_index", 255)
        n = len(classes)
        if n > 255:
            raise DataError(
                f"{path}: {n} classes, and 8-bit masks hold classes 0-254 with 255 left to mark unlabelled pixels: "
                "at most 255 classes"
            )
        if isinstance(ignore, bool) or not isinstance(ignore, int) or not n <= ignore <= 255:
            # masks are 8-bit and 0..n-1 are the classes: any other value cannot mark pixels without a label
            raise DataError(
                f'{path}: "ignore_index" is {ignore!r}; it must be a whole number from {n} to 255 (8-bit masks, '
                f"classes 0-{n - 1}), e.g. 255"
            )
        return cls(
            name,
            classes,
            palette,
            ignore,
            raw,
            value_map=_value_map(raw.get("value_map"), len(classes), ignore, path),
            image_range=check_image_range(raw.get("image_range"), path),
            instance_classes=_instance_classes(raw.get("instance_classes"), classes, path),
            path=path,
        )


def _value_map(raw: Any, num_classes: int, ignore: int, path: Path) -> dict[int, int]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise DataError(f'{path}: "value_map" must be an object {{"stored value": class index}}, not {raw!r}')
    out: dict[int, int] = {}
    for key, value in raw.items():
        try:
            stored = int(key)
        except (TypeError, ValueError):
            stored = -1
        if not 0 <= stored <= 255:
            raise DataError(f'{path}: "value_map" key {key!r} is not a mask value (0..255)')
        if isinstance(value, bool) or not isinstance(value, int) or not (0 <= value < num_classes or value == ignore):
            raise DataError(
                f'{path}: "value_map" maps {key} to {value!r}, which is neither a class index '
                f"(0..{num_classes - 1}) nor the ignore value {ignore}"
            )
        out[stored] = value
    return out


def _instance_classes(raw: Any, classes: list[str], path: Path) -> list[str]:
    if raw is None:
        return []
    if not isinstance(raw, list) or not all(isinstance(c, str) for c in raw):
        raise DataError(f'{path}: "instance_classes" must be a list of class names, not {raw!r}')
    unknown = [c for c in raw if c not in classes]
    if unknown:
        raise DataError(
            f'{path}: "instance_classes" names {", ".join(map(repr, unknown))}, not among the classes '
            f"({', '.join(classes)})"
        )
    return list(raw)


def check_image_range(raw: Any, path: Path) -> tuple[float, float] | None:
    """classes.json's ``image_range`` (``path`` names the file) as ``(low, high)``, or None; DataError if malformed."""
    if raw is None:
        return None
    numbers = isinstance(raw, list) and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in raw)
    try:
        lo, hi = (float(v) for v in raw) if numbers and len(raw) == 2 else (math.nan, math.nan)
    except OverflowError:  # an integer of hundreds of digits
        lo = hi = math.nan
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):  # an infinite bound made the images NaN or 0
        raise DataError(f'{path}: "image_range" must be [low, high], finite numbers with low < high, not {raw!r}')
    return lo, hi
