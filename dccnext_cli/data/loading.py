"""From a split to batches: decoding (corrupt images skipped and counted), timm transforms, sharding.

Map-style splits (the embedded set, image folders, parquet read in full) are made exactly reproducible: the
order of an epoch is a permutation drawn from (seed, epoch), each process takes its own slice of it, and every
sample's augmentation is seeded from (seed, epoch, index). So a run resumed after a crash sees the very same
batches, whichever worker processes decode them. Streams shuffle with a buffer, are split between processes with
`split_dataset_by_node`, and restart at their next epoch when they run dry, keeping all processes in step.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import random
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, IterableDataset, Sampler

from ..errors import ImageError
from .device_batches import CpuSide, DeviceFinish, SampleSide, collate_planned
from .erasing import ErasePlanner
from .images import decode_image, upright
from .labels import to_label
from .sources import ImageSplit

__all__ = ["decode_record", "seeded", "EpochBatchSampler", "build_loader", "Batches", "train_transform",
           "device_finish"]

log = logging.getLogger("dccnext.data")


def decode_record(record: dict, split: ImageSplit) -> tuple[Image.Image | None, int]:
    """(RGB image, label); the image is None when it cannot be decoded (the caller skips and counts it)."""
    value = record[split.image_column]
    label = to_label(record[split.label_column], split.label_column, split.where, split.label_names)
    if isinstance(value, Image.Image):
        return upright(value).convert("RGB"), label
    if isinstance(value, dict):
        name = value.get("path") or "an image"
        value = value.get("bytes") or value.get("path")
    else:
        name = "an image"
    try:
        return decode_image(value, str(name)), label
    except ImageError as e:
        log.warning("skipping %s", e)
        return None, label


@contextmanager
def seeded(*key: int):
    """Run a block with python, numpy and torch random state derived from `key`, then restore the caller's."""
    seed = int.from_bytes(hashlib.blake2b(repr(key).encode(), digest_size=8).digest(), "little") >> 1
    py_state, np_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        random.seed(seed)
        np.random.seed(seed % 2**32)
        torch.manual_seed(seed)
        try:
            yield
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)


def train_transform(recipe, device_side: bool = False) -> CpuSide | SampleSide:
    """The recipe's augmentation: whole on the CPU, or up to uint8 pixels + an erasing plan (device_side, for a
    GPU: data/device_batches.py). Erasing is drawn as timm draws it, in two halves (data/erasing.py)."""
    from timm.data import create_transform

    pil = create_transform(
        input_size=(3, *recipe.input_size), is_training=True, scale=recipe.scale, ratio=recipe.ratio,
        hflip=recipe.hflip, color_jitter=recipe.color_jitter, auto_augment=recipe.auto_augment,
        interpolation=recipe.interpolation, mean=recipe.mean, std=recipe.std, re_prob=0.0,
        use_prefetcher=device_side)
    planner = ErasePlanner(recipe.re_prob, recipe.re_mode)
    return SampleSide(pil, planner) if device_side else CpuSide(pil, planner)


def device_finish(recipe) -> DeviceFinish:
    """What the device path does on the device to the batches of `train_transform(recipe, device_side=True)`."""
    return DeviceFinish(tuple(recipe.mean), tuple(recipe.std), recipe.re_mode)


class MapImages(Dataset):
    """Decode + transform a map-style split; with `seed` set, each sample's randomness depends only on
    (seed, epoch, index)."""

    def __init__(self, split: ImageSplit, transform: Callable, seed: int | None = None):
        self.split, self.transform, self.seed, self.epoch = split, transform, seed, 0

    def __len__(self) -> int:
        return len(self.split.dataset)

    def __getitem__(self, key: int | tuple[int, int]):
        # EpochBatchSampler hands (epoch, index): persistent workers keep their own copy of this object
        epoch, index = key if isinstance(key, tuple) else (self.epoch, key)
        image, label = decode_record(self.split.dataset[int(index)], self.split)
        if image is None:
            return None
        if self.seed is None:
            return self.transform(image), label
        with seeded(self.seed, epoch, int(index)):
            return self.transform(image), label


class StreamImages(IterableDataset):
    """Decode + transform a streamed split."""

    def __init__(self, split: ImageSplit, transform: Callable):
        self.split, self.transform, self.stream = split, transform, split.dataset

    def __iter__(self):
        for record in self.stream:
            image, label = decode_record(record, self.split)
            yield None if image is None else (self.transform(image), label)


