"""The device path of the input pipeline (uint8 batches, normalised and erased on the device) against the CPU path.

Run here with the CPU as the "device": the same seeds must give the same batch up to float rounding, with the
same erased rectangles filled with the same noise.
"""

from __future__ import annotations

import torch

from dccnext_cli.classification.recipe import TrainRecipe
from dccnext_cli.data.device_batches import PlannedBatch
from dccnext_cli.data.loading import build_loader, device_finish, train_transform
from dccnext_cli.data.sources import open_split, parse_data


def _first_batches(imagefolder, recipe: TrainRecipe, workers: int = 0):
    split = open_split(parse_data(f"imagefolder:{imagefolder}"), "train")
    cpu = build_loader(split, train_transform(recipe), 6, train=True, seed=5, workers=workers)
    dev = build_loader(split, train_transform(recipe, device_side=True), 6, train=True, seed=5, workers=workers,
                       finish=device_finish(recipe))
    return cpu, dev


def test_device_path_equals_cpu_path_with_the_same_erasing(imagefolder):
    recipe = TrainRecipe(input_size=(48, 48), re_prob=1.0, re_mode="pixel")  # every image erased
    cpu, dev = _first_batches(imagefolder, recipe)
    for epoch in (0, 1):
        (cpu_images, cpu_labels, _), (planned, dev_labels, _) = next(cpu.epoch(epoch)), next(dev.epoch(epoch))
        assert isinstance(planned, PlannedBatch) and planned.pixels.dtype == torch.uint8
        assert all(len(plan) == 1 for plan in planned.plans)  # the rectangles travel with the batch
        dev_images = dev.to_device(planned, torch.device("cpu"))
        assert torch.equal(cpu_labels, dev_labels)
        assert dev_images.dtype == torch.float32 and dev_images.shape == cpu_images.shape
        torch.testing.assert_close(dev_images, cpu_images, rtol=0, atol=2e-6)
        # the erased blocks hold the same noise, which is not what the un-erased image holds there
        rect = planned.plans[0][0]
        block = (slice(None), slice(rect.top, rect.top + rect.height), slice(rect.left, rect.left + rect.width))
        assert torch.equal(dev_images[0][block], cpu_images[0][block])
        unerased = (planned.pixels[0].float() / 255 - torch.tensor(recipe.mean).view(3, 1, 1)) / torch.tensor(
            recipe.std).view(3, 1, 1)
        assert not torch.allclose(unerased[block], cpu_images[0][block])


def test_device_path_with_workers_and_a_resumed_epoch(imagefolder):
    """Persistent workers (the device path's default with workers) still see each batch's epoch."""
    recipe = TrainRecipe(input_size=(32, 32), re_prob=0.5, re_mode="rand")
    cpu, dev = _first_batches(imagefolder, recipe, workers=2)
    for epoch in (0, 1):
        cpu_batches = [images for images, _, _ in cpu.epoch(epoch)]
        dev_batches = [dev.to_device(planned, torch.device("cpu")) for planned, _, _ in dev.epoch(epoch, 1)]
        assert len(dev_batches) == len(cpu_batches) - 1
        for got, want in zip(dev_batches, cpu_batches[1:], strict=True):
            torch.testing.assert_close(got, want, rtol=0, atol=2e-6)
    assert cpu.loader.persistent_workers and dev.loader.persistent_workers
