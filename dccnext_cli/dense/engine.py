"""Fine-tuning and evaluation of the dense models: `train_dense` and `evaluate_dense`.

A plain single-process loop (one device) in the recipe's iterations: AdamW without weight decay on 1-D
parameters, linear warm-up, then poly (segmentation) or step (detection 1x) decay per iteration.
Detectors compute their own losses (torchvision); Semantic FPN uses cross-entropy on logits upsampled
to the label size, ignoring label 255, as MMSegmentation does.
"""

from __future__ import annotations

import json
import math
import random
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
import yaml
from torch.utils.data import DataLoader, Dataset

from ..checkpoint import CheckpointMeta, load_weights, save_weights
from ..errors import CheckpointError, OutputExistsError
from ..models.dense import TASKS, build_dense_model
from .data import IGNORE_INDEX, SegAugment, detection_collate, open_dense_data, segmentation_collate
from .metrics import DetectionEvaluator, SegmentationEvaluator
from .recipe import DenseRecipe

__all__ = [
    "DenseTrainResult",
    "train_dense",
    "evaluate_dense",
    "save_dense_checkpoint",
    "load_dense_model",
    "lr_factor",
]


@dataclass
class DenseTrainResult:
    checkpoint: Path
    iterations: int
    losses: list[float] = field(default_factory=list)
    metrics: dict[str, float] | None = None


def _device(device: str | torch.device | None) -> torch.device:
    return torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _body(model: nn.Module) -> nn.Module:
    return model.backbone.body.body  # BackboneWithFPN -> DCCNeXtBackbone -> DCCNeXt, in all three models


# --------------------------------------------------------------------- checkpoints
def save_dense_checkpoint(path: str | Path, model: nn.Module, recipe: DenseRecipe, class_names: list[str] | None,
                          num_classes: int, iteration: int) -> Path:
    """The project's weights format; `task`, `dense_num_classes` and the input sizes go into the metadata."""
    body = _body(model)
    extra = {
        "task": recipe.task,
        "dense_num_classes": str(num_classes),
        "iteration": str(iteration),
        "dense_build": json.dumps({"min_size": recipe.min_size, "max_size": recipe.max_size,
                                   "out_norm": recipe.out_norm}),
        "input_size": json.dumps(list(recipe.crop_size) if recipe.task == "semantic-fpn"
                                 else [recipe.min_size, recipe.max_size]),
    }
    meta = CheckpointMeta(recipe.variant.removeprefix("dccnext_"), body.config, class_names, None, extra=extra)
    return save_weights(path, model, meta)


def load_dense_model(path: str | Path) -> tuple[nn.Module, CheckpointMeta]:
    """Rebuild a dense model from a checkpoint written by `train_dense`, strictly."""
    state, meta = load_weights(path)
    task = meta.extra.get("task")
    if task not in TASKS:
        raise CheckpointError(
            f"{path} is not a dense-task checkpoint (no task in its metadata); pass one written by train_dense"
        )
    build = json.loads(meta.extra.get("dense_build", "{}"))
    if task == "semantic-fpn":
        build = {"out_norm": build.get("out_norm", True)}
    cfg = meta.config
    model = build_dense_model(
        task, meta.variant, int(meta.extra["dense_num_classes"]), cluster_sizes=cfg.cluster_sizes,
        subvector_intervals=cfg.subvector_intervals, global_op=cfg.global_op, res_scale=cfg.res_scale,
        ffn_act=cfg.ffn_act, drop_path_rate=0.0, **build,
    )
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise CheckpointError(f"{path}: tensors do not fit a {task} dccnext_{meta.variant} ({str(e)[:200]})") from None
    return model, meta


# --------------------------------------------------------------------- schedule and optimiser
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


def _loader(dataset: Dataset, task: str, batch_size: int, shuffle: bool, workers: int, seed: int) -> DataLoader:
    collate = segmentation_collate if task == "semantic-fpn" else detection_collate
    gen = torch.Generator().manual_seed(seed)
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, num_workers=workers, collate_fn=collate,
                      drop_last=shuffle and len(dataset) >= batch_size, generator=gen,
                      persistent_workers=workers > 0 and shuffle)


def _to(targets: list[dict[str, torch.Tensor]], device: torch.device) -> list[dict[str, torch.Tensor]]:
    return [{k: v.to(device) for k, v in t.items()} for t in targets]


def _progress(enabled: bool):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                    TextColumn("{task.fields[status]}"), disable=not enabled, transient=False)


