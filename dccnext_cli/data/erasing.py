"""Random erasing in two halves: a plan drawn with the sample, applied wherever the pixels are.

timm's RandomErasing draws its rectangles and fills them in one call, on the tensor it is given. Splitting the
two lets the rectangles be drawn in the data worker, inside the sample's seeded block (so a resumed run draws
the same ones), while the filling runs on the CPU (the CPU path) or on the GPU after the uint8 batch has been
copied there (the device path, data/device_batches.py). Both paths fill from a generator seeded per rectangle,
so they erase the same pixels with the same noise on the same device.

The rectangles are drawn with the same calls to Python's `random` as timm's RandomErasing makes (probability,
count, up to ten attempts of area and aspect), so the distribution is timm's.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import torch

__all__ = ["ErasePlanner", "Rectangle", "erase"]


@dataclass(frozen=True)
class Rectangle:
    """One erased block: rows top..top+height, columns left..left+width, noise from `seed`."""

    top: int
    left: int
    height: int
    width: int
    seed: int


@dataclass(frozen=True)
class ErasePlanner:
    """Draws the rectangles timm's RandomErasing(probability, mode, count) would erase in one image."""

    probability: float
    mode: str = "pixel"  # const: zeros; rand: one normal colour per block; pixel: normal noise per pixel
    min_area: float = 0.02
    max_area: float = 1 / 3
    min_aspect: float = 0.3
    count: int = 1

    def plan(self, height: int, width: int) -> tuple[Rectangle, ...]:
        if self.probability <= 0 or random.random() > self.probability:
            return ()
        log_ratio = (math.log(self.min_aspect), math.log(1 / self.min_aspect))
        area, found = height * width, []
        for _ in range(self.count):
            for _attempt in range(10):
                target_area = random.uniform(self.min_area, self.max_area) * area / self.count
                aspect = math.exp(random.uniform(*log_ratio))
                h = int(round(math.sqrt(target_area * aspect)))
                w = int(round(math.sqrt(target_area / aspect)))
                if w < width and h < height:
                    top, left = random.randint(0, height - h), random.randint(0, width - w)
                    found.append(Rectangle(top, left, h, w, random.getrandbits(62)))
                    break
        return tuple(found)


def erase(image: torch.Tensor, rectangles: tuple[Rectangle, ...], mode: str) -> torch.Tensor:
    """Fill `rectangles` of one normalised (C, H, W) image in place, on the image's device."""
    channels = image.shape[0]
    for rect in rectangles:
        if mode == "const":
            fill = torch.zeros((), dtype=image.dtype, device=image.device)
        else:
            shape = (channels, rect.height, rect.width) if mode == "pixel" else (channels, 1, 1)
            generator = torch.Generator(device=image.device).manual_seed(rect.seed)
            fill = torch.empty(shape, dtype=torch.float32, device=image.device).normal_(generator=generator)
        image[:, rect.top:rect.top + rect.height, rect.left:rect.left + rect.width] = fill
    return image
