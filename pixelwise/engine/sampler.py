"""The training sample order: reproducible from the seed alone, so that resuming and data parallelism
see exactly what one uninterrupted process sees."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Sampler


class EpochSampler(Sampler):
    """Infinite stream of ``(index, seed)`` pairs, epoch after epoch, from iteration ``start_iter``.

    Each epoch is a permutation drawn from ``(seed, epoch)`` and cut into global batches of
    ``batch_size * world_size`` samples (the remainder is dropped); process ``rank`` takes its
    ``batch_size`` slice of each. The sample for a given iteration and its augmentation seed depend
    only on the seed, so resuming at iteration k replays exactly what an uninterrupted run would
    have seen, for any number of loader workers, and N processes see what one process with the
    same global batch sees.
    """

    def __init__(
        self, size: int, batch_size: int, seed: int, start_iter: int = 0, rank: int = 0, world_size: int = 1
    ) -> None:
        self.size, self.batch_size, self.seed, self.start_iter = size, batch_size, seed, start_iter
        self.rank, self.global_batch = rank, batch_size * world_size
        self.batches_per_epoch = size // self.global_batch

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch, batch = divmod(self.start_iter, self.batches_per_epoch)
        while True:
            key = (self.seed * 1_000_003 + epoch) % (1 << 63)  # a Generator's seed is 64-bit (train.seed up to 2**63)
            order = torch.randperm(self.size, generator=torch.Generator().manual_seed(key))
            for b in range(batch, self.batches_per_epoch):
                first = b * self.global_batch + self.rank * self.batch_size
                for pos in range(first, first + self.batch_size):
                    # below 2**63, which torch.manual_seed takes (a large train.seed overflowed); the same
                    # values as before for every seed that worked
                    yield int(order[pos]), (key * 100_003 + pos) % (1 << 63)
            epoch, batch = epoch + 1, 0
