"""pixelwise.data.importers: each format's tiny fixture in its exact on-disk layout, imported and checked pixel for
pixel against arrays computed by hand; the source unchanged; the destination rules; the summary; the CLI."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pixelwise.data import check_dataset, default_palette, read_instances, read_mask
from pixelwise.data.importers import import_dataset
from pixelwise.data.importers.ade20k import ADE20K_CLASSES
from pixelwise.data.importers.cityscapes import TRAIN_CLASSES
from pixelwise.data.importers.coco import COCO_STUFF_CLASSES, COCO_STUFF_THINGS
from pixelwise.data.info import MASKS_ORIENTED
from pixelwise.errors import ConfigError, DataError, PixelwiseError

REPO = Path(__file__).resolve().parents[1]
H, W = 6, 8


# ---------------------------------------------------------------------------------------------------------------
# helpers


def tree_hash(root: Path) -> dict[str, str]:
    """Every file under ``root`` (relative path -> sha256 of its bytes)."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def rgb_image(h: int = H, w: int = W, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def save_jpeg(path: Path, h: int = H, w: int = W, seed: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb_image(h, w, seed)).save(path, quality=95)


def save_png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def save_palette_png(path: Path, indices: np.ndarray, palette: list[list[int]]) -> None:
    """A palette ("P" mode) PNG, as VOC stores its annotations."""
    path.parent.mkdir(parents=True, exist_ok=True)
    h, w = indices.shape
    im = Image.frombytes("P", (w, h), indices.astype(np.uint8).tobytes())
    flat = [v for c in palette for v in c]
    im.putpalette(flat + [0] * (768 - len(flat)))
    im.save(path)


def imported(
    tmp_path: Path, fmt: str, src: Path, **kwargs
) -> tuple[Path, object]:  # the data set folder and the summary
    """Import ``src`` and check what every import must satisfy: SRC unchanged, no staging folder left, and a
    data set that passes the data check with no errors."""
    before = tree_hash(src)
    dst = tmp_path / "dst"
    summary = import_dataset(fmt, src, dst, progress=False, **kwargs)
    assert tree_hash(src) == before, "the import altered SRC"
    name = kwargs.get("name") or fmt
    assert sorted(p.name for p in dst.iterdir()) == [name], "staging folders left behind"
    report = check_dataset(dst, name, progress=False, warn=False)
    assert report.ok, report.errors
    return dst / name, summary


def mask_of(base: Path, split: str, stem: str) -> np.ndarray:
    return read_mask(base / "masks" / split / f"{stem}.png")


def instances_of(base: Path, split: str, stem: str) -> np.ndarray:
    return read_instances(base / "instances" / split / f"{stem}.png").astype(np.int64)


def classes_json(base: Path) -> dict:
    return json.loads((base / "classes.json").read_text())


# ---------------------------------------------------------------------------------------------------------------
# Pascal VOC 2012

VOC_PAL = default_palette(256)


def voc_arrays() -> tuple[np.ndarray, np.ndarray]:
    """A person (15, object 1) with a void border on its right, a car (7, object 2), background."""
    cls = np.zeros((H, W), np.uint8)
    obj = np.zeros((H, W), np.uint8)
    cls[1:4, 1:5], obj[1:4, 1:5] = 15, 1
    cls[1:4, 5], obj[1:4, 5] = 255, 255
    cls[4:6, 0:3], obj[4:6, 0:3] = 7, 2
    return cls, obj


def make_voc(root: Path, stems_train=("2007_000032",), stems_val=("2007_000033",), extra=("2007_000027",)) -> Path:
    voc = root / "VOC2012"
    cls, obj = voc_arrays()
    for i, stem in enumerate((*stems_train, *stems_val, *extra)):
        save_jpeg(voc / "JPEGImages" / f"{stem}.jpg", seed=i)
        if stem in extra:
            continue
        save_palette_png(voc / "SegmentationClass" / f"{stem}.png", cls, VOC_PAL)
        save_palette_png(voc / "SegmentationObject" / f"{stem}.png", obj, VOC_PAL)
    lists = voc / "ImageSets" / "Segmentation"
    lists.mkdir(parents=True)
    (lists / "train.txt").write_text("".join(f"{s}\n" for s in stems_train))
    (lists / "val.txt").write_text("".join(f"{s}\n" for s in stems_val))
    (lists / "trainval.txt").write_text("".join(f"{s}\n" for s in (*stems_train, *stems_val)))
    return voc


def test_voc(tmp_path):
    src = make_voc(tmp_path / "src")
    base, summary = imported(tmp_path, "voc", src, workers=2)
    cls, obj = voc_arrays()
    expected_inst = obj.astype(np.int64)
    expected_inst[obj == 255] = 0  # void is no object
    for split, stem in (("train", "2007_000032"), ("val", "2007_000033")):
        np.testing.assert_array_equal(mask_of(base, split, stem), cls)
        np.testing.assert_array_equal(instances_of(base, split, stem), expected_inst)
        # the JPEG copied byte for byte
        assert (base / "images" / split / f"{stem}.jpg").read_bytes() == (
            src / "JPEGImages" / f"{stem}.jpg"
        ).read_bytes()
    info = classes_json(base)
    assert info["classes"][0] == "background" and info["classes"][15] == "person" and len(info["classes"]) == 21
    assert info["palette"] == default_palette(21) and info["ignore_index"] == 255
    assert info["instance_classes"] == info["classes"][1:]
    # the summary: images per split, pixels per class, the image in no segmentation list
    assert summary.images == {"train": 1, "val": 1}
    assert summary.instances == {"train": 2, "val": 2}
    hist = summary.histogram["train"]
    assert (hist[0], hist[7], hist[15], summary.ignore_pixels["train"]) == (H * W - 12 - 3 - 6, 6, 12, 3)
    assert any("in no segmentation list" in reason for _, reason in summary.skipped)
    text = summary.format_text()
    assert "imported voc" in text and "person" in text and "in no segmentation list" in text


def test_an_image_listed_in_two_splits_is_named_in_a_note(tmp_path):
    src = make_voc(tmp_path / "src", stems_train=("2007_000032", "2007_000033"), stems_val=("2007_000033",))
    base, summary = imported(tmp_path, "voc", src, workers=1)
    assert summary.images == {"train": 2, "val": 1}  # imported as listed
    note = (
        "1 image(s) in both split 'train' and split 'val' (e.g. 2007_000033.jpg), imported into both: scores on "
        "'val' will flatter a model trained on 'train'; list each image in one split"
    )
    assert note in summary.notes and f"note: {note}" in summary.format_text()
    _, apart = imported(tmp_path / "apart", "voc", make_voc(tmp_path / "src2"), workers=1)
    assert not any("in both split" in n for n in apart.notes)


def test_non_empty_destination_is_refused_with_overwrite_replacing_it(tmp_path):
    src = make_voc(tmp_path / "src")
    dst = tmp_path / "dst"
    import_dataset("voc", src, dst, progress=False, workers=1)
    stale = dst / "voc" / "images" / "train" / "stale.png"
    stale.write_bytes(b"x")
    with pytest.raises(DataError) as e:
        import_dataset("voc", src, dst, progress=False, workers=1)
    assert str(e.value) == f"{dst / 'voc'} is not empty: pass --overwrite to replace it, or choose another --name"
    assert stale.exists()  # refused: nothing touched
    import_dataset("voc", src, dst, overwrite=True, progress=False, workers=1)
    assert not stale.exists()  # replaced by the new import, not merged into the old one
    assert sorted(p.name for p in dst.iterdir()) == ["voc"]
    assert check_dataset(dst, "voc", progress=False, warn=False).ok
    # another name is another data set; a destination inside SRC is refused
    import_dataset("voc", src, dst, name="voc2012", link=True, progress=False, workers=1)
    assert (dst / "voc2012" / "classes.json").is_file()
    linked = dst / "voc2012" / "images" / "train" / "2007_000032.jpg"  # --link: the same file, not a copy
    assert linked.stat().st_ino == (src / "JPEGImages" / "2007_000032.jpg").stat().st_ino
    with pytest.raises(ConfigError, match="overlap"):
        import_dataset("voc", src, src / "out", progress=False)
    with pytest.raises(ConfigError, match="palette"):
        import_dataset("voc", src, dst, name="x", palette=src / "x.json", progress=False)


def test_a_destination_holding_src_is_refused_even_with_overwrite(tmp_path):
    """DST/NAME a parent of SRC: an overwrite would move the old DST/NAME aside and delete it, SRC with it."""
    dst = tmp_path / "dst"
    src = make_voc(dst / "voc")  # DST/voc/VOC2012
    before = tree_hash(src)
    with pytest.raises(ConfigError) as e:
        import_dataset("voc", src, dst, overwrite=True, progress=False, workers=1)
    assert str(e.value) == (
        f"destination {dst / 'voc'} and source {src} overlap: the import never writes under SRC; choose another DST"
    )
    assert tree_hash(src) == before  # SRC still whole
    assert sorted(p.name for p in dst.iterdir()) == ["voc"]  # no staging folder


