"""Instance maps in the native format: read with their split, moved by every augmentation exactly as the
mask (ids preserved), and each bad instance map stopped with its one-line message."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import tv_tensors
from torchvision.transforms import v2

from pixelwise.data import SegmentationDataset, build_transforms
from pixelwise.data.transforms import (
    OUTSIDE,
    ElasticDeformation,
    InstanceMap,
    JointTransform,
    RandomRot90,
    RandomScale,
)
from pixelwise.errors import DataError

from .conftest import write_dataset


def blobs(h: int, w: int, seed: int) -> np.ndarray:
    """An instance map of touching and separate rectangles with arbitrary (non-consecutive) 16-bit ids."""
    rng = np.random.default_rng(seed)
    inst = np.zeros((h, w), np.uint16)
    for k in range(12):
        y, x = rng.integers(0, h - 6), rng.integers(0, w - 6)
        inst[y : y + rng.integers(4, 12), x : x + rng.integers(4, 12)] = 1000 + 37 * k
    return inst


def instance_dataset(root, splits=None, size=(48, 40)) -> None:
    """'toy' with 2 classes whose masks are exactly the instance maps' foreground."""
    splits = splits or {"train": 3}
    write_dataset(root, splits=splits, size=size, num_classes=2)
    w, h = size
    for split, count in splits.items():
        (root / "toy/instances" / split).mkdir(parents=True)
        for i in range(count):
            inst = blobs(h, w, i)
            Image.fromarray(inst).save(root / f"toy/instances/{split}/s{i:02d}.png")
            Image.fromarray((inst > 0).astype(np.uint8), mode="L").save(root / f"toy/masks/{split}/s{i:02d}.png")


def test_instances_are_read_with_16_bit_ids(tmp_path):
    instance_dataset(tmp_path)
    ds = SegmentationDataset(tmp_path, "toy", "train", instances=True)
    image, mask, inst = ds[0]
    expected = blobs(40, 48, 0)
    assert inst.dtype == torch.int64 and inst.shape == (40, 48)
    np.testing.assert_array_equal(inst.numpy(), expected)
    assert int(inst.max()) > 255  # not truncated to 8 bits


def test_random_scale_samples_masks_at_the_image_pixel_centres():
    # one row of 10 pixels to 14: output pixel i sits at source position (i + 0.5) * 10 / 14 - 0.5, as the bilinear
    # image resize reads it; nearest-exact takes floor((i + 0.5) * 10 / 14), legacy nearest floor(i * 10 / 14)
    mask = tv_tensors.Mask(torch.arange(10, dtype=torch.uint8).repeat(5, 1))
    inst = InstanceMap(torch.arange(10, dtype=torch.int64).repeat(5, 1) * 1000 + 70000)
    image = tv_tensors.Image(torch.arange(10, dtype=torch.float32).repeat(1, 5, 1))
    scale = RandomScale((1.4, 1.4))
    out_image, out_mask, out_inst = scale(image, mask, inst)
    assert out_mask.shape == (7, 14) and out_mask.dtype == torch.uint8
    expected = [int((i + 0.5) * 10 / 14) for i in range(14)]
    assert out_mask[0].tolist() == expected and expected[4] == 3  # legacy nearest: 2
    assert (out_inst[0] - 70000).div(1000).long().tolist() == expected and out_inst.dtype == torch.int64
    # and the image's value at each pixel is nearest to the mask's there
    assert (out_image[0, 0] - out_mask[0].float()).abs().max() <= 0.5


