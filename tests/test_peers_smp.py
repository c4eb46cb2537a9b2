"""benchmarks/peers_smp.py: smp's models run on any image size, as the peer comparisons evaluate whole images."""

from __future__ import annotations

import torch

from .conftest import load_benchmark

peers_smp = load_benchmark("peers_smp")


class _StrideModel(torch.nn.Module):
    """Refuses sides that do not divide by its stride, as most smp models do; scores = 2 x the first channel."""

    def __init__(self, stride: int) -> None:
        super().__init__()
        self.encoder = torch.nn.Module()
        self.encoder.output_stride = stride
        self.seen: list[tuple[int, int]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(tuple(x.shape[-2:]))
        assert x.shape[-2] % self.encoder.output_stride == 0 and x.shape[-1] % self.encoder.output_stride == 0
        return 2 * x[:, :1]


def test_pad_to_stride_pads_bottom_right_and_crops_back():
    inner = _StrideModel(32)
    model = peers_smp.PadToStride(inner)
    x = torch.randn(2, 3, 270, 360)  # CamVid at 0.75 of full size
    y = model(x)
    assert inner.seen == [(288, 384)]
    assert y.shape == (2, 1, 270, 360)
    torch.testing.assert_close(y, 2 * x[:, :1])  # the pixels line up: padding only after the last row and column


def test_pad_to_stride_leaves_divisible_inputs_alone():
    inner = _StrideModel(16)
    x = torch.randn(1, 3, 192, 256)
    torch.testing.assert_close(peers_smp.PadToStride(inner)(x), 2 * x[:, :1])
    assert inner.seen == [(192, 256)]
