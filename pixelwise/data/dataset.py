"""The native data set format and its reader.

::

    <root>/<name>/classes.json                  {"classes": [...], "palette": [[r,g,b],...], "ignore_index": 255}
    <root>/<name>/images/<split>/<stem>.<ext>   any image Pillow reads (png, jpg, webp, tif, bmp)
    <root>/<name>/masks/<split>/<stem>.png      single-channel 8-bit, value = class index, ignore_index = unlabelled
    <root>/<name>/instances/<split>/<stem>.png  optional: 16-bit instance maps (0 = background, 1..K)

An image and its mask share a stem; two files of one stem in a split folder are an error, and so is a mask
that is not a PNG. Files whose name starts with ``.`` (``.DS_Store``, macOS ``._x.png``) are skipped. A split
without a ``masks/<split>`` folder is unlabelled (usable for prediction only). ``classes.json`` is described
in :mod:`pixelwise.data.info`, image and mask reading in :mod:`pixelwise.data.io`; :func:`pixelwise.data.check
.check_dataset` checks every file of a data set at once.
"""

from __future__ import annotations

import contextlib
import glob
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from ..errors import DataError
from .info import DATA_ROOT_ENV, DatasetInfo, default_palette, resolve_data_root
from .instance_targets import class_components
from .io import (
    IMAGE_EXTENSIONS,
    LOSSY_EXTENSIONS,
    MASK_EXTENSION,
    check_instance_classes,
    check_mask_values,
    count_pages,
    image_size,
    image_to_tensor,
    image_to_uint8,
    mask_histogram,
    mask_size,
    multipage_message,
    probe_image,
    read_image,
    read_image_stack,
    read_instances,
    read_mask,
)

__all__ = [
    "DATA_ROOT_ENV",
    "IMAGE_EXTENSIONS",
    "DatasetInfo",
    "SegmentationDataset",
    "SplitFiles",
    "count_pages",
    "default_palette",
    "image_size",
    "image_to_tensor",
    "image_to_uint8",
    "list_split",
    "read_image",
    "read_image_stack",
    "read_mask",
    "resolve_data_root",
]

_image_size = image_size  # the name this module had before pixelwise.data.io


def _and(names: list[str]) -> str:
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


@dataclass
class SplitFiles:
    """The files of one split, paired by stem, and what is wrong with the pairing.

    ``problems`` lists ``(file, message)`` in the order the data set reports them (duplicate stems, masks that
    are not PNGs, masks without an image, images without a mask); ``instance_problems`` the same for the
    optional ``instances/<split>`` folder. ``masks``/``instances`` are None when their folder does not exist."""

    split: str
    image_dir: Path
    mask_dir: Path
    instance_dir: Path
    images: dict[str, Path]
    masks: dict[str, Path] | None
    instances: dict[str, Path] | None
    problems: list[tuple[Path, str]] = field(default_factory=list)
    instance_problems: list[tuple[Path, str]] = field(default_factory=list)


def _by_stem(folder: Path, kind: str, split: str, problems: list[tuple[Path, str]]) -> dict[str, Path]:
    """Stem -> file for the image files in ``folder``; duplicate stems are added to ``problems``."""
    found: dict[str, list[Path]] = {}
    with os.scandir(folder) as entries:
        for e in entries:
            if e.name.startswith("."):
                continue
            p = Path(e.path)
            if p.suffix.lower() not in IMAGE_EXTENSIONS:
                continue
            if not e.is_file():  # said, or its partner file would be reported as having none
                what = "a broken link" if e.is_symlink() and not p.exists() else "not a file"
                article = "an" if kind[0] in "aeiou" else "a"
                problems.append(
                    (p, f"{p} is {what}: {article} {kind} must be a file (remove it, or put the file there)")
                )
                continue
            found.setdefault(p.stem, []).append(p)
    out = {}
    for stem in sorted(found):
        files = sorted(found[stem])
        if len(files) > 1:
            problems.append(
                (
                    files[0],
                    f"{kind}s {_and([str(f) for f in files])} share the stem {stem!r} in split {split!r} "
                    f"({kind}s pair by stem): remove or rename all but one",
                )
            )
        out[stem] = files[0]
    return out