def test_a_failure_midway_leaves_nothing_behind(tmp_path, monkeypatch):
    from pixelwise.data.importers import voc

    src = make_voc(tmp_path / "src", stems_train=tuple(f"2007_{i:06d}" for i in range(6)))
    calls = []
    original = voc._voc_converter

    def failing(item):
        calls.append(item.stem)
        if len(calls) == 3:  # Ctrl-C (an error of one item's data is that item's listed skip, not a stop)
            raise KeyboardInterrupt("boom")
        return original(item)

    monkeypatch.setattr(voc, "_voc_converter", failing)
    dst = tmp_path / "dst"
    with pytest.raises(KeyboardInterrupt, match="boom"):
        import_dataset("voc", src, dst, progress=False, workers=2)
    assert not dst.exists()  # the staging folder removed after the pool stopped, and the DST the import made
    # a DST that was there before stays (empty), and so do the folders above one that the import made
    dst.mkdir()
    calls.clear()
    with pytest.raises(KeyboardInterrupt, match="boom"):
        import_dataset("voc", src, dst / "a" / "b", progress=False, workers=2)
    assert list(dst.iterdir()) == []


@pytest.mark.parametrize(
    ("where", "error"),
    [
        ("convert", MemoryError("out of memory")),
        ("convert", AttributeError("a bug")),
        ("write", OSError(28, "No space")),
    ],
)
def test_a_bug_or_the_machine_failing_stops_the_import_whole(tmp_path, monkeypatch, where, error):
    """A malformed file is its item's listed skip; our own bug, memory or a full disk are not: the import stops and
    leaves nothing (it committed the data set without the item, listing the full disk as a skip)."""
    import pixelwise.data.importers.writer as writer
    from pixelwise.data.importers import voc

    src = make_voc(tmp_path / "src", stems_train=tuple(f"2007_{i:06d}" for i in range(3)))
    name, module = ("_voc_converter", voc) if where == "convert" else ("_save_png", writer)
    original = getattr(module, name)

    def failing(*args):
        if "2007_000001" in str(args):
            raise error
        return original(*args)

    monkeypatch.setattr(module, name, failing)
    with pytest.raises(type(error)):
        import_dataset("voc", src, tmp_path / "dst", progress=False, workers=1)
    assert not (tmp_path / "dst").exists()


def test_voc_test_split_without_masks(tmp_path):
    src = make_voc(tmp_path / "src")
    save_jpeg(src / "JPEGImages" / "2008_000001.jpg")
    (src / "ImageSets" / "Segmentation" / "test.txt").write_text("2008_000001\n")
    base, summary = imported(tmp_path, "voc", src, workers=1)
    assert summary.images == {"train": 1, "val": 1, "test": 1}
    assert (base / "images" / "test" / "2008_000001.jpg").is_file()
    assert not (base / "masks" / "test").exists() and "test" not in summary.histogram


def test_voc_missing_files_are_skipped_and_listed(tmp_path):
    src = make_voc(tmp_path / "src")
    with (src / "ImageSets" / "Segmentation" / "val.txt").open("a") as f:
        f.write("2009_999999\n")  # listed, but neither its image nor its annotations exist
    base, summary = imported(tmp_path, "voc", src, workers=1)
    assert summary.images == {"train": 1, "val": 1}
    cls_path, image = src / "SegmentationClass" / "2009_999999.png", src / "JPEGImages" / "2009_999999.jpg"
    assert (str(cls_path), f"no class annotation {cls_path} for image {image}") in summary.skipped
    # instance maps for a whole split or none: val loses them, and says so
    assert summary.instance_maps == {"train": 1} and not (base / "instances" / "val").exists()
    assert any("split 'val': no instance maps" in n for n in summary.notes)
    assert "no class annotation" in summary.format_text()


# ---------------------------------------------------------------------------------------------------------------
# SBD + VOC: train_aug


def save_mat(path: Path, key: str, seg: np.ndarray) -> None:
    from scipy.io import savemat

    path.parent.mkdir(parents=True, exist_ok=True)
    struct = {"Segmentation": seg.astype(np.uint8), "Boundaries": np.zeros((1,), dtype=object)}
    struct["CategoriesPresent" if key == "GTcls" else "Categories"] = np.unique(seg[seg > 0]).astype(np.uint8)
    savemat(path, {key: struct})


def make_sbd_beside_voc(tmp_path: Path, inst: bool = True) -> Path:
    """SBD's ``dataset`` folder under ``tmp_path/sbd`` (images a and b in train.txt, cls and, with ``inst``,
    inst .mat files) beside a VOCdevkit of c (train) and e (val): the folder, to spoil a file in."""
    sbd = tmp_path / "sbd" / "benchmark_RELEASE" / "dataset"
    make_voc(tmp_path / "sbd" / "VOCdevkit", stems_train=("c",), stems_val=("e",), extra=())
    cls, obj = voc_arrays()
    for stem in ("a", "b"):
        save_jpeg(sbd / "img" / f"{stem}.jpg")
        save_mat(sbd / "cls" / f"{stem}.mat", "GTcls", cls)
        if inst:
            save_mat(sbd / "inst" / f"{stem}.mat", "GTinst", obj)
    (sbd / "train.txt").write_text("a\nb\n")
    (sbd / "val.txt").write_text("")
    return sbd


def test_sbd_train_aug(tmp_path):
    root = tmp_path / "src"
    # VOC: c in train, d in val; SBD: a, c (train), b, d (val)
    make_voc(root / "VOCdevkit", stems_train=("c",), stems_val=("d",), extra=())
    sbd = root / "benchmark_RELEASE" / "dataset"
    sbd_cls = np.zeros((H, W), np.uint8)
    sbd_cls[0:3, 0:4] = 12  # a dog
    sbd_cls[3:6, 4:8] = 12  # another dog
    sbd_inst = np.zeros((H, W), np.uint8)
    sbd_inst[0:3, 0:4], sbd_inst[3:6, 4:8] = 1, 2
    for i, stem in enumerate("abcd"):
        save_jpeg(sbd / "img" / f"{stem}.jpg", seed=10 + i)
        save_mat(sbd / "cls" / f"{stem}.mat", "GTcls", sbd_cls)
        save_mat(sbd / "inst" / f"{stem}.mat", "GTinst", sbd_inst)
    (sbd / "train.txt").write_text("a\nc\n")
    (sbd / "val.txt").write_text("b\nd\n")
    base, summary = imported(tmp_path, "sbd", root, workers=2)
    assert sorted(p.stem for p in (base / "images" / "train").iterdir()) == ["a", "b", "c"]
    assert sorted(p.stem for p in (base / "images" / "val").iterdir()) == ["d"]
    for stem in "ab":  # SBD's annotation
        np.testing.assert_array_equal(mask_of(base, "train", stem), sbd_cls)
        np.testing.assert_array_equal(instances_of(base, "train", stem), sbd_inst)
    voc_cls, voc_obj = voc_arrays()
    voc_inst = np.where(voc_obj == 255, 0, voc_obj)
    np.testing.assert_array_equal(mask_of(base, "train", "c"), voc_cls)  # VOC train keeps VOC's annotation
    np.testing.assert_array_equal(instances_of(base, "train", "c"), voc_inst)
    np.testing.assert_array_equal(mask_of(base, "val", "d"), voc_cls)
    assert summary.images == {"train": 3, "val": 1}
    assert any("train_aug = SBD train + SBD val + VOC train, minus VOC val" in n for n in summary.notes)
    assert any("in VOC val, left out of train_aug" in reason for _, reason in summary.skipped)


# ---------------------------------------------------------------------------------------------------------------
# Cityscapes


def test_cityscapes(tmp_path):
    src = tmp_path / "src"
    label = np.full((H, W), 7, np.uint8)  # road
    inst = label.astype(np.uint16).copy()
    label[0, :] = 0  # unlabeled
    label[1, 0:4], inst[1, 0:4] = 26, 26002  # car 2
    label[1, 4:8], inst[1, 4:8] = 26, 26001  # car 1
    label[2, 0:3], inst[2, 0:3] = 24, 24001  # person 1
    label[2, 3:6], inst[2, 3:6] = 26, 26  # a car group: a label id without an instance
    label[3, 0:4], inst[3, 0:4] = 29, 29001  # caravan: ignored in training, its instance dropped
    label[4, :] = 18  # polegroup -> ignore
    inst[label == 18] = 18
    inst[label == 0] = 0
    stem = "aachen_000000_000019"
    save_png(src / "leftImg8bit" / "train" / "aachen" / f"{stem}_leftImg8bit.png", rgb_image())
    gt = src / "gtFine" / "train" / "aachen"
    save_png(gt / f"{stem}_gtFine_labelIds.png", label)
    save_png(gt / f"{stem}_gtFine_instanceIds.png", inst)
    save_png(src / "leftImg8bit" / "test" / "berlin" / "berlin_000000_000019_leftImg8bit.png", rgb_image(seed=3))
    base, summary = imported(tmp_path, "cityscapes", src, workers=2)
    expected = np.full((H, W), 0, np.uint8)  # road = train id 0
    expected[0, :] = 255
    expected[1, :] = 13  # car
    expected[2, 0:3] = 11  # person
    expected[2, 3:6] = 13
    expected[3, 0:4] = 255  # caravan
    expected[4, :] = 255
    np.testing.assert_array_equal(mask_of(base, "train", stem), expected)
    expected_inst = np.zeros((H, W), np.int64)
    expected_inst[2, 0:3] = 1  # 24001, then 26001, then 26002 in id order
    expected_inst[1, 4:8] = 2
    expected_inst[1, 0:4] = 3
    np.testing.assert_array_equal(instances_of(base, "train", stem), expected_inst)
    info = classes_json(base)
    assert info["classes"] == TRAIN_CLASSES and len(TRAIN_CLASSES) == 19
    assert info["palette"][0] == [128, 64, 128] and info["palette"][13] == [0, 0, 142]
    assert info["instance_classes"] == ["person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle"]
    assert summary.images == {"train": 1, "test": 1} and "test" not in summary.masks
    assert (base / "images" / "test" / "berlin_000000_000019.png").is_file()


