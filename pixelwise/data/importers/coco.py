"""COCO: instance annotations, panoptic annotations and the COCO-Stuff label maps.

``coco`` -- the instances JSON of the COCO data format (T.-Y. Lin et al., "Microsoft COCO: Common Objects in
Context", ECCV 2014; the "Data format" page of cocodataset.org): ``annotations/instances_<set>.json`` with
``images`` (``id``, ``file_name``, ``height``, ``width``), ``categories`` (``id``, ``name``) and ``annotations``
(``image_id``, ``category_id``, ``segmentation``: a list of polygons ``[x1, y1, x2, y2, ...]`` or run-length
encoding, compressed or not, ``iscrowd``, ``area``); images in ``<set>/``. Decoded with pycocotools. The
categories (80 ids with gaps in 1..90) map in id order onto the contiguous classes 1..N, 0 = background. Crowd
regions (``iscrowd: 1``) become ignore (255) in the masks and no instance; the other annotations are painted
over them from the largest to the smallest, so that a small object on a larger one stays visible, each its own
instance.

``coco-panoptic`` -- the panoptic format (A. Kirillov et al., "Panoptic Segmentation", CVPR 2019; cocodataset.org's
"Panoptic" data format and ``cocodataset/panopticapi``): ``annotations/panoptic_<set>.json`` with ``annotations``
(``image_id``, ``file_name``, ``segments_info``: ``id``, ``category_id``, ``iscrowd``) and ``categories``
(``id``, ``name``, ``isthing``, ``color``), and the PNGs in ``annotations/panoptic_<set>/``, whose colour encodes
the segment id as ``id = R + 256 * G + 256^2 * B`` (0 = unlabelled). The categories (133 for COCO 2017) map in id
order onto classes 0..N-1 (no background class: unlabelled pixels are ignore), each with its ``color``; thing
segments become instances, stuff segments only the mask; crowd segments are ignore, as in the panoptic
evaluation.

``coco-stuff`` -- COCO-Stuff's "stuffthingmaps" (H. Caesar, J. Uijlings, V. Ferrari, "COCO-Stuff: Thing and Stuff
Classes in Context", CVPR 2018; the ``nightrome/cocostuff`` README and ``labels.txt``): ``annotations/<set>/*.png``
(or ``stuffthingmaps_trainval2017/<set>/``) hold per pixel the category id - 1 (0..181) and 255 for "unlabeled";
the images are in ``images/<set>/`` (the README's setup) or ``<set>/``. Of the 182 ids, 11 thing ids have no
annotation in COCO (street sign, hat, shoe, eye glasses, plate, mirror, window, desk, door, blender, hair brush);
the other 171 map in id order onto the contiguous classes 0..170 (80 things, then 91 stuff), as mmsegmentation's
COCO-Stuff 164k converter does; 255 stays ignore, and any other value is set to ignore and reported.

Split mapping for all three: a set whose name starts with ``train`` -> train, ``val`` -> val, ``test`` -> test.
"""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import DataError, PixelwiseError
from ..info import default_palette
from ..io import IMAGE_EXTENSIONS
from .plan import Converted, Item, Plan, lut, read_index_png, read_json_object, read_rgb_png, relabel

COCO_EXTRA = "coco"
"""The pip extra that brings pycocotools (``pip install 'pixelwise[coco]'``)."""

