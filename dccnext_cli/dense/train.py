"""Fine-tuning the dense models: `train_dense`.

A plain single-process loop (one device) in the recipe's iterations: AdamW without weight decay on 1-D
parameters, linear warm-up, then poly (segmentation) or step (detection 1x) decay per iteration. Each task
computes its own loss (`DenseTask.loss`): detectors their torchvision losses, Semantic FPN cross-entropy.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Iterator
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import yaml
from torch.utils.data import DataLoader, Dataset

from ..common.device import default_device
from ..common.files import atomic_write_text
from ..common.progress import StepProgress
from ..errors import OutputExistsError
from .checkpoint import save_dense_checkpoint
from .data import SegAugment
from .evaluate import dense_loader, evaluate_dense
from .recipe import DenseRecipe
from .tasks import build_dense_model

__all__ = ["DenseTrainResult", "train_dense", "lr_factor"]


@dataclass
class DenseTrainResult:
    checkpoint: Path
    iterations: int
    losses: list[float] = field(default_factory=list)
    metrics: dict[str, float] | None = None


def lr_factor(it: int, total: int, recipe: DenseRecipe, iters_per_epoch: int) -> float:
    """Multiplier of the base lr at iteration `it` (0-based): warm-up, then poly or step decay."""
    if recipe.schedule == "poly":
        base = recipe.min_lr / recipe.lr
        factor = (1 - base) * (1 - it / total) ** recipe.poly_power + base
    else:
        factor = recipe.step_gamma ** sum(it >= e * iters_per_epoch for e in recipe.step_epochs)
    if it < recipe.warmup_iters:
        factor *= recipe.warmup_ratio + (1 - recipe.warmup_ratio) * it / recipe.warmup_iters
    return factor


def _optimizer(model: nn.Module, recipe: DenseRecipe) -> torch.optim.Optimizer:
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    groups = [{"params": decay, "weight_decay": recipe.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=recipe.lr, betas=recipe.betas)


def _forever(loader: DataLoader) -> Iterator[Any]:
    """Batches without end: the loader starts a new epoch whenever one runs out."""
    while True:
        yield from loader


@dataclass
class _DenseRun:
    """What the loop needs, built once: the model on its device, data, optimiser and schedule."""

    model: nn.Module
    loader: DataLoader
    optimizer: torch.optim.Optimizer
    scheduler: Any
    total: int
    device: torch.device
    class_names: list[str] | None
    num_classes: int


def _prepare(recipe: DenseRecipe, data: str | Dataset, weights: str | Path | None,
             device: str | torch.device | None) -> _DenseRun:
    random.seed(recipe.seed)
    torch.manual_seed(recipe.seed)
    task, dev = recipe.dense_task, default_device(device)
    augment = SegAugment(recipe.crop_size, recipe.scale, recipe.ratio_range, recipe.hflip)
    dataset = task.open_data(data, train=True, num_classes=recipe.num_classes, augment=augment, hflip=recipe.hflip)
    class_names = getattr(dataset, "class_names", None)
    num_classes = recipe.num_classes or (len(class_names) if class_names else 150)
    model = build_dense_model(task, recipe.variant, num_classes, weights=weights, drop_path_rate=recipe.drop_path_rate,
                              frozen_stages=recipe.frozen_stages, freeze_norms=recipe.freeze_norms,
                              **task.build_options(recipe)).to(dev)
    loader = dense_loader(dataset, task, recipe.batch_size, True, recipe.workers, recipe.seed)
    iters_per_epoch = max(1, len(loader))
    total = recipe.iterations or recipe.epochs * iters_per_epoch
    optimizer = _optimizer(model, recipe)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda it: lr_factor(it, total, recipe, iters_per_epoch))
    return _DenseRun(model, loader, optimizer, scheduler, total, dev, class_names, num_classes)


def _step(run: _DenseRun, recipe: DenseRecipe, images, targets, it: int) -> dict[str, torch.Tensor]:
    """One optimiser step; the loss parts for the log."""
    amp = recipe.amp and run.device.type == "cuda"
    with torch.autocast(run.device.type, dtype=torch.bfloat16) if amp else nullcontext():
        parts = recipe.dense_task.loss(run.model, images, targets, run.device)
    loss = sum(parts.values())
    if not math.isfinite(loss.item()):
        raise FloatingPointError(f"loss is {loss.item()} at iteration {it}; lower lr or check the data")
    run.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if recipe.grad_clip:
        nn.utils.clip_grad_norm_(run.model.parameters(), recipe.grad_clip)
    run.optimizer.step()
    run.scheduler.step()
    return {"loss": loss, **parts}


def train_dense(
        recipe: DenseRecipe,
        data: str | Dataset,
        output: str | Path,
        weights: str | Path | None = None,
        eval_data: str | Dataset | None = None,
        device: str | torch.device | None = None,
        progress: bool = True,
        overwrite: bool = False,
) -> DenseTrainResult:
    """Fine-tune `recipe.task` on `data` (`coco:PATH`, `ade20k:PATH` or a Dataset) into `output/`.

    `weights`: ImageNet weights for the backbone (a dccnext checkpoint or ConvFormer weights); writes
    `output/model.safetensors`, `output/recipe.yaml` and `output/log.jsonl`; evaluates on `eval_data` at the end.
    """
    output = Path(output)
    if output.exists() and any(output.iterdir()) and not overwrite:
        raise OutputExistsError(f"{output} is not empty; choose another folder or pass --overwrite")
    output.mkdir(parents=True, exist_ok=True)
    run = _prepare(recipe, data, weights, device)
    atomic_write_text(output / "recipe.yaml", yaml.safe_dump(
        {**recipe.to_dict(), "weights": str(weights) if weights else None, "data": str(data)}, sort_keys=False))

    def save(iteration: int) -> Path:
        return save_dense_checkpoint(output / "model.safetensors", run.model, recipe, run.class_names,
                                     run.num_classes, iteration)

    losses: list[float] = []
    run.model.train()
    batches = _forever(run.loader)
    bar = StepProgress("iteration", enabled=progress)
    bar.start(run.total, title=f"training {recipe.task}")
    with open(output / "log.jsonl", "a") as log:
        for it in range(run.total):
            images, targets = next(batches)
            parts = _step(run, recipe, images, targets, it)
            losses.append(parts["loss"].item())
            lr = run.optimizer.param_groups[0]["lr"]
            bar.update(it + 1, loss=losses[-1], lr=lr)
            if it % recipe.log_every == 0 or it == run.total - 1:
                log.write(json.dumps({"iteration": it, "lr": lr, **{k: float(v.detach()) for k, v in parts.items()}})
                          + "\n")
            if recipe.checkpoint_every and (it + 1) % recipe.checkpoint_every == 0 and it + 1 < run.total:
                save(it + 1)
    bar.stop()
    checkpoint = save(run.total)
    metrics = None
    if eval_data is not None:
        metrics = evaluate_dense(run.model, eval_data, recipe.dense_task, num_classes=run.num_classes,
                                 device=run.device, progress=progress, scale=recipe.scale)
        atomic_write_text(output / "metrics.json", json.dumps(metrics, indent=2))
    return DenseTrainResult(checkpoint, run.total, losses, metrics)