# ---------------------------------------------------------------------------------------------------------------
# ADE20K


def test_ade20k(tmp_path):
    src = tmp_path / "ADEChallengeData2016"
    raw = np.zeros((H, W), np.uint8)  # 0 = other objects
    raw[0:2, :] = 1  # wall
    raw[2:4, :] = 150  # flag
    raw[4, :] = 13  # person
    for folder, stem in (("training", "ADE_train_00000001"), ("validation", "ADE_val_00000001")):
        save_jpeg(src / "images" / folder / f"{stem}.jpg")
        save_png(src / "annotations" / folder / f"{stem}.png", raw)
    base, summary = imported(tmp_path, "ade20k", src, workers=1)
    expected = np.full((H, W), 255, np.uint8)
    expected[0:2, :], expected[2:4, :], expected[4, :] = 0, 149, 12
    np.testing.assert_array_equal(mask_of(base, "train", "ADE_train_00000001"), expected)
    np.testing.assert_array_equal(mask_of(base, "val", "ADE_val_00000001"), expected)
    info = classes_json(base)
    assert len(info["classes"]) == 150 == len(set(ADE20K_CLASSES))
    assert (info["classes"][0], info["classes"][12], info["classes"][149]) == ("wall", "person", "flag")
    assert info["classes"][89] == "television receiver"  # objectInfo150.txt's first name
    assert summary.images == {"train": 1, "val": 1} and summary.ignore_pixels["train"] == W


# ---------------------------------------------------------------------------------------------------------------
# COCO instances


# pycocotools' decode warns under numpy 2 (its __array__ lacks the copy keyword); not ours to fix
COCO_WARNING = "ignore:__array__ implementation:DeprecationWarning"


def coco_fixture(src: Path) -> None:
    mask_api = pytest.importorskip("pycocotools.mask")  # a test extra; the coco format needs it

    save_jpeg(src / "train2017" / "000000000001.jpg")
    save_jpeg(src / "val2017" / "000000000002.jpg", seed=1)
    crowd = np.zeros((H, W), np.uint8, order="F")
    crowd[:, 5:8] = 1  # columns 5..7, all rows
    crowd_rle = mask_api.encode(np.asfortranarray(crowd))
    crowd_rle["counts"] = crowd_rle["counts"].decode()  # compressed RLE as the JSON holds it
    data = {
        "images": [{"id": 1, "file_name": "000000000001.jpg", "height": H, "width": W}],
        "categories": [
            {"id": 1, "name": "person", "supercategory": "person"},
            {"id": 3, "name": "car", "supercategory": "vehicle"},
            {"id": 18, "name": "dog", "supercategory": "animal"},
        ],
        "annotations": [
            # polygon: the rectangle x 0..6, y 0..5 covers pixel columns 0..5, rows 0..4
            {"id": 10, "image_id": 1, "category_id": 1, "iscrowd": 0, "segmentation": [[0, 0, 6, 0, 6, 5, 0, 5]]},
            # uncompressed RLE (column-major runs): a car at rows 2..4 of columns 1..3, smaller: drawn on top
            {
                "id": 11,
                "image_id": 1,
                "category_id": 3,
                "iscrowd": 0,
                "segmentation": {"size": [H, W], "counts": [H + 2, 3, 3, 3, 3, 3, H * W - H - 2 - 15]},
            },
            # crowd of dogs, compressed RLE: ignore where no other annotation lies
            {"id": 12, "image_id": 1, "category_id": 18, "iscrowd": 1, "segmentation": crowd_rle},
        ],
    }
    (src / "annotations").mkdir(parents=True)
    (src / "annotations" / "instances_train2017.json").write_text(json.dumps(data))
    val = dict(data, images=[{"id": 2, "file_name": "000000000002.jpg", "height": H, "width": W}], annotations=[])
    (src / "annotations" / "instances_val2017.json").write_text(json.dumps(val))


@pytest.mark.filterwarnings(COCO_WARNING)
def test_coco_instances(tmp_path):
    src = tmp_path / "coco"
    coco_fixture(src)
    base, summary = imported(tmp_path, "coco", src, workers=2)
    expected = np.zeros((H, W), np.uint8)
    expected[:, 5:8] = 255  # crowd
    expected[0:5, 0:6] = 1  # person over the crowd
    expected[2:5, 1:4] = 2  # car over the person
    np.testing.assert_array_equal(mask_of(base, "train", "000000000001"), expected)
    expected_inst = np.zeros((H, W), np.int64)
    expected_inst[0:5, 0:6] = 1
    expected_inst[2:5, 1:4] = 2
    np.testing.assert_array_equal(instances_of(base, "train", "000000000001"), expected_inst)
    np.testing.assert_array_equal(mask_of(base, "val", "000000000002"), np.zeros((H, W), np.uint8))
    info = classes_json(base)
    assert info["classes"] == ["background", "person", "car", "dog"]
    assert info["instance_classes"] == ["person", "car", "dog"]
    assert summary.images == {"train": 1, "val": 1} and summary.instances == {"train": 2, "val": 0}


@pytest.mark.filterwarnings(COCO_WARNING)
def test_coco_segmentations_of_another_size_are_skipped_with_a_line(tmp_path):
    """An RLE encoded on the transposed array, and an uncompressed one without its size (pycocotools raises a
    bare Exception): each skipped with its reason, the rest imported (was: a traceback, nothing imported)."""
    mask_api = pytest.importorskip("pycocotools.mask")
    src = tmp_path / "coco"
    coco_fixture(src)
    path = src / "annotations" / "instances_train2017.json"
    data = json.loads(path.read_text())
    turned = mask_api.encode(np.asfortranarray(np.ones((W, H), np.uint8)))
    turned["counts"] = turned["counts"].decode()
    data["annotations"] += [
        {"id": 20, "image_id": 1, "category_id": 1, "iscrowd": 1, "segmentation": turned},
        {"id": 21, "image_id": 1, "category_id": 1, "iscrowd": 0, "segmentation": {"counts": [0, H * W]}},
    ]
    path.write_text(json.dumps(data))
    base, summary = imported(tmp_path, "coco", src, workers=1)
    reasons = [reason for _, reason in summary.skipped]
    assert (
        f"annotation 20 of 000000000001.jpg: unreadable segmentation (RLE size [{W}, {H}] is not the image's "
        f"[height, width] [{H}, {W}])"
    ) in reasons
    assert (
        "annotation 21 of 000000000001.jpg: unreadable segmentation (RLE size None is not the image's "
        f"[height, width] [{H}, {W}])"
    ) in reasons
    assert summary.instances == {"train": 2, "val": 0}  # the fixture's two objects, as without the bad ones


@pytest.mark.filterwarnings(COCO_WARNING)
def test_coco_run_lengths_that_do_not_cover_the_image_are_skipped(tmp_path):
    """pycocotools leaves the pixels after short runs uninitialised: a truncated RLE became a random mask."""
    mask_api = pytest.importorskip("pycocotools.mask")
    from pixelwise.data.importers.coco import _compressed_counts

    rng = np.random.default_rng(0)
    for _ in range(50):  # our reading of the compressed string against pycocotools' encoder
        m = (rng.random((7, 9)) < rng.random()).astype(np.uint8)
        runs = _compressed_counts(mask_api.encode(np.asfortranarray(m))["counts"])
        flat = m.flatten(order="F")
        edges = np.flatnonzero(np.diff(flat)) + 1
        expected = np.diff(np.concatenate([[0], edges, [flat.size]])).tolist()
        assert runs == (expected if flat[0] == 0 else [0, *expected])
    src = tmp_path / "coco"
    coco_fixture(src)
    path = src / "annotations" / "instances_train2017.json"
    data = json.loads(path.read_text())
    data["annotations"] += [
        {"id": 30, "image_id": 1, "category_id": 1, "iscrowd": 0, "segmentation": {"size": [H, W], "counts": [3, 5]}},
        {"id": 31, "image_id": 1, "category_id": 1, "iscrowd": 0, "segmentation": {"size": [H, W], "counts": "n1"}},
    ]
    path.write_text(json.dumps(data))
    _, summary = imported(tmp_path, "coco", src, workers=1)
    reasons = [reason for _, reason in summary.skipped]
    for ann, covered in ((30, 8), (31, 62)):
        assert (
            f"annotation {ann} of 000000000001.jpg: unreadable segmentation (RLE runs cover {covered} pixels, not the "
            f"image's {H}x{W} = {H * W})"
        ) in reasons
    assert summary.instances == {"train": 2, "val": 0}


