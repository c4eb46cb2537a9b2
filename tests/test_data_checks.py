"""Nothing silently wrong, nothing lost: masks (value_map, 0/255), classes.json, image bit depths and pages,
duplicate stems, and the whole-data-set check (check_dataset)."""

import json
import logging
import re
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import v2

from pixelwise.data import (
    DatasetInfo,
    SegmentationDataset,
    build_transforms,
    check_dataset,
    count_pages,
    image_to_tensor,
    image_to_uint8,
    read_image,
    read_image_stack,
    read_mask,
)
from pixelwise.data.io import probe_image
from pixelwise.errors import DataError

from .conftest import write_dataset

MEAN, STD = [0.5, 0.5, 0.5], [0.25, 0.25, 0.25]


# ---- helpers (tiny fixtures written into tmp_path) ----


def set_classes(root: Path, name: str = "toy", **keys) -> Path:
    """Add/replace keys of ``root/name/classes.json``."""
    path = root / name / "classes.json"
    raw = json.loads(path.read_text())
    raw.update(keys)
    path.write_text(json.dumps(raw))
    return path


def save_mask(path: Path, mask: np.ndarray) -> None:
    Image.fromarray(mask.astype(np.uint8), mode="L").save(path)


def save_stack(path: Path, pages: list[np.ndarray]) -> None:
    frames = [Image.fromarray(p) for p in pages]
    frames[0].save(path, save_all=True, append_images=frames[1:])


def save_png16_rgb(path: Path, arr: np.ndarray) -> None:
    """A 16-bit RGB PNG (grey+alpha, RGBA for 2 or 4 channels) written by hand (Pillow cannot write one)."""
    h, w, c = arr.shape
    raw = b"".join(b"\x00" + arr[y].astype(">u2").tobytes() for y in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", w, h, 16, {2: 4, 3: 2, 4: 6}[c], 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")
    )


def save_tiff16_rgb(path: Path, arr: np.ndarray) -> None:
    """An uncompressed 16-bit RGB TIFF (little-endian, one strip) written by hand (Pillow cannot write one)."""
    h, w, _ = arr.shape
    pixels = arr.astype("<u2").tobytes()
    tags = [  # (tag, type, count, value): type 3 SHORT, 4 LONG
        (256, 4, 1, w),
        (257, 4, 1, h),
        (258, 3, 3, 8 + len(pixels)),  # BitsPerSample 16,16,16, stored after the pixels
        (259, 3, 1, 1),
        (262, 3, 1, 2),
        (273, 4, 1, 8),
        (277, 3, 1, 3),
        (278, 4, 1, h),
        (279, 4, 1, len(pixels)),
        (284, 3, 1, 1),
    ]
    ifd_at = 8 + len(pixels) + 6
    ifd = struct.pack("<H", len(tags)) + b"".join(
        struct.pack("<HHI", tag, kind, count)
        + (struct.pack("<HH", value, 0) if kind == 3 and count == 1 else struct.pack("<I", value))
        for tag, kind, count, value in tags
    )
    path.write_bytes(
        b"II*\x00" + struct.pack("<I", ifd_at) + pixels + struct.pack("<HHH", 16, 16, 16) + ifd + b"\x00\x00\x00\x00"
    )


def one_split(root: Path, images: dict[str, np.ndarray], masks: dict[str, np.ndarray], num_classes: int = 3) -> Path:
    """A data set 'toy' whose only split 'train' holds exactly these images (saved as PNG) and masks."""
    write_dataset(root, splits={"train": 0}, num_classes=num_classes)
    for stem, image in images.items():
        Image.fromarray(image).save(root / "toy/images/train" / f"{stem}.png")
    for stem, mask in masks.items():
        save_mask(root / "toy/masks/train" / f"{stem}.png", mask)
    return root / "toy"


# ---- 1. masks: 0/255 binary masks, value_map ----


def test_binary_0_255_masks_stop_with_the_fix(tmp_path):
    write_dataset(tmp_path, splits={"train": 2}, num_classes=2)
    for i in range(2):
        mask = np.zeros((20, 24), np.uint8)
        mask[5:, 10:] = 255
        save_mask(tmp_path / f"toy/masks/train/s{i:02d}.png", mask)
    ds = SegmentationDataset(tmp_path, "toy", "train")
    m0 = tmp_path / "toy/masks/train/s00.png"
    expected = (
        f"mask {m0} holds only the values 0 and 255 but 'toy' has 2 classes (255 is the ignore value): "
        f'add "value_map": {{"255": 1}} to {tmp_path}/toy/classes.json, or save the masks as 0/1 '
        '(if 255 really is unlabelled here, add "value_map": {"255": 255})'
    )
    with pytest.raises(DataError) as e:
        ds[0]
    assert str(e.value) == expected
    # the suggested fix works: 255 becomes class 1
    set_classes(tmp_path, value_map={"255": 1})
    image, mask = SegmentationDataset(tmp_path, "toy", "train")[0]
    assert set(mask.unique().tolist()) == {0, 1} and int((mask == 1).sum()) == 15 * 14


def test_value_map_is_applied_on_read(tmp_path):
    write_dataset(tmp_path, splits={"train": 1}, num_classes=3)
    stored = np.zeros((20, 24), np.uint8)
    stored[0, :] = 10  # -> class 2
    stored[1, :] = 20  # -> ignore
    stored[2, :] = 1  # not in the map: stays 1
    save_mask(tmp_path / "toy/masks/train/s00.png", stored)
    set_classes(tmp_path, value_map={"10": 2, "20": 255})
    ds = SegmentationDataset(tmp_path, "toy", "train")
    _, mask = ds.load(0)
    assert (mask[0] == 2).all() and (mask[1] == 255).all() and (mask[2] == 1).all() and (mask[3:] == 0).all()
    assert (read_mask(tmp_path / "toy/masks/train/s00.png", ds.info) == mask).all()
    assert (read_mask(tmp_path / "toy/masks/train/s00.png") == stored).all()  # no info: as stored
    counts, _ = ds.class_counts()
    assert counts == [17 * 24, 24, 24]
    assert check_dataset(tmp_path, "toy", progress=False).splits["train"].histogram == [17 * 24, 24, 24]


def test_value_map_to_no_class_is_refused(tmp_path):
    write_dataset(tmp_path, splits={"train": 1}, num_classes=2)
    path = set_classes(tmp_path, value_map={"255": 5})
    with pytest.raises(DataError) as e:
        DatasetInfo.load(tmp_path, "toy")
    assert str(e.value) == (
        f'{path}: "value_map" maps 255 to 5, which is neither a class index (0..1) nor the ignore value 255'
    )
    set_classes(tmp_path, value_map={"300": 1})
    with pytest.raises(DataError, match=re.escape("\"value_map\" key '300' is not a mask value (0..255)")):
        DatasetInfo.load(tmp_path, "toy")


