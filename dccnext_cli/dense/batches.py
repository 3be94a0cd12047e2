"""Which images each process trains on, so that a recipe's batch means the same on 1 process or 64.

Every epoch is one seeded permutation of the data set, cut into global batches of the recipe's `batch_size`.
Global batch i is split into `world x grad_accum` micro-batches: on accumulation step a, process r takes slice
`a * world + r`. A run on 1 process with 4 accumulation steps and one on 4 processes with none see the same
images in the same optimiser step. Random augmentation is seeded per (epoch, image), so an image is augmented
the same way whichever process (or data-loader worker) loads it, and a resumed run loads what the
uninterrupted run would have.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from ..errors import DataError

__all__ = ["SeededItems", "BatchPlan", "epoch_order"]


def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    """The data set's order in `epoch`: a permutation that depends on (seed, epoch) only."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=generator).tolist()


class SeededItems(Dataset):
    """`dataset[index]` under Python's `random` seeded by (seed, epoch, index); the caller's state is kept."""

    def __init__(self, dataset: Dataset, seed: int):
        self.dataset, self.seed = dataset, seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> Any:
        epoch, index = key
        saved = random.getstate()
        random.seed(f"{self.seed}/{epoch}/{index}")
        try:
            return self.dataset[index]
        finally:
            random.setstate(saved)


@dataclass(frozen=True)
class BatchPlan:
    """One process's share of every global batch: `micro` images per micro-batch, `grad_accum` per step."""

    num_images: int
    batch_size: int  # global, per optimiser step
    world: int
    rank: int
    grad_accum: int
    seed: int

    def __post_init__(self) -> None:
        if self.num_images < self.batch_size:
            raise DataError(f"the training data holds {self.num_images} images, fewer than one batch of "
                            f"{self.batch_size}; lower batch_size (--batch-size)")

    @property
    def micro(self) -> int:
        return self.batch_size // (self.world * self.grad_accum)

    @property
    def steps_per_epoch(self) -> int:
        return self.num_images // self.batch_size

    @property
    def micro_per_epoch(self) -> int:
        """Micro-batches each process takes per epoch (a multiple of grad_accum)."""
        return self.steps_per_epoch * self.grad_accum

    def micro_batches(self, epoch: int, skip: int = 0) -> list[list[tuple[int, int]]]:
        """This process's micro-batches of `epoch` after the first `skip`, as (epoch, index) keys."""
        order, out = epoch_order(self.num_images, self.seed, epoch), []
        for m in range(skip, self.micro_per_epoch):
            step, a = divmod(m, self.grad_accum)
            start = step * self.batch_size + (a * self.world + self.rank) * self.micro
            out.append([(epoch, i) for i in order[start:start + self.micro]])
        return out

    def batches(self, items: SeededItems, collate, workers: int, epoch: int, skip: int) -> Iterator[Any]:
        """The collated micro-batches of `epoch` from `skip` on (workers load them in order)."""
        plan = self.micro_batches(epoch, skip)
        if not plan:
            return iter(())
        return iter(DataLoader(items, batch_sampler=plan, num_workers=workers, collate_fn=collate))
