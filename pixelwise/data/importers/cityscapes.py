"""Cityscapes (M. Cordts et al., "The Cityscapes Dataset for Semantic Urban Scene Understanding", CVPR 2016), as
its scripts (``cityscapesScripts``: the README and ``helpers/labels.py``) define it.

SRC holds ``leftImg8bit/`` and ``gtFine/``:

- ``leftImg8bit/{train,val,test}/<city>/<city>_<seq>_<frame>_leftImg8bit.png``;
- ``gtFine/<split>/<city>/<city>_<seq>_<frame>_gtFine_labelIds.png``: 8-bit label ids 0..33;
- ``gtFine/<split>/<city>/<city>_<seq>_<frame>_gtFine_instanceIds.png``: for the classes with instances, pixels of
  one object hold ``labelId * 1000 + k``; values below 1000 are a label id without an instance (background, or a
  group of objects too crowded to separate).

Label ids map to the 19 train ids of ``labels.py`` (:data:`LABELS`), every other id (void, and the classes that
are ignored in evaluation such as parking, caravan, trailer) to 255. The instances of the 8 thing classes that
have a train id (person, rider, car, truck, bus, train, motorcycle, bicycle) become the instance map, numbered
1..K per image; caravan and trailer instances lie on ignore pixels and are left out. The output stem is
``<city>_<seq>_<frame>``. train and val are imported with masks; test without (its gtFine files are
placeholders: the test labels are not published). ``leftImg8bit`` folders other than train/val/test (train_extra,
whose labels are coarse only, and demo videos) are not imported.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ...errors import DataError
from .plan import Converted, Item, Plan, lut, read_index_png, read_int_png, relabel, require_dir

# (name, label id, train id, colour) for every id of labels.py; train id 255 = ignored in training
LABELS: list[tuple[str, int, int, tuple[int, int, int]]] = [
    ("unlabeled", 0, 255, (0, 0, 0)),
    ("ego vehicle", 1, 255, (0, 0, 0)),
    ("rectification border", 2, 255, (0, 0, 0)),
    ("out of roi", 3, 255, (0, 0, 0)),
    ("static", 4, 255, (0, 0, 0)),
    ("dynamic", 5, 255, (111, 74, 0)),
    ("ground", 6, 255, (81, 0, 81)),
    ("road", 7, 0, (128, 64, 128)),
    ("sidewalk", 8, 1, (244, 35, 232)),
    ("parking", 9, 255, (250, 170, 160)),
    ("rail track", 10, 255, (230, 150, 140)),
    ("building", 11, 2, (70, 70, 70)),
    ("wall", 12, 3, (102, 102, 156)),
    ("fence", 13, 4, (190, 153, 153)),
    ("guard rail", 14, 255, (180, 165, 180)),
    ("bridge", 15, 255, (150, 100, 100)),
    ("tunnel", 16, 255, (150, 120, 90)),
    ("pole", 17, 5, (153, 153, 153)),
    ("polegroup", 18, 255, (153, 153, 153)),
    ("traffic light", 19, 6, (250, 170, 30)),
    ("traffic sign", 20, 7, (220, 220, 0)),
    ("vegetation", 21, 8, (107, 142, 35)),
    ("terrain", 22, 9, (152, 251, 152)),
    ("sky", 23, 10, (70, 130, 180)),
    ("person", 24, 11, (220, 20, 60)),
    ("rider", 25, 12, (255, 0, 0)),
    ("car", 26, 13, (0, 0, 142)),
    ("truck", 27, 14, (0, 0, 70)),
    ("bus", 28, 15, (0, 60, 100)),
    ("caravan", 29, 255, (0, 0, 90)),
    ("trailer", 30, 255, (0, 0, 110)),
    ("train", 31, 16, (0, 80, 100)),
    ("motorcycle", 32, 17, (0, 0, 230)),
    ("bicycle", 33, 18, (119, 11, 32)),
]
THING_NAMES = ["person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle"]

TRAIN_CLASSES = [name for name, _, train, _ in sorted(LABELS, key=lambda r: r[2]) if train != 255]
TRAIN_PALETTE = [list(colour) for _, _, train, colour in sorted(LABELS, key=lambda r: r[2]) if train != 255]
LABEL_TO_TRAIN = lut({label: train for _, label, train, _ in LABELS})
THING_LABEL = np.zeros(256, dtype=bool)
THING_LABEL[[label for name, label, _, _ in LABELS if name in THING_NAMES]] = True


def _convert(item: Item) -> Converted:
    label_path, inst_path = item.data
    if label_path is None:
        return Converted()
    if not label_path.is_file():
        raise DataError(f"no annotation {label_path} for image {item.image}")
    mask = LABEL_TO_TRAIN[read_index_png(label_path)].astype(np.uint8)
    inst = None
    if inst_path is not None:
        raw = read_int_png(inst_path)
        if raw.shape != mask.shape:
            (h, w), (mh, mw) = raw.shape, mask.shape
            raise DataError(f"{inst_path} is {w}x{h} but labelIds {label_path} is {mw}x{mh}")
        label = np.clip(raw // 1000, 0, 255)
        keep = (raw >= 1000) & THING_LABEL[label] & (mask != 255)  # < 1000: a label id without an instance
        inst = relabel(np.where(keep, raw, 0))
    return Converted(mask=mask, instances=inst)


def plan_cityscapes(src: Path, palette: Path | None = None) -> Plan:
    """Cityscapes fine annotations (see the module docstring)."""
    images = require_dir(src / "leftImg8bit", "cityscapes", "the folder holding leftImg8bit and gtFine")
    gt = src / "gtFine"
    if any((images / split).is_dir() for split in ("train", "val")):  # labelled images need their annotations
        require_dir(gt, "cityscapes", "the folder holding leftImg8bit and gtFine (gtFine_trainvaltest's)")
    plan = Plan(list(TRAIN_CLASSES), TRAIN_PALETTE, {}, _convert)
    plan.instance_classes = list(THING_NAMES)
    plan.notes.append(
        "gtFine labelIds -> the 19 train ids of cityscapesScripts' labels.py (others 255); instanceIds of the "
        "8 thing classes -> instances"
    )
    for split in ("train", "val", "test"):
        folder = images / split
        if not folder.is_dir():
            continue
        labelled = split != "test"
        items: list[Item] = []
        all_instances = labelled
        for city in sorted(p for p in folder.iterdir() if p.is_dir()):
            for image in sorted(city.glob("*_leftImg8bit.png")):
                stem = image.name[: -len("_leftImg8bit.png")]
                if not labelled:
                    items.append(Item(split, stem, image, None, (None, None)))
                    continue
                base = gt / split / city.name / stem
                label_path = base.with_name(f"{stem}_gtFine_labelIds.png")
                inst_path = base.with_name(f"{stem}_gtFine_instanceIds.png")
                all_instances = all_instances and inst_path.is_file()
                items.append(Item(split, stem, image, label_path, (label_path, inst_path)))
        if not items:
            continue
        if labelled and all_instances:
            plan.instance_splits.add(split)
        elif labelled:
            for it in items:
                it.data = (it.data[0], None)
            plan.notes.append(f"split {split!r}: no instance maps (some gtFine_instanceIds files are missing)")
        else:
            plan.unlabelled.add(split)
            plan.notes.append("test: images only (its gtFine files are placeholders; the labels are not published)")
        plan.splits[split] = items
    if not plan.splits:
        raise DataError(f"{images} has no train, val or test folder of <city>/*_leftImg8bit.png images")
    for other in sorted(p.name for p in images.iterdir() if p.is_dir() and p.name not in ("train", "val", "test")):
        plan.skipped.append((str(images / other), "not a split with fine annotations (train/val/test)"))
    return plan
