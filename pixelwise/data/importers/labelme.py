"""LabelMe JSON annotations (``wkentaro/labelme``): the JSON its editor saves, read as its own
``labelme_json_to_dataset`` and ``utils/shape.py`` read it.

One JSON per image: ``imagePath`` (relative to the JSON file), optional ``imageData`` (the image, base64), and
``imageHeight``/``imageWidth``, and ``shapes``: each with ``label``, ``points`` (``[[x, y], ...]``),
``shape_type`` (``polygon``, the default; ``rectangle``: two corners, or all four as X-AnyLabeling saves it;
``circle``: the centre and a point on the circle; ``mask``: the two corners of a box and ``mask``, a base64 PNG of
the box whose nonzero pixels are the object, LabelMe 5.4's AI masks; ``line``, ``linestrip``, ``point`` and others
enclose no area and are skipped, reported) and ``group_id`` (shapes sharing a label and a group id are the parts of
one object). Shapes are drawn in file order, later ones on top, with PIL's polygon, rectangle and ellipse (outline
included), as LabelMe's ``shape_to_mask`` does.

Classes come from ``--palette FILE`` (a classes.json; labels it does not name are listed and fail the import,
uncovered pixels get class 0) or are collected from the labels: ``background`` at 0 (LabelMe's ``_background_``
label, or ``background``, maps there), then the other labels sorted. The label ``__ignore__`` (labelme2voc's
id -1) marks ignore pixels, with or without a palette, and is no class. Each shape of a thing class (the palette's
``instance_classes``, default every class but 0) is one instance, except that shapes with one label and one
``group_id`` are one; instance ids follow the order of first appearance.

Splits: SRC's ``train``/``val``/``test`` folders if it has any (JSON files found recursively in each), else every
JSON file under SRC goes to train. Output stems are the JSON file names', or, where two files of a split share a
name (``day1/img.json``, ``day2/img.json``), their paths below the split's folder joined with ``__``
(``day1__img``, ``day2__img``). LabelMe draws on the image as EXIF
orients it, so masks are not turned.
"""

from __future__ import annotations

import base64
import binascii
import io
import math
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, UnidentifiedImageError

from ...errors import DataError
from ..info import default_palette
from .plan import Converted, Item, Plan, describe_unknown, read_json_object, relabel
from .rgb import load_palette_file

BACKGROUND = "background"
BACKGROUND_LABELS = ("_background_", "background")
LABELME_FILE = "a LabelMe file (no 'shapes' list)"
IGNORE_LABEL = "__ignore__"  # labelme2voc's labels.txt: class id -1, pixels to ignore
AREA_SHAPES = ("polygon", "rectangle", "circle")
_SUFFIX = {"PNG": ".png", "JPEG": ".jpg", "BMP": ".bmp", "TIFF": ".tif", "WEBP": ".webp"}


def _read(path: Path) -> dict[str, Any]:
    data = read_json_object(path, LABELME_FILE)
    if not isinstance(data.get("shapes"), list):
        raise DataError(f"{path} is not {LABELME_FILE}")
    return data


def _encloses_area(shape: dict[str, Any]) -> bool:
    return str(shape.get("shape_type") or "polygon") in (*AREA_SHAPES, "mask")


def _label(shape: dict[str, Any]) -> str:
    label = str(shape.get("label", ""))
    return BACKGROUND if label in BACKGROUND_LABELS else label


def _draw(draw: ImageDraw.ImageDraw, kind: str, xy: list[tuple[float, float]], value: int) -> None:
    if kind == "circle":
        (cx, cy), (px, py) = xy
        d = float(np.hypot(cx - px, cy - py))
        draw.ellipse([cx - d, cy - d, cx + d, cy + d], outline=value, fill=value)
    elif kind == "rectangle":
        (x0, y0), (x1, y1) = xy
        draw.rectangle([min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)], outline=value, fill=value)
    else:
        draw.polygon(xy, outline=value, fill=value)


def _mask_region(shape: dict[str, Any]) -> tuple[tuple[int, int], Image.Image] | str:
    """A ``mask`` shape (LabelMe 5.4+): its box's top-left corner ``points[0]`` (truncated to integers, as
    LabelMe's ``shapes_to_label``) and its mask, a base64 PNG of the box whose nonzero pixels are the object, as an
    ``L`` image (255 inside); or why it cannot be read."""
    points = shape.get("points")
    try:
        (x1, y1), (x2, y2) = [(int(float(p[0])), int(float(p[1]))) for p in points]
    except (TypeError, ValueError, IndexError):
        return "points are not the two corners of its box"
    try:
        with Image.open(io.BytesIO(base64.b64decode(str(shape.get("mask") or ""), validate=False))) as im:
            inside = np.asarray(im.convert("L")) > 0
    except (binascii.Error, UnidentifiedImageError, OSError, ValueError):
        return "its mask is not a base64 image"
    if inside.shape != (y2 - y1 + 1, x2 - x1 + 1):
        h, w = inside.shape
        return f"its {w}x{h} mask does not fit its {x2 - x1 + 1}x{y2 - y1 + 1} box"
    return (x1, y1), Image.fromarray(inside.astype(np.uint8) * 255, mode="L")


