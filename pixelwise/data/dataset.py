"""The native data set format and its reader.

::

    <root>/<name>/classes.json                  {"classes": [...], "palette": [[r,g,b],...], "ignore_index": 255}
    <root>/<name>/images/<split>/<stem>.<ext>   any image Pillow reads (png, jpg, webp, tif, bmp)
    <root>/<name>/masks/<split>/<stem>.png      single-channel, value = class index, ignore_index = unlabelled

An image and its mask share a stem. A split without a ``masks/<split>`` folder is unlabelled
(usable for prediction only).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from ..errors import DataError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff", ".bmp")
DATA_ROOT_ENV = "PIXELWISE_DATA"


def resolve_data_root(*candidates: str | os.PathLike | None) -> Path:
    """The first of ``candidates`` that is set, else ``$PIXELWISE_DATA``, else ``./data``.

    Callers pass, in order of precedence, the ``--data-root`` flag and the config's ``data.root``.
    """
    for value in (*candidates, os.environ.get(DATA_ROOT_ENV)):
        if value:
            return Path(value).expanduser()
    return Path("data")


@dataclass
class DatasetInfo:
    """What ``classes.json`` says: class names, palette (RGB per class) and the ignore value."""

    name: str
    classes: list[str]
    palette: list[list[int]]
    ignore_index: int = 255
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @classmethod
    def load(cls, root: str | os.PathLike, name: str) -> DatasetInfo:
        path = Path(root) / name / "classes.json"
        if not path.is_file():
            raise DataError(
                f"no data set {name!r} under data root {str(root)!r}: {path} does not exist "
                f"(set --data-root or ${DATA_ROOT_ENV})"
            )
        try:
            raw = json.loads(path.read_text())
            classes = [str(c) for c in raw["classes"]]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise DataError(f"{path}: not a valid classes.json ({e}); it needs a 'classes' list") from None
        palette = raw.get("palette") or default_palette(len(classes))
        if len(palette) != len(classes):
            raise DataError(f"{path}: {len(classes)} classes but {len(palette)} palette entries")
        return cls(name, classes, [list(map(int, c)) for c in palette], int(raw.get("ignore_index", 255)), raw)


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


def read_image(path: Path, mode: str) -> np.ndarray:
    """``H x W x C`` uint8 array (C = 3 for ``"RGB"``, 1 for ``"L"``); DataError if unreadable."""
    try:
        with Image.open(path) as im:
            arr = np.array(im.convert(mode))
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise DataError(f"cannot read image {path}: {e}") from None
    return arr[..., None] if arr.ndim == 2 else arr


def read_mask(path: Path) -> np.ndarray:
    """``H x W`` uint8 array of class indices; DataError unless a single-channel 8-bit image."""
    try:
        with Image.open(path) as im:
            if im.mode not in ("L", "P"):
                raise DataError(
                    f"mask {path} has mode {im.mode!r}; masks must be single-channel 8-bit PNGs of class indices"
                )
            return np.array(im)  # for mode "P" these are the palette indices
    except (UnidentifiedImageError, OSError) as e:
        raise DataError(f"cannot read mask {path}: {e}") from None


def _image_size(path: Path) -> tuple[int, int]:
    try:
        with Image.open(path) as im:
            return im.size
    except (UnidentifiedImageError, OSError) as e:
        raise DataError(f"cannot read image {path}: {e}") from None


class SegmentationDataset(Dataset):
    """One split of a data set in the native format.

    Items are ``(image, mask)``: ``image`` a float tensor ``C x H x W`` and ``mask`` an int64 tensor
    ``H x W`` after ``transforms(image, mask)`` (which receives a uint8 ``C x H x W`` image tensor
    and a uint8 ``H x W`` mask tensor). An index may also be an ``(index, seed)`` pair: the
    transforms then draw their randomness from ``seed`` alone, which makes augmentation
    reproducible whatever the number of loader workers (exact resume relies on it).

    Checked at construction (naming the file): missing dataset or split, empty split, an image
    without a mask or a mask without an image, unreadable images, image/mask size mismatch. Checked
    when loaded: label values >= num_classes that are not the ignore value.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        name: str,
        split: str,
        *,
        transforms: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]] | None = None,
        image_mode: str = "RGB",
        require_masks: bool = True,
    ) -> None:
        self.root = Path(root)
        self.info = DatasetInfo.load(root, name)
        self.split = split
        self.transforms = transforms
        self.image_mode = image_mode
        image_dir = self.root / name / "images" / split
        mask_dir = self.root / name / "masks" / split
        if not image_dir.is_dir():
            raise DataError(f"data set {name!r} has no split {split!r}: {image_dir} does not exist")
        images = {p.stem: p for p in sorted(image_dir.iterdir()) if p.suffix.lower() in IMAGE_EXTENSIONS}
        if not images:
            raise DataError(f"split {split!r} is empty: no images ({', '.join(IMAGE_EXTENSIONS)}) in {image_dir}")
        self.has_masks = mask_dir.is_dir()
        if require_masks and not self.has_masks:
            raise DataError(f"split {split!r} of {name!r} has no masks: {mask_dir} does not exist")
        self.samples: list[tuple[Path, Path | None]] = []
        if self.has_masks:
            masks = {p.stem: p for p in sorted(mask_dir.iterdir()) if p.suffix.lower() == ".png"}
            orphans = sorted(set(masks) - set(images))
            if orphans:
                raise DataError(f"mask {masks[orphans[0]]} has no image (expected {image_dir / orphans[0]}.<ext>)")
            for stem, image in images.items():
                if stem not in masks:
                    raise DataError(f"image {image} has no mask (expected {mask_dir / stem}.png)")
                isize, msize = _image_size(image), _image_size(masks[stem])
                if isize != msize:
                    raise DataError(
                        f"mask {masks[stem]} is {msize[0]}x{msize[1]} but image {image} is {isize[0]}x{isize[1]}"
                    )
                self.samples.append((image, masks[stem]))
        else:
            for image in images.values():
                _image_size(image)
                self.samples.append((image, None))

    def __len__(self) -> int:
        return len(self.samples)

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray | None]:
        """The raw ``H x W x C`` uint8 image and ``H x W`` uint8 mask (None if unlabelled), label-checked."""
        image_path, mask_path = self.samples[index]
        image = read_image(image_path, self.image_mode)
        if mask_path is None:
            return image, None
        mask = read_mask(mask_path)
        bad = (mask >= self.info.num_classes) & (mask != self.info.ignore_index)
        if bad.any():
            values = sorted(set(np.unique(mask[bad]).tolist()))
            raise DataError(
                f"mask {mask_path} holds label value(s) {values[:5]} but {self.info.name!r} has "
                f"{self.info.num_classes} classes (0..{self.info.num_classes - 1}, ignore {self.info.ignore_index})"
            )
        return image, mask

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        index, seed = key if isinstance(key, tuple) else (key, None)
        image, mask = self.load(index)
        if mask is None:
            mask = np.full(image.shape[:2], self.info.ignore_index, dtype=np.uint8)
        img_t = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))
        mask_t = torch.from_numpy(np.ascontiguousarray(mask))
        if self.transforms is not None:
            if seed is None:
                img_t, mask_t = self.transforms(img_t, mask_t)
            else:
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(seed)
                    img_t, mask_t = self.transforms(img_t, mask_t)
        return img_t, mask_t.long()

    def class_counts(self, progress: bool = False) -> tuple[list[int], list[int]]:
        """Per class: labelled pixels of that class, and all pixels of the images where it occurs
        (the denominators of median-frequency balancing, Eigen & Fergus 2015). Reads the masks only."""
        n = self.info.num_classes
        counts = np.zeros(n, dtype=np.int64)
        image_counts = np.zeros(n, dtype=np.int64)
        for _, mask_path in tqdm(self.samples, desc="class counts", disable=not progress, leave=False):
            if mask_path is None:
                continue
            mask = read_mask(mask_path)
            c = np.bincount(mask[mask != self.info.ignore_index].ravel(), minlength=n)[:n]
            counts += c
            image_counts[c > 0] += mask.size
        return counts.tolist(), image_counts.tolist()

    def name_of(self, index: int) -> str:
        return self.samples[index][0].stem