COCO_STUFF_NAMES = [
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "street sign", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep",
    "cow", "elephant", "bear", "zebra", "giraffe", "hat", "backpack", "umbrella", "shoe", "eye glasses", "handbag",
    "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove",
    "skateboard", "surfboard", "tennis racket", "bottle", "plate", "wine glass", "cup", "fork", "knife", "spoon",
    "bowl", "banana", "apple", "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake",
    "chair", "couch", "potted plant", "bed", "mirror", "dining table", "window", "desk", "toilet", "door", "tv",
    "laptop", "mouse", "remote", "keyboard", "cell phone", "microwave", "oven", "toaster", "sink", "refrigerator",
    "blender", "book", "clock", "vase", "scissors", "teddy bear", "hair drier", "toothbrush", "hair brush",
    "banner", "blanket", "branch", "bridge", "building-other", "bush", "cabinet", "cage", "cardboard", "carpet",
    "ceiling-other", "ceiling-tile", "cloth", "clothes", "clouds", "counter", "cupboard", "curtain", "desk-stuff",
    "dirt", "door-stuff", "fence", "floor-marble", "floor-other", "floor-stone", "floor-tile", "floor-wood",
    "flower", "fog", "food-other", "fruit", "furniture-other", "grass", "gravel", "ground-other", "hill", "house",
    "leaves", "light", "mat", "metal", "mirror-stuff", "moss", "mountain", "mud", "napkin", "net", "paper",
    "pavement", "pillow", "plant-other", "plastic", "platform", "playingfield", "railing", "railroad", "river",
    "road", "rock", "roof", "rug", "salad", "sand", "sea", "shelf", "sky-other", "skyscraper", "snow",
    "solid-other", "stairs", "stone", "straw", "structural-other", "table", "tent", "textile-other", "towel",
    "tree", "vegetable", "wall-brick", "wall-concrete", "wall-other", "wall-panel", "wall-stone", "wall-tile",
    "wall-wood", "water-other", "waterdrops", "window-blind", "window-other", "wood",
]  # fmt: skip
"""COCO-Stuff's labels.txt: the names of ids 1..182 (things 1..91, stuff 92..182)."""
COCO_STUFF_UNUSED = (12, 26, 29, 30, 45, 66, 68, 69, 71, 83, 91)
"""Thing ids without any annotation in COCO (labels.txt lists them; the label maps never hold them)."""
COCO_STUFF_IDS = [i for i in range(1, 183) if i not in COCO_STUFF_UNUSED]
COCO_STUFF_CLASSES = [COCO_STUFF_NAMES[i - 1] for i in COCO_STUFF_IDS]
COCO_STUFF_THINGS = [COCO_STUFF_NAMES[i - 1] for i in COCO_STUFF_IDS if i <= 91]
# stored value = id - 1; 255 = unlabeled
STUFF_VALUE_TO_CLASS = lut({i - 1: k for k, i in enumerate(COCO_STUFF_IDS)})


def mask_api() -> Any:
    """pycocotools' mask module, or a one-line error naming the pip extra that installs it."""
    try:
        from pycocotools import mask
    except ImportError:
        raise PixelwiseError(
            f"the coco format needs pycocotools: pip install 'pixelwise[{COCO_EXTRA}]' (or pip install pycocotools)"
        ) from None
    return mask


def set_split(name: str) -> str | None:
    """The split of a COCO set name (``train2017`` -> train); None for a set that is none of the three."""
    for prefix, split in (("train", "train"), ("val", "val"), ("test", "test")):
        if name.startswith(prefix):
            return split
    return None


def _sets(files: list[Path], prefix: str) -> dict[str, tuple[str, Path]]:
    """split -> (set name, file) for ``<prefix><set>.json`` files; two sets of one split are an error."""
    out: dict[str, tuple[str, Path]] = {}
    for path in files:
        name = path.stem[len(prefix) :]
        split = set_split(name)
        if split is None:
            continue
        if split in out:
            raise DataError(
                f"{out[split][1]} and {path} both map to split {split!r}: import them one at a time (from a SRC "
                "holding one of them)"
            )
        out[split] = (name, path)
    return out


def _annotation_sets(src: Path, prefix: str, hint: str) -> dict[str, tuple[str, Path]]:
    """split -> (set name, file) of ``SRC/annotations/<prefix><set>.json``; a DataError (with ``hint`` on what SRC
    holds) when there are none, or none of a train, val or test set."""
    files = sorted((src / "annotations").glob(f"{prefix}*.json"))
    if not files:
        raise DataError(f"no annotations/{prefix}<set>.json under {src}: {hint}")
    sets = _sets(files, prefix)
    if not sets:
        raise DataError(f"none of {', '.join(p.name for p in files)} is a train, val or test set")
    return sets


def _image_dir(src: Path, set_name: str) -> Path:
    for folder in (src / set_name, src / "images" / set_name):
        if folder.is_dir():
            return folder
    raise DataError(f"no image folder {src / set_name} (nor {src / 'images' / set_name}) for the {set_name} set")