def test_label_out_of_range_names_the_value_map_fix(toy_root):
    mask = np.zeros((20, 24), np.uint8)
    mask[3, 4] = 7
    path = toy_root / "toy/masks/train/s00.png"
    save_mask(path, mask)
    with pytest.raises(DataError) as e:
        SegmentationDataset(toy_root, "toy", "train")[0]
    assert str(e.value) == (
        f"mask {path} holds label value(s) [7] but 'toy' has 3 classes (0..2, ignore 255): fix the masks, "
        f'or map the stored values to classes with "value_map" in {toy_root}/toy/classes.json'
    )


# ---- 2. classes.json ----


def test_num_classes_must_match_the_classes(toy_root):
    path = set_classes(toy_root, num_classes=4)
    with pytest.raises(DataError) as e:
        DatasetInfo.load(toy_root, "toy")
    assert str(e.value) == (
        f'{path}: "num_classes" is 4 but "classes" lists 3 names; make them agree (or drop "num_classes")'
    )
    set_classes(toy_root, num_classes=3)
    assert DatasetInfo.load(toy_root, "toy").num_classes == 3


def test_palette_entries_and_class_names_are_checked(toy_root):
    path = set_classes(toy_root, palette=[1, 2, 3])
    with pytest.raises(DataError) as e:
        DatasetInfo.load(toy_root, "toy")
    assert str(e.value) == f"{path}: palette entry 0 must be [r, g, b] with integers 0..255, not 1"
    set_classes(toy_root, palette=[[0, 0, 0], [300, 0, 0], [0, 0, 255]])
    with pytest.raises(DataError) as e:
        DatasetInfo.load(toy_root, "toy")
    assert str(e.value) == f"{path}: palette entry 1 must be [r, g, b] with integers 0..255, not [300, 0, 0]"
    set_classes(toy_root, palette=None, classes=["road", "car", "road"])
    with pytest.raises(DataError) as e:
        DatasetInfo.load(toy_root, "toy")
    assert str(e.value) == f"{path}: class 'road' is listed twice (entries 0 and 2); class names must differ"


# ---- 3. images: bit depths, alpha, palette, EXIF, pages ----


def test_16bit_grey_png_and_tiff_read_as_float_in_0_1(tmp_path):
    values = np.array([[0, 1, 255, 256], [1000, 32768, 65534, 65535]], np.uint16)
    for ext in ("png", "tif"):
        path = tmp_path / f"g16.{ext}"
        Image.fromarray(values).save(path)
        grey = read_image(path, "L")
        assert grey.dtype == np.float32 and grey.shape == (2, 4, 1)
        np.testing.assert_allclose(grey[..., 0], values / 65535.0, rtol=1e-6)  # not clipped to 8 bits
        assert grey[0, 3, 0] > grey[0, 2, 0] > 0  # 256 > 255 > 0: all 16 bits kept
        rgb = read_image(path, "RGB")
        assert rgb.shape == (2, 4, 3) and (rgb == grey).all()


def test_16bit_images_reach_the_transforms_as_float_in_0_1(tmp_path):
    write_dataset(tmp_path, splits={"train": 1})
    rng = np.random.default_rng(0)
    values = rng.integers(0, 65536, (20, 24), dtype=np.uint16)
    (tmp_path / "toy/images/train/s00.png").unlink()
    Image.fromarray(values).save(tmp_path / "toy/images/train/s00.png")
    seen = {}

    def spy(image, mask):
        seen["image"] = image
        return image, mask

    ds = SegmentationDataset(tmp_path, "toy", "train", transforms=spy, image_mode="L")
    image, _ = ds[0]
    assert seen["image"].dtype == torch.float32 and seen["image"].shape == (1, 20, 24)
    np.testing.assert_allclose(image[0].numpy(), values / 65535.0, rtol=1e-6)
    # ToDtype(float32, scale=True) leaves float input as it is, so the eval pipeline = image_to_tensor
    assert torch.equal(v2.ToDtype(torch.float32, scale=True)(image), image)
    tf = build_transforms(train=False, mean=[0.5], std=[0.25])
    ds = SegmentationDataset(tmp_path, "toy", "train", transforms=tf, image_mode="L")
    raw, _ = ds.load(0)
    torch.testing.assert_close(ds[0][0], image_to_tensor(raw, [0.5], [0.25]))


def test_8bit_images_still_reach_the_transforms_as_uint8_and_image_to_tensor_matches(toy_root):
    seen = {}

    def spy(image, mask):
        seen["dtype"] = image.dtype
        return image, mask

    SegmentationDataset(toy_root, "toy", "train", transforms=spy)[0]
    assert seen["dtype"] == torch.uint8
    ds = SegmentationDataset(toy_root, "toy", "train", transforms=build_transforms(train=False, mean=MEAN, std=STD))
    raw, _ = ds.load(0)
    assert raw.dtype == np.uint8
    engine_way = torch.from_numpy(raw).permute(2, 0, 1).float().div_(255).sub_(0.5).div_(0.25)
    torch.testing.assert_close(image_to_tensor(raw, MEAN, STD), engine_way)
    torch.testing.assert_close(ds[0][0], engine_way)
    # bit for bit: predict's input (image_to_tensor) is eval's (the transforms); x / 255 against ToDtype's x * (1 / 255)
    # differed in the last bit, and a bf16 model then changed a pixel between eval and predict
    assert torch.equal(image_to_tensor(raw, MEAN, STD), ds[0][0])
    every = np.arange(256, dtype=np.uint8).reshape(16, 16, 1).repeat(3, axis=2)
    transform = build_transforms(train=False, mean=MEAN, std=STD)
    assert torch.equal(
        image_to_tensor(every, MEAN, STD),
        transform(torch.from_numpy(every).permute(2, 0, 1), torch.zeros(16, 16, dtype=torch.uint8))[0],
    )
    assert image_to_uint8(raw) is raw and (image_to_uint8(raw / 255.0) == raw).all()


