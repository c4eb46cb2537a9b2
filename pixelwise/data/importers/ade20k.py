"""ADE20K SceneParsing (the MIT Scene Parsing Benchmark, ``ADEChallengeData2016``), as the development kit's README
(``CSAILVision/sceneparsing``) describes it.

SRC holds the contents of ``ADEChallengeData2016``: ``images/{training,validation}/ADE_*.jpg`` and
``annotations/{training,validation}/ADE_*.png`` (8-bit label maps). The README: "annotations masks contain labels
ranging from 0 to 150, where 0 refers to 'other objects'. We do not consider those pixels in our evaluation";
``objectInfo150.txt`` names the 150 classes. So value 0 -> ignore (255) and value k -> class k - 1 (what
mmsegmentation calls ``reduce_zero_label``); a value above 150 is no class and is set to ignore, reported. Split
mapping: training -> train, validation -> val, and ``images/testing`` (the separate test release), if present,
-> test without masks. Class names are the first name of each line of ``objectInfo150.txt``; the palette is
pixelwise's default (the benchmark ships its colours only as a MATLAB file).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ...errors import DataError
from ..info import default_palette
from ..io import IMAGE_EXTENSIONS
from .plan import Converted, Item, Plan, lut, read_index_png, require_dir

ADE20K_CLASSES = (
    "wall building sky floor tree ceiling road bed windowpane grass cabinet sidewalk person earth door table "
    "mountain plant curtain chair car water painting sofa shelf house sea mirror rug field armchair seat fence "
    "desk rock wardrobe lamp bathtub railing cushion base box column signboard chest_of_drawers counter sand sink "
    "skyscraper fireplace refrigerator grandstand path stairs runway case pool_table pillow screen_door stairway "
    "river bridge bookcase blind coffee_table toilet flower book hill bench countertop stove palm kitchen_island "
    "computer swivel_chair boat bar arcade_machine hovel bus towel light truck tower chandelier awning "
    "streetlight booth television_receiver airplane dirt_track apparel pole land bannister escalator ottoman "
    "bottle buffet poster stage van ship fountain conveyer_belt canopy washer plaything swimming_pool stool "
    "barrel basket waterfall tent bag minibike cradle oven ball food step tank trade_name microwave pot animal "
    "bicycle lake dishwasher screen blanket sculpture hood sconce vase traffic_light tray ashcan fan pier "
    "crt_screen plate monitor bulletin_board shower radiator glass clock flag"
).split()
ADE20K_CLASSES = [c.replace("_", " ") for c in ADE20K_CLASSES]
# value 0 ("other objects") -> ignore, k -> k - 1; values above 150 are no class
VALUE_TO_CLASS = lut({k: k - 1 for k in range(1, 151)})

SPLITS = {"training": "train", "validation": "val", "testing": "test"}


def _convert(item: Item) -> Converted:
    if item.label is None:
        return Converted()
    if not item.label.is_file():
        raise DataError(f"no annotation {item.label} for image {item.image}")
    raw = read_index_png(item.label)
    conv = Converted(mask=VALUE_TO_CLASS[raw].astype(np.uint8))
    over = raw > 150
    if over.any():
        values = sorted(set(np.unique(raw[over]).tolist()))
        conv.skipped.append(
            (str(item.label), f"{int(over.sum())} pixel(s) of values {values[:5]} above 150 set to ignore")
        )
    return conv


def plan_ade20k(src: Path, palette: Path | None = None) -> Plan:
    """ADE20K SceneParsing (see the module docstring): SRC is the ``ADEChallengeData2016`` folder."""
    if not (src / "images").is_dir():
        inner = src / "ADEChallengeData2016"
        hint = f": pass {inner} as SRC" if inner.is_dir() else ""
        raise DataError(f"{src / 'images'} does not exist{hint} (ade20k SRC is the ADEChallengeData2016 folder)")
    if any((src / "images" / folder).is_dir() for folder, split in SPLITS.items() if split != "test"):
        require_dir(src / "annotations", "ade20k", "the ADEChallengeData2016 folder, with images/ and annotations/")
    plan = Plan(list(ADE20K_CLASSES), default_palette(len(ADE20K_CLASSES)), {}, _convert)
    plan.notes.append("annotation value 0 ('other objects') -> ignore 255, value k -> class k - 1 (150 classes)")
    for folder, split in SPLITS.items():
        image_dir = src / "images" / folder
        if not image_dir.is_dir():
            continue
        labelled = split != "test"
        items = []
        for image in sorted(image_dir.iterdir()):
            if image.name.startswith(".") or image.suffix.lower() not in IMAGE_EXTENSIONS:
                continue
            label = src / "annotations" / folder / f"{image.stem}.png" if labelled else None
            items.append(Item(split, image.stem, image, label))
        if not items:
            continue
        plan.splits[split] = items
        if not labelled:
            plan.unlabelled.add(split)
    if not plan.splits:
        raise DataError(f"{src / 'images'} has no training, validation or testing folder of images")
    plan.notes.append(
        "images/training -> train, images/validation -> val"
        + (", images/testing -> test (no masks)" if "test" in plan.splits else "")
    )
    return plan
