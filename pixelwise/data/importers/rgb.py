"""Colour-coded masks (``rgb``): a data set in pixelwise's native layout whose masks are colour PNGs, one colour
per class, as the original CamVid release and many custom sets store them.

SRC holds ``images/<split>/<stem>.<ext>`` and ``masks/<split>/<stem>.png`` (colour; palette PNGs are read as
their colours, an alpha channel is dropped), optionally ``instances/<split>/<stem>.png`` (copied through). The
palette file (``--palette FILE``, default ``SRC/classes.json``) is a classes.json (:mod:`pixelwise.data.info`)
whose ``palette`` gives each class's ``[r, g, b]``, with an optional ``"ignore_color": [r, g, b]`` for the
unlabelled colour (-> the ignore index). Every colour of every mask must be one of these: colours that are not
are listed with their pixel counts and files, and the import fails (a colour is never matched to its nearest).
What ``SRC/classes.json`` says of the images is kept in the written classes.json: ``image_range`` (the scale of
high-depth images) and ``masks_oriented`` (the masks are drawn on the turned images, so they are not turned).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ...errors import DataError
from ..info import MASKS_ORIENTED, check_colour, check_image_range  # the check data check makes, before any work
from ..io import IMAGE_EXTENSIONS
from .plan import Converted, Item, Plan, describe_unknown, read_int_png, read_json_object, read_rgb_png

MASK_SUFFIXES = (".png", ".bmp", ".tif", ".tiff")
CLASSES_JSON = "a classes.json (a JSON object with a 'classes' list)"
"""Lossless files a colour mask may come in (a JPEG's colours are not exact)."""


def load_palette_file(path: Path) -> dict[str, Any]:
    """The classes.json given as ``--palette``: classes, optional palette (as colour tuples), ignore index and
    colour, instance classes. DataError naming the file for anything malformed."""
    raw = read_json_object(path, CLASSES_JSON, "palette file ")
    try:
        classes = [str(c) for c in raw["classes"]]
    except (KeyError, TypeError):
        raise DataError(f"{path}: not a classes.json (it needs a 'classes' list)") from None
    if not isinstance(raw["classes"], list) or not classes:  # a string would be its letters
        what = "is empty" if isinstance(raw["classes"], list) else "is not a list"
        raise DataError(f"{path}: 'classes' {what}: list the class names, class 0 first")
    if len(set(classes)) != len(classes):
        raise DataError(f"{path}: a class name appears twice in 'classes'")
    palette = raw.get("palette")
    colours = None
    if palette is not None:
        if not isinstance(palette, list) or len(palette) != len(classes):
            raise DataError(f"{path}: 'palette' must give one [r, g, b] per class ({len(classes)})")
        pairs = zip(palette, classes, strict=True)
        colours = [check_colour(c, path, f"the palette entry of {name!r}") for c, name in pairs]
    ignore = raw.get("ignore_index", 255)
    if not isinstance(ignore, int) or not 0 <= ignore <= 255 or ignore < len(classes):
        raise DataError(f"{path}: 'ignore_index' must be an integer in {len(classes)}..255, not {ignore!r}")
    ignore_color = raw.get("ignore_color")
    if ignore_color is not None:
        ignore_color = check_colour(ignore_color, path, "'ignore_color'")
    things = raw.get("instance_classes")
    if things is not None and (not isinstance(things, list) or any(t not in classes for t in things)):
        raise DataError(f"{path}: 'instance_classes' must list names among its classes")
    return {
        "classes": classes,
        "colours": colours,
        "ignore_index": ignore,
        "ignore_color": ignore_color,
        "instance_classes": things,
        "raw": raw,
    }


def _codes(rgb: np.ndarray) -> np.ndarray:
    rgb = rgb.astype(np.int64)
    return (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]


def _rgb_converter(table: dict[int, int], ignore: int) -> Any:
    def convert(item: Item) -> Converted:
        mask_path, inst_path = item.data
        if mask_path is None:
            return Converted()
        codes = _codes(read_rgb_png(mask_path, "colour mask"))
        uniq, inverse = np.unique(codes, return_inverse=True)
        counts = np.bincount(inverse.ravel(), minlength=len(uniq))
        out = np.full(len(uniq), ignore, dtype=np.uint8)
        conv = Converted()
        for i, code in enumerate(uniq.tolist()):
            cls = table.get(code)
            if cls is None:
                conv.unknown[(code >> 16, (code >> 8) & 255, code & 255)] = int(counts[i])
            else:
                out[i] = cls
        conv.mask = out[inverse.reshape(codes.shape)]
        if inst_path is not None:
            conv.instances = read_int_png(inst_path, "instance map")
        return conv

    return convert


def plan_rgb(src: Path, palette: Path | None = None) -> Plan:
    """Colour masks in the native layout, mapped to classes through the palette file (see the module docstring)."""
    palette_path = palette if palette is not None else src / "classes.json"
    if not palette_path.is_file():
        raise DataError(
            f"the rgb format needs the classes' colours: pass --palette FILE (a classes.json with a palette), or "
            f"put it at {palette_path}"
        )
    spec = load_palette_file(palette_path)
    if spec["colours"] is None:
        raise DataError(f"{palette_path} has no 'palette': the rgb format maps each class's colour to the class")
    table: dict[int, int] = {}
    for i, colour in enumerate(spec["colours"]):
        code = (colour[0] << 16) | (colour[1] << 8) | colour[2]
        if code in table:
            raise DataError(
                f"{palette_path}: classes {spec['classes'][table[code]]!r} and {spec['classes'][i]!r} have the same "
                f"colour {list(colour)}"
            )
        table[code] = i
    if spec["ignore_color"] is not None:
        c = spec["ignore_color"]
        code = (c[0] << 16) | (c[1] << 8) | c[2]
        if code in table:
            raise DataError(
                f"{palette_path}: 'ignore_color' {list(c)} is the colour of {spec['classes'][table[code]]!r}"
            )
        table[code] = spec["ignore_index"]
    plan = Plan(
        spec["classes"],
        [list(c) for c in spec["colours"]],
        {},
        _rgb_converter(table, spec["ignore_index"]),
        ignore_index=spec["ignore_index"],
        instance_classes=spec["instance_classes"],
    )
    plan.unknown_message = lambda unknown: describe_unknown(
        "mask colour(s)",
        f"the palette of {palette_path}",
        'add them to its palette, or name the unlabelled colour "ignore_color"',
        unknown,
    )
    plan.notes.append(f"mask colours -> classes by the palette of {palette_path}")
    native_path = src / "classes.json"  # SRC's own, even beside --palette: it describes SRC's images
    if native_path.is_file():
        native = read_json_object(native_path, CLASSES_JSON) if native_path != palette_path else spec["raw"]
        if native.get("image_range") is not None:
            check_image_range(native["image_range"], native_path)
            plan.extra["image_range"] = native["image_range"]
        plan.stored_frame = native.get(MASKS_ORIENTED) is not True
    image_root = src / "images"
    if not image_root.is_dir():
        raise DataError(f"{image_root} does not exist: rgb SRC is a data set in the native layout with colour masks")
    for split_dir in sorted(p for p in image_root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        split = split_dir.name
        mask_dir, inst_dir = src / "masks" / split, src / "instances" / split
        masks = _by_stem(mask_dir, MASK_SUFFIXES, plan.skipped) if mask_dir.is_dir() else None
        insts = _by_stem(inst_dir, (".png",), plan.skipped) if inst_dir.is_dir() else None
        images = _by_stem(split_dir, IMAGE_EXTENSIONS, plan.skipped)
        if insts is not None and not set(images) <= set(insts):
            plan.notes.append(f"split {split!r}: instances/ not imported (some images have no instance map)")
            insts = None
        items = []
        for stem, image in images.items():
            if masks is not None and stem not in masks:
                plan.skipped.append((str(image), "no colour mask"))
                continue
            mask = masks[stem] if masks is not None else None
            inst = insts[stem] if insts is not None else None
            items.append(Item(split, stem, image, mask, (mask, inst)))
        if masks is not None:
            for stem in sorted(set(masks) - set(images)):
                plan.skipped.append((str(masks[stem]), "colour mask without an image"))
        if not items:
            continue
        plan.splits[split] = items
        if masks is None:
            plan.unlabelled.add(split)
        elif insts is not None:
            plan.instance_splits.add(split)
    if not plan.splits:
        raise DataError(f"{image_root} has no split folder with images")
    return plan


def _by_stem(folder: Path, suffixes: tuple[str, ...], skipped: list[tuple[str, str]]) -> dict[str, Path]:
    """The files of ``folder`` by stem; a second file of a stem (``a.jpg`` beside ``a.png``) is listed in
    ``skipped``, not dropped without a word."""
    out: dict[str, Path] = {}
    for p in sorted(folder.iterdir()):
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in suffixes:
            if p.stem in out:
                skipped.append((str(p), f"a second file of stem {p.stem!r} beside {out[p.stem].name}: left out"))
                continue
            out[p.stem] = p
    return out
