"""COCO AP (bbox; segm for mask-rcnn) or mIoU/aAcc of a dense model or checkpoint on a data set.

Under several processes (`accelerator`), each scores a contiguous block of the images and the metric states
are merged before the metric is computed once (see metrics.py), so the numbers equal a single-process run's.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn
from torch.utils.data import DataLoader, Dataset, Subset

from ..common.device import default_device
from ..common.progress import StepProgress
from ..models.precision import DEFAULT_PRECISION, precision_dtype
from ..training.shards import all_gather_objects, from_main, shard_range
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
        accelerator=None,
        *,
        workers: int = 0,
        limit: int | None = None,
        split: str | None = None,
        precision: str = DEFAULT_PRECISION,
) -> dict[str, float]:
    """COCO AP (bbox; segm for mask-rcnn) or mIoU/aAcc of `model` (or a dense checkpoint path) on `data`.

    Detectors are called in eval mode on images in [0, 1] and must return torchvision's output dicts;
    segmentation models return logits at any resolution, which are upsampled to the label's size.
    `accelerator`: every process of a launch calls this and scores its block; all of them get the metrics.
    `limit`: the first N images only; `split`: train or validation (default); `precision` bf16: the forward
    passes under bfloat16 autocast (torchvision's box operations stay float32). The result also counts the
    `images` scored.
    """
    if isinstance(model, (str, Path)):
        model, meta = load_dense_model(model)
        task = task or meta.task
        num_classes = num_classes or meta.dense_num_classes
    if task is None:
        raise ValueError("evaluate_dense needs the task of an in-memory model")
    task = get_dense_task(task)
    rank, world = (accelerator.process_index, accelerator.num_processes) if accelerator else (0, 1)
    dev = accelerator.device if accelerator else default_device(device)
    model = model.to(dev).eval()
    dataset = task.open_data(data, train=False, num_classes=num_classes, augment=SegAugment(scale=scale),
                             split=split)
    count = len(dataset) if limit is None else min(limit, len(dataset))
    share = shard_range(count, rank, world)
    loader = dense_loader(Subset(dataset, share), task, batch_size, False, workers, 0)
    evaluator = task.make_evaluator(num_classes, dataset)
    bar = StepProgress("batch", enabled=progress and rank == 0)
    title = f"evaluating {task.name}" + (f" (1/{world} of the images each)" if world > 1 else "")
    bar.start(len(loader), title=title if progress and rank == 0 else "")
    dtype = precision_dtype(precision)
    try:
        for images, targets in loader:
            with torch.autocast(dev.type, dtype=dtype, enabled=dtype != torch.float32):
                task.evaluate_batch(model, images, targets, evaluator, dev)
            bar.advance()
    finally:
        bar.stop()
    if world == 1:
        return {**evaluator.compute(), "images": count}
    per_process = all_gather_objects(accelerator, evaluator.states())
    metrics = None
    if rank == 0:
        evaluator.merge(per_process)
        metrics = {**evaluator.compute(), "images": count}
    return from_main(accelerator, metrics)
