"""DDP set-up helpers: rank 0's buffers for every process before an evaluation."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from pixelwise.engine.distributed import Distributed, broadcast_buffers

from .conftest import run_in_processes


def _buffers_after_broadcast(rank: int) -> list:
    bn = nn.BatchNorm2d(2)
    bn.running_mean.fill_(float(rank + 1))  # each process's own last update
    bn.running_var.fill_(float(10 * (rank + 1)))
    broadcast_buffers(bn, Distributed(rank=rank, world_size=2, enabled=True))
    return [bn.running_mean.tolist(), bn.running_var.tolist(), int(bn.num_batches_tracked)]


@pytest.mark.slow
def test_every_process_evaluates_with_rank_0s_running_statistics():
    results = run_in_processes(_buffers_after_broadcast)
    assert results[0] == results[1] == [[1.0, 1.0], [10.0, 10.0], 0]


def test_one_process_keeps_its_buffers():
    bn = nn.BatchNorm2d(2)
    bn.running_mean.fill_(3.0)
    broadcast_buffers(bn, Distributed())
    assert torch.equal(bn.running_mean, torch.full((2,), 3.0))