def _image(data: dict[str, Any], json_path: Path) -> tuple[Path | None, bytes | None, str | None]:
    """The image file the JSON names (``imagePath``), else its embedded ``imageData`` with a suffix."""
    name = data.get("imagePath")
    if isinstance(name, str) and name:
        path = (json_path.parent / name.replace("\\", "/")).resolve()
        if path.is_file():
            return path, None, None
    encoded = data.get("imageData")
    if isinstance(encoded, str) and encoded:
        try:
            raw = base64.b64decode(encoded, validate=False)
            with Image.open(io.BytesIO(raw)) as im:
                suffix = _SUFFIX.get(str(im.format), f".{str(im.format).lower()}")  # re-encoded to PNG when written
        except (binascii.Error, UnidentifiedImageError, OSError, ValueError) as e:
            raise DataError(f"{json_path}: imageData is not an image ({e})") from None
        return None, raw, suffix
    raise DataError(f"{json_path}: image {name!r} not found beside it, and no imageData")


def _converter(class_index: dict[str, int], things: set[int], ignore: int) -> Any:
    def convert(item: Item) -> Converted:
        path = item.label
        assert path is not None
        data = _read(path)
        image, raw, suffix = _image(data, path)
        try:
            h, w = int(data["imageHeight"]), int(data["imageWidth"])
        except (KeyError, TypeError, ValueError, OverflowError):  # Infinity: as a missing size, read from the image
            try:
                with Image.open(image if image is not None else io.BytesIO(raw or b"")) as im:
                    # LabelMe draws on the image as shown, turned by its EXIF orientation (5-8: a quarter turn)
                    w, h = im.size[::-1] if im.getexif().get(0x0112, 1) in (5, 6, 7, 8) else im.size
            except (UnidentifiedImageError, OSError, ValueError) as e:
                raise DataError(f"{path}: its image cannot be read to learn its size ({e})") from None
        if h < 1 or w < 1:
            raise DataError(f"{path}: imageHeight {h} and imageWidth {w} must be >= 1 (the image's size in pixels)")
        cls_img = Image.new("L", (w, h), 0)
        ins_img = Image.new("I", (w, h), 0)
        cls_draw, ins_draw = ImageDraw.Draw(cls_img), ImageDraw.Draw(ins_img)
        conv = Converted(image=image, image_bytes=raw, image_suffix=suffix)
        objects: dict[Any, int] = {}
        for i, shape in enumerate(data["shapes"]):
            if not isinstance(shape, dict):
                continue
            label = _label(shape)
            kind = str(shape.get("shape_type") or "polygon")
            where = f"shape {i} ({label!r}, {kind})"
            if kind == "mask":
                region = _mask_region(shape)
                if isinstance(region, str):
                    conv.skipped.append((str(path), f"{where}: {region}; left out"))
                    continue
            elif kind not in AREA_SHAPES:
                conv.skipped.append((str(path), f"{kind} shapes enclose no area: left out"))
                continue
            try:
                xy = [(float(p[0]), float(p[1])) for p in shape.get("points", [])]
                if not all(map(math.isfinite, (v for p in xy for v in p))):
                    raise ValueError("not finite")
            except (TypeError, ValueError, IndexError):
                conv.skipped.append((str(path), f"{where}: points are not [x, y] pairs; left out"))
                continue
            if kind == "rectangle" and len(xy) > 2:  # its four corners (X-AnyLabeling): their bounding box
                xs, ys = zip(*xy, strict=True)
                xy = [(min(xs), min(ys)), (max(xs), max(ys))]
            if (kind == "polygon" and len(xy) < 3) or (kind != "polygon" and kind != "mask" and len(xy) != 2):
                conv.skipped.append((str(path), f"{where}: {len(xy)} point(s), too few for a {kind}; left out"))
                continue
            cls = ignore if label == IGNORE_LABEL else class_index.get(label)
            if cls is None and label == BACKGROUND:  # a palette may spell it LabelMe's way, _background_
                cls = next((class_index[b] for b in BACKGROUND_LABELS if b in class_index), None)
            if cls is None:
                conv.unknown[label] = conv.unknown.get(label, 0) + 1
                continue
            inst = 0  # ignore pixels carry no instance
            if cls in things:
                group = shape.get("group_id")
                if group is not None and (isinstance(group, bool) or not isinstance(group, (int, float, str))):
                    conv.skipped.append((str(path), f"{where}: group_id {group!r} is not a number or a name; left out"))
                    continue
                group = int(group) if isinstance(group, float) and group.is_integer() else group  # 1.0 is 1
                key = (label, group) if group is not None else (None, i)  # None: no label is None
                inst = objects.setdefault(key, len(objects) + 1)
            if kind == "mask":
                (x1, y1), inside = region
                cls_img.paste(cls, (x1, y1, x1 + inside.width, y1 + inside.height), mask=inside)
                ins_img.paste(inst, (x1, y1, x1 + inside.width, y1 + inside.height), mask=inside)
                continue
            _draw(cls_draw, kind, xy, cls)
            _draw(ins_draw, kind, xy, inst)
        conv.mask = np.array(cls_img)
        conv.instances = relabel(np.array(ins_img))
        return conv

    return convert