def test_float_tiff(tmp_path):
    values = np.array([[0.0, 0.25], [0.5, 1.0]], np.float32)
    path = tmp_path / "f.tif"
    Image.fromarray(values).save(path)
    image = read_image(path, "L")
    assert image.dtype == np.float32 and (image[..., 0] == values).all()  # as is
    wide = tmp_path / "wide.tif"
    Image.fromarray(values * 4000 - 100).save(wide)
    with pytest.raises(DataError) as e:
        read_image(wide, "L")
    assert str(e.value) == (
        f"float image {wide} holds values -100..3900, outside [0, 1] (float images are read as they are): "
        'set "image_range": [low, high] (the range of the images\' values) in classes.json'
    )
    scaled = read_image(wide, "L", image_range=(-100.0, 3900.0))
    np.testing.assert_allclose(scaled[..., 0], values, atol=1e-6)
    nan = tmp_path / "nan.tif"
    Image.fromarray(np.array([[np.nan, 0.5]], np.float32)).save(nan)
    with pytest.raises(DataError, match=re.escape(f"image {nan} holds NaN or infinite values")):
        read_image(nan, "L")


def test_32_bit_images_near_a_large_offset_keep_every_value(tmp_path):
    """Cast to float32 before the offset, 1000 values from 1e9 up read as 17 (float32's step there is 64)."""
    values = (1_000_000_000 + np.arange(1000, dtype=np.int32)).reshape(20, 50)
    Image.fromarray(values, mode="I").save(tmp_path / "i32.tif")
    image = read_image(tmp_path / "i32.tif", "L", image_range=(1_000_000_000, 1_000_000_999))
    assert len(np.unique(image)) == 1000
    np.testing.assert_allclose(image[..., 0], np.arange(1000).reshape(20, 50) / 999, atol=1e-6)


def test_image_range_from_classes_json(tmp_path):
    write_dataset(tmp_path, splits={"train": 1})
    (tmp_path / "toy/images/train/s00.png").unlink()
    values = np.full((20, 24), 2000.0, np.float32)
    values[0, 0] = 4000.0
    Image.fromarray(values).save(tmp_path / "toy/images/train/s00.tif")
    set_classes(tmp_path, image_range=[0, 4000])
    image, _ = SegmentationDataset(tmp_path, "toy", "train", image_mode="L").load(0)
    assert image[0, 0, 0] == 1.0 and image[1, 1, 0] == 0.5
    # an infinite bound (JSON's Infinity, or 1e400) made every image NaN or 0; a string was read digit by digit
    for bad in ([5, 5], [float("-inf"), 4095], [0, float("inf")], "09", [0, "4095"], [1], [0, 10**400]):
        path = set_classes(tmp_path, image_range=bad)
        with pytest.raises(DataError) as e:
            DatasetInfo.load(tmp_path, "toy")
        assert str(e.value) == (
            f'{path}: "image_range" must be [low, high], finite numbers with low < high, not {bad!r}'
        )


@pytest.mark.parametrize(
    "classes",
    [{"road": 1, "background": 0}, "road", [], [["a"], ["b"]], ["a", True]],
    ids=["mapping", "string", "empty", "nested", "bool"],
)
def test_classes_must_be_a_list_of_names(tmp_path, classes):
    """A mapping was read in key order (names swapped against their values), a string letter by letter."""
    write_dataset(tmp_path, splits={"train": 1})
    path = set_classes(tmp_path, classes=classes)
    with pytest.raises(DataError) as e:
        DatasetInfo.load(tmp_path, "toy")
    assert str(e.value).startswith(
        f'{path}: "classes" must list the class names in index order, e.g. ["background", "road"], not '
    )


def test_rgba_drops_alpha_and_palette_maps_colours(tmp_path):
    rgba = np.zeros((2, 3, 4), np.uint8)
    rgba[..., 0], rgba[..., 1], rgba[..., 2] = 200, 100, 50
    rgba[0, 0, 3] = 0  # fully transparent: its colour is kept (alpha dropped, not composited)
    rgba[1:, :, 3] = 255
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "a.png")
    rgb = read_image(tmp_path / "a.png", "RGB")
    assert rgb.dtype == np.uint8 and rgb.shape == (2, 3, 3) and (rgb == [200, 100, 50]).all()
    assert read_image(tmp_path / "a.png", "L").shape == (2, 3, 1)
    pal = Image.fromarray(np.array([[0, 1], [1, 0]], np.uint8), mode="P")
    pal.putpalette([10, 20, 30, 250, 240, 230])
    pal.save(tmp_path / "p.png")
    assert (read_image(tmp_path / "p.png", "RGB")[0, 1] == [250, 240, 230]).all()


def test_16bit_colour_png_is_read_at_full_depth(tmp_path, caplog):
    """Pillow decodes 16-bit colour and grey+alpha PNGs to 8 bits (and grey+alpha as RGBA): they are read at their
    full depth as float in [0, 1] like 16-bit grey, alpha dropped, grey kept grey, nothing logged."""
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 65536, (5, 7, 3)).astype(np.uint16)
    rgb[0, 0] = [0x1234, 0x1200, 0x12FF]  # one 8-bit value, three 16-bit ones
    save_png16_rgb(tmp_path / "rgb.png", rgb)
    save_png16_rgb(tmp_path / "rgba.png", np.concatenate([rgb, np.zeros_like(rgb[..., :1])], 2))
    grey = rng.integers(0, 65536, (5, 7, 1)).astype(np.uint16)
    save_png16_rgb(tmp_path / "la.png", np.concatenate([grey, np.full_like(grey, 65535)], 2))
    with caplog.at_level(logging.WARNING, logger="pixelwise.data.io"):
        for name in ("rgb.png", "rgba.png"):
            out = read_image(tmp_path / name, "RGB")
            assert out.dtype == np.float32 and out.shape == (5, 7, 3)
            np.testing.assert_array_equal(out, rgb.astype(np.float32) / 65535)
            assert read_image(tmp_path / name, None).shape == (5, 7, 3)
        luma = read_image(tmp_path / "rgb.png", "L")
        assert luma.shape == (5, 7, 1)
        np.testing.assert_allclose(luma[..., 0], (rgb @ [0.299, 0.587, 0.114]) / 65535, rtol=1e-6)
        assert read_image(tmp_path / "la.png", None).shape == (5, 7, 1)
        np.testing.assert_array_equal(read_image(tmp_path / "la.png", "L"), grey.astype(np.float32) / 65535)
        np.testing.assert_array_equal(read_image(tmp_path / "la.png", "RGB"), np.repeat(grey, 3, 2) / np.float32(65535))
        # from bytes (an upload, a PIL image in memory): decoded from its own bytes, not from a file of its name
        import io as bytes_io

        from pixelwise.data.io import decode_image

        opened = Image.open(bytes_io.BytesIO((tmp_path / "rgb.png").read_bytes()))
        np.testing.assert_array_equal(decode_image(opened, tmp_path / "elsewhere.png"), rgb / np.float32(65535))
        # a data set's image_range maps them as it maps 16-bit grey
        ranged = read_image(tmp_path / "rgb.png", "RGB", image_range=(0, 32767.5))
        np.testing.assert_allclose(ranged, np.clip(rgb / 32767.5, 0, 1), rtol=1e-6)
    assert caplog.records == []