def _entries(data: dict[str, Any], key: str, path: Path, plan_skipped: list[tuple[str, str]]) -> list[dict[str, Any]]:
    """The ``key`` list (``images``, ``annotations``) of a COCO file: missing or null is empty; an entry that is not
    an object is left out, listed in ``plan_skipped``; anything else than a list is a DataError."""
    value = data.get(key)
    if value is None:
        return []
    if not isinstance(value, list):
        raise DataError(f"{path}: {key!r} is a {type(value).__name__}, not a list")
    kept = [e for e in value if isinstance(e, dict)]
    if len(kept) < len(value):
        plan_skipped.append((str(path), f"{len(value) - len(kept)} {key} entr(ies) that are not JSON objects"))
    return kept


def _whole(value: Any) -> bool:
    """A whole number, as an int or as a float some exporters write (480.0, 3.0); not a bool."""
    return (
        isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value == int(value)
    )


def _image_size(entry: dict[str, Any]) -> tuple[int, int] | None:
    """``(height, width)`` of an ``images`` entry, or None when it lacks them or they are not positive whole numbers."""
    try:
        h, w = entry["height"], entry["width"]
    except KeyError:
        return None
    if not all(_whole(v) and v > 0 for v in (h, w)):
        return None
    return int(h), int(w)


def _categories(data: dict[str, Any], path: Path) -> list[dict[str, Any]]:
    try:
        cats = sorted(data["categories"], key=lambda c: int(c["id"]))
        for c in cats:
            str(c["name"])
    except (KeyError, TypeError, ValueError):
        raise DataError(f"{path}: no valid 'categories' list (each with an id and a name)") from None
    if not cats:
        raise DataError(f"{path}: the 'categories' list is empty")
    ids: dict[str, list[int]] = {}
    for c in cats:
        ids.setdefault(str(c["name"]), []).append(int(c["id"]))
    for name, same in ids.items():  # classes are named: two of one name would be one class, or a clash later
        if len(same) > 1:
            raise DataError(
                f"{path}: categories {', '.join(map(str, same[:-1]))} and {same[-1]} are both named {name!r}: one "
                "class a name, so rename one of them (or, if no annotation uses it, remove it: Roboflow lists the "
                "data set's own name as category 0)"
            )
    return cats


# ---------------------------------------------------------------------------------------------------------------
# instances


def _compressed_counts(counts: bytes) -> list[int]:
    """The run lengths of a compressed RLE string (COCO's maskApi ``rleFrString``: 5 bits a character from '0',
    0x20 continues, 0x10 the sign of the last; from the fourth run on, each is stored as its difference to the run
    two before)."""
    runs: list[int] = []
    p = 0
    while p < len(counts):
        x, k, more = 0, 0, True
        while more:
            if p >= len(counts):
                raise ValueError("compressed RLE ends in the middle of a run")
            c = counts[p] - 48
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and c & 0x10:
                x |= -1 << (5 * k)
        runs.append(x + runs[-2] if len(runs) > 2 else x)
    return runs


def _check_run_lengths(runs: list[Any], h: int, w: int) -> None:
    """An RLE's runs must cover its ``h x w`` pixels exactly: pycocotools leaves the pixels after short runs
    uninitialised (a random mask) and writes past the end for long ones."""
    if not all(_whole(r) and r >= 0 for r in runs):  # 3.0 is read as 3, as pycocotools does
        raise ValueError("RLE counts must be whole numbers >= 0")
    if sum(runs) != h * w:
        raise ValueError(f"RLE runs cover {sum(runs)} pixels, not the image's {h}x{w} = {h * w}")