@pytest.mark.filterwarnings(COCO_WARNING)
def test_coco_files_with_malformed_entries_or_too_many_categories(tmp_path, capsys):
    from pixelwise.cli import main

    src = tmp_path / "coco"
    coco_fixture(src)
    path = src / "annotations" / "instances_train2017.json"
    data = json.loads(path.read_text())
    good = data["images"][0]
    data["images"] = [dict(good, height=float(H)), {"id": 7, "file_name": "x.jpg"}, "not an entry"]
    data["annotations"] += [["not", "an", "annotation"]]
    path.write_text(json.dumps(data))
    _, summary = imported(tmp_path, "coco", src, workers=1)
    assert summary.images == {"train": 1, "val": 1}  # a height written as 5.0 is fine
    assert (str(path), "image 'x.jpg': no positive whole 'height' and 'width'") in summary.skipped
    assert (str(path), "1 images entr(ies) that are not JSON objects") in summary.skipped
    assert (str(path), "1 annotations entr(ies) that are not JSON objects") in summary.skipped
    data["annotations"] = None  # as "no annotations"
    path.write_text(json.dumps(data))
    _, summary = imported(tmp_path / "again", "coco", src, workers=1)
    assert summary.instances == {"train": 0, "val": 0}
    data["annotations"] = {"id": 1}
    path.write_text(json.dumps(data))
    assert main(["data", "import", "coco", str(src), str(tmp_path / "d3"), "--name", "c"]) == 2
    assert (
        capsys.readouterr().err.strip() == f"pixelwise data import: error: {path}: 'annotations' is a dict, not a list"
    )
    # 255 categories and background: class 255 would be the ignore value (299 overflowed uint8 with a traceback)
    data["annotations"] = []
    for n in (255, 299):
        data["categories"] = [{"id": i, "name": f"c{i}"} for i in range(1, n + 1)]
        (src / "annotations" / "instances_val2017.json").write_text(json.dumps(data))
        path.write_text(json.dumps(data))
        assert main(["data", "import", "coco", str(src), str(tmp_path / "d4"), "--name", "c"]) == 2
        assert capsys.readouterr().err.strip() == (
            f"pixelwise data import: error: {src}: {n + 1} classes, more than 8-bit masks hold (255 at most, "
            "background included; 255 marks ignored pixels): merge or leave out categories"
        )
    assert not (tmp_path / "d4" / "c").exists()


@pytest.mark.filterwarnings(COCO_WARNING)
def test_coco_masks_follow_the_exif_orientation(tmp_path):
    """COCO's annotations are drawn on the stored pixels; pixelwise reads images turned by their EXIF orientation,
    so the mask is turned with its image (here orientation 6: the stored 8x6 image is read 6 wide, 8 high)."""
    src = tmp_path / "coco"
    coco_fixture(src)
    image = Image.fromarray(rgb_image())
    exif = Image.Exif()
    exif[0x0112] = 6
    image.save(src / "train2017" / "000000000001.jpg", exif=exif.tobytes())
    base, summary = imported(tmp_path, "coco", src, workers=1)
    stored = np.zeros((H, W), np.uint8)
    stored[:, 5:8] = 255
    stored[0:5, 0:6] = 1
    stored[2:5, 1:4] = 2
    expected = np.rot90(stored, k=-1)  # orientation 6: turned 90 degrees clockwise
    np.testing.assert_array_equal(mask_of(base, "train", "000000000001"), expected)
    assert any("EXIF orientation" in n for n in summary.notes)
    # the data set says its masks follow the turned images: data check does not warn about the tag it kept
    from pixelwise.data import check_dataset

    assert classes_json(base)["masks_oriented"] is True
    assert not any("EXIF orientation" in m for _, m in check_dataset(base.parent, base.name, progress=False).warnings)


def test_coco_without_pycocotools_is_one_line_naming_the_extra(tmp_path, monkeypatch):
    src = tmp_path / "coco"
    (src / "annotations").mkdir(parents=True)
    monkeypatch.setitem(sys.modules, "pycocotools", None)  # import pycocotools now raises ImportError
    with pytest.raises(PixelwiseError) as e:
        import_dataset("coco", src, tmp_path / "dst", progress=False)
    assert (
        str(e.value) == "the coco format needs pycocotools: pip install 'pixelwise[coco]' (or pip install pycocotools)"
    )


# ---------------------------------------------------------------------------------------------------------------
# COCO panoptic


