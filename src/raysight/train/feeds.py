"""Per-worker batch iterators. Each yields (images, labels) as (B, C, H, W) uint8 and (B,) int64
CPU tensors; normalisation and augmentation happen later, on the training device.

Two sources share that contract: in-memory arrays (digits, MNIST, CIFAR-10), which the driver
puts in Ray's object store once so every worker maps them without a copy, and Ray Data
streams (image folders), which decode lazily and may be larger than memory.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Protocol

import numpy as np
import torch

Batch = tuple[torch.Tensor, torch.Tensor]


class Feed(Protocol):
    """A split as seen by one rank."""

    def steps_per_epoch(self) -> int:
        """Batches this rank yields per epoch (equal on every rank for training feeds)."""
        ...

    def epoch(self, epoch: int) -> Iterator[Batch]:
        """The batches of one epoch; training feeds reshuffle by epoch."""
        ...


class ArrayFeed:
    """Shards an in-memory split across ranks.

    Training: every rank draws the same seeded permutation for the epoch and takes a strided
    slice of it, truncated so all ranks run the same number of full batches (DDP needs equal
    step counts). Evaluation: a strided shard without shuffling, last batch partial, so the
    ranks together cover every sample exactly once.
    """

    def __init__(
        self,
        images: np.ndarray,
        labels: np.ndarray,
        *,
        rank: int,
        world: int,
        batch_size: int,
        train: bool,
        seed: int = 0,
    ) -> None:
        self._images = images  # (N, C, H, W) uint8, read-only when it comes from the store
        self._labels = labels  # (N,) int64
        self._rank, self._world = rank, world
        self._batch = batch_size
        self._train = train
        self._seed = seed

    def steps_per_epoch(self) -> int:
        if self._train:
            return (len(self._labels) // self._world) // self._batch
        shard = len(range(self._rank, len(self._labels), self._world))
        return -(-shard // self._batch)

    def epoch(self, epoch: int) -> Iterator[Batch]:
        n = len(self._labels)
        if self._train:
            order = np.random.default_rng((self._seed, epoch)).permutation(n)
            per_rank = self.steps_per_epoch() * self._batch
            mine = order[self._rank :: self._world][:per_rank]
        else:
            mine = np.arange(self._rank, n, self._world)
        for start in range(0, len(mine), self._batch):
            index = np.sort(mine[start : start + self._batch])  # sorted reads are cache-friendlier
            # Fancy indexing copies, so the tensors are writable even over read-only memory.
            yield torch.from_numpy(self._images[index]), torch.from_numpy(self._labels[index])


class RayDataFeed:
    """A rank's shard of a Ray Data stream (Ray Train splits it into equal row counts)."""

    def __init__(
        self, shard: Any, *, batch_size: int, train: bool, steps: int, seed: int = 0
    ) -> None:
        self._shard = shard  # ray.data.DataIterator
        self._batch = batch_size
        self._train = train
        self._steps = steps
        self._seed = seed

    def steps_per_epoch(self) -> int:
        return self._steps

    def epoch(self, epoch: int) -> Iterator[Batch]:
        batches = self._shard.iter_torch_batches(
            batch_size=self._batch,
            dtypes={"image": torch.uint8, "label": torch.int64},
            device="cpu",
            drop_last=self._train,
            local_shuffle_buffer_size=4 * self._batch if self._train else None,
            local_shuffle_seed=self._seed + epoch if self._train else None,
        )
        for step, batch in enumerate(batches):
            if self._train and step >= self._steps:
                return  # keep every rank at the same step count
            yield batch["image"], batch["label"]