def _json_files(folder: Path) -> list[Path]:
    # hidden below the folder only: SRC itself may be "../labels" or sit under a dot-folder (~/.cache/...)
    return sorted(p for p in folder.rglob("*.json") if not any(s.startswith(".") for s in p.relative_to(folder).parts))


def _stems(files: list[Path], root: Path) -> list[str]:
    """Each file's name without suffix, or its path below ``root`` joined with ``__`` where names collide."""
    counts: dict[str, int] = {}
    for f in files:
        counts[f.stem] = counts.get(f.stem, 0) + 1
    return ["__".join(f.relative_to(root).with_suffix("").parts) if counts[f.stem] > 1 else f.stem for f in files]


def plan_labelme(src: Path, palette: Path | None = None) -> Plan:
    """LabelMe JSON files (see the module docstring)."""
    split_dirs = {s: src / s for s in ("train", "val", "test") if (src / s).is_dir()}
    files = {s: _json_files(d) for s, d in split_dirs.items()} if split_dirs else {"train": _json_files(src)}
    if not any(files.values()):
        raise DataError(f"no LabelMe .json files under {src}")
    skipped: list[tuple[str, str]] = []
    if split_dirs:  # said, not dropped without a word: files beside the split folders are not read
        inside = {f for fs in files.values() for f in fs}
        outside = [f for f in _json_files(src) if f not in inside]
        skipped += [(str(f), "outside SRC's train/val/test folders: not read") for f in outside]
    if palette is not None:
        spec = load_palette_file(palette)
        classes = spec["classes"]
        colours = [list(c) for c in spec["colours"]] if spec["colours"] else default_palette(len(classes))
        ignore = spec["ignore_index"]
        thing_names = spec["instance_classes"] if spec["instance_classes"] is not None else classes[1:]
        note = f"classes from {palette}; pixels no shape covers -> class 0 ({classes[0]!r})"
        valid = {s: fs for s, fs in files.items()}
    else:
        labels: set[str] = set()
        valid = {}
        for split, fs in files.items():
            valid[split] = []
            for f in fs:
                try:
                    data = _read(f)
                except DataError as e:
                    skipped.append((str(f), str(e)))
                    continue
                valid[split].append(f)
                # points and lines draw nothing: their labels would be classes without pixels
                labels.update(_label(s) for s in data["shapes"] if isinstance(s, dict) and _encloses_area(s))
        classes = [BACKGROUND, *sorted(labels - {BACKGROUND, IGNORE_LABEL})]
        colours = default_palette(len(classes))
        ignore = 255
        thing_names = classes[1:]
        note = (
            "classes collected from the shapes' labels: 0 = background (also '_background_'), then sorted; "
            f"'{IGNORE_LABEL}' -> ignore"
        )
    class_index = {name: i for i, name in enumerate(classes)}
    things = {class_index[t] for t in thing_names}
    plan = Plan(classes, colours, {}, _converter(class_index, things, ignore), ignore_index=ignore)
    plan.instance_classes = list(thing_names)
    plan.stored_frame = False
    plan.skipped = skipped
    plan.notes.append(note)
    plan.notes.append(
        "shapes drawn in file order (later on top); each shape an instance, shapes sharing a group_id one"
    )
    if palette is not None:
        plan.unknown_message = lambda unknown: describe_unknown(
            "shape label(s)", f"the classes of {palette}", "add them to its classes", unknown, unit="shapes"
        )
    for split, fs in valid.items():
        if not fs:
            continue
        root = split_dirs.get(split, src)
        plan.splits[split] = [Item(split, stem, None, f) for f, stem in zip(fs, _stems(fs, root), strict=True)]
        plan.instance_splits.add(split)
    if split_dirs:
        plan.notes.append(f"SRC folders {', '.join(split_dirs)} -> splits of the same names")
    else:
        plan.notes.append("no train/val/test folders in SRC: every file -> train")
    return plan
