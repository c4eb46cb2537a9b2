import json

import numpy as np
import pytest
from PIL import Image

from pixelwise.data import DatasetInfo, SegmentationDataset, resolve_data_root
from pixelwise.errors import DataError

from .conftest import write_dataset


def test_reads_native_format(toy_root):
    ds = SegmentationDataset(toy_root, "toy", "train")
    assert len(ds) == 4 and ds.info.num_classes == 3
    image, mask = ds[0]
    assert image.shape == (3, 20, 24) and mask.shape == (20, 24)
    gray = SegmentationDataset(toy_root, "toy", "val", image_mode="L")
    assert gray[0][0].shape == (1, 20, 24)


def test_image_without_mask(toy_root):
    (toy_root / "toy/masks/train/s01.png").unlink()
    with pytest.raises(DataError, match=r"image .*images/train/s01.png has no mask"):
        SegmentationDataset(toy_root, "toy", "train")


def test_mask_without_image(toy_root):
    (toy_root / "toy/images/train/s02.png").unlink()
    with pytest.raises(DataError, match=r"mask .*masks/train/s02.png has no image"):
        SegmentationDataset(toy_root, "toy", "train")


def test_size_mismatch(toy_root):
    Image.fromarray(np.zeros((10, 10), np.uint8), mode="L").save(toy_root / "toy/masks/train/s03.png")
    with pytest.raises(DataError, match=r"mask .*s03.png is 10x10 but image .*s03.png is 24x20"):
        SegmentationDataset(toy_root, "toy", "train")


def test_label_out_of_range(toy_root):
    mask = np.zeros((20, 24), np.uint8)
    mask[3, 4] = 7
    mask[0, 0] = 255  # the ignore value is allowed
    Image.fromarray(mask, mode="L").save(toy_root / "toy/masks/train/s00.png")
    ds = SegmentationDataset(toy_root, "toy", "train")
    with pytest.raises(DataError, match=r"s00.png holds label value\(s\) \[7\].*3 classes"):
        ds[0]


def test_unreadable_image(toy_root):
    (toy_root / "toy/images/train/s01.png").write_bytes(b"not a png at all")
    with pytest.raises(DataError, match=r"cannot read image .*s01.png"):
        SegmentationDataset(toy_root, "toy", "train")


def test_rgb_mask_is_refused(toy_root):
    Image.fromarray(np.zeros((20, 24, 3), np.uint8)).save(toy_root / "toy/masks/train/s00.png")
    ds = SegmentationDataset(toy_root, "toy", "train")
    with pytest.raises(DataError, match=r"s00.png has mode 'RGB'"):
        ds[0]


def test_empty_and_missing_split(toy_root):
    (toy_root / "toy/images/empty").mkdir()
    with pytest.raises(DataError, match=r"split 'empty' is empty: no images"):
        SegmentationDataset(toy_root, "toy", "empty")
    with pytest.raises(DataError, match=r"no split 'test'"):
        SegmentationDataset(toy_root, "toy", "test")


def test_missing_dataset_names_root_and_setting(tmp_path):
    with pytest.raises(DataError, match=r"no data set 'camvid' under data root .*PIXELWISE_DATA"):
        DatasetInfo.load(tmp_path, "camvid")


def test_classes_json_as_notepad_saves_it(toy_root):
    """A classes.json edited in Notepad: "UTF-8 with BOM" loads (the importers drop a BOM too); "Unicode" (UTF-16)
    is one line saying what to do, not a UnicodeDecodeError; non-ASCII names read as UTF-8 whatever the locale."""
    path = toy_root / "toy/classes.json"
    text = json.dumps({"classes": ["fond", "route", "piéton"]}, ensure_ascii=False)
    path.write_text(text, encoding="utf-8-sig")
    assert DatasetInfo.load(toy_root, "toy").classes == ["fond", "route", "piéton"]
    path.write_text(text, encoding="utf-16")
    with pytest.raises(DataError) as e:
        DatasetInfo.load(toy_root, "toy")
    assert str(e.value) == f"{path} is not UTF-8 text: save it as UTF-8"


def test_bad_classes_json(toy_root):
    (toy_root / "toy/classes.json").write_text(json.dumps({"names": ["a"]}))
    with pytest.raises(DataError, match=r"classes.json: not a valid classes.json"):
        DatasetInfo.load(toy_root, "toy")
    path = toy_root / "toy/classes.json"
    for bad in (-1, 300, 1, "255", None, True):  # outside 8 bits, a class's own index, not a whole number
        path.write_text(json.dumps({"classes": ["a", "b", "c"], "ignore_index": bad}))
        with pytest.raises(DataError) as e:
            DatasetInfo.load(toy_root, "toy")
        assert str(e.value) == (
            f'{path}: "ignore_index" is {bad!r}; it must be a whole number from 3 to 255 (8-bit masks, classes 0-2), '
            "e.g. 255"
        )
    path.write_text(json.dumps({"classes": ["a", "b", "c"], "ignore_index": 3}))
    assert DatasetInfo.load(toy_root, "toy").ignore_index == 3
    path.write_text(json.dumps({"classes": [f"c{i}" for i in range(256)]}))
    with pytest.raises(DataError) as e:
        DatasetInfo.load(toy_root, "toy")
    assert str(e.value) == (
        f"{path}: 256 classes, and 8-bit masks hold classes 0-254 with 255 left to mark unlabelled pixels: at most "
        "255 classes"
    )


def test_unlabelled_split(tmp_path):
    write_dataset(tmp_path, splits={"train": 2})
    (tmp_path / "toy/images/test").mkdir()
    Image.fromarray(np.zeros((5, 5, 3), np.uint8)).save(tmp_path / "toy/images/test/a.jpg")
    with pytest.raises(DataError, match="has no masks"):
        SegmentationDataset(tmp_path, "toy", "test")
    ds = SegmentationDataset(tmp_path, "toy", "test", require_masks=False)
    assert len(ds) == 1 and (ds[0][1] == 255).all()


def test_data_root_precedence(monkeypatch, tmp_path):
    monkeypatch.setenv("PIXELWISE_DATA", str(tmp_path / "env"))
    assert str(resolve_data_root("flag", "config")) == "flag"
    assert str(resolve_data_root(None, "config")) == "config"
    assert resolve_data_root(None, None) == tmp_path / "env"
    monkeypatch.delenv("PIXELWISE_DATA")
    assert str(resolve_data_root(None, None)) == "data"


@pytest.mark.realdata
def test_real_datasets(data_root):
    camvid = SegmentationDataset(data_root, "camvid", "train")
    assert len(camvid) == 367 and camvid.info.num_classes == 11 and camvid.info.ignore_index == 255
    image, mask = camvid[0]
    assert image.shape == (3, 360, 480) and mask.shape == (360, 480)
    assert len(SegmentationDataset(data_root, "camvid", "val")) == 101
    assert len(SegmentationDataset(data_root, "camvid", "test")) == 233
    isbi = SegmentationDataset(data_root, "isbi2012_membrane", "train", image_mode="L")
    assert len(isbi) == 24 and isbi[0][0].shape == (1, 512, 512)
    assert set(isbi[0][1].unique().tolist()) == {0, 1}
    assert len(SegmentationDataset(data_root, "isbi2012_membrane", "test", require_masks=False)) == 30