@pytest.mark.parametrize(
    "pipeline",
    [
        v2.RandomCrop(
            (32, 36), pad_if_needed=True, fill={tv_tensors.Image: 0, tv_tensors.Mask: 255, InstanceMap: OUTSIDE}
        ),
        v2.RandomHorizontalFlip(p=1.0),
        v2.RandomVerticalFlip(p=1.0),
        RandomScale((0.6, 1.7)),
        ElasticDeformation(sigma=6.0, p=1.0),
        RandomRot90(),
    ],
    ids=["crop", "hflip", "vflip", "scale", "elastic", "rot90"],
)
def test_every_augmentation_moves_instances_exactly_as_the_mask(pipeline, tmp_path):
    inst = torch.from_numpy(blobs(40, 48, 3).astype(np.int64))
    mask = (inst > 0).to(torch.uint8) * 1
    image = torch.stack([mask * 200] * 3).to(torch.uint8)
    joint = JointTransform(v2.Compose([pipeline]))
    for seed in range(5):
        torch.manual_seed(seed)
        img_t, mask_t, inst_t = joint(image, mask, inst)
        assert inst_t.shape == mask_t.shape == img_t.shape[1:]
        # the same nearest-neighbour resampling: foreground of the moved instances == moved mask's class 1
        np.testing.assert_array_equal((inst_t > 0).numpy(), (mask_t == 1).numpy())
        # ids preserved: every id after the transform is one of the originals (no blending), or OUTSIDE exactly
        # where the mask was filled (past the image)
        assert set(inst_t.unique().tolist()) <= set(inst.unique().tolist()) | {OUTSIDE}
        np.testing.assert_array_equal((inst_t == OUTSIDE).numpy(), (mask_t == 255).numpy())
    torch.manual_seed(0)
    if isinstance(pipeline, v2.RandomHorizontalFlip):
        np.testing.assert_array_equal(joint(image, mask, inst)[2].numpy(), inst.flip(-1).numpy())


def test_padding_fills_instances_with_outside_and_the_mask_with_ignore(tmp_path):
    inst = torch.from_numpy(blobs(20, 24, 1).astype(np.int64))
    mask = (inst > 0).to(torch.uint8)
    tf = build_transforms(train=True, mean=[0.5] * 3, std=[0.25] * 3, crop_size=64, scale_range=None, elastic_p=1.0)
    torch.manual_seed(0)
    _, mask_t, inst_t = tf(torch.stack([mask * 100] * 3), mask, inst)
    padded = mask_t == 255
    assert padded.sum() > 64 * 64 - 20 * 24 - 1  # the crop is larger than the image
    assert (inst_t[padded] == OUTSIDE).all()  # past the image: neither an id nor background
    assert set(inst_t.unique().tolist()) <= set(inst.unique().tolist()) | {OUTSIDE}


def test_dataset_items_stay_aligned_through_the_training_pipeline(tmp_path):
    instance_dataset(tmp_path)
    tf = build_transforms(
        train=True, mean=[0.5] * 3, std=[0.25] * 3, crop_size=[36, 30], scale_range=[0.5, 2.0], elastic_p=0.5
    )
    ds = SegmentationDataset(tmp_path, "toy", "train", transforms=tf, instances=True)
    for i in range(len(ds)):
        for seed in range(4):
            _, mask, inst = ds[(i, seed)]
            valid = mask != 255
            np.testing.assert_array_equal(((inst > 0) & valid).numpy(), ((mask == 1) & valid).numpy())
            assert (inst[~valid] == 0).all()
            a, b = ds[(i, seed)][2], inst  # the seed alone decides the augmentation
            assert torch.equal(a, b)


def test_instance_map_errors(tmp_path):
    instance_dataset(tmp_path)
    inst_dir, img_dir = tmp_path / "toy/instances/train", tmp_path / "toy/images/train"
    # another size
    Image.fromarray(np.zeros((5, 5), np.uint16)).save(inst_dir / "s01.png")
    with pytest.raises(DataError) as e:
        SegmentationDataset(tmp_path, "toy", "train", instances=True)
    assert str(e.value) == f"instance map {inst_dir}/s01.png is 5x5 but image {img_dir}/s01.png is 48x40"
    # an instance over two classes
    inst = blobs(40, 48, 1)
    Image.fromarray(inst).save(inst_dir / "s01.png")
    mask = (inst > 0).astype(np.uint8)
    ys, xs = np.nonzero(inst == inst[inst > 0][0])
    mask[ys[0], xs[0]] = 0
    Image.fromarray(mask, mode="L").save(tmp_path / "toy/masks/train/s01.png")
    ds = SegmentationDataset(tmp_path, "toy", "train", instances=True)
    with pytest.raises(DataError) as e:
        ds[1]
    assert str(e.value) == (
        f"instance map {inst_dir}/s01.png: instance {inst[ys[0], xs[0]]} spans classes [0, 1] of its mask; "
        "an instance has one class"
    )
    # an instance on ignore pixels
    mask[ys[0], xs[0]] = 255
    Image.fromarray(mask, mode="L").save(tmp_path / "toy/masks/train/s01.png")
    with pytest.raises(DataError) as e:
        ds[1]
    assert str(e.value) == (
        f"instance map {inst_dir}/s01.png: instance {inst[ys[0], xs[0]]} lies on ignore pixels (255) of its mask; "
        "give those pixels the instance's class in the mask, or 0 in the instance map"
    )