def test_16bit_colour_tiff_is_read_at_8_bits_and_logged_once(tmp_path, caplog, monkeypatch):
    import pixelwise.data.io as io

    monkeypatch.setattr(io, "_warned_16bit_colour", False)
    arr = np.full((3, 4, 3), 0x1234, np.uint16)
    for name in ("a.tif", "b.tif"):
        save_tiff16_rgb(tmp_path / name, arr)
    with caplog.at_level(logging.WARNING, logger="pixelwise.data.io"):
        out = [read_image(tmp_path / name, "RGB") for name in ("a.tif", "b.tif")]
    assert all(o.dtype == np.uint8 and (o == 0x12).all() for o in out)
    assert [r.getMessage() for r in caplog.records] == [
        f"{tmp_path / 'a.tif'} has 16 bits per colour channel: read at 8 bits (Pillow has no 16-bit colour mode; "
        "16-bit colour PNGs are read at full depth)"
    ]


def test_exif_rotated_jpeg_is_oriented_and_its_mask_checked_at_the_oriented_size(tmp_path):
    write_dataset(tmp_path, splits={"train": 1}, size=(30, 20))
    (tmp_path / "toy/images/train/s00.png").unlink()
    stored = np.zeros((20, 30, 3), np.uint8)  # stored 30 wide x 20 high, bright top-left corner
    stored[:6, :6] = 255
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    path = tmp_path / "toy/images/train/s00.jpg"
    Image.fromarray(stored).save(path, exif=exif, quality=95)
    image = read_image(path, "RGB")
    assert image.shape == (30, 20, 3)  # 20 wide x 30 high
    assert image[:6, -6:].mean() > 200 and image[:6, :6].mean() < 50  # the corner went to the top right
    mask_path = tmp_path / "toy/masks/train/s00.png"
    with pytest.raises(DataError) as e:  # the 30x20 mask of write_dataset fits the stored, not the shown image
        SegmentationDataset(tmp_path, "toy", "train")
    assert str(e.value) == f"mask {mask_path} is 30x20 but image {path} is 20x30 (after its EXIF orientation 6)"
    save_mask(mask_path, np.zeros((30, 20), np.uint8))
    ds = SegmentationDataset(tmp_path, "toy", "train")
    img, mask = ds[0]
    assert img.shape == (3, 30, 20) and mask.shape == (30, 20)


def test_png_exif_after_the_pixels_is_read_as_the_header_says(tmp_path):
    # an eXIf chunk after IDAT only appears once Pillow has loaded the pixels: the data set's size check reads the
    # header, so the decoder must not turn the image by it either (it would no longer fit its mask)
    path = tmp_path / "late.png"
    stored = np.zeros((20, 30, 3), np.uint8)
    stored[:6, :6] = 255
    Image.fromarray(stored).save(path)
    exif = Image.Exif()
    exif[0x0112] = 6
    payload = exif.tobytes()
    payload = payload[6:] if payload.startswith(b"Exif\x00\x00") else payload
    chunk = struct.pack(">I", len(payload)) + b"eXIf" + payload
    chunk += struct.pack(">I", zlib.crc32(b"eXIf" + payload) & 0xFFFFFFFF)
    data = path.read_bytes()
    end = data.rindex(b"IEND") - 4  # before IEND's length field
    path.write_bytes(data[:end] + chunk + data[end:])
    with Image.open(path) as im:  # Pillow does find it after loading
        im.load()
        assert im.getexif().get(0x0112) == 6
    assert probe_image(path) == ((30, 20), 1, 1)
    image = read_image(path, "RGB")
    assert image.shape == (20, 30, 3) and image[:6, :6].mean() == 255


@pytest.mark.parametrize("compression", [None, "tiff_lzw"])
def test_tiff_orientation_is_applied_once_as_for_png(tmp_path, compression):
    """Recent Pillow turns a TIFF by its orientation tag itself (and scrambles uncompressed pages turned by 5-8):
    read as a PNG with the same EXIF is, every orientation, the size from the header alike; a stack's pages each by
    their own tag."""
    from pixelwise.data import read_image_stack

    kwargs = {"compression": compression} if compression else {}
    stored = (np.arange(12 * 20).reshape(12, 20) % 251).astype(np.uint8)  # 20 wide, 12 high, no symmetry
    turned = []
    for orientation in range(1, 9):
        exif = Image.Exif()
        exif[0x0112] = orientation
        Image.fromarray(stored).save(tmp_path / "a.png", exif=exif)
        Image.fromarray(stored).save(tmp_path / "a.tif", exif=exif, **kwargs)
        turned.append(read_image(tmp_path / "a.png", "L"))
        assert probe_image(tmp_path / "a.png")[0] == ((12, 20) if orientation >= 5 else (20, 12)), orientation
        assert probe_image(tmp_path / "a.tif") == probe_image(tmp_path / "a.png")
        assert np.array_equal(read_image(tmp_path / "a.tif", "L"), turned[-1]), orientation
    assert turned[5].shape == (20, 12, 1) and not np.array_equal(turned[5], turned[7])  # the check can fail
    # a stack whose pages carry orientations 6 and 3
    square = (np.arange(16 * 16).reshape(16, 16) % 251).astype(np.uint8)
    want, frames = [], []
    for orientation in (6, 3):
        exif = Image.Exif()
        exif[0x0112] = orientation
        Image.fromarray(square).save(tmp_path / "s.png", exif=exif)
        want.append(read_image(tmp_path / "s.png", "L"))
        frame = Image.fromarray(square)
        frame.encoderinfo = {"exif": exif, **kwargs}  # each page's own tags
        frames.append(frame)
    frames[0].save(
        tmp_path / "s.tif", save_all=True, append_images=frames[1:], exif=frames[0].encoderinfo["exif"], **kwargs
    )
    with Image.open(tmp_path / "s.tif") as im:
        im.seek(1)
        if im.tag_v2.get(0x0112) != 3:  # Pillow before 12 writes the first page's tags on every page
            pytest.skip("this Pillow cannot write a stack whose pages carry their own orientations")
    got = read_image_stack(tmp_path / "s.tif", "L")
    assert len(got) == 2 and np.array_equal(got[0], want[0]) and np.array_equal(got[1], want[1])