def _decode(api: Any, segm: Any, h: int, w: int) -> np.ndarray:
    """A COCO ``segmentation`` (polygons, uncompressed or compressed RLE) as an ``H x W`` bool mask; ValueError
    for anything else, an RLE of another size than its image included."""
    if isinstance(segm, dict) and list(segm.get("size") or []) != [h, w]:
        raise ValueError(f"RLE size {segm.get('size')!r} is not the image's [height, width] [{h}, {w}]")
    try:
        if isinstance(segm, list):  # polygons; a polygon needs three points
            polygons = [p for p in segm if isinstance(p, list) and len(p) >= 6]
            if not polygons:
                return np.zeros((h, w), dtype=bool)
            rle = api.merge(api.frPyObjects(polygons, h, w))
        elif isinstance(segm, dict) and isinstance(segm.get("counts"), list):
            _check_run_lengths(segm["counts"], h, w)
            rle = api.frPyObjects(segm, h, w)
        elif isinstance(segm, dict) and isinstance(segm.get("counts"), (str, bytes)):
            counts = segm["counts"]
            counts = counts.encode() if isinstance(counts, str) else counts
            _check_run_lengths(_compressed_counts(counts), h, w)
            rle = {"size": segm["size"], "counts": counts}
        else:
            raise ValueError("not polygons or RLE")
        mask = api.decode(rle).astype(bool)
    except ValueError:
        raise
    except Exception as e:  # noqa: BLE001 - pycocotools raises bare Exceptions for malformed input
        raise ValueError(str(e) or type(e).__name__) from None
    if mask.shape != (h, w):
        raise ValueError(f"decodes to {mask.shape[0]}x{mask.shape[1]}, not the image's {h}x{w}")
    return mask


def _instances_converter(api: Any) -> Any:
    def convert(item: Item) -> Converted:
        entry, anns, cat_index = item.data
        h, w = _image_size(entry)  # checked when planned
        mask = np.zeros((h, w), dtype=np.uint8)
        inst = np.zeros((h, w), dtype=np.int64)
        conv = Converted(mask=mask, instances=inst)
        crowd, regular = [], []
        for ann in anns:
            where = f"annotation {ann.get('id')} of {entry.get('file_name')}"
            cls = cat_index.get(ann.get("category_id"))
            if cls is None:
                conv.skipped.append((str(item.label), f"{where}: category {ann.get('category_id')} not listed"))
                continue
            try:
                m = _decode(api, ann.get("segmentation"), h, w)
            except (ValueError, TypeError, KeyError) as e:
                conv.skipped.append((str(item.label), f"{where}: unreadable segmentation ({e})"))
                continue
            if not m.any():
                conv.skipped.append((str(item.label), f"{where}: empty segmentation"))
                continue
            (crowd if ann.get("iscrowd") else regular).append((int(m.sum()), cls, m))
        for _, _, m in crowd:
            mask[m] = 255
        # largest first, so that smaller objects lying on larger ones stay visible; stable for equal areas
        for k, (_, cls, m) in enumerate(sorted(regular, key=lambda r: -r[0]), start=1):
            mask[m] = cls
            inst[m] = k
        conv.instances = relabel(inst)
        return conv

    return convert


def plan_coco(src: Path, palette: Path | None = None) -> Plan:
    """COCO instance annotations (see the module docstring)."""
    api = mask_api()
    sets = _annotation_sets(src, "instances_", "coco SRC holds annotations/ and the images")
    plan: Plan | None = None
    reference: list[tuple[int, str]] = []
    for split, (set_name, path) in sorted(sets.items()):
        images = _image_dir(src, set_name)
        data = read_json_object(path, "a COCO annotation file (a JSON object with images and categories)")
        cats = _categories(data, path)
        key = [(int(c["id"]), str(c["name"])) for c in cats]
        if plan is None:
            reference = key
            classes = ["background", *(name for _, name in key)]
            plan = Plan(classes, default_palette(len(classes)), {}, _instances_converter(api))
            plan.instance_classes = classes[1:]
            plan.notes.append(
                f"{len(key)} categories (ids {key[0][0]}..{key[-1][0]}) -> classes 1..{len(key)} in id order, "
                "0 = background; crowd regions -> ignore"
            )
        elif key != reference:
            raise DataError(f"{path} lists other categories than {sets[next(iter(sorted(sets)))][1]}")
        cat_index = {cid: i + 1 for i, (cid, _) in enumerate(reference)}
        by_image: dict[Any, list[dict[str, Any]]] = defaultdict(list)
        for ann in _entries(data, "annotations", path, plan.skipped):
            by_image[ann.get("image_id")].append(ann)
        items = []
        empty = 0
        for entry in sorted(_entries(data, "images", path, plan.skipped), key=lambda e: str(e.get("file_name"))):
            name = str(entry.get("file_name", ""))
            if _image_size(entry) is None:
                plan.skipped.append(
                    (str(path), f"image {name or entry.get('id')!r}: no positive whole 'height' and 'width'")
                )
                continue
            anns = by_image.get(entry.get("id"), [])
            empty += not anns
            items.append(Item(split, Path(name).stem, images / name, path, (entry, anns, cat_index)))
        plan.splits[split] = items
        plan.instance_splits.add(split)
        plan.notes.append(
            f"{set_name} -> {split}" + (f" ({empty} image(s) without annotations: all background)" if empty else "")
        )
        del data  # the annotations live on in the items; the rest of the file can go
    assert plan is not None
    return plan


