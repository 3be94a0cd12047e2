"""COCO AP (bbox; segm for mask-rcnn) or mIoU/aAcc of a dense model or checkpoint on a data set."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn
from torch.utils.data import DataLoader, Dataset

from ..common.device import default_device
from ..common.progress import StepProgress
from .checkpoint import load_dense_model
from .data import SegAugment
from .tasks import DenseTask, get_dense_task

__all__ = ["evaluate_dense", "dense_loader"]


def dense_loader(dataset: Dataset, task: DenseTask, batch_size: int, shuffle: bool, workers: int,
                 seed: int) -> DataLoader:
    """Batches in the task's own collate; training drops the last partial batch."""
    gen = torch.Generator().manual_seed(seed)
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, num_workers=workers, collate_fn=task.collate,
                      drop_last=shuffle and len(dataset) >= batch_size, generator=gen,
                      persistent_workers=workers > 0 and shuffle)


@torch.no_grad()
def evaluate_dense(
        model: nn.Module | str | Path,
        data: str | Dataset,
        task: str | DenseTask | None = None,
        num_classes: int | None = None,
        batch_size: int = 1,
        device: str | torch.device | None = None,
        progress: bool = True,
        scale: tuple[int, int] = (2048, 512),
) -> dict[str, float]:
    """COCO AP (bbox; segm for mask-rcnn) or mIoU/aAcc of `model` (or a dense checkpoint path) on `data`.

    Detectors are called in eval mode on images in [0, 1] and must return torchvision's output dicts;
    segmentation models return logits at any resolution, which are upsampled to the label's size.
    """
    if isinstance(model, (str, Path)):
        model, meta = load_dense_model(model)
        task = task or meta.task
        num_classes = num_classes or meta.dense_num_classes
    if task is None:
        raise ValueError("evaluate_dense needs the task of an in-memory model")
    task = get_dense_task(task)
    dev = default_device(device)
    model = model.to(dev).eval()
    dataset = task.open_data(data, train=False, num_classes=num_classes, augment=SegAugment(scale=scale))
    loader = dense_loader(dataset, task, batch_size, False, 0, 0)
    evaluator = task.make_evaluator(num_classes, dataset)
    bar = StepProgress("batch", enabled=progress)
    bar.start(len(loader), title=f"evaluating {task.name}")
    try:
        for images, targets in loader:
            task.evaluate_batch(model, images, targets, evaluator, dev)
            bar.advance()
    finally:
        bar.stop()
    return evaluator.compute()