def test_a_labelled_image_with_an_exif_orientation_is_a_warning_naming_the_convention(tmp_path):
    """A half turn (orientation 3) keeps the size, so the size check passed a mask drawn on the stored pixels: the
    whole mask was turned away from its image, without a word. The check says which frame masks must be drawn in;
    a mismatched size names the orientation, as the data set's own check does."""
    write_dataset(tmp_path, splits={"train": 2}, size=(64, 40))
    path = tmp_path / "toy/images/train/s00.png"
    exif = Image.Exif()
    exif[0x0112] = 3  # "rotate 180 degrees to display"
    Image.open(path).save(path, exif=exif)
    report = check_dataset(tmp_path, "toy", ["train"], progress=False)
    assert report.ok and report.warnings == [
        (
            str(tmp_path / "toy/images/train"),
            "1 labelled image(s) of split 'train' of 'toy' carry an EXIF orientation (s00.png): pixelwise reads them "
            "turned, as viewers show them, so their masks must be drawn on the turned image; if a mask follows the "
            "stored pixels, strip the image's tag (e.g. exiftool -Orientation= FILE) or turn the mask",
        )
    ]
    set_classes(tmp_path, masks_oriented=True)  # as data import writes where it turned the masks itself
    assert check_dataset(tmp_path, "toy", ["train"], progress=False).warnings == []
    set_classes(tmp_path, masks_oriented=False)
    exif[0x0112] = 9  # no orientation EXIF defines: read as stored, so nothing to warn about
    Image.open(path).save(path, exif=exif)
    assert check_dataset(tmp_path, "toy", ["train"], progress=False).warnings == []
    exif[0x0112] = 6  # a quarter turn: the mask of the stored size no longer fits
    Image.open(path).save(path, exif=exif)
    errors = check_dataset(tmp_path, "toy", ["train"], progress=False).errors
    mask = tmp_path / "toy/masks/train/s00.png"
    assert errors == [(str(mask), f"mask {mask} is 64x40 but image {path} is 40x64 (after its EXIF orientation 6)")]


def test_the_pixel_limit_holds_in_every_thread_of_the_data_check(tmp_path, monkeypatch):
    """Each open set Pillow's process-wide limit and put it back: with 8 threads one thread's restore undid
    another's raised limit, and images under $PIXELWISE_MAX_IMAGE_PIXELS failed at random (1-2 of 200)."""
    write_dataset(tmp_path, splits={"train": 200}, size=(64, 64))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # as Pillow's default is to 4096-pixel images
    monkeypatch.setenv("PIXELWISE_MAX_IMAGE_PIXELS", "100000")
    for _ in range(3):
        report = check_dataset(tmp_path, "toy", ["train"], num_workers=8, progress=False)
        assert report.errors == []
    assert Image.MAX_IMAGE_PIXELS == 1000


def test_a_565_bmp_is_not_taken_for_16_bits_per_channel(tmp_path, monkeypatch, caplog):
    """A 16-bit-per-pixel BMP (5-6-5) has the raw mode "BGR;16": it was logged as 16 bits per colour channel, and
    the once-per-process warning then never reached a real 16-bit colour file."""
    import logging
    import struct

    import pixelwise.data.io as io

    w, h = 4, 2
    pixels = np.array([[0xF800, 0x07E0, 0x001F, 0xFFFF]] * h, dtype="<u2")  # red, green, blue, white
    rows = b"".join(r.tobytes() for r in pixels[::-1])
    info = struct.pack("<IiiHHIIiiII", 40, w, h, 1, 16, 3, len(rows), 2835, 2835, 0, 0)
    info += struct.pack("<III", 0xF800, 0x07E0, 0x001F)  # the 5-6-5 bit masks
    offset = 14 + len(info)
    path = tmp_path / "rgb565.bmp"
    path.write_bytes(b"BM" + struct.pack("<IHHI", offset + len(rows), 0, 0, offset) + info + rows)
    monkeypatch.setattr(io, "_warned_16bit_colour", False)
    caplog.set_level(logging.WARNING, logger="pixelwise")
    image = read_image(path, "RGB")
    assert image[0].tolist() == [[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 255]]
    assert "16 bits" not in caplog.text and io._warned_16bit_colour is False


def test_an_unsigned_32_bit_tiff_with_values_pillow_wraps_is_refused(tmp_path):
    """Pillow reads unsigned 32-bit TIFFs as signed: 3e9 came out as -1294967296, and with an image_range that
    covered it the pixel silently became 0."""
    import struct

    values = np.array([[0, 5, 3_000_000_000]], dtype="<u4")
    data = values.tobytes()
    h, w = values.shape
    tags = [(256, 3, w), (257, 3, h), (258, 3, 32), (259, 3, 1), (262, 3, 1), (273, 4, 0), (277, 3, 1),
            (278, 3, h), (279, 4, len(data)), (339, 3, 1)]  # fmt: skip  # 339: SampleFormat 1, unsigned
    ifd = 8
    start = ifd + 2 + 12 * len(tags) + 4
    out = b"II*\x00" + struct.pack("<I", ifd) + struct.pack("<H", len(tags))
    for tag, kind, value in tags:
        value = start if tag == 273 else value
        out += struct.pack("<HHIHH", tag, kind, 1, value, 0) if kind == 3 else struct.pack("<HHII", tag, kind, 1, value)
    path = tmp_path / "u32.tif"
    path.write_bytes(out + b"\x00" * 4 + data)
    with pytest.raises(DataError) as e:
        read_image(path, None, image_range=(0, 4e9))
    assert str(e.value) == (
        f"image {path} is an unsigned 32-bit TIFF, which Pillow reads as signed: its values of 2^31 and more come "
        "out negative; save it as float32 or 16-bit"
    )


def test_a_broken_link_or_a_folder_named_like_an_image_is_named(tmp_path):
    """Both were skipped without a word, and their masks then said "has no image (expected .../s01.<ext>)"."""
    write_dataset(tmp_path, splits={"train": 3}, size=(40, 36))
    images = tmp_path / "toy/images/train"
    (images / "s01.png").unlink()
    (images / "s01.png").symlink_to(tmp_path / "gone.png")
    (images / "s02.png").unlink()
    (images / "s02.png").mkdir()
    errors = dict(check_dataset(tmp_path, "toy", ["train"], progress=False).errors)
    assert errors[str(images / "s01.png")] == (
        f"{images / 's01.png'} is a broken link: an image must be a file (remove it, or put the file there)"
    )
    assert errors[str(images / "s02.png")] == (
        f"{images / 's02.png'} is not a file: an image must be a file (remove it, or put the file there)"
    )


def test_a_truncated_16_bit_colour_png_is_one_line_without_torchvision_s_source_path(tmp_path):
    import struct
    import zlib

    h, w = 16, 20
    rows = np.random.default_rng(0).integers(0, 65535, (h, w * 3)).astype(">u2")
    raw = b"".join(b"\x00" + row.tobytes() for row in rows)

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0))
    png += chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")
    path = tmp_path / "cut.png"
    path.write_bytes(png[:-200])
    with pytest.raises(DataError) as e:
        read_image(path)
    assert str(e.value).startswith(f"cannot read image {path}: ") and ".cpp" not in str(e.value), str(e.value)


