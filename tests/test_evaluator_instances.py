"""Instance scores of a semantic model's components in `evaluate`: against its own class's true instances only,
and ranked for COCO AP by each component's mean probability (not by the order the images come in)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from pixelwise.data import SegmentationDataset
from pixelwise.engine.evaluator import evaluate

from .conftest import write_dataset


class ChannelZeroIsCellProbability(nn.Module):
    """Scores of 3 classes whose class-1 probability is the image's first channel / 255 (class 2 never)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = x[:, 0].float() / 255
        return torch.stack([torch.log1p(-p + 1e-6), torch.log(p + 1e-6), torch.full_like(p, -30.0)], 1)


def _write(root, name: str, image0: np.ndarray, mask: np.ndarray, inst: np.ndarray) -> None:
    base = root / "toy"
    image = np.zeros((*mask.shape, 3), np.uint8)
    image[..., 0] = image0
    Image.fromarray(image).save(base / "images/val" / name)
    Image.fromarray(mask, mode="L").save(base / "masks/val" / name)
    Image.fromarray(inst).save(base / "instances/val" / name)


def test_components_meet_their_own_class_only_and_rank_by_probability(tmp_path):
    write_dataset(tmp_path, splits={"val": 2}, size=(16, 12), num_classes=3)
    (tmp_path / "toy/instances/val").mkdir(parents=True)
    # image 0: no class-1 object, a class-2 object (id 9), and a class-1 false positive predicted at p = 0.6
    mask, inst, image0 = np.zeros((12, 16), np.uint8), np.zeros((12, 16), np.uint8), np.zeros((12, 16), np.uint8)
    mask[6:10, 8:14], inst[6:10, 8:14] = 2, 9
    image0[1:4, 1:4] = 153
    _write(tmp_path, "s00.png", image0, mask, inst)
    # image 1: one class-1 object (id 5), found exactly at p = 0.95
    mask, inst, image0 = np.zeros((12, 16), np.uint8), np.zeros((12, 16), np.uint8), np.zeros((12, 16), np.uint8)
    mask[1:5, 1:5], inst[1:5, 1:5] = 1, 5
    image0[1:5, 1:5] = 242
    _write(tmp_path, "s01.png", image0, mask, inst)

    dataset = SegmentationDataset(tmp_path, "toy", "val", instances=True)
    scores = evaluate(ChannelZeroIsCellProbability(), dataset, instances=1, progress=False)["instances"]
    # the class-2 object is not one of class 1's: one true instance, one match, one false positive
    assert scores["num_true"] == 1 and scores["num_pred"] == 2
    assert scores["ap"]["0.50"] == pytest.approx(1 / 2)
    # the match (0.95) ranks above the false positive (0.6) although its image comes second: precision 1 up to
    # recall 1 (scored 1 each, the loader's order put the false positive first: 0.5)
    assert scores["coco_ap50"] == pytest.approx(1.0)
