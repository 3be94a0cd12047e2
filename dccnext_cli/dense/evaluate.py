"""COCO AP (bbox; segm for mask-rcnn) or mIoU/aAcc of a dense model or checkpoint on a data set.

Under several processes (`accelerator`), process r scores images r, r + W, r + 2W, ... (training/shards.py, the
rule of every task) and the metric states are merged back in the data set's order before the metric is computed
once (see metrics.py), so the numbers equal a single-process run's.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from torch.utils.data import DataLoader, Dataset, Subset

from ..common.device import default_device
from ..common.progress import StepProgress
from ..common.threads import fit_threads
from ..models.precision import DEFAULT_PRECISION, precision_dtype
from ..training.shards import all_gather_objects, from_main
from .checkpoint import DenseMeta, load_dense_model
from .data import SegAugment
from .tasks import DenseTask, get_dense_task

__all__ = ["evaluate_dense", "score_dense", "DenseScore", "dense_loader"]


def dense_loader(dataset: Dataset, task: DenseTask, batch_size: int, shuffle: bool, workers: int,
                 seed: int) -> DataLoader:
    """Batches in the task's own collate; training drops the last partial batch."""
    gen = torch.Generator().manual_seed(seed)
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, num_workers=workers, collate_fn=task.collate,
                      drop_last=shuffle and len(dataset) >= batch_size, generator=gen,
                      persistent_workers=workers > 0 and shuffle)


@dataclass
class DenseScore:
    """What an evaluation measured: the metrics, and how it ran (what `eval --json` reports besides)."""

    metrics: dict[str, float]
    images: int  # images scored, all processes together
    batches: int  # forward batches, all processes together
    dtype: str | None  # the dtype the first convolution computed in (None: a model without one)


def evaluate_dense(model: nn.Module | str | Path, data: str | Dataset, task: str | DenseTask | None = None,
                   num_classes: int | None = None, **options: Any) -> dict[str, float]:
    """COCO AP (bbox; segm for mask-rcnn) or mIoU/aAcc of `model` (or a dense checkpoint path) on `data`;
    the options are `score_dense`'s."""
    return score_dense(model, data, task, num_classes, **options).metrics


@torch.no_grad()
def score_dense(
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
) -> DenseScore:
    """Score `model` (or a dense checkpoint path) on `data`, in batches of `batch_size`.

    Detectors are called in eval mode on images in [0, 1] and must return torchvision's output dicts;
    segmentation models return logits at any resolution, which are upsampled to the label's size.
    `accelerator`: every process of a launch calls this and scores its block; all of them get the metrics.
    `limit`: the first N images only; `split`: train or validation (default); `precision` bf16: the forward
    passes under bfloat16 autocast (torchvision's box operations stay float32).
    """
    if isinstance(model, (str, Path)):
        path = model
        model, meta = load_dense_model(path)
        task = task or meta.task
        num_classes = num_classes or DenseMeta.of(meta, path).num_classes
    if task is None:
        raise ValueError("evaluate_dense needs the task of an in-memory model")
    task = get_dense_task(task)
    rank, world = (accelerator.process_index, accelerator.num_processes) if accelerator else (0, 1)
    dev = accelerator.device if accelerator else default_device(device)
    model = model.to(dev).eval()
    dataset = task.open_data(data, train=False, num_classes=num_classes, augment=SegAugment(scale=scale),
                             split=split)
    count = len(dataset) if limit is None else min(limit, len(dataset))
    loader = dense_loader(Subset(dataset, range(rank, count, world)), task, batch_size, False, workers, 0)
    evaluator, seen = task.make_evaluator(num_classes, dataset), _ComputeDtype(model)
    bar = StepProgress("batch", enabled=progress and rank == 0)
    title = f"evaluating {task.name}" + (f" (1/{world} of the images each)" if world > 1 else "")
    bar.start(len(loader), title=title if progress and rank == 0 else "")
    dtype = precision_dtype(precision)
    try:
        for images, targets in loader:
            fit_threads()
            with torch.autocast(dev.type, dtype=dtype, enabled=dtype != torch.float32):
                task.evaluate_batch(model, images, targets, evaluator, dev)
            bar.advance()
    finally:
        bar.stop()
        seen.remove()
    batches = sum(all_gather_objects(accelerator, len(loader)))
    if world == 1:
        return DenseScore(evaluator.compute(), count, batches, seen.dtype)
    per_process = all_gather_objects(accelerator, evaluator.states())
    metrics = None
    if rank == 0:
        evaluator.merge(per_process)
        metrics = evaluator.compute()
    return DenseScore(from_main(accelerator, metrics), count, batches, seen.dtype)


class _ComputeDtype:
    """The dtype the model's first convolution computes in (its output's), recorded by a forward hook."""

    def __init__(self, model: nn.Module):
        self.dtype: str | None = None
        conv = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
        self.handle = conv.register_forward_hook(self._record) if conv is not None else None

    def _record(self, module, inputs, output) -> None:
        self.dtype = str(output.dtype).removeprefix("torch.")

    def remove(self) -> None:
        if self.handle is not None:
            self.handle.remove()