def test_a_split_of_broken_links_names_them_rather_than_saying_it_is_empty(tmp_path):
    """data import --link, then the source moved: every image a broken link, and the split said it was empty."""
    write_dataset(tmp_path, splits={"train": 2}, size=(40, 36))
    images = tmp_path / "toy/images/train"
    for stem in ("s00", "s01"):
        (images / f"{stem}.png").unlink()
        (images / f"{stem}.png").symlink_to(tmp_path / "moved" / f"{stem}.png")
    with pytest.raises(DataError) as e:
        SegmentationDataset(tmp_path, "toy", "train")
    assert str(e.value) == (
        f"split 'train' has no readable image: {images / 's00.png'} is a broken link: an image must be a file "
        "(remove it, or put the file there) (and 1 more)"
    )


def test_masks_of_another_mode_name_the_fix(tmp_path):
    write_dataset(tmp_path, splits={"train": 1}, size=(40, 36))
    mask = tmp_path / "toy/masks/train/s00.png"
    for mode, fix in (
        ("1", "; save it as 8-bit grey (mode L) with its values 0 and 1"),
        ("RGB", "; colour masks: `pixelwise data import rgb` maps them through a palette"),
    ):
        Image.new(mode, (40, 36)).save(mask)
        with pytest.raises(DataError) as e:
            read_mask(mask)
        assert str(e.value) == (
            f"mask {mask} has mode {mode!r}; masks must be single-channel 8-bit PNGs of class indices{fix}"
        )


def test_an_image_over_the_pixel_limit_names_the_variable_that_lifts_it(tmp_path, monkeypatch):
    Image.fromarray(np.zeros((20, 30), np.uint8)).save(tmp_path / "a.png")  # 600 pixels
    monkeypatch.setenv("PIXELWISE_MAX_IMAGE_PIXELS", "100")  # Pillow refuses above twice its limit
    with pytest.raises(DataError) as e:
        read_image(tmp_path / "a.png")
    assert str(e.value) == (
        f"cannot read image {tmp_path / 'a.png'}: Image size (600 pixels) exceeds limit of 200 pixels, could be "
        "decompression bomb DOS attack; if you trust the file, set PIXELWISE_MAX_IMAGE_PIXELS to its pixel count or "
        "more"
    )
    monkeypatch.setenv("PIXELWISE_MAX_IMAGE_PIXELS", "600")
    assert read_image(tmp_path / "a.png").shape == (20, 30, 3)
    monkeypatch.setenv("PIXELWISE_MAX_IMAGE_PIXELS", "lots")
    with pytest.raises(DataError) as e:
        read_image(tmp_path / "a.png")
    assert str(e.value) == "PIXELWISE_MAX_IMAGE_PIXELS='lots': give a whole number of pixels (e.g. 400000000)"
    monkeypatch.delenv("PIXELWISE_MAX_IMAGE_PIXELS")
    read_image(tmp_path / "a.png")
    assert Image.MAX_IMAGE_PIXELS == 1024**3 // 4 // 3  # Pillow's own limit is back
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)  # a process that turned the limit off keeps it off
    read_image(tmp_path / "a.png")
    assert Image.MAX_IMAGE_PIXELS is None


def test_a_tiff_with_a_broken_second_page_is_one_line(tmp_path):
    """Pillow raises TypeError for a page without its dimensions (found when counting the pages)."""
    import struct

    page = Image.fromarray(np.zeros((6, 8), np.uint8))
    path = tmp_path / "two.tif"
    page.save(path, save_all=True, append_images=[page])
    data = bytearray(path.read_bytes())
    first = struct.unpack_from("<I", data, 4)[0]
    second = struct.unpack_from("<I", data, first + 2 + 12 * struct.unpack_from("<H", data, first)[0])[0]
    for i in range(struct.unpack_from("<H", data, second)[0]):  # the second page's ImageWidth tag renamed
        if struct.unpack_from("<H", data, second + 2 + 12 * i)[0] == 256:
            struct.pack_into("<H", data, second + 2 + 12 * i, 65000)
    path.write_bytes(bytes(data))
    with pytest.raises(DataError) as e:
        read_image(path)
    assert str(e.value).startswith(f"cannot read image {path}: ")  # then Pillow's reason: "Missing dimensions" (12+)
    assert "\n" not in str(e.value)


@pytest.mark.filterwarnings("ignore:Corrupt EXIF data")
def test_has_several_pages_seeks_to_the_second_page_only(tmp_path):
    """A stack has several pages and stays on its first; one page, an MPO's extra pictures and a broken second
    page each as the page rule says (the server's check of uploads)."""
    from pixelwise.data.io import has_several_pages

    save_stack(tmp_path / "s.tif", [np.full((4, 5), 10 * (i + 1), np.uint8) for i in range(3)])
    Image.fromarray(np.zeros((4, 5), np.uint8)).save(tmp_path / "one.tif")
    with Image.open(tmp_path / "s.tif") as im:
        assert has_several_pages(im) and im.tell() == 0 and np.asarray(im)[0, 0] == 10
    with Image.open(tmp_path / "one.tif") as im:
        assert not has_several_pages(im)
    with Image.open(tmp_path / "s.tif") as im:
        im.format = "MPO"  # a JPEG's extra pictures (previews, depth maps) are no pages
        assert not has_several_pages(im)
    data = bytearray((tmp_path / "s.tif").read_bytes())
    first = struct.unpack_from("<I", data, 4)[0]
    struct.pack_into("<I", data, first + 2 + 12 * struct.unpack_from("<H", data, first)[0], len(data) + 99)
    (tmp_path / "broken.tif").write_bytes(bytes(data))  # the second page's offset points past the file's end
    with Image.open(tmp_path / "broken.tif") as im, pytest.raises(DataError, match="^cannot read image upload.tif: "):
        has_several_pages(im, "upload.tif")


def test_each_page_of_an_animated_png_stack_is_its_own(tmp_path):
    """read_image_stack of an APNG: a check of the page count by seeking made every page decode as page 0."""
    pages = [Image.fromarray(np.full((4, 6, 3), v, np.uint8)) for v in (10, 120, 240)]
    pages[0].save(tmp_path / "s.png", save_all=True, append_images=pages[1:])
    assert [int(p.mean()) for p in read_image_stack(tmp_path / "s.png")] == [10, 120, 240]


