"""Pascal VOC 2012 segmentation and the SBD augmented set ("train_aug").

Pascal VOC 2012, as its development kit documentation (M. Everingham, J. Winn, "The PASCAL Visual Object Classes
Challenge 2012 (VOC2012) Development Kit", section on the segmentation task) lays it out under ``VOC2012/``:

- ``JPEGImages/<id>.jpg``;
- ``SegmentationClass/<id>.png``: palette PNGs whose indices are the classes 0..20 (0 = background, in the
  devkit's order) and 255 = "void" (object borders and difficult regions, not scored);
- ``SegmentationObject/<id>.png``: palette PNGs whose indices are the objects of the image (1..K, in the order of
  its XML annotation), 0 = background, 255 = void;
- ``ImageSets/Segmentation/{train,val,trainval,test}.txt``: one id per line.

Imported: ``train.txt`` -> train, ``val.txt`` -> val (``trainval.txt`` is their union), ``test.txt`` (the separate
test release) -> test without masks. Void stays the ignore index 255; in the instance maps void is 0 (no instance).
The class palette is the devkit's bit-interleaved colour map (:func:`pixelwise.data.info.default_palette`).

SBD (B. Hariharan, P. Arbelaez, L. Bourdev, S. Maji, J. Malik, "Semantic Contours from Inverse Detectors", ICCV
2011; the ``benchmark_RELEASE/dataset`` folder of its archive, described by its README): ``img/<id>.jpg``,
``cls/<id>.mat`` holding the struct ``GTcls`` whose ``Segmentation`` is the class map (0..20, no void) and
``inst/<id>.mat`` holding ``GTinst`` whose ``Segmentation`` is the object map (0 = none), ``train.txt`` and
``val.txt``. Merged the usual way (as DeepLab and mmsegmentation's ``voc_aug`` converter do): train =
"train_aug" = SBD train + SBD val + VOC train, minus VOC val (10,582 images on the full sets); val = VOC val
(1,449). An image in VOC train keeps VOC's own (finer, void-bordered) annotation; the others take SBD's.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ...errors import DataError
from ..info import default_palette
from .plan import Converted, Item, Plan, read_index_png, read_list

VOC_CLASSES = [
    "background",
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
]
VOID = 255


def _find_voc(src: Path, fmt: str) -> Path:
    if (src / "JPEGImages").is_dir():
        return src
    for inner in ("VOC2012", "VOCdevkit/VOC2012"):
        if (src / inner / "JPEGImages").is_dir():
            if fmt == "voc":
                raise DataError(f"{src} has no JPEGImages folder: pass {src / inner} as SRC (the folder holding it)")
            return src / inner
    raise DataError(
        f"{src} has no JPEGImages folder: voc SRC is the VOC2012 folder of the devkit (holding JPEGImages, "
        "SegmentationClass and ImageSets)"
    )


def _voc_converter(item: Item) -> Converted:
    cls_path, obj_path = item.data
    if cls_path is None:
        return Converted()
    if not cls_path.is_file():
        raise DataError(f"no class annotation {cls_path} for image {item.image}")
    mask = read_index_png(cls_path)
    inst = None
    if obj_path is not None:
        obj = read_index_png(obj_path).astype(np.int64)
        if obj.shape != mask.shape:
            raise DataError(f"object annotation {obj_path} is not the size of {cls_path}")
        obj[(obj == VOID) | (mask == VOID)] = 0  # void borders are no object (and ignore pixels carry none)
        inst = obj
    return Converted(mask=mask, instances=inst)


def _voc_items(voc: Path, split: str, stems: list[str], labelled: bool) -> tuple[list[Item], bool]:
    """Items of a VOC split and whether every one has its SegmentationObject file."""
    items = []
    all_objects = labelled
    for stem in stems:
        obj = voc / "SegmentationObject" / f"{stem}.png"
        has_obj = labelled and obj.is_file()
        all_objects = all_objects and has_obj
        cls = voc / "SegmentationClass" / f"{stem}.png" if labelled else None
        items.append(Item(split, stem, voc / "JPEGImages" / f"{stem}.jpg", cls, (cls, obj if has_obj else None)))
    if not all_objects:  # instance maps for a whole split or none: drop the object files of a partial one
        for it in items:
            it.data = (it.data[0], None)
    return items, all_objects


def _not_in_lists(voc: Path, listed: set[str]) -> int:
    with os.scandir(voc / "JPEGImages") as entries:
        return sum(1 for e in entries if e.name.endswith(".jpg") and e.name[:-4] not in listed)


def plan_voc(src: Path, palette: Path | None = None) -> Plan:
    """Pascal VOC 2012 segmentation (see the module docstring): SRC is the ``VOC2012`` folder."""
    voc = _find_voc(src, "voc")
    lists = voc / "ImageSets" / "Segmentation"
    if not lists.is_dir():
        raise DataError(f"{lists} does not exist: the VOC segmentation splits are listed there")
    plan = Plan(list(VOC_CLASSES), default_palette(len(VOC_CLASSES)), {}, _voc_converter)
    plan.instance_classes = VOC_CLASSES[1:]
    listed: set[str] = set()
    for split in ("train", "val", "test"):
        path = lists / f"{split}.txt"
        if not path.is_file():
            continue
        stems = read_list(path)
        listed.update(stems)
        labelled = split != "test"
        items, objects = _voc_items(voc, split, stems, labelled)
        plan.splits[split] = items
        if not labelled:
            plan.unlabelled.add(split)
            plan.notes.append("ImageSets/Segmentation/test.txt: the test images, without masks (not published)")
        elif objects:
            plan.instance_splits.add(split)
        else:
            plan.notes.append(f"split {split!r}: no instance maps (SegmentationObject lacks some of its images)")
    if not plan.splits:
        raise DataError(f"{lists} holds none of train.txt, val.txt, test.txt")
    plan.notes.append("ImageSets/Segmentation/train.txt -> train, val.txt -> val (trainval.txt is their union)")
    rest = _not_in_lists(voc, listed)
    if rest:
        plan.skipped.append(
            (str(voc / "JPEGImages"), f"{rest} image(s) in no segmentation list (detection/action/layout only)")
        )
    return plan


def _load_mat(path: Path, key: str) -> np.ndarray:
    from scipy.io import loadmat  # scipy is a core dependency; imported here to keep `import pixelwise` light
    from scipy.io.matlab import MatReadError  # a truncated file: a plain Exception, none of the below

    try:
        mat = loadmat(path, squeeze_me=True, struct_as_record=False)
        return np.asarray(mat[key].Segmentation)
    except (OSError, ValueError, KeyError, AttributeError, TypeError, MatReadError) as e:
        raise DataError(
            f"cannot read {path}: {e} (SBD .mat files hold a struct {key} with a Segmentation field)"
        ) from None


def _sbd_converter(item: Item) -> Converted:
    if item.data[0] == "voc":
        return _voc_converter(Item(item.split, item.stem, item.image, item.label, item.data[1]))
    _, cls_path, inst_path = item.data
    if not cls_path.is_file():
        raise DataError(f"no class annotation {cls_path} for image {item.image}")
    mask = _load_mat(cls_path, "GTcls")
    if mask.ndim != 2 or mask.size and (mask.min() < 0 or mask.max() > 255):
        raise DataError(f"{cls_path}: GTcls.Segmentation is not a 2-D map of class indices")
    mask = mask.astype(np.uint8)
    inst = None
    if inst_path is not None:
        inst = _load_mat(inst_path, "GTinst").astype(np.int64)
        if inst.shape != mask.shape:
            raise DataError(f"{inst_path}: GTinst.Segmentation is not the size of {cls_path}")
        inst[mask == VOID] = 0
    return Converted(mask=mask, instances=inst)


def _find_sbd(src: Path) -> Path:
    for inner in ("benchmark_RELEASE/dataset", "dataset"):
        if (src / inner / "cls").is_dir():
            return src / inner
    raise DataError(
        f"no SBD under {src}: sbd SRC is the folder both archives were unpacked into, holding "
        "benchmark_RELEASE/dataset (cls, inst, img, train.txt, val.txt) and VOCdevkit/VOC2012"
    )


def plan_sbd(src: Path, palette: Path | None = None) -> Plan:
    """SBD merged with Pascal VOC 2012 into train_aug / VOC val (see the module docstring). SRC holds
    ``benchmark_RELEASE/dataset`` (or ``dataset``) and ``VOCdevkit/VOC2012`` (or ``VOC2012``)."""
    sbd = _find_sbd(src)
    try:
        voc = _find_voc(src, "sbd")
    except DataError:
        raise DataError(
            f"no VOCdevkit/VOC2012 (or VOC2012) under {src}: the train_aug merge needs VOC 2012's val list "
            "(to leave it out) and its train annotations"
        ) from None
    lists = voc / "ImageSets" / "Segmentation"
    for path in (sbd / "train.txt", sbd / "val.txt", lists / "train.txt", lists / "val.txt"):
        if not path.is_file():
            raise DataError(f"{path} does not exist: the train_aug merge needs it")
    sbd_ids = set(read_list(sbd / "train.txt")) | set(read_list(sbd / "val.txt"))
    voc_train = read_list(lists / "train.txt")
    voc_val = read_list(lists / "val.txt")
    train_aug = sorted((sbd_ids | set(voc_train)) - set(voc_val))
    voc_train_set = set(voc_train)
    plan = Plan(list(VOC_CLASSES), default_palette(len(VOC_CLASSES)), {}, _sbd_converter)
    plan.instance_classes = VOC_CLASSES[1:]
    voc_items, voc_objects = _voc_items(voc, "train", [s for s in train_aug if s in voc_train_set], True)
    by_stem = {it.stem: it for it in voc_items}
    items: list[Item] = []
    all_instances = voc_objects
    for stem in train_aug:
        if stem in by_stem:
            it = by_stem[stem]
            items.append(Item("train", stem, it.image, it.label, ("voc", it.data)))
            continue
        image = sbd / "img" / f"{stem}.jpg"
        if not image.is_file():
            image = voc / "JPEGImages" / f"{stem}.jpg"
        inst = sbd / "inst" / f"{stem}.mat"
        all_instances = all_instances and inst.is_file()
        cls = sbd / "cls" / f"{stem}.mat"
        items.append(Item("train", stem, image, cls, ("sbd", cls, inst)))
    if not all_instances:
        for it in items:
            it.data = ("voc", (it.data[1][0], None)) if it.data[0] == "voc" else ("sbd", it.data[1], None)
        plan.notes.append("split 'train': no instance maps (some images lack inst/*.mat or SegmentationObject)")
    else:
        plan.instance_splits.add("train")
    plan.splits["train"] = items
    val_items, val_objects = _voc_items(voc, "val", voc_val, True)
    plan.splits["val"] = [Item("val", it.stem, it.image, it.label, ("voc", it.data)) for it in val_items]
    if val_objects:
        plan.instance_splits.add("val")
    n_sbd_only = sum(1 for it in items if it.data[0] == "sbd")
    plan.notes.append(
        f"train = train_aug = SBD train + SBD val + VOC train, minus VOC val: {len(train_aug)} images "
        f"({len(train_aug) - n_sbd_only} with VOC's annotation, {n_sbd_only} with SBD's); val = VOC val "
        f"({len(voc_val)} images)"
    )
    dropped = len(sbd_ids & set(voc_val))
    if dropped:
        plan.skipped.append((str(sbd), f"{dropped} SBD image(s) in VOC val, left out of train_aug"))
    return plan
