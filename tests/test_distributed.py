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


def _time_budget_rank(rank: int, root: str, config: dict, run_dir: str) -> dict:
    """Train ``config`` as process ``rank`` of 2 with a time budget; process 1's clock runs three times fast."""
    import os
    import time

    import pixelwise.engine.trainer as trainer
    from pixelwise.engine import train

    os.environ.update(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank))
    built = {}
    real_build = trainer.build_optimizer

    def keep(model, train_cfg):
        built["model"], built["optimizer"] = model, real_build(model, train_cfg)
        return built["optimizer"]

    class FastClock:
        def __getattr__(self, name):
            return getattr(time, name)

        def perf_counter(self):
            return 3 * time.perf_counter()

    trainer.build_optimizer = keep
    if rank == 1:
        trainer.time = FastClock()
    result = train(config, run_dir=run_dir, data_root=root, progress=False)
    return {
        "iterations": result["iterations"],
        "lr": [g["lr"] for g in built["optimizer"].param_groups],
        "weights": [p.detach().flatten().tolist() for p in built["model"].parameters()],  # no tensors: shared memory
    }


@pytest.mark.slow
def test_processes_with_clocks_apart_share_the_time_budget_and_its_rates(tmp_path):
    """A time budget sets the learning rate from the training clock: every process must use the same clock, or
    the replicas step apart (same averaged gradients, other rates) and stop at different steps."""
    from functools import partial

    from pixelwise.config import load_config

    from .conftest import write_dataset
    from .test_engine import toy_config

    root = write_dataset(tmp_path / "data", splits={"train": 4, "val": 2}).parent
    config = load_config(toy_config(tmp_path, iters=100000, max_minutes=0.15, eval_interval=100000))
    results = run_in_processes(partial(_time_budget_rank, root=str(root), config=config, run_dir=str(tmp_path / "r")))
    assert results[0]["iterations"] == results[1]["iterations"] > 2  # about 3 s of process 0's time
    assert results[0]["lr"] == results[1]["lr"] and results[0]["lr"][0] < config["train"]["lr"]
    assert results[0]["weights"] == results[1]["weights"]


def _count_gradient_all_reduces(rank: int, root: str, config: dict, run_dir: str) -> int:
    """Train as process ``rank`` of 2 and count the gradient buckets DDP all-reduced."""
    import os

    import torch.distributed as dist

    from pixelwise.engine import train

    os.environ.update(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank))
    calls = [0]

    def counting_hook(state, bucket):
        calls[0] += 1
        work = dist.all_reduce(bucket.buffer().div_(dist.get_world_size()), async_op=True)
        return work.get_future().then(lambda fut: fut.value()[0])

    real = nn.parallel.DistributedDataParallel

    class Counted(real):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.register_comm_hook(None, counting_hook)

    nn.parallel.DistributedDataParallel = Counted
    try:
        train(config, run_dir=run_dir, data_root=root, progress=False)
    finally:
        nn.parallel.DistributedDataParallel = real
    return calls[0]


@pytest.mark.slow
def test_gradient_accumulation_all_reduces_once_per_optimizer_step(tmp_path):
    """With train.accumulate: 3 the gradients travel between the processes once per step, not once per
    micro-batch (the micro-batches' forwards too run under no_sync)."""
    from functools import partial

    from pixelwise.config import load_config

    from .conftest import write_dataset
    from .test_engine import toy_config

    root = write_dataset(tmp_path / "data", splits={"train": 12, "val": 2}).parent
    counts = {}
    for accumulate in (1, 3):
        config = load_config(toy_config(tmp_path, iters=4, eval_interval=100, accumulate=accumulate))
        run = partial(
            _count_gradient_all_reduces, root=str(root), config=config, run_dir=str(tmp_path / f"a{accumulate}")
        )
        counts[accumulate] = run_in_processes(run)
    assert counts[1][0] == counts[1][1] > 0
    assert counts[3] == counts[1]