def test_multipage_tiff(tmp_path):
    pages = [np.full((20, 24), 10 * (i + 1), np.uint8) for i in range(3)]
    write_dataset(tmp_path, splits={"train": 1})
    (tmp_path / "toy/images/train/s00.png").unlink()
    path = tmp_path / "toy/images/train/s00.tif"
    save_stack(path, pages)
    assert count_pages(path) == 3
    stack = read_image_stack(path, "L")
    assert len(stack) == 3 and [int(p[0, 0, 0]) for p in stack] == [10, 20, 30]
    assert all(p.shape == (20, 24, 1) and p.dtype == np.uint8 for p in stack)
    save_stack(tmp_path / "s16.tif", [np.full((4, 5), 1000 * (i + 1), np.uint16) for i in range(2)])
    np.testing.assert_allclose(
        [p[0, 0, 0] for p in read_image_stack(tmp_path / "s16.tif", "L")], [1000 / 65535, 2000 / 65535]
    )
    expected = (
        f"image {path} has 3 pages; split the stack into one file per slice, "
        "or predict it with pixelwise predict, which writes a mask stack"
    )
    for call in (lambda: SegmentationDataset(tmp_path, "toy", "train"), lambda: read_image(path, "L")):
        with pytest.raises(DataError) as e:
            call()
        assert str(e.value) == expected
    assert len(read_image_stack(tmp_path / "toy/masks/train/s00.png", "L")) == 1  # one page: one item


# ---- 4. duplicate stems ----


def test_duplicate_image_stems_name_both_files(toy_root):
    Image.fromarray(np.zeros((20, 24, 3), np.uint8)).save(toy_root / "toy/images/train/s01.jpg")
    d = toy_root / "toy/images/train"
    with pytest.raises(DataError) as e:
        SegmentationDataset(toy_root, "toy", "train")
    assert str(e.value) == (
        f"images {d}/s01.jpg and {d}/s01.png share the stem 's01' in split 'train' (images pair by stem): "
        "remove or rename all but one"
    )


def test_duplicate_mask_stems_name_both_files_and_masks_must_be_png(toy_root):
    d = toy_root / "toy/masks/train"
    save_mask(d / "s02.tif", np.zeros((20, 24), np.uint8))
    with pytest.raises(DataError) as e:
        SegmentationDataset(toy_root, "toy", "train")
    assert str(e.value) == (
        f"masks {d}/s02.png and {d}/s02.tif share the stem 's02' in split 'train' (masks pair by stem): "
        "remove or rename all but one"
    )
    (d / "s02.png").unlink()
    with pytest.raises(DataError) as e:
        SegmentationDataset(toy_root, "toy", "train")
    assert str(e.value) == f"mask {d}/s02.tif is not a PNG: masks must be lossless PNGs (save it as s02.png)"


def test_dot_files_are_skipped(toy_root):
    (toy_root / "toy/images/train/._s00.png").write_bytes(b"macOS resource fork")
    (toy_root / "toy/masks/train/.DS_Store").write_bytes(b"")
    assert len(SegmentationDataset(toy_root, "toy", "train")) == 4


# ---- 5. check_dataset ----


def test_check_dataset_lists_every_bad_file_and_counts_pixels(tmp_path):
    good = np.zeros((20, 24), np.uint8)
    good[:5] = 1
    good[5:7] = 2
    good[7] = 255  # 24 ignore pixels
    image = np.full((20, 24, 3), 90, np.uint8)
    base = one_split(
        tmp_path,
        images={"good": image, "bigmask": image, "badlabel": image, "nomask": image},
        masks={"good": good, "bigmask": np.zeros((21, 24), np.uint8), "badlabel": np.full((20, 24), 9), "orphan": good},
    )
    img, msk = base / "images/train", base / "masks/train"
    (img / "broken.png").write_bytes(b"not a png")
    save_mask(msk / "broken.png", good)
    save_stack(img / "stack.tif", [image, image])
    save_mask(msk / "stack.png", good)
    report = check_dataset(tmp_path, "toy", progress=False)
    assert not report.ok
    errors = dict(report.errors)
    assert len(report.errors) == 6 and set(errors) == {
        str(msk / "bigmask.png"),
        str(msk / "badlabel.png"),
        str(img / "nomask.png"),
        str(msk / "orphan.png"),
        str(img / "broken.png"),
        str(img / "stack.tif"),
    }
    assert errors[str(msk / "bigmask.png")] == f"mask {msk}/bigmask.png is 24x21 but image {img}/bigmask.png is 24x20"
    assert errors[str(msk / "badlabel.png")].startswith(f"mask {msk}/badlabel.png holds label value(s) [9] but 'toy'")
    assert errors[str(img / "nomask.png")] == f"image {img}/nomask.png has no mask (expected {msk}/nomask.png)"
    assert errors[str(msk / "orphan.png")] == f"mask {msk}/orphan.png has no image (expected {img}/orphan.<ext>)"
    # its image in a format pixelwise does not read is named, not said to be missing
    Image.fromarray(image).save(img / "orphan.gif")
    assert dict(check_dataset(tmp_path, "toy", progress=False).errors)[str(msk / "orphan.png")] == (
        f"mask {msk}/orphan.png has no image (expected {img}/orphan.<ext>; orphan.gif is there, but pixelwise reads "
        ".png, .jpg, .jpeg, .jpe, .jfif, .webp, .tif, .tiff, .bmp: convert it to PNG)"
    )
    assert errors[str(img / "broken.png")].startswith(f"cannot read image {img}/broken.png: ")
    assert (
        errors[str(img / "stack.tif")] == f"image {img}/stack.tif has 2 pages; split the stack into one file per "
        "slice, or predict it with pixelwise predict, which writes a mask stack"
    )
    train = report.splits["train"]
    assert train.images == 6 and train.masks == 6  # orphan has no image, nomask no mask
    # pixels: good, broken's and stack's masks are read (3 x good); bigmask 504 zeros; badlabel none in range
    assert train.histogram == [3 * 12 * 24 + 21 * 24, 3 * 5 * 24, 3 * 2 * 24]
    assert train.ignore_pixels == 3 * 24
    text = report.format()
    assert "6 error(s)" in text and f"error [train] mask {msk}/bigmask.png is 24x21" in text