# ---------------------------------------------------------------------------------------------------------------
# panoptic


def _panoptic_converter(item: Item) -> Converted:
    segments, seg_class = item.data
    png = item.label
    assert png is not None
    if not png.is_file():
        raise DataError(f"no panoptic PNG {png} for image {item.image}")
    rgb = read_rgb_png(png).astype(np.int64)
    ids = rgb[..., 0] + 256 * rgb[..., 1] + 256 * 256 * rgb[..., 2]
    uniq, inverse = np.unique(ids, return_inverse=True)
    cls_of = np.full(len(uniq), 255, dtype=np.uint8)
    inst_of = np.zeros(len(uniq), dtype=np.int64)
    conv = Converted()
    k = 0
    for i, seg_id in enumerate(uniq.tolist()):
        if seg_id == 0:  # unlabelled
            continue
        seg = segments.get(seg_id)
        if seg is None:
            conv.skipped.append((str(png), f"segment id {seg_id} not in segments_info: its pixels set to ignore"))
            continue
        cls, thing = seg_class.get(seg.get("category_id"), (None, False))
        if cls is None:
            conv.skipped.append((str(png), f"segment {seg_id}: category {seg.get('category_id')} not listed"))
            continue
        if seg.get("iscrowd"):
            continue  # crowd: ignore, as the panoptic evaluation does
        cls_of[i] = cls
        if thing:
            k += 1
            inst_of[i] = k
    inverse = inverse.reshape(ids.shape)
    conv.mask = cls_of[inverse]
    conv.instances = inst_of[inverse]
    return conv


def _colour(cat: dict[str, Any], path: Path) -> list[int] | None:
    """A panoptic category's ``color`` as ``[R, G, B]``; None where it has none."""
    colour = cat.get("color")
    if colour is None:
        return None
    if not (isinstance(colour, list) and len(colour) == 3 and all(_whole(v) and 0 <= v <= 255 for v in colour)):
        raise DataError(f"{path}: category {cat['id']} has 'color' {colour!r}, not [R, G, B]")
    return [int(v) for v in colour]


def _segments(ann: dict[str, Any], path: Path) -> dict[int, dict[str, Any]]:
    """A panoptic annotation's ``segments_info`` by segment id; DataError naming the file and the annotation."""
    where = f"{path}: annotation of {ann.get('file_name')}"
    info = ann.get("segments_info", [])
    if not isinstance(info, list) or not all(isinstance(s, dict) for s in info):
        raise DataError(f"{where}: 'segments_info' is not a list of segments")
    for i, seg in enumerate(info):
        if not _whole(seg.get("id")):
            raise DataError(f"{where}: segments_info[{i}] has no whole-number 'id'")
    return {int(s["id"]): s for s in info}