def _expected_image(image_dir: Path, stem: str) -> str:
    """Where a mask's image was looked for, and the file of that stem that is there in a format not read."""
    other = sorted(q.name for q in image_dir.glob(f"{glob.escape(stem)}.*") if q.suffix.lower() not in IMAGE_EXTENSIONS)
    expected = f"expected {image_dir / stem}.<ext>"
    if other:
        return f"{expected}; {other[0]} is there, but pixelwise reads {', '.join(IMAGE_EXTENSIONS)}: convert it to PNG"
    return expected


def list_split(root: str | os.PathLike, name: str, split: str) -> SplitFiles:
    """The images, masks and instance maps of a split. DataError if the split is missing or has no images;
    every other problem is collected in the result."""
    base = Path(root) / name
    image_dir, mask_dir, instance_dir = base / "images" / split, base / "masks" / split, base / "instances" / split
    if not image_dir.is_dir():
        raise DataError(f"data set {name!r} has no split {split!r}: {image_dir} does not exist")
    problems: list[tuple[Path, str]] = []
    images = _by_stem(image_dir, "image", split, problems)
    if not images:
        if problems:  # e.g. every image a link whose source moved (data import --link): name them, not "empty"
            more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
            raise DataError(f"split {split!r} has no readable image: {problems[0][1]}{more}")
        raise DataError(f"split {split!r} is empty: no images ({', '.join(IMAGE_EXTENSIONS)}) in {image_dir}")
    masks = None
    if mask_dir.is_dir():
        found = _by_stem(mask_dir, "mask", split, problems)
        masks = {stem: path for stem, path in found.items() if path.suffix.lower() == MASK_EXTENSION}
        for stem, path in found.items():
            if stem not in masks:
                problems.append(
                    (path, f"mask {path} is not a PNG: masks must be lossless PNGs (save it as {stem}.png)")
                )
        for stem in sorted(set(found) - set(images)):
            problems.append((found[stem], f"mask {found[stem]} has no image ({_expected_image(image_dir, stem)})"))
        for stem, image in images.items():
            if stem not in found:
                problems.append((image, f"image {image} has no mask (expected {mask_dir / stem}.png)"))
    instances = None
    instance_problems: list[tuple[Path, str]] = []
    if instance_dir.is_dir():
        found = _by_stem(instance_dir, "instance map", split, instance_problems)
        instances = {stem: path for stem, path in found.items() if path.suffix.lower() not in LOSSY_EXTENSIONS}
        for stem in sorted(set(found) - set(instances)):
            instance_problems.append(
                (
                    found[stem],
                    f"instance map {found[stem]} is a JPEG: its compression changes the ids along every object's "
                    f"edge; save it lossless ({stem}.png or .tif)",
                )
            )
        for stem in sorted(set(found) - set(images)):
            path = found[stem]
            instance_problems.append((path, f"instance map {path} has no image (expected {image_dir / stem}.<ext>)"))
        for stem, image in images.items():
            if stem not in found:
                instance_problems.append(
                    (image, f"image {image} has no instance map (expected {instance_dir / stem}.png)")
                )
    return SplitFiles(split, image_dir, mask_dir, instance_dir, images, masks, instances, problems, instance_problems)


def size_mismatch_message(
    mask: Path,
    msize: tuple[int, int],
    image: Path,
    isize: tuple[int, int],
    orientation: int = 1,
    kind: str = "mask",
) -> str:
    """The DataError message for a mask (or instance map) whose ``(width, height)`` differs from its image's."""
    rotated = f" (after its EXIF orientation {orientation})" if orientation != 1 else ""
    return f"{kind} {mask} is {msize[0]}x{msize[1]} but image {image} is {isize[0]}x{isize[1]}{rotated}"