# --------------------------------------------------------------------- training
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
    random.seed(recipe.seed)
    torch.manual_seed(recipe.seed)
    dev = _device(device)
    task = recipe.task
    augment = SegAugment(recipe.crop_size, recipe.scale, recipe.ratio_range, recipe.hflip)
    dataset = open_dense_data(data, task, train=True, num_classes=recipe.num_classes, augment=augment,
                              hflip=recipe.hflip)
    class_names = getattr(dataset, "class_names", None)
    num_classes = recipe.num_classes or (len(class_names) if class_names else 150)
    kwargs: dict[str, Any] = dict(weights=weights, drop_path_rate=recipe.drop_path_rate,
                                  frozen_stages=recipe.frozen_stages, freeze_norms=recipe.freeze_norms,
                                  out_norm=recipe.out_norm)
    if task != "semantic-fpn":
        kwargs.update(min_size=recipe.min_size, max_size=recipe.max_size)
    model = build_dense_model(task, recipe.variant, num_classes, **kwargs).to(dev)
    loader = _loader(dataset, task, recipe.batch_size, True, recipe.workers, recipe.seed)
    iters_per_epoch = max(1, len(loader))
    total = recipe.iterations or recipe.epochs * iters_per_epoch
    optimizer = _optimizer(model, recipe)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda it: lr_factor(it, total, recipe, iters_per_epoch))
    (output / "recipe.yaml").write_text(yaml.safe_dump({**recipe.to_dict(), "weights": str(weights) if weights
                                                        else None, "data": str(data)}, sort_keys=False))
    autocast = torch.autocast(dev.type, dtype=torch.bfloat16) if recipe.amp and dev.type == "cuda" else nullcontext()
    losses: list[float] = []
    model.train()
    batches = iter(loader)
    with _progress(progress) as bar, open(output / "log.jsonl", "a") as log:
        job = bar.add_task(f"train {task}", total=total, status="")
        for it in range(total):
            try:
                images, targets = next(batches)
            except StopIteration:
                batches = iter(loader)
                images, targets = next(batches)
            with autocast:
                if task == "semantic-fpn":
                    images, targets = images.to(dev), targets.to(dev)
                    logits = F.interpolate(model(images), size=targets.shape[-2:], mode="bilinear",
                                           align_corners=False)
                    loss = F.cross_entropy(logits.float(), targets, ignore_index=IGNORE_INDEX)
                    parts = {"loss_ce": loss}
                else:
                    parts = model([i.to(dev) for i in images], _to(targets, dev))
                    loss = sum(parts.values())
            if not math.isfinite(loss.item()):
                raise FloatingPointError(f"loss is {loss.item()} at iteration {it}; lower lr or check the data")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if recipe.grad_clip:
                nn.utils.clip_grad_norm_(model.parameters(), recipe.grad_clip)
            optimizer.step()
            scheduler.step()
            losses.append(loss.item())
            bar.update(job, advance=1, status=f"loss {loss.item():.4f}")
            if it % recipe.log_every == 0 or it == total - 1:
                log.write(json.dumps({"iteration": it, "lr": optimizer.param_groups[0]["lr"], "loss": loss.item(),
                                      **{k: float(v.detach()) for k, v in parts.items()}}) + "\n")
            if recipe.checkpoint_every and (it + 1) % recipe.checkpoint_every == 0 and it + 1 < total:
                save_dense_checkpoint(output / "model.safetensors", model, recipe, class_names, num_classes, it + 1)
    checkpoint = save_dense_checkpoint(output / "model.safetensors", model, recipe, class_names, num_classes, total)
    metrics = None
    if eval_data is not None:
        metrics = evaluate_dense(model, eval_data, task, num_classes=num_classes, device=dev, progress=progress,
                                 scale=recipe.scale)
        (output / "metrics.json").write_text(json.dumps(metrics, indent=2))
    return DenseTrainResult(checkpoint, total, losses, metrics)


# --------------------------------------------------------------------- evaluation
@torch.no_grad()
def evaluate_dense(
        model: nn.Module | str | Path,
        data: str | Dataset,
        task: str | None = None,
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
        task = task or meta.extra["task"]
        num_classes = num_classes or int(meta.extra["dense_num_classes"])
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}")
    dev = _device(device)
    model = model.to(dev).eval()
    augment = SegAugment(scale=scale)
    dataset = open_dense_data(data, task, train=False, num_classes=num_classes, augment=augment)
    loader = _loader(dataset, task, batch_size, False, 0, 0)
    if task == "semantic-fpn":
        evaluator = SegmentationEvaluator(num_classes or getattr(dataset, "num_classes", 150))
    else:
        evaluator = DetectionEvaluator(masks=task == "mask-rcnn")
    with _progress(progress) as bar:
        job = bar.add_task(f"eval {task}", total=len(loader), status="")
        for images, targets in loader:
            if task == "semantic-fpn":
                for image, label in zip(images, targets, strict=True):
                    logits = model(image[None].to(dev))
                    logits = F.interpolate(logits.float(), size=label.shape[-2:], mode="bilinear",
                                           align_corners=False)
                    evaluator.update(logits.argmax(1)[0], label)
            else:
                outputs = model([i.to(dev) for i in images])
                evaluator.update(outputs, targets)
            bar.update(job, advance=1)
    return evaluator.compute()
