"""class_argmax: the same indices as torch.argmax, first maximum on ties, for every layout it meets."""

from __future__ import annotations

import pytest
import torch

from pixelwise.argmax import class_argmax


@pytest.mark.parametrize(
    "shape,dim",
    [((2, 11, 37, 53), 1), ((5, 9, 7), 0), ((3, 4), 1), ((1, 2, 64, 64), 1)],
)
def test_matches_torch_argmax(shape, dim):
    torch.manual_seed(0)
    x = torch.randn(shape)
    assert torch.equal(class_argmax(x, dim), x.argmax(dim))


def test_layouts_and_dtypes():
    torch.manual_seed(1)
    x = torch.randn(2, 11, 40, 30)
    expected = x.argmax(1)
    assert torch.equal(class_argmax(x.contiguous(memory_format=torch.channels_last)), expected)
    assert torch.equal(class_argmax(x.bfloat16()), x.bfloat16().argmax(1))
    sliced = x[:, :, ::2, 1:]  # not contiguous
    assert torch.equal(class_argmax(sliced), sliced.argmax(1))


def test_ties_give_the_first_class():
    x = torch.zeros(1, 5, 3, 4)
    x[:, 2] = 1.0
    x[:, 4] = 1.0
    assert class_argmax(x).unique().tolist() == [2]
    assert class_argmax(torch.zeros(6, 2, 2), 0).unique().tolist() == [0]


def test_returns_int64_with_the_class_dim_removed():
    out = class_argmax(torch.randn(3, 4, 5, 6))
    assert out.dtype == torch.int64 and out.shape == (3, 5, 6)