def panoptic_fixture(src: Path) -> dict:
    """A val2017 panoptic set of one image: its JSON data (also written) and PNG."""
    save_jpeg(src / "val2017" / "000000000002.jpg")
    person, crowd, tree, car = 5, 7, 1000, 3 + 256 * 1 + 256 * 256 * 2  # car's id needs all three channels
    ids = np.zeros((H, W), np.int64)  # 0 = unlabelled
    ids[0:2, :] = tree
    ids[2:4, 0:4] = person
    ids[2:4, 4:8] = car
    ids[4, 0:4] = crowd
    png = np.stack([ids % 256, ids // 256 % 256, ids // 65536], axis=-1).astype(np.uint8)
    save_png(src / "annotations" / "panoptic_val2017" / "000000000002.png", png)
    data = {
        "images": [{"id": 2, "file_name": "000000000002.jpg", "height": H, "width": W}],
        "categories": [
            {"id": 1, "name": "person", "supercategory": "person", "isthing": 1, "color": [220, 20, 60]},
            {"id": 3, "name": "car", "supercategory": "vehicle", "isthing": 1, "color": [0, 0, 142]},
            {"id": 184, "name": "tree-merged", "supercategory": "plant", "isthing": 0, "color": [107, 142, 35]},
        ],
        "annotations": [
            {
                "image_id": 2,
                "file_name": "000000000002.png",
                "segments_info": [
                    {"id": person, "category_id": 1, "iscrowd": 0, "area": 8, "bbox": [0, 2, 4, 2]},
                    {"id": crowd, "category_id": 1, "iscrowd": 1, "area": 4, "bbox": [0, 4, 4, 1]},
                    {"id": car, "category_id": 3, "iscrowd": 0, "area": 8, "bbox": [4, 2, 4, 2]},
                    {"id": tree, "category_id": 184, "iscrowd": 0, "area": 16, "bbox": [0, 0, 8, 2]},
                ],
            }
        ],
    }
    (src / "annotations" / "panoptic_val2017.json").write_text(json.dumps(data))
    return data


def test_coco_panoptic(tmp_path):
    src = tmp_path / "coco"
    panoptic_fixture(src)
    base, summary = imported(tmp_path, "coco-panoptic", src, workers=1)
    expected = np.full((H, W), 255, np.uint8)  # unlabelled and crowd
    expected[0:2, :] = 2  # tree-merged (stuff)
    expected[2:4, 0:4] = 0  # person
    expected[2:4, 4:8] = 1  # car
    np.testing.assert_array_equal(mask_of(base, "val", "000000000002"), expected)
    expected_inst = np.zeros((H, W), np.int64)
    expected_inst[2:4, 0:4] = 1  # things only, numbered in segment id order
    expected_inst[2:4, 4:8] = 2
    np.testing.assert_array_equal(instances_of(base, "val", "000000000002"), expected_inst)
    info = classes_json(base)
    assert info["classes"] == ["person", "car", "tree-merged"] and info["instance_classes"] == ["person", "car"]
    assert info["palette"] == [[220, 20, 60], [0, 0, 142], [107, 142, 35]]
    assert summary.instances == {"val": 2}


# ---------------------------------------------------------------------------------------------------------------
# COCO-Stuff


def test_coco_stuff(tmp_path):
    src = tmp_path / "cocostuff"
    save_jpeg(src / "images" / "train2017" / "000000000009.jpg")
    raw = np.full((H, W), 255, np.uint8)  # unlabeled
    raw[0, :] = 0  # person (id 1)
    raw[1, :] = 91  # banner (id 92), the first stuff class
    raw[2, :] = 181  # wood (id 182)
    raw[3, 0:2] = 11  # street sign (id 12): no annotation in COCO, never a class
    save_png(src / "annotations" / "train2017" / "000000000009.png", raw)
    base, summary = imported(tmp_path, "coco-stuff", src, workers=1)
    expected = np.full((H, W), 255, np.uint8)
    expected[0, :], expected[1, :], expected[2, :] = 0, 80, 170
    np.testing.assert_array_equal(mask_of(base, "train", "000000000009"), expected)
    info = classes_json(base)
    assert len(info["classes"]) == 171 == len(COCO_STUFF_CLASSES) and len(COCO_STUFF_THINGS) == 80
    assert (info["classes"][0], info["classes"][80], info["classes"][170]) == ("person", "banner", "wood")
    assert "street sign" not in info["classes"]
    assert any("no COCO-Stuff class" in reason for _, reason in summary.skipped)


# ---------------------------------------------------------------------------------------------------------------
# colour masks


RGB_CLASSES = {"classes": ["sky", "road", "car"], "palette": [[128, 128, 128], [128, 64, 128], [64, 0, 128]]}


def make_rgb(root: Path, stray: bool = False) -> tuple[Path, Path, np.ndarray]:
    src = root / "camvid_rgb"
    index = np.zeros((H, W), np.int64)
    index[2:4, :] = 1
    index[4:6, 3:7] = 2
    index[0, 0:2] = 3  # ignore_color
    colours = np.array([*RGB_CLASSES["palette"], [0, 0, 0]], np.uint8)
    rgb = colours[index]
    for split, stem in (("train", "0001TP_006690"), ("val", "0016E5_07959")):
        save_png(src / "images" / split / f"{stem}.png", rgb_image())
        mask = rgb.copy()
        if stray:
            mask[5, 0 : 2 if split == "train" else 1] = [1, 2, 3]
        save_png(src / "masks" / split / f"{stem}.png", mask)
    palette = root / "camvid_classes.json"
    palette.write_text(json.dumps({**RGB_CLASSES, "ignore_color": [0, 0, 0]}))
    expected = np.where(index == 3, 255, index).astype(np.uint8)
    return src, palette, expected


def test_rgb(tmp_path):
    src, palette, expected = make_rgb(tmp_path)
    base, summary = imported(tmp_path, "rgb", src, palette=palette, workers=2)
    np.testing.assert_array_equal(mask_of(base, "train", "0001TP_006690"), expected)
    np.testing.assert_array_equal(mask_of(base, "val", "0016E5_07959"), expected)
    info = classes_json(base)
    assert info["classes"] == RGB_CLASSES["classes"] and info["palette"] == RGB_CLASSES["palette"]
    assert summary.ignore_pixels == {"train": 2, "val": 2}


def test_rgb_unknown_colours_are_listed_not_guessed(tmp_path):
    src, palette, _ = make_rgb(tmp_path, stray=True)
    dst = tmp_path / "dst"
    before = tree_hash(src)
    with pytest.raises(DataError) as e:
        import_dataset("rgb", src, dst, palette=palette, progress=False, workers=1)
    message = str(e.value)
    assert "\n" not in message
    assert message.startswith(f"1 mask colour(s) not in the palette of {palette}: (1, 2, 3) (3 px in ")
    assert "0001TP_006690.png" in message and "0016E5_07959.png" in message
    assert 'name the unlabelled colour "ignore_color"' in message
    assert not dst.exists()  # nothing written, not even a half data set or an empty DST
    assert tree_hash(src) == before


# ---------------------------------------------------------------------------------------------------------------
# LabelMe


def labelme_doc(image_path: str, shapes: list[dict], h: int = 7, w: int = 10, data: str | None = None) -> dict:
    return {
        "version": "5.4.1",
        "flags": {},
        "shapes": shapes,
        "imagePath": image_path,
        "imageData": data,
        "imageHeight": h,
        "imageWidth": w,
    }


def shape(label: str, points: list, kind: str = "polygon", group=None) -> dict:
    return {"label": label, "points": points, "group_id": group, "shape_type": kind, "flags": {}, "description": ""}


def test_labelme(tmp_path):
    src = tmp_path / "labelme"
    h, w = 7, 10
    save_png(src / "images" / "cats.png", rgb_image(h, w))
    shapes = [
        shape("cat", [[1, 1], [5, 1], [5, 4], [1, 4]]),  # pixels x 1..5, y 1..4 (outline included)
        shape("dog", [[3, 2], [7, 2], [7, 5], [3, 5]]),  # later: on top of the cat
        shape("cat", [[8, 0], [9, 1]], "rectangle", group=7),  # two parts of one cat
        shape("cat", [[8, 4], [9, 4], [9, 6], [8, 6]], group=7),
        shape("dog", [[0, 6], [4, 6]], "line"),  # no area: skipped
    ]
    (src / "cats.json").write_text(json.dumps(labelme_doc("images/cats.png", shapes)))
    # a second file with its image embedded (imageData) and no image file
    buf = io.BytesIO()
    Image.fromarray(rgb_image(h, w, seed=5)).save(buf, format="PNG")
    embedded = labelme_doc("missing.png", [shape("_background_", [[0, 0], [9, 0], [9, 6], [0, 6]])])
    embedded["imageData"] = base64.b64encode(buf.getvalue()).decode()
    (src / "embedded.json").write_text(json.dumps(embedded))
    # a third whose one cat covers every pixel: an instance map with no background, whose object is still 1
    save_png(src / "images" / "whole.png", rgb_image(h, w, seed=6))
    whole = labelme_doc("images/whole.png", [shape("cat", [[0, 0], [9, 6]], "rectangle")])
    (src / "whole.json").write_text(json.dumps(whole))
    base, summary = imported(tmp_path, "labelme", src, workers=2)
    info = classes_json(base)
    assert info["classes"] == ["background", "cat", "dog"] and info["instance_classes"] == ["cat", "dog"]
    expected = np.zeros((h, w), np.uint8)
    expected[1:5, 1:6] = 1
    expected[2:6, 3:8] = 2
    expected[0:2, 8:10] = 1
    expected[4:7, 8:10] = 1
    np.testing.assert_array_equal(mask_of(base, "train", "cats"), expected)
    expected_inst = np.zeros((h, w), np.int64)
    expected_inst[1:5, 1:6] = 1
    expected_inst[2:6, 3:8] = 2
    expected_inst[0:2, 8:10] = 3  # one instance for both parts of group 7
    expected_inst[4:7, 8:10] = 3
    np.testing.assert_array_equal(instances_of(base, "train", "cats"), expected_inst)
    np.testing.assert_array_equal(mask_of(base, "train", "embedded"), np.zeros((h, w), np.uint8))
    assert (base / "images" / "train" / "embedded.png").read_bytes() == buf.getvalue()
    np.testing.assert_array_equal(mask_of(base, "train", "whole"), np.ones((h, w), np.uint8))
    np.testing.assert_array_equal(instances_of(base, "train", "whole"), np.ones((h, w), np.int64))
    assert summary.instances == {"train": 4}
    assert any("line shapes enclose no area" in reason for _, reason in summary.skipped)


def _b64_png(array: np.ndarray) -> str:
    buf = io.BytesIO()
    Image.fromarray(array.astype(np.uint8)).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def test_labelme_mask_shapes_are_pasted_into_their_box(tmp_path):
    # LabelMe 5.4's AI masks: points are the box's corners (truncated to integers), "mask" a PNG of the box
    src = tmp_path / "labelme"
    h, w = 7, 10
    save_png(src / "cats.png", rgb_image(h, w))
    blob = np.zeros((3, 4), np.uint8)  # box x 2..5, y 1..3
    blob[0, 1:3] = 1
    blob[1:, :] = 1
    cat = shape("cat", [[2.7, 1.2], [5.9, 3.6]], "mask")
    cat["mask"] = _b64_png(blob)
    dog = shape("dog", [[6, 4], [9, 6]], "rectangle")  # a plain shape beside it
    bad = shape("dog", [[0, 0], [1, 1]], "mask")
    bad["mask"] = _b64_png(np.ones((5, 5)))  # 5x5 for a 2x2 box
    (src / "cats.json").write_text(json.dumps(labelme_doc("cats.png", [cat, dog, bad])))
    base, summary = imported(tmp_path, "labelme", src)
    expected = np.zeros((h, w), np.uint8)
    expected[1:4, 2:6] = blob
    expected[4:7, 6:10] = 2
    np.testing.assert_array_equal(mask_of(base, "train", "cats"), expected)
    expected_inst = np.zeros((h, w), np.int64)
    expected_inst[1:4, 2:6] = blob
    expected_inst[4:7, 6:10] = 2
    np.testing.assert_array_equal(instances_of(base, "train", "cats"), expected_inst)
    assert [r for _, r in summary.skipped] == ["shape 2 ('dog', mask): its 5x5 mask does not fit its 2x2 box; left out"]


def test_labelme_point_labels_make_no_class_and_files_beside_the_splits_are_listed(tmp_path):
    src = tmp_path / "labelme"
    save_png(src / "train" / "a.png", rgb_image(7, 10))
    shapes = [
        shape("cat", [[1, 1], [5, 1], [5, 4], [1, 4]]),
        shape("nose", [[2, 2]], "point"),  # only ever a point: no class without pixels
        shape("cat", [[7, 1], [9, 1], [9, 4]], group=[1]),  # a list where LabelMe writes a number
    ]
    (src / "train" / "a.json").write_text(json.dumps(labelme_doc("a.png", shapes)))
    (src / "stray.json").write_text(json.dumps(labelme_doc("train/a.png", shapes[:1])))
    (src / "more").mkdir()
    (src / "more" / "b.json").write_text(json.dumps(labelme_doc("../train/a.png", shapes[:1])))
    base, summary = imported(tmp_path, "labelme", src)
    assert classes_json(base)["classes"] == ["background", "cat"]
    assert summary.images == {"train": 1} and summary.instances == {"train": 1}
    reasons = [(Path(f).name, r) for f, r in summary.skipped]
    assert ("stray.json", "outside SRC's train/val/test folders: not read") in reasons
    assert ("b.json", "outside SRC's train/val/test folders: not read") in reasons
    assert ("a.json", "shape 2 ('cat', polygon): group_id [1] is not a number or a name; left out") in reasons


def test_labelme_with_a_palette_lists_unknown_labels(tmp_path):
    src = tmp_path / "labelme"
    save_png(src / "train" / "a.png", rgb_image(7, 10))
    save_png(src / "val" / "b.png", rgb_image(7, 10))
    (src / "train" / "a.json").write_text(json.dumps(labelme_doc("a.png", [shape("cat", [[1, 1], [3, 1], [3, 3]])])))
    (src / "val" / "b.json").write_text(json.dumps(labelme_doc("b.png", [shape("cow", [[1, 1], [3, 1], [3, 3]])])))
    palette = tmp_path / "classes.json"
    palette.write_text(json.dumps({"classes": ["background", "cat", "dog"]}))
    with pytest.raises(DataError, match=r"^1 shape label\(s\) not in the classes of .*: cow \(1 shapes in b.json\)"):
        import_dataset("labelme", src, tmp_path / "dst", palette=palette, progress=False, workers=1)
    (src / "val" / "b.json").write_text(json.dumps(labelme_doc("b.png", [shape("dog", [[1, 1], [3, 1], [3, 3]])])))
    base, summary = imported(tmp_path, "labelme", src, palette=palette, workers=1)
    assert summary.images == {"train": 1, "val": 1}  # the train/val folders are the splits
    assert classes_json(base)["classes"] == ["background", "cat", "dog"]
    assert mask_of(base, "val", "b")[2, 2] == 2


def test_labelme_from_a_relative_or_dotted_source_with_its_own_background_name(tmp_path, monkeypatch):
    """SRC given as ../labels (or under a dot-folder) found no files: the hidden-file rule looked at the whole
    path. A palette spelling LabelMe's _background_ lost its shapes. An ungrouped shape shared an instance with a
    shape labelled "shape" of group 0. The data set's folder has the usual permissions (mkdtemp gave 0700)."""
    src = tmp_path / ".cache" / "labelme"
    save_png(src / "a.png", rgb_image(7, 10))
    shapes = [
        shape("_background_", [[0, 0], [9, 0], [9, 6], [0, 6]]),
        shape("cat", [[1, 1], [3, 1], [3, 3]]),
        shape("shape", [[6, 1], [8, 1], [8, 3]], group=0),
    ]
    (src / "a.json").write_text(json.dumps(labelme_doc("a.png", shapes)))
    palette = tmp_path / "classes.json"
    palette.write_text(json.dumps({"classes": ["_background_", "cat", "shape"]}))
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    old = os.umask(0o022)
    try:
        summary = import_dataset("labelme", Path("../.cache/labelme"), Path("../out"), palette=palette, progress=False,
                                 workers=1)  # fmt: skip
    finally:
        os.umask(old)
    base = tmp_path / "out" / "labelme"
    assert summary.images == {"train": 1} and summary.skipped == []
    mask, inst = mask_of(base, "train", "a"), instances_of(base, "train", "a")
    assert mask[0, 0] == 0 and mask[2, 2] == 1 and mask[2, 7] == 2
    assert inst[2, 2] != inst[2, 7] and inst[2, 2] > 0 and inst[2, 7] > 0  # two objects, not one spanning classes
    assert base.stat().st_mode & 0o777 == 0o755


def test_rgb_lists_a_second_file_of_a_stem(tmp_path):
    src, palette, _ = make_rgb(tmp_path)
    save_jpeg(src / "images" / "train" / "0001TP_006690.jpg")  # beside the .png of the same stem
    base, summary = imported(tmp_path, "rgb", src, palette=palette, workers=1)
    assert summary.images == {"train": 1, "val": 1}
    assert (
        str(src / "images" / "train" / "0001TP_006690.png"),
        "a second file of stem '0001TP_006690' beside 0001TP_006690.jpg: left out",
    ) in summary.skipped


# ---------------------------------------------------------------------------------------------------------------
# the command line


def test_cli_import_and_refusal(tmp_path):
    src = make_voc(tmp_path / "src")
    dst = tmp_path / "dst"
    cmd = [sys.executable, "-m", "pixelwise", "data", "import", "voc", str(src), str(dst), "--workers", "1"]
    report = tmp_path / "summary.json"
    proc = subprocess.run(
        [*cmd, "--no-progress", "--json", str(report)], capture_output=True, text=True, cwd=REPO, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    assert f"imported voc from {src} into {dst / 'voc'}" in proc.stdout
    assert "train" in proc.stdout and "person" in proc.stdout and "in no segmentation list" in proc.stdout
    written = json.loads(report.read_text())
    assert written["images"] == {"train": 1, "val": 1} and written["histogram"]["train"][15] == 12
    proc = subprocess.run([*cmd, "--no-progress"], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        f"pixelwise data import: error: {dst / 'voc'} is not empty: pass --overwrite to replace it, "
        "or choose another --name"
    )


def test_labelme_files_of_one_name_in_subfolders_are_all_imported(tmp_path):
    """day1/img.json and day2/img.json: the second was left out as "a second image of stem 'img'"."""
    src = tmp_path / "labelme"
    for day, seed in (("day1", 1), ("day2", 2)):
        save_png(src / "train" / day / "img.png", rgb_image(7, 10, seed=seed))
        doc = labelme_doc("img.png", [shape("cat", [[1, 1], [3, 1], [3, 3]])] if day == "day1" else [])
        (src / "train" / day / "img.json").write_text(json.dumps(doc))
    save_png(src / "train" / "other.png", rgb_image(7, 10))
    (src / "train" / "other.json").write_text(json.dumps(labelme_doc("other.png", [])))
    base, summary = imported(tmp_path, "labelme", src, workers=1)
    assert summary.images == {"train": 3} and summary.skipped == []
    assert sorted(p.name for p in (base / "images" / "train").iterdir()) == [
        "day1__img.png",
        "day2__img.png",
        "other.png",
    ]
    assert mask_of(base, "train", "day1__img")[2, 2] == 1 and mask_of(base, "train", "day2__img").max() == 0


def test_an_import_checks_the_instance_classes_as_data_check_will(tmp_path):
    """classes.json without instance_classes: every class but the first counts objects, at import as in data
    check (the import took an instance on background that data check then refused)."""
    src = tmp_path / "src"
    for d in ("images/train", "masks/train", "instances/train"):
        (src / d).mkdir(parents=True)
    (src / "classes.json").write_text(json.dumps({"classes": ["bg", "cell"], "palette": [[0, 0, 0], [255, 0, 0]]}))
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(src / "images/train/a.png")
    mask = np.zeros((8, 8, 3), np.uint8)
    mask[:4] = [255, 0, 0]
    Image.fromarray(mask).save(src / "masks/train/a.png")
    inst = np.zeros((8, 8), np.uint16)
    inst[:4], inst[6:, :2] = 1, 2  # instance 2 on background
    Image.fromarray(inst).save(src / "instances/train/a.png")
    with pytest.raises(DataError, match=r"instance 2 lies on class 0 \('bg'\) of its mask, which is not an instance"):
        import_dataset("rgb", src, tmp_path / "dst", progress=False, workers=1)
    inst[6:, :2] = 0
    Image.fromarray(inst).save(src / "instances/train/a.png")
    _, summary = imported(tmp_path, "rgb", src, workers=1)  # and what it imports passes data check
    assert summary.instances == {"train": 1}


def test_an_import_stopped_by_sigterm_leaves_nothing_behind(tmp_path, monkeypatch, capsys):
    """SIGTERM (kill, timeout, a batch system) mid-import left its staging folder for good; Ctrl-C did not. Both
    now end the same way: nothing under DST, exit 128 + the signal."""
    import signal

    import pixelwise.data.importers.writer as core
    from pixelwise.cli import main

    src = make_voc(tmp_path / "src", stems_train=tuple(f"2007_{i:06d}" for i in range(6)))
    real, calls = core._process, [0]

    def stopped(*args, **kwargs):
        calls[0] += 1
        if calls[0] == 3:
            os.kill(os.getpid(), signal.SIGTERM)
        return real(*args, **kwargs)

    monkeypatch.setattr(core, "_process", stopped)
    before = signal.getsignal(signal.SIGTERM)
    assert main(["data", "import", "voc", str(src), str(tmp_path / "dst"), "--no-progress", "--workers", "1"]) == 143
    assert capsys.readouterr().err.strip().endswith("pixelwise data import: interrupted")
    assert not [p for p in (tmp_path / "dst").rglob("*")] if (tmp_path / "dst").exists() else True
    assert signal.getsignal(signal.SIGTERM) is before  # put back for whatever runs next in the process


def test_what_an_import_of_each_format_found_wrong_is_one_line_or_a_listed_skip(tmp_path):
    """From a review of the importers: a truncated JPEG was imported (its header reads) and the data set then
    failed data check; a missing gtFine/ or annotations/ imported the test split alone with exit 0; a truncated
    SBD .mat and a LabelMe size of -30 were tracebacks that ended the import; a list id with a space was cut at it;
    a LabelMe file without its size, on an EXIF-turned photo, was skipped as the wrong size."""
    # a truncated JPEG: skipped and listed, naming the source file, and the rest passes data check (imported())
    src = make_voc(tmp_path / "voc", stems_train=("a", "b c"), stems_val=("d",), extra=())
    jpeg = src / "JPEGImages" / "a.jpg"
    jpeg.write_bytes(jpeg.read_bytes()[: len(jpeg.read_bytes()) // 2])
    base, summary = imported(tmp_path / "v", "voc", src, workers=1)
    assert [p.name for p in sorted((base / "images" / "train").iterdir())] == ["b c.jpg"]  # the id whole
    assert [s for _, s in summary.skipped if "a.jpg" in s] == [f"cannot read image {jpeg}: Truncated File Read"]
    # missing annotation folders: one line naming them
    for fmt, root, folder in (("cityscapes", tmp_path / "cs", "gtFine"), ("ade20k", tmp_path / "ade", "annotations")):
        save_jpeg(
            root
            / (
                "leftImg8bit/train/x/x_000000_000000_leftImg8bit.png"
                if fmt == "cityscapes"
                else "images/training/a.jpg"
            )
        )
        with pytest.raises(DataError, match=f"^{root / folder} does not exist: {fmt} SRC must be"):
            import_dataset(fmt, root, tmp_path / f"{fmt}_out", progress=False)
    # a truncated SBD .mat: listed, the others imported
    sbd = make_sbd_beside_voc(tmp_path)
    (sbd / "cls" / "b.mat").write_bytes(b"MATLAB 5.0")
    summary = import_dataset("sbd", tmp_path / "sbd", tmp_path / "sbd_out", progress=False)
    assert any("Mat file appears to be truncated" in s for _, s in summary.skipped)
    # LabelMe: a size of -30 is a listed skip; no size on an EXIF-turned (orientation 6) photo: the turned size
    lm = tmp_path / "lm"
    photo = Image.fromarray(rgb_image(7, 10))
    exif = Image.Exif()
    exif[0x0112] = 6  # shown turned: 7 wide, 10 high
    lm.mkdir()
    photo.save(lm / "turned.jpg", exif=exif)
    doc = labelme_doc("turned.jpg", [shape("cat", [[1, 1], [5, 1], [5, 8], [1, 8]])])
    del doc["imageHeight"], doc["imageWidth"]
    (lm / "turned.json").write_text(json.dumps(doc))
    save_png(lm / "bad.png", rgb_image(7, 10))
    (lm / "bad.json").write_text(json.dumps(labelme_doc("bad.png", [], h=-30)))
    summary = import_dataset("labelme", lm, tmp_path / "lm_out", progress=False)
    assert mask_of(tmp_path / "lm_out" / "labelme", "train", "turned").shape == (10, 7)
    assert [s for _, s in summary.skipped] == [
        f"{lm / 'bad.json'}: imageHeight -30 and imageWidth 10 must be >= 1 (the image's size in pixels)"
    ]


def test_voc_two_column_lists_and_a_raised_pixel_limit_still_import(tmp_path, monkeypatch):
    """Regressions of the fixes above, found by review: a list in VOC's two-column form (``ID FLAG``) imported
    nothing once whole lines were ids; the full decode of each image ignored $PIXELWISE_MAX_IMAGE_PIXELS."""
    from PIL import Image as PILImage

    src = make_voc(tmp_path / "voc", stems_train=("2007_000032",), stems_val=("2007_000033",), extra=())
    lists = src / "ImageSets" / "Segmentation"
    (lists / "train.txt").write_text("2007_000032  1\n")
    (lists / "val.txt").write_text("2007_000033 -1\n")
    base, _ = imported(tmp_path / "a", "voc", src, workers=1)
    assert [p.name for p in (base / "images" / "train").iterdir()] == ["2007_000032.jpg"]
    # Pillow's limit under this image's 70 pixels (it stands for 179 MP), the user's variable above it (LabelMe:
    # no mask file, whose reading does not take the variable)
    lm = tmp_path / "lm"
    save_png(lm / "cats.png", rgb_image(7, 10))
    (lm / "cats.json").write_text(json.dumps(labelme_doc("cats.png", [shape("cat", [[1, 1], [5, 1], [5, 4]])])))
    monkeypatch.setattr(PILImage, "MAX_IMAGE_PIXELS", 20)
    monkeypatch.setenv("PIXELWISE_MAX_IMAGE_PIXELS", "1000")
    summary = import_dataset("labelme", lm, tmp_path / "b", progress=False, workers=1)
    assert summary.skipped == [] and (tmp_path / "b" / "labelme" / "images" / "train" / "cats.png").exists()


def test_an_item_whose_conversion_or_image_fails_in_any_way_is_a_listed_skip(tmp_path, monkeypatch):
    """From a review: an error other than DataError in one item (a Cityscapes instanceIds PNG of another size, an
    SBD .mat of MATLAB v7.3, a LabelMe imageData holding a truncated GIF, a mask over Pillow's pixel limit) was a
    traceback that ended the whole import; each is now its item's listed skip, naming the file."""
    from PIL import Image as PILImage

    # Cityscapes: instanceIds of another size than labelIds, said as such
    cs = tmp_path / "cs"
    for stem, inst_w in (("x_000000_000000", W + 1), ("x_000001_000000", W)):
        save_png(cs / "leftImg8bit" / "train" / "x" / f"{stem}_leftImg8bit.png", rgb_image())
        save_png(cs / "gtFine" / "train" / "x" / f"{stem}_gtFine_labelIds.png", np.full((H, W), 7, np.uint8))
        save_png(cs / "gtFine" / "train" / "x" / f"{stem}_gtFine_instanceIds.png", np.full((H, inst_w), 7, np.uint16))
    summary = import_dataset("cityscapes", cs, tmp_path / "cs_out", progress=False, workers=1)
    gt = cs / "gtFine" / "train" / "x"
    assert summary.images == {"train": 1}
    assert summary.skipped == [
        (
            str(gt / "x_000000_000000_gtFine_labelIds.png"),
            f"{gt / 'x_000000_000000_gtFine_instanceIds.png'} is 9x6 but labelIds "
            f"{gt / 'x_000000_000000_gtFine_labelIds.png'} is 8x6",
        )
    ]
    # SBD: a MATLAB v7.3 (HDF5) .mat, which scipy does not read (NotImplementedError)
    sbd = make_sbd_beside_voc(tmp_path, inst=False)
    header = b"MATLAB 7.3 MAT-file, Platform: GLNXA64, HDF5 schema 1.00 .".ljust(116) + b"\0" * 8 + b"\x00\x02IM"
    (sbd / "cls" / "b.mat").write_bytes(header + b"\0" * 384)
    summary = import_dataset("sbd", tmp_path / "sbd", tmp_path / "sbd_out", progress=False, workers=1)
    assert summary.images == {"train": 2, "val": 1}
    assert summary.skipped == [
        (
            str(sbd / "cls" / "b.mat"),
            "cannot convert: NotImplementedError: Please use HDF reader for matlab v7.3 files, e.g. h5py",
        )
    ]
    # LabelMe: imageData a truncated GIF (re-encoded to PNG as it is written)
    lm = tmp_path / "lm"
    lm.mkdir()
    buf = io.BytesIO()
    Image.fromarray(rgb_image(70, 100)).convert("P").save(buf, format="GIF")
    gif = base64.b64encode(buf.getvalue()[: len(buf.getvalue()) // 2]).decode()  # its header still reads
    cat = [shape("cat", [[1, 1], [5, 1], [5, 4]])]
    (lm / "a.json").write_text(json.dumps(labelme_doc("gone.gif", cat, h=70, w=100, data=gif)))
    save_png(lm / "b.png", rgb_image(70, 100))
    (lm / "b.json").write_text(json.dumps(labelme_doc("b.png", cat, h=70, w=100)))
    summary = import_dataset("labelme", lm, tmp_path / "lm_out", progress=False, workers=1)
    assert summary.images == {"train": 1}
    assert summary.skipped == [
        (
            str(lm / "a.json"),
            f"cannot read the image embedded in {lm / 'a.json'} (imageData): image file is truncated "
            "(176 bytes not processed)",
        )
    ]
    # rgb: a colour mask over Pillow's limit is a listed skip; $PIXELWISE_MAX_IMAGE_PIXELS raised, it imports
    rgb = tmp_path / "rgb"
    save_png(rgb / "images" / "train" / "a.png", rgb_image())
    save_png(rgb / "masks" / "train" / "a.png", np.zeros((H, W, 3), np.uint8))
    (rgb / "classes.json").write_text(json.dumps({"classes": ["bg", "fg"], "palette": [[0, 0, 0], [255, 0, 0]]}))
    monkeypatch.setattr(PILImage, "MAX_IMAGE_PIXELS", 20)
    with pytest.raises(DataError, match="every image was skipped") as e:
        import_dataset("rgb", rgb, tmp_path / "rgb_out", progress=False, workers=1)
    assert "cannot read colour mask" in str(e.value) and "PIXELWISE_MAX_IMAGE_PIXELS" in str(e.value)
    monkeypatch.setenv("PIXELWISE_MAX_IMAGE_PIXELS", "1000")
    summary = import_dataset("rgb", rgb, tmp_path / "rgb_out", progress=False, workers=1)
    assert summary.images == {"train": 1} and summary.skipped == []


def test_non_ascii_names_read_as_utf8_whatever_the_locale_and_list_ids_keep_their_spaces(tmp_path, monkeypatch):
    """From a review: JSON and list files were read in the locale's encoding (a LabelMe label "gâteau" became
    "gÃ¢teau" under a Latin-1 locale); a VOC list id "frame 12" was cut to "frame" (a number after a space was
    taken for VOC's flag, which is only -1, 0 or 1)."""
    real = Path.read_text  # the files' default encoding as a Latin-1 locale would make it
    monkeypatch.setattr(Path, "read_text", lambda self, encoding=None, errors=None: real(self, encoding or "latin-1"))
    lm = tmp_path / "lm"
    save_png(lm / "a.png", rgb_image(7, 10))
    doc = labelme_doc("a.png", [shape("gâteau", [[1, 1], [5, 1], [5, 4]])])
    (lm / "a.json").write_bytes(json.dumps(doc, ensure_ascii=False).encode("utf-8-sig"))  # with a BOM (Notepad)
    base, _ = imported(tmp_path / "l", "labelme", lm)
    assert classes_json(base)["classes"] == ["background", "gâteau"]
    src, _, _ = make_rgb(tmp_path)
    palette = tmp_path / "classes.json"
    names = ["ciel", "bâtiment", "rue"]
    spec = {**RGB_CLASSES, "classes": names, "ignore_color": [0, 0, 0]}
    palette.write_bytes(json.dumps(spec, ensure_ascii=False).encode("utf-8"))
    base, _ = imported(tmp_path / "r", "rgb", src, palette=palette)
    assert classes_json(base)["classes"] == names
    voc = make_voc(tmp_path / "voc", stems_train=("frame 12", "café", "b"), stems_val=("c",), extra=())
    # a BOM (Windows' Notepad) is no part of the first id
    (voc / "ImageSets" / "Segmentation" / "train.txt").write_bytes("\ufeffframe 12\ncafé\nb 0\n".encode())
    base, _ = imported(tmp_path / "v", "voc", voc)
    assert sorted(p.name for p in (base / "images" / "train").iterdir()) == ["b.jpg", "café.jpg", "frame 12.jpg"]


@pytest.mark.filterwarnings(COCO_WARNING)
def test_coco_categories_of_one_name_are_refused_before_any_work(tmp_path):
    """From a review: Roboflow's COCO exports list the data set's name as category 0 and again as a class of
    its own; two classes of one name then failed later with a misleading message."""
    src = tmp_path / "coco"
    coco_fixture(src)
    path = src / "annotations" / "instances_train2017.json"
    data = json.loads(path.read_text())
    data["categories"] = [{"id": 0, "name": "pothole", "supercategory": "none"}, {"id": 1, "name": "pothole"}]
    path.write_text(json.dumps(data))
    with pytest.raises(DataError) as e:
        import_dataset("coco", src, tmp_path / "out", progress=False)
    assert str(e.value) == (
        f"{path}: categories 0 and 1 are both named 'pothole': one class a name, so rename one of them (or, if no "
        "annotation uses it, remove it: Roboflow lists the data set's own name as category 0)"
    )
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d["annotations"][0].update(segments_info=None), "'segments_info' is not a list of segments"),
        (lambda d: d["annotations"][0]["segments_info"][1].pop("id"), "segments_info[1] has no whole-number 'id'"),
        (lambda d: d["categories"][0].update(color=220), "category 1 has 'color' 220, not [R, G, B]"),
    ],
)
def test_coco_panoptic_malformed_entries_are_one_line_naming_the_file(tmp_path, change, message):
    """From a review: "segments_info": null, a segment without its id and a category colour that is a number
    were tracebacks."""
    src = tmp_path / "coco"
    data = panoptic_fixture(src)
    change(data)
    path = src / "annotations" / "panoptic_val2017.json"
    path.write_text(json.dumps(data))
    where = "" if "category" in message else "annotation of 000000000002.png: "
    with pytest.raises(DataError) as e:
        import_dataset("coco-panoptic", src, tmp_path / "out", progress=False)
    assert str(e.value) == f"{path}: {where}{message}"


def test_labelme_empty_palette_infinite_size_and_four_point_rectangles(tmp_path, capsys):
    """From a review: --palette with no classes was an IndexError; "imageHeight": Infinity an OverflowError
    (it is read from the image now, as a missing size is); a rectangle saved with its four corners (X-AnyLabeling)
    was left out as too few points; a point at Infinity was drawn somewhere."""
    from pixelwise.cli import main

    lm = tmp_path / "lm"
    save_png(lm / "a.png", rgb_image(7, 10))
    (lm / "a.json").write_text(json.dumps(labelme_doc("a.png", [])))
    palette = tmp_path / "pal.json"
    palette.write_text(json.dumps({"classes": []}))
    assert main(["data", "import", "labelme", str(lm), str(tmp_path / "p"), "--palette", str(palette)]) == 2
    assert capsys.readouterr().err.strip() == (
        f"pixelwise data import: error: {palette}: 'classes' is empty: list the class names, class 0 first"
    )
    shapes = [
        shape("cat", [[1, 1], [5, 1], [5, 4], [1, 4]], "rectangle"),
        shape("dog", [[6, 0], [float("inf"), 1], [8, 3]]),
    ]
    doc = labelme_doc("a.png", shapes, h=float("inf"))
    (lm / "a.json").write_text(json.dumps(doc))  # Infinity, as JSON from JavaScript or Python may hold it
    base, summary = imported(tmp_path, "labelme", lm)
    expected = np.zeros((7, 10), np.uint8)
    expected[1:5, 1:6] = 1
    np.testing.assert_array_equal(mask_of(base, "train", "a"), expected)
    assert summary.skipped == [(str(lm / "a.json"), "shape 1 ('dog', polygon): points are not [x, y] pairs; left out")]


def test_labelme_ignore_label_marks_ignore_pixels_not_a_class(tmp_path):
    """From a review: LabelMe's ``__ignore__`` label (labelme2voc's labels.txt: id -1) became a class of its own;
    it marks ignore pixels, in file order like any shape, with or without --palette."""
    lm = tmp_path / "lm"
    save_png(lm / "a.png", rgb_image(7, 10))
    shapes = [
        shape("cat", [[1, 1], [5, 1], [5, 4], [1, 4]]),
        shape("__ignore__", [[4, 0], [9, 0], [9, 6], [4, 6]]),  # over the cat's right part
        shape("cat", [[8, 5], [9, 5], [9, 6], [8, 6]]),  # on top of the ignore region
    ]
    (lm / "a.json").write_text(json.dumps(labelme_doc("a.png", shapes)))
    expected = np.zeros((7, 10), np.uint8)
    expected[1:5, 1:4] = 1
    expected[:, 4:10] = 255
    expected[5:7, 8:10] = 1
    base, summary = imported(tmp_path / "a", "labelme", lm)
    assert classes_json(base)["classes"] == ["background", "cat"]
    np.testing.assert_array_equal(mask_of(base, "train", "a"), expected)
    assert summary.instances == {"train": 2} and summary.ignore_pixels == {"train": 38}
    palette = tmp_path / "pal.json"
    palette.write_text(json.dumps({"classes": ["_background_", "cat"], "ignore_index": 254}))
    base, _ = imported(tmp_path / "b", "labelme", lm, palette=palette)
    np.testing.assert_array_equal(mask_of(base, "train", "a"), np.where(expected == 255, 254, expected))


def test_rgb_keeps_what_the_native_classes_json_says_of_the_images(tmp_path):
    """From a review: the rgb format dropped SRC/classes.json's "image_range" (high-depth images then read with
    another scale) and its "masks_oriented" (masks already drawn on the turned image were turned again)."""
    src = tmp_path / "rgb"
    photo = Image.fromarray(rgb_image())
    exif = Image.Exif()
    exif[0x0112] = 3  # a half turn
    (src / "images" / "train").mkdir(parents=True)
    photo.save(src / "images" / "train" / "a.jpg", exif=exif)
    mask = np.zeros((H, W, 3), np.uint8)
    mask[0:2, 0:3] = [255, 0, 0]
    save_png(src / "masks" / "train" / "a.png", mask)
    native = {"classes": ["bg", "fg"], "palette": [[0, 0, 0], [255, 0, 0]], "image_range": [0, 4095]}
    (src / "classes.json").write_text(json.dumps({**native, MASKS_ORIENTED: True}))
    base, _ = imported(tmp_path / "a", "rgb", src)
    info = classes_json(base)
    assert info["image_range"] == [0, 4095] and info[MASKS_ORIENTED] is True
    np.testing.assert_array_equal(mask_of(base, "train", "a"), (mask[..., 0] > 0).astype(np.uint8))  # not turned
    palette = tmp_path / "pal.json"  # another palette file: SRC's own classes.json still describes its images
    palette.write_text(json.dumps({"classes": ["bg", "fg"], "palette": [[0, 0, 0], [255, 0, 0]]}))
    base, _ = imported(tmp_path / "b", "rgb", src, palette=palette)
    assert classes_json(base)["image_range"] == [0, 4095]
    (src / "classes.json").write_text(json.dumps({**native, "image_range": [10, 1]}))
    with pytest.raises(DataError) as e:
        import_dataset("rgb", src, tmp_path / "c", progress=False)
    assert str(e.value) == (
        f'{src / "classes.json"}: "image_range" must be [low, high], finite numbers with low < high, not [10, 1]'
    )
    assert not (tmp_path / "c").exists()


def test_a_reencoded_image_keeps_its_exif_orientation(tmp_path):
    """A phone's multi-picture JPEG (.mpo: not a type pixelwise reads, re-encoded to PNG) stored 10 wide and 6
    high with EXIF orientation 6: LabelMe draws on it turned (6 x 10). The PNG lost the orientation, so the import
    refused the mask's size (a square image would have had its mask silently turned against it). The same image
    embedded as ``imageData`` and re-encoded keeps it too; a .jfif (a JPEG by Windows' name) is read as it is."""
    from pixelwise.data import read_image

    exif = Image.Exif()
    exif[0x0112] = 6
    stored = Image.fromarray(np.full((6, 10, 3), 90, np.uint8))
    shapes = [{"label": "cat", "points": [[0, 0], [5, 0], [5, 2], [0, 2]], "shape_type": "polygon"}]
    buf = io.BytesIO()
    stored.save(buf, format="MPO", save_all=True, append_images=[stored.copy()], exif=exif)
    with Image.open(io.BytesIO(buf.getvalue())) as im:
        assert im.format == "MPO"  # so the import re-encodes it
    for way in ("file", "embedded", "jfif"):
        src = tmp_path / f"lm_{way}"
        src.mkdir()
        name = "a.jfif" if way == "jfif" else "a.mpo"
        annotation = {"shapes": shapes, "imagePath": name, "imageHeight": 10, "imageWidth": 6}
        if way == "embedded":  # no file beside it: the image is in the JSON, written as PNG by the import
            annotation["imageData"] = base64.b64encode(buf.getvalue()).decode()
        elif way == "file":
            (src / name).write_bytes(buf.getvalue())
        else:
            stored.save(src / name, format="JPEG", exif=exif)
        (src / "a.json").write_text(json.dumps(annotation))
        base, summary = imported(tmp_path / f"out_{way}", "labelme", src, workers=1)
        embedded = way
        assert summary.skipped == [], embedded
        written = base / "images/train" / ("a.jfif" if way == "jfif" else "a.png")  # a .jfif is copied as it is
        image, mask = read_image(written), mask_of(base, "train", "a")
        assert image.shape[:2] == mask.shape == (10, 6), embedded
        assert (mask[:3] == 1).all() and (mask[3:] == 0).all(), embedded  # the cat as drawn: the top three rows