class SegmentationDataset(Dataset):
    """One split of a data set in the native format.

    Items are ``(image, mask)``: ``image`` a float tensor ``C x H x W`` and ``mask`` an int64 tensor
    ``H x W`` after ``transforms(image, mask)``, which receives a ``C x H x W`` image tensor (uint8 for
    8-bit images; float32 in [0, 1] for 16-bit and float ones) and a uint8 ``H x W`` mask tensor (the
    ``value_map`` applied). An index may also be an ``(index, seed)`` pair: the transforms then draw
    their randomness from ``seed`` alone, which makes augmentation reproducible whatever the number of
    loader workers (exact resume relies on it).

    Checked at construction (naming the file): missing dataset or split, empty split, two files of one
    stem, an image without a mask or a mask without an image, unreadable images, multi-page images,
    image/mask size mismatch (the image's EXIF orientation applied). Checked when loaded (one
    ``bincount`` per mask): label values >= num_classes that are not the ignore value, and 0/255 masks
    in a 2-class data set without a value_map. The per-split scan (classes that never occur, mostly
    ignored masks, small images) is :func:`pixelwise.data.check.check_dataset`.

    With ``instances=True`` the split's ``instances/<split>`` maps are read too (a DataError if there are
    none) and move through the transforms with the mask (:class:`~pixelwise.data.transforms.InstanceMap`);
    items are ``(image, mask, instances)``, or ``(image, target(mask, instances))`` with a ``target``
    builder (:mod:`pixelwise.data.instance_targets`). Each instance map is checked when loaded: no instance
    on ignore pixels, none spanning two classes. With ``instances_from_class`` too, the maps are not read but
    computed from each mask before the transforms: the 4-connected components of that class
    (:func:`~pixelwise.data.instance_targets.class_components`; ISBI 2012's cells, separated by membrane).
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
        instances: bool = False,
        instances_from_class: int | None = None,
        target: Callable[[torch.Tensor, torch.Tensor], Any] | None = None,
    ) -> None:
        self.root = Path(root)
        self.info = DatasetInfo.load(root, name)
        self.split = split
        self.transforms = transforms
        self.target = target
        self.image_mode = image_mode
        self._lut = self.info.mask_lut()
        files = list_split(root, name, split)
        self.has_masks = files.masks is not None
        if require_masks and not self.has_masks:
            raise DataError(f"split {split!r} of {name!r} has no masks: {files.mask_dir} does not exist")
        if files.problems:
            raise DataError(files.problems[0][1])
        self.with_instances = instances
        self.instances_from_class = instances_from_class if instances else None
        if self.instances_from_class is not None:
            if not 0 <= self.instances_from_class < self.info.num_classes:
                top = self.info.num_classes - 1
                raise DataError(f"instances from class {self.instances_from_class}: {name!r} has classes 0..{top}")
            if not self.has_masks:
                raise DataError(f"split {split!r} of {name!r} has no masks to take instances from ({files.mask_dir})")
        elif instances:
            if files.instances is None:
                raise DataError(
                    f"split {split!r} of {name!r} has no instance maps ({files.instance_dir} does not exist), "
                    "which instance segmentation needs: add 16-bit PNGs there (0 = none, 1..K one id per object), "
                    "or set instances.from_class to the class whose connected components are the objects"
                )
            if files.instance_problems:
                raise DataError(files.instance_problems[0][1])
        self.instance_paths: list[Path] = []
        self.samples: list[tuple[Path, Path | None]] = []
        self.image_sizes: list[tuple[int, int]] = []  # (width, height) as read, from the headers
        for stem, image in files.images.items():
            isize, pages, orientation = probe_image(image)
            if pages > 1:
                raise DataError(multipage_message(image, pages))
            mask = files.masks[stem] if files.masks is not None else None
            if mask is not None:
                msize = mask_size(mask)
                if isize != msize:
                    raise DataError(size_mismatch_message(mask, msize, image, isize, orientation))
            if instances and self.instances_from_class is None:
                inst = files.instances[stem]
                if mask_size(inst) != isize:
                    raise DataError(
                        size_mismatch_message(inst, mask_size(inst), image, isize, orientation, kind="instance map")
                    )
                self.instance_paths.append(inst)
            self.samples.append((image, mask))
            self.image_sizes.append(isize)

    def __len__(self) -> int:
        return len(self.samples)

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray | None]:
        """The raw ``H x W x C`` image (uint8, or float32 in [0, 1] for 16-bit/float files) and ``H x W`` uint8
        mask (value_map applied; None if unlabelled), label-checked."""
        image_path, mask_path = self.samples[index]
        image = read_image(image_path, self.image_mode, image_range=self.info.image_range)
        if mask_path is None:
            return image, None
        mask = read_mask(mask_path, lut=self._lut)
        if mask.shape != image.shape[:2]:
            raise DataError(size_mismatch_message(mask_path, mask.shape[::-1], image_path, image.shape[1::-1]))
        check_mask_values(mask_histogram(mask), self.info, mask_path)
        return image, mask

    def load_instances(self, index: int, mask: np.ndarray | None = None) -> np.ndarray:
        """The ``H x W`` int32 instance map of item ``index`` (0 = none); with its ``mask``, checked that no
        instance lies on ignore pixels or spans two classes."""
        if self.instances_from_class is not None:
            if mask is None:
                mask = self.load(index)[1]
            return class_components(mask, self.instances_from_class)
        path = self.instance_paths[index]
        inst = read_instances(path).astype(np.int32)
        if mask is not None:
            check_instance_classes(inst, mask, self.info.ignore_index, path, self.info.thing_classes, self.info.classes)
        return inst

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, ...]:
        index, seed = key if isinstance(key, tuple) else (key, None)
        image, mask = self.load(index)
        if mask is None:
            mask = np.full(image.shape[:2], self.info.ignore_index, dtype=np.uint8)
        tensors = [
            torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))),
            torch.from_numpy(np.ascontiguousarray(mask)),
        ]
        if self.with_instances:
            tensors.append(torch.from_numpy(self.load_instances(index, mask)))
        if self.transforms is not None:
            with torch.random.fork_rng(devices=[]) if seed is not None else contextlib.nullcontext():
                if seed is not None:
                    torch.manual_seed(seed)
                tensors = list(self.transforms(*tensors))
        tensors[1] = tensors[1].long()
        if self.with_instances:
            tensors[2] = tensors[2].long()
            if self.target is not None:  # it tells a crop's padding (OUTSIDE, -1) from background
                return tensors[0], self.target(tensors[1], tensors[2])
            tensors[2] = tensors[2].clamp_(min=0)  # 0: no instance, as the maps on disk
        return tuple(tensors)

    def class_counts(self, progress: bool = False) -> tuple[list[int], list[int]]:
        """Per class: labelled pixels of that class, and all pixels of the images where it occurs
        (the denominators of median-frequency balancing, Eigen & Fergus 2015). Reads the masks only
        (value_map applied)."""
        n = self.info.num_classes
        counts = np.zeros(n, dtype=np.int64)
        image_counts = np.zeros(n, dtype=np.int64)
        for _, mask_path in tqdm(self.samples, desc="class counts", disable=not progress, leave=False):
            if mask_path is None:
                continue
            mask = read_mask(mask_path, lut=self._lut)
            c = mask_histogram(mask)[:n]
            if self.info.ignore_index < n:
                c[self.info.ignore_index] = 0
            counts += c
            image_counts[c > 0] += mask.size
        return counts.tolist(), image_counts.tolist()

    def name_of(self, index: int) -> str:
        return self.samples[index][0].stem