def test_instances_asked_of_a_data_set_without_them(tmp_path):
    write_dataset(tmp_path, splits={"train": 2})
    with pytest.raises(DataError) as e:
        SegmentationDataset(tmp_path, "toy", "train", instances=True)
    assert str(e.value) == (
        f"split 'train' of 'toy' has no instance maps ({tmp_path}/toy/instances/train does not exist), which "
        "instance segmentation needs: add 16-bit PNGs there (0 = none, 1..K one id per object), "
        "or set instances.from_class to the class whose connected components are the objects"
    )


def test_instances_from_a_class_are_its_4_connected_components(tmp_path):
    """ISBI-style data (objects separated by another class): the maps come from the masks, before augmentation."""
    write_dataset(tmp_path, splits={"train": 1}, size=(7, 5), num_classes=2)
    mask = np.array(
        [
            [1, 1, 0, 1, 1, 1, 1],
            [1, 1, 0, 0, 0, 0, 0],
            [0, 0, 1, 0, 1, 1, 0],  # (2, 2) touches (1, 1) only diagonally: its own object
            [1, 0, 0, 0, 1, 0, 0],
            [1, 1, 0, 0, 0, 0, 1],
        ],
        np.uint8,
    )
    Image.fromarray(mask, mode="L").save(tmp_path / "toy/masks/train/s00.png")
    ds = SegmentationDataset(tmp_path, "toy", "train", instances=True, instances_from_class=1)
    _, out_mask, inst = ds[0]
    expected = np.array(
        [
            [1, 1, 0, 2, 2, 2, 2],
            [1, 1, 0, 0, 0, 0, 0],
            [0, 0, 3, 0, 4, 4, 0],
            [5, 0, 0, 0, 4, 0, 0],
            [5, 5, 0, 0, 0, 0, 6],
        ]
    )
    np.testing.assert_array_equal(inst.numpy(), expected)
    np.testing.assert_array_equal(out_mask.numpy(), mask)
    # the other class: its pixels form one 4-connected region here
    ds0 = SegmentationDataset(tmp_path, "toy", "train", instances=True, instances_from_class=0)
    assert int(ds0[0][2].max()) == 1 and bool(((ds0[0][2] > 0).numpy() == (mask == 0)).all())


def test_instances_from_a_class_move_with_the_mask(tmp_path):
    instance_dataset(tmp_path)
    tf = build_transforms(
        train=True, mean=[0.5] * 3, std=[0.25] * 3, crop_size=24, scale_range=(0.7, 1.4), hflip=True, vflip=True
    )
    ds = SegmentationDataset(tmp_path, "toy", "train", transforms=tf, instances=True, instances_from_class=1)
    for i in range(len(ds)):
        _, mask, inst = ds[(i, 7)]
        assert bool(((inst > 0) == (mask == 1)).all())  # every pixel of the class is in an object, no other one


def test_instances_from_class_errors(tmp_path):
    from pixelwise.errors import ConfigError
    from pixelwise.inference import InstanceSettings

    write_dataset(tmp_path, splits={"train": 1}, num_classes=2)
    with pytest.raises(DataError) as e:
        SegmentationDataset(tmp_path, "toy", "train", instances=True, instances_from_class=2)
    assert str(e.value) == "instances from class 2: 'toy' has classes 0..1"
    settings = InstanceSettings(method="boundary", from_class="cells")
    with pytest.raises(ConfigError) as e:
        settings.from_class_index(["membrane", "cell"])
    assert str(e.value) == "instances.from_class='cells' is not a class of the data set; valid: membrane, cell or 0..1"
    assert InstanceSettings(from_class="cell").from_class_index(["membrane", "cell"]) == 1
    assert InstanceSettings(from_class=0).from_class_index(["membrane", "cell"]) == 0
