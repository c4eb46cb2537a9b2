"""Data-parallel set-up under ``torchrun``: this process's rank, its device, and reductions over processes."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

log = logging.getLogger(__name__)


@dataclass
class Distributed:
    """This process's place in a ``torchrun`` job (rank 0 of 1 when not distributed)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    enabled: bool = False  # in a process group (under torchrun, also with one process)

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup_distributed(device: torch.device) -> tuple[Distributed, torch.device]:
    """Join the process group that ``torchrun`` describes in the environment (gloo on CPU, NCCL on
    CUDA); each process then uses GPU ``LOCAL_RANK``. Without ``torchrun``: one process, no group.
    (``torchrun --nproc_per_node=1`` joins a group of one: the DDP/SyncBatchNorm path on one GPU.)"""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return Distributed(), device
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    ddp = Distributed(dist.get_rank(), dist.get_world_size(), local, enabled=True)
    if ddp.is_main:
        log.info("distributed: %d process(es), %s on %s", ddp.world_size, dist.get_backend(), device.type)
    return ddp, device


def agree_over_processes(
    maxima: list[float], means: list[float], ddp: Distributed, device: torch.device
) -> tuple[list[float], list[float]]:
    """What every process must agree on before acting, in one collective: each of ``maxima`` at its largest over
    the processes (the training clock, a caught signal, a non-finite loss), each of ``means`` averaged over them
    (the step's loss, so that every process, and the checkpoint any one of them writes, holds the same)."""
    if ddp.world_size == 1:
        return list(maxima), list(means)
    t = torch.tensor([*maxima, *means], dtype=torch.float64, device=device)
    gathered = [torch.empty_like(t) for _ in range(ddp.world_size)]
    dist.all_gather(gathered, t)
    g = torch.stack(gathered)
    return g[:, : len(maxima)].amax(0).tolist(), g[:, len(maxima) :].mean(0).tolist()


def wait_for_all(ddp: Distributed) -> None:
    """Every process waits here until all have come (``dist.barrier``); nothing without a group of several. Before
    a stopped run's processes exit: torchrun ends the whole job when the first exits with an error (a stop's 130),
    rank 0 with it, which may still be writing ``last.pt``."""
    if ddp.enabled and ddp.world_size > 1:
        dist.barrier()


def seed_step(seed: int, iteration: int, ddp: Distributed) -> None:
    """Seed this process's random draws in the model (dropout) for training step ``iteration`` from ``(seed,
    iteration, rank)``. Every process starts from the same seed (the replicas' weights must be equal), and with
    equal shapes their dropout would then draw the same masks on every process's slice of the batch. Derived
    from the step, not carried over, so a resumed run draws them again without each process's generator state.
    One process: nothing (its generator runs on from the seed, as without ``torchrun``)."""
    if ddp.world_size == 1:
        return
    key = np.random.SeedSequence([seed & (2**64 - 1), iteration, ddp.rank]).generate_state(1, np.uint64)[0]
    torch.manual_seed(int(key) >> 1)  # below 2**63


def broadcast_buffers(module: nn.Module, ddp: Distributed) -> None:
    """Give every process rank 0's buffers (BatchNorm's running statistics). DDP broadcasts them at the start of
    each forward, so after the last training step each process holds one update from its own batch: evaluated
    as they are, the processes would score slightly different models, none of them the one rank 0 saves."""
    if ddp.world_size == 1:
        return
    for buffer in module.buffers():
        dist.broadcast(buffer, src=0)
