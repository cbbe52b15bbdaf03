"""Which training samples each rank sees, resumable mid-epoch (no Ray)."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, Sampler


class ShardedEpochSampler(Sampler[int]):
    """Each rank's share of a seeded per-epoch permutation, resumable at a batch position.

    Unlike ``DistributedSampler`` it can start mid-epoch, which makes a restarted run see exactly
    the batches it would have seen without the interruption.
    """

    def __init__(self, size: int, rank: int, world_size: int, seed: int, batch_size: int):
        self.per_rank = size // world_size
        self.size, self.rank, self.world_size, self.seed, self.batch_size = size, rank, world_size, seed, batch_size
        self.epoch = 0
        self.start_batch = 0

    @property
    def batches_per_epoch(self) -> int:
        return self.per_rank // self.batch_size

    def __iter__(self):
        gen = torch.Generator().manual_seed(self.seed + self.epoch)
        perm = torch.randperm(self.size, generator=gen)[: self.per_rank * self.world_size]
        mine = perm[self.rank:: self.world_size]
        return iter(mine[self.start_batch * self.batch_size:].tolist())

    def __len__(self) -> int:
        return self.per_rank - self.start_batch * self.batch_size


class BatchStream:
    """Endless training batches; ``epoch``/``batch`` say where the next one comes from."""

    def __init__(self, loader: DataLoader, sampler: ShardedEpochSampler):
        self.loader, self.sampler = loader, sampler
        self.epoch, self.batch = 0, 0

    def __iter__(self):
        while True:
            self.sampler.epoch, self.sampler.start_batch = self.epoch, self.batch
            for batch in self.loader:
                self.batch += 1
                yield batch
            self.epoch, self.batch = self.epoch + 1, 0
