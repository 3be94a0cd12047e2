"""The input pipeline alone: images per second that decoding and the recipe's augmentation deliver.

Set beside the training step on synthetic input, it says which of the two limits training on this machine.
On a GPU the device path is timed (uint8 batches pinned and copied, normalised and erased on the device).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import torch

from ..classification.recipe import default_recipe_name, load_recipe
from ..data.loading import build_loader, device_finish, train_transform
from ..data.sources import open_split, parse_data

__all__ = ["PipelineResult", "time_pipeline", "recipe_for"]


@dataclass
class PipelineResult:
    data: str
    recipe: str
    resolution: tuple[int, int]
    batch_size: int
    workers: int
    batches: int
    samples_per_sec: float
    device_side: bool

    def to_dict(self) -> dict:
        return {**asdict(self), "resolution": list(self.resolution)}


def recipe_name_for(data: str) -> str:
    """The embedded set trains with the quickstart recipe (`dccnext train`), any other source with ImageNet's."""
    return default_recipe_name(None if data.startswith("builtin:") else data, None)


def recipe_for(data: str, resolution: tuple[int, int] | None = None):
    """The recipe `dccnext train` would use for DATA, at `resolution` when given."""
    overrides = {"data": data, **({"input_size": list(resolution)} if resolution else {})}
    return load_recipe(recipe_name_for(data), overrides)


def time_pipeline(data: str, batch_size: int, workers: int, device: torch.device, *, batches: int = 20,
                  resolution: tuple[int, int] | None = None) -> PipelineResult:
    """img/s over `batches` batches after the first (workers starting), with the recipe `train` would use."""
    recipe, name = recipe_for(data, resolution), recipe_name_for(data)
    split = open_split(parse_data(recipe.data), recipe.train_split, streaming=recipe.streaming,
                       image_column=recipe.image_column, label_column=recipe.label_column)
    device_side = device.type == "cuda"
    loader = build_loader(split, train_transform(recipe, device_side), batch_size, train=True, seed=recipe.seed,
                          workers=workers, samples_per_epoch=split.num_samples or recipe.train_samples,
                          finish=device_finish(recipe) if device_side else None)
    epoch, seen, timed, start = 0, 0, 0, None
    while timed < batches:
        got_any = False
        for images, labels, _ in loader.epoch(epoch):
            images = loader.to_device(images, device)
            got_any = True
            if start is None:  # the first batch pays for starting the workers
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                start = time.perf_counter()
                continue
            seen, timed = seen + len(labels), timed + 1
            if timed >= batches:
                break
        if not got_any:
            break
        epoch += 1
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elapsed = time.perf_counter() - start if start is not None else float("nan")
    return PipelineResult(data, name, tuple(recipe.input_size), batch_size, workers, timed,
                          seen / elapsed if timed else 0.0, device_side)