def collate_skipping(items: list) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Stack the decodable samples; the third element counts the ones skipped."""
    good = [item for item in items if item is not None]
    if not good:
        return torch.empty(0), torch.empty(0, dtype=torch.long), len(items)
    return (torch.stack([x for x, _ in good]), torch.tensor([y for _, y in good], dtype=torch.long),
            len(items) - len(good))


class EpochBatchSampler(Sampler):
    """Batches of indices for one process: a (seed, epoch) permutation (or 0..n-1), every `world`-th index
    from `rank`, cut so that all processes get the same number of batches when `drop_last`."""

    def __init__(self, n: int, batch_size: int, *, rank: int = 0, world: int = 1, shuffle: bool = True,
                 seed: int = 0, drop_last: bool = True):
        self.n, self.batch_size, self.rank, self.world = n, batch_size, rank, world
        self.shuffle, self.seed, self.drop_last = shuffle, seed, drop_last
        self.epoch, self.skip = 0, 0

    def set_epoch(self, epoch: int, skip_batches: int = 0) -> None:
        self.epoch, self.skip = epoch, skip_batches

    def __len__(self) -> int:
        if self.drop_last:
            return self.n // (self.batch_size * self.world)
        per_rank = len(range(self.rank, self.n, self.world))
        return -(-per_rank // self.batch_size)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        """Batches of (epoch, index): the epoch travels with each index to the workers."""
        if self.shuffle:
            order = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed * 100003 + self.epoch))
        else:
            order = torch.arange(self.n)
        mine = order[self.rank::self.world].tolist()
        for b in range(self.skip, len(self)):
            yield [(self.epoch, i) for i in mine[b * self.batch_size:(b + 1) * self.batch_size]]


@dataclass
class Batches:
    """A DataLoader plus what the loop needs to drive it epoch by epoch."""

    loader: DataLoader
    steps_per_epoch: int | None  # micro-batches per epoch for this process; None: an evaluation stream
    sampler: EpochBatchSampler | None = None
    dataset: Dataset | None = None
    train: bool = True
    finish: DeviceFinish | None = None  # the device path's last steps, run on the device by `to_device`

    def to_device(self, images, device: torch.device) -> torch.Tensor:
        """A batch's images on `device`, ready for the model (the device path normalises and erases there)."""
        if self.finish is not None:
            return self.finish(images, device)
        return images.to(device, non_blocking=True)

    def epoch(self, epoch: int, skip_batches: int = 0) -> Iterator:
        """The micro-batches of one epoch, after skipping the first `skip_batches` (a resumed run)."""
        if self.sampler is not None:
            self.sampler.set_epoch(epoch, skip_batches)
            self.dataset.epoch = epoch
            yield from self.loader
            return
        if not self.train:  # evaluation reads a stream once, to its end
            yield from self.loader
            return
        images, produced, round_ = self.loader.dataset, skip_batches, 0
        base = images.split.dataset
        while produced < self.steps_per_epoch:
            base.set_epoch(epoch * 1000 + round_)  # a stream that runs dry restarts, reshuffled
            # a resumed run restarts the epoch's stream past the samples already seen (approximate: see README)
            images.stream = base.skip(skip_batches * self.loader.batch_size) if skip_batches and not round_ else base
            got = 0
            for batch in self.loader:
                yield batch
                got += 1
                produced += 1
                if produced >= self.steps_per_epoch:
                    break
            round_ += 1
            if got == 0:
                break
        images.stream = base


def build_loader(split: ImageSplit, transform: Callable, batch_size: int, *, train: bool, seed: int = 0,
                 rank: int = 0, world: int = 1, workers: int = 0, shuffle_buffer: int = 10000,
                 samples_per_epoch: int | None = None, finish: DeviceFinish | None = None) -> Batches:
    """Training (shuffled, sharded, equal batch counts) or evaluation (in order, sharded, nothing dropped).

    With `finish` (and `train_transform(..., device_side=True)`), batches are pinned uint8 + erasing plans that
    `Batches.to_device` finishes on the device."""
    device_side = isinstance(transform, SampleSide)
    if device_side != (finish is not None):
        raise ValueError("a device-side transform and `finish` go together")
    common = dict(collate_fn=collate_planned if device_side else collate_skipping, num_workers=workers,
                  pin_memory=device_side and torch.cuda.is_available(), generator=torch.Generator().manual_seed(seed))
    if not split.streaming:
        dataset = MapImages(split, transform, seed if train else None)
        sampler = EpochBatchSampler(len(dataset), batch_size, rank=rank, world=world, shuffle=train, seed=seed,
                                    drop_last=train)
        # workers live across epochs: each index carries its epoch (EpochBatchSampler), so none reads a stale one
        loader = DataLoader(dataset, batch_sampler=sampler, persistent_workers=workers > 0, **common)
        return Batches(loader, len(sampler), sampler, dataset, train, finish)
    from datasets.distributed import split_dataset_by_node

    stream = split.dataset
    if train:
        stream = stream.shuffle(seed=seed, buffer_size=shuffle_buffer)
    if world > 1:
        stream = split_dataset_by_node(stream, rank=rank, world_size=world)
    split = dataclasses.replace(split, dataset=stream, streaming=True)
    total = samples_per_epoch or split.num_samples
    if total is None:  # evaluation reads a stream to its end and needs no count
        if train:
            raise ValueError("a training stream needs its length (samples_per_epoch)")
        steps = None
    else:
        steps = max(total // (batch_size * world) if train else -(-total // (batch_size * world)), 1)
    # a stream is re-pointed between epochs (Batches.epoch), so its workers are made anew each time
    return Batches(DataLoader(StreamImages(split, transform), batch_size=batch_size, drop_last=train,
                              persistent_workers=False, **common), steps, train=train, finish=finish)