def test_check_dataset_warns_once_per_split(tmp_path, caplog):
    write_dataset(tmp_path, splits={"train": 4, "val": 3}, num_classes=3, size=(40, 40))
    for split, count in (("train", 4), ("val", 3)):
        for i in range(count):
            mask = np.zeros((40, 40), np.uint8)  # class 2 never occurs
            mask[:, :4] = 1
            if i < 2:
                mask[:30] = 255  # 75 % ignore: mostly ignore
            save_mask(tmp_path / f"toy/masks/{split}/s{i:02d}.png", mask)
    with caplog.at_level(logging.WARNING, logger="pixelwise.data.check"):
        report = check_dataset(tmp_path, "toy", progress=False)
    assert report.ok
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 4, messages  # per split: one "never occur", one "mostly ignore"
    for split, count in (("train", 4), ("val", 3)):
        assert f"class(es) 'c2' never occur in split {split!r} of 'toy' ({count} masks)" in messages
        assert (
            f"2 of {count} masks of split {split!r} of 'toy' are mostly ignore (more than 50 % of their pixels): "
            "s00.png, s01.png"
        ) in messages
    # the report keeps one warning per mostly-ignore file, and one per split for the absent class
    m = tmp_path / "toy/masks/train"
    assert (str(m / "s00.png"), f"mask {m}/s00.png is 75 % ignore (255)") in report.warnings
    assert len(report.warnings) == 2 * 3
    assert report.splits["val"].never_occurring == ["c2"]


def test_check_dataset_small_images_and_unlabelled_split(tmp_path, caplog):
    write_dataset(tmp_path, splits={"train": 2}, size=(40, 16))
    (tmp_path / "toy/images/test").mkdir()
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(tmp_path / "toy/images/test/a.jpg")
    with caplog.at_level(logging.WARNING, logger="pixelwise.data.check"):
        report = check_dataset(tmp_path, "toy", progress=False)
    img = tmp_path / "toy/images/train"
    assert report.ok and report.warnings == [
        (str(img / "s00.png"), f"image {img}/s00.png is 40x16, smaller than 32 px"),
        (str(img / "s01.png"), f"image {img}/s01.png is 40x16, smaller than 32 px"),
    ]
    assert [r.getMessage() for r in caplog.records] == [
        "2 of 2 images of split 'train' of 'toy' are smaller than 32 px: s00.png, s01.png"
    ]
    test = report.splits["test"]
    assert list(report.splits) == ["train", "test"] and not test.labelled and test.images == 1
    only = check_dataset(tmp_path, "toy", ["nosuch"], progress=False)
    assert only.errors == [
        (
            str(tmp_path / "toy/images/nosuch"),
            f"data set 'toy' has no split 'nosuch': {tmp_path}/toy/images/nosuch does not exist",
        )
    ]


def test_check_dataset_reads_instance_maps(tmp_path):
    write_dataset(tmp_path, splits={"train": 2})
    inst_dir = tmp_path / "toy/instances/train"
    inst_dir.mkdir(parents=True)
    a = np.zeros((20, 24), np.uint16)
    a[:5, :5], a[10:, 10:], a[0, 23] = 1, 300, 2  # 3 instances, ids beyond 8 bits
    Image.fromarray(a).save(inst_dir / "s00.png")
    Image.fromarray((a > 0).astype(np.uint8), mode="L").save(tmp_path / "toy/masks/train/s00.png")  # one class each
    Image.fromarray(np.zeros((5, 5), np.uint16)).save(inst_dir / "s01.png")
    report = check_dataset(tmp_path, "toy", progress=False)
    assert report.splits["train"].instances == 3
    img = tmp_path / "toy/images/train"
    assert report.errors == [
        (str(inst_dir / "s01.png"), f"instance map {inst_dir}/s01.png is 5x5 but image {img}/s01.png is 24x20")
    ]
    (inst_dir / "s01.png").unlink()
    assert check_dataset(tmp_path, "toy", progress=False).errors == [
        (str(img / "s01.png"), f"image {img}/s01.png has no instance map (expected {inst_dir}/s01.png)")
    ]
    Image.fromarray(np.zeros((20, 24, 3), np.uint8)).save(inst_dir / "s01.jpg")
    assert check_dataset(tmp_path, "toy", progress=False).errors == [
        (
            str(inst_dir / "s01.jpg"),
            f"instance map {inst_dir}/s01.jpg is a JPEG: its compression changes the ids along every object's edge; "
            "save it lossless (s01.png or .tif)",
        )
    ]
    (inst_dir / "s01.jpg").unlink()
    a[7, 0] = 300  # instance 300 now also covers a pixel of class 0
    Image.fromarray(a).save(inst_dir / "s00.png")
    assert (
        str(inst_dir / "s00.png"),
        f"instance map {inst_dir}/s00.png: instance 300 spans classes [0, 1] of its mask; an instance has one class",
    ) in check_dataset(tmp_path, "toy", progress=False).errors
    # an instance wholly on background (class 0, not an instance class): it would count as an object of a second
    # class in PQ and COCO AP, halving both for a one-class data set
    a[7, 0] = 0
    a[15:, :3] = 7
    Image.fromarray(a).save(inst_dir / "s00.png")
    message = (
        f"instance map {inst_dir}/s00.png: instance 7 lies on class 0 ('c0') of its mask, which is not an instance "
        "class (instance_classes in classes.json); give those pixels an instance class in the mask, or 0 in the "
        "instance map"
    )
    assert (str(inst_dir / "s00.png"), message) in check_dataset(tmp_path, "toy", progress=False).errors
    Image.fromarray(np.zeros((20, 24), np.uint16)).save(inst_dir / "s01.png")
    with pytest.raises(DataError) as e:  # and where training or eval reads it
        SegmentationDataset(tmp_path, "toy", "train", instances=True)[0]
    assert str(e.value) == message


@pytest.mark.realdata
def test_check_real_datasets(data_root):
    camvid = check_dataset(data_root, "camvid", progress=False)
    assert camvid.ok and not camvid.warnings, camvid.format()
    info = json.loads((data_root / "camvid/classes.json").read_text())
    for split in ("train", "val", "test"):
        counts = info["pixel_counts"][split]
        assert camvid.splits[split].histogram == [counts[c] for c in info["classes"]]
        assert camvid.splits[split].ignore_pixels == counts["void(255)"]
    isbi = check_dataset(data_root, "isbi2012_membrane", progress=False)
    assert isbi.ok and not isbi.splits["test"].labelled, isbi.format()
    assert isbi.splits["train"].histogram == [1418245, 4873211]


@pytest.mark.realdata
def test_check_the_real_instance_data_set(data_root):
    if not (data_root / "dsb2018/classes.json").is_file():
        pytest.skip(f"dsb2018 not found under {data_root}")
    dsb = check_dataset(data_root, "dsb2018", progress=False)
    assert dsb.ok, dsb.format()
    meta = json.loads((data_root / "dsb2018/classes.json").read_text())["splits"]
    for split in ("train", "val", "test"):
        assert dsb.splits[split].histogram == meta[split]["pixels"]
        assert dsb.splits[split].instances == meta[split]["instances"]