def plan_coco_panoptic(src: Path, palette: Path | None = None) -> Plan:
    """COCO panoptic annotations (see the module docstring)."""
    sets = _annotation_sets(src, "panoptic_", "coco-panoptic SRC holds annotations/")
    plan: Plan | None = None
    reference: list[tuple[int, str]] = []
    for split, (set_name, path) in sorted(sets.items()):
        images = _image_dir(src, set_name)
        pngs = src / "annotations" / f"panoptic_{set_name}"
        if not pngs.is_dir():
            raise DataError(f"{pngs} does not exist: unpack annotations/panoptic_{set_name}.zip there")
        data = read_json_object(path, "a COCO annotation file (a JSON object with images and categories)")
        cats = _categories(data, path)
        key = [(int(c["id"]), str(c["name"])) for c in cats]
        if plan is None:
            reference = key
            classes = [name for _, name in key]
            colours = default_palette(len(classes))
            pal = [_colour(c, path) or colours[i] for i, c in enumerate(cats)]
            plan = Plan(classes, pal, {}, _panoptic_converter)
            plan.instance_classes = [str(c["name"]) for c in cats if c.get("isthing")]
            plan.notes.append(
                f"{len(key)} categories -> classes 0..{len(key) - 1} in id order ({len(plan.instance_classes)} "
                "things -> instances); unlabelled and crowd segments -> ignore"
            )
        elif key != reference:
            raise DataError(f"{path} lists other categories than the first panoptic file")
        seg_class = {
            cid: (i, bool(c.get("isthing"))) for i, (c, (cid, _)) in enumerate(zip(cats, reference, strict=True))
        }
        entries = {e.get("id"): e for e in _entries(data, "images", path, plan.skipped)}
        items = []
        for ann in sorted(_entries(data, "annotations", path, plan.skipped), key=lambda a: str(a.get("file_name"))):
            entry = entries.get(ann.get("image_id"))
            if entry is None:
                plan.skipped.append((str(path), f"annotation of image id {ann.get('image_id')}: no such image"))
                continue
            name = str(entry.get("file_name", ""))
            segments = _segments(ann, path)
            items.append(
                Item(split, Path(name).stem, images / name, pngs / str(ann.get("file_name")), (segments, seg_class))
            )
        unannotated = len(entries) - len(items)
        plan.splits[split] = items
        plan.instance_splits.add(split)
        plan.notes.append(f"{set_name} -> {split}")
        if unannotated > 0:
            plan.skipped.append((str(path), f"{unannotated} image(s) without a panoptic annotation"))
    assert plan is not None
    return plan


# ---------------------------------------------------------------------------------------------------------------
# COCO-Stuff


def _stuff_converter(item: Item) -> Converted:
    assert item.label is not None
    raw = read_index_png(item.label)
    mask = STUFF_VALUE_TO_CLASS[raw].astype(np.uint8)
    conv = Converted(mask=mask)
    bad = (mask == 255) & (raw != 255)
    if bad.any():
        values = sorted(np.unique(raw[bad]).tolist())
        conv.skipped.append(
            (
                str(item.label),
                f"{int(bad.sum())} pixel(s) of values {values[:5]} that are no COCO-Stuff class set to ignore",
            )
        )
    return conv


def plan_coco_stuff(src: Path, palette: Path | None = None) -> Plan:
    """COCO-Stuff stuffthingmaps (see the module docstring)."""
    label_root = None
    for folder in (src / "annotations", src / "stuffthingmaps_trainval2017", src / "stuffthingmaps"):
        if folder.is_dir() and any(set_split(p.name) for p in folder.iterdir() if p.is_dir()):
            label_root = folder
            break
    if label_root is None:
        raise DataError(
            f"no label maps under {src}: coco-stuff SRC holds annotations/<set>/*.png (stuffthingmaps_trainval2017 "
            "unpacked into annotations/, as the COCO-Stuff README's setup does) and the images"
        )
    plan = Plan(list(COCO_STUFF_CLASSES), default_palette(len(COCO_STUFF_CLASSES)), {}, _stuff_converter)
    plan.instance_classes = list(COCO_STUFF_THINGS)
    plan.notes.append(
        "label value v = category id - 1; the 171 ids with annotations -> classes 0..170 in id order (80 things, "
        f"91 stuff; ids {', '.join(map(str, COCO_STUFF_UNUSED))} have none); 255 'unlabeled' -> ignore"
    )
    folders = sorted(p for p in label_root.iterdir() if p.is_dir() and set_split(p.name))
    seen: dict[str, str] = {}
    for folder in folders:
        split = set_split(folder.name)
        assert split is not None
        if split in seen:
            raise DataError(
                f"{label_root / seen[split]} and {folder} both map to split {split!r}: import one at a time"
            )
        seen[split] = folder.name
        images = _image_dir(src, folder.name)
        by_stem = {p.stem: p for p in images.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS}
        items = []
        for label in sorted(folder.glob("*.png")):
            if label.stem.endswith("_labelTrainIds"):  # what other converters write beside the maps
                continue
            image = by_stem.get(label.stem)
            if image is None:
                plan.skipped.append((str(label), "label map without an image"))
                continue
            items.append(Item(split, label.stem, image, label))
        plan.splits[split] = items
        plan.notes.append(f"{folder.name} -> {split}")
    return plan
