"""The input pipeline that feeds a GPU: uint8 batches from the workers, normalised and erased on the device.

On the CPU path every worker turns its image into a normalised float32 tensor and erases it. A GPU training
step consumes images faster than a few cores can do that, and a float32 batch is four times the bytes of the
uint8 one to copy. So on the device path (timm's PrefetchLoader idea) the workers stop at uint8 pixels plus
the erasing plan drawn with the sample (data/erasing.py), the loader pins the batch, and `to_device` copies it
without blocking, then normalises and erases there. Same seeds, same rectangles, same noise generator: on the
same device both paths give the same batch up to float rounding (tests/data/test_device_batches.py).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from .erasing import ErasePlanner, Rectangle, erase

__all__ = ["PlannedImage", "PlannedBatch", "DeviceFinish", "SampleSide", "CpuSide", "collate_planned"]


@dataclass
class PlannedImage:
    """One sample as a worker leaves it on the device path: uint8 (C, H, W) pixels and its erasing plan."""

    pixels: torch.Tensor
    rectangles: tuple[Rectangle, ...]


@dataclass
class PlannedBatch:
    """A stacked uint8 batch and one plan per image; the DataLoader pins it through `pin_memory`."""

    pixels: torch.Tensor
    plans: list[tuple[Rectangle, ...]]

    def pin_memory(self) -> PlannedBatch:
        return PlannedBatch(self.pixels.pin_memory(), self.plans)

    def __len__(self) -> int:
        return len(self.plans)

    def __getitem__(self, index: slice) -> PlannedBatch:
        return PlannedBatch(self.pixels[index], self.plans[index])


@dataclass(frozen=True)
class DeviceFinish:
    """What the device does to a PlannedBatch: normalise with the recipe's mean and std, then erase."""

    mean: Sequence[float]
    std: Sequence[float]
    mode: str

    def __call__(self, batch: PlannedBatch, device: torch.device) -> torch.Tensor:
        pixels = batch.pixels.to(device, non_blocking=True)
        mean = torch.tensor(self.mean, device=device).mul_(255).view(1, -1, 1, 1)
        std = torch.tensor(self.std, device=device).mul_(255).view(1, -1, 1, 1)
        images = pixels.float().sub_(mean).div_(std)
        for image, rectangles in zip(images, batch.plans, strict=True):
            erase(image, rectangles, self.mode)
        return images


class SampleSide:
    """The worker's half on the device path: timm's augmentation up to uint8 pixels, then the erasing plan."""

    def __init__(self, pil_to_uint8: Callable, planner: ErasePlanner):
        self.pil_to_uint8, self.planner = pil_to_uint8, planner

    def __call__(self, image) -> PlannedImage:
        pixels = self.pil_to_uint8(image)
        return PlannedImage(pixels, self.planner.plan(*pixels.shape[-2:]))


class CpuSide:
    """The whole augmentation on the CPU: timm's transform to a normalised tensor, then the same erasing."""

    def __init__(self, pil_to_tensor: Callable, planner: ErasePlanner):
        self.pil_to_tensor, self.planner = pil_to_tensor, planner

    def __call__(self, image) -> torch.Tensor:
        tensor = self.pil_to_tensor(image)
        return erase(tensor, self.planner.plan(*tensor.shape[-2:]), self.planner.mode)


def collate_planned(items: list) -> tuple[PlannedBatch, torch.Tensor, int]:
    """Stack the decodable samples of the device path; the third element counts the ones skipped."""
    good = [item for item in items if item is not None]
    if not good:
        return PlannedBatch(torch.empty(0, dtype=torch.uint8), []), torch.empty(0, dtype=torch.long), len(items)
    pixels = torch.stack([sample.pixels for sample, _ in good])
    labels = torch.tensor([label for _, label in good], dtype=torch.long)
    return PlannedBatch(pixels, [sample.rectangles for sample, _ in good]), labels, len(items) - len(good)
