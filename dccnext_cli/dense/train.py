"""Fine-tuning the dense models on Accelerate: `train_dense`, from one CPU to many GPUs.

    dccnext train --task semantic-fpn --data ade20k:ADE -o runs/seg
    accelerate launch --multi_gpu --num_processes 8 -m dccnext_cli train --task semantic-fpn --data ade20k:ADE ...

The run folder, the resume policy, the train states and the log are `training/`'s (`RunFolder`), as for
classification; here: each process's share of every global batch (`batches.py`), the model (SyncBatchNorm on
GPUs, AdamW without weight decay on 1-D parameters), the iterations, and the end (the weights file gathered on
every process, the sharded evaluation, metrics.json). `batch_size` is the total per optimiser step; the lr is the
recipe's times `lr_factor`: linear warm-up, then poly (segmentation) or step (detection 1x) decay. Each task
computes its own loss (`DenseTask.loss`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from torch.utils.data import Dataset

from ..common.crash_points import crash_point
from ..common.files import atomic_write_text
from ..common.progress import StepProgress
from ..errors import DataError
from ..training.accelerator import micro_batch, micro_step, on_main_process
from ..training.full_state import gather_model_state
from ..training.run_folder import RunFolder, Teller, TrainResult
from ..training.run_state import Trainables, TrainState
from ..training.state_checks import RunLimits
from .batches import BatchPlan, SeededItems
from .checkpoint import backbone_network, save_dense_checkpoint
from .data import SegAugment
from .evaluate import evaluate_dense
from .models import sync_batchnorm
from .recipe import DenseRecipe
from .tasks import build_dense_model

__all__ = ["train_dense", "lr_factor"]


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


# --------------------------------------------------------------------- stage 2: data
@dataclass
class _Data:
    items: SeededItems
    plan: BatchPlan
    collate: Any
    class_names: list[str] | None
    num_classes: int


def _build_data(run: RunFolder, data: str | Dataset) -> _Data:
    recipe, accelerator = run.recipe, run.accelerator
    task = recipe.dense_task
    augment = SegAugment(recipe.crop_size, recipe.scale, recipe.ratio_range, recipe.hflip)
    dataset = task.open_data(data, train=True, num_classes=recipe.num_classes, augment=augment, hflip=recipe.hflip)
    class_names = getattr(dataset, "class_names", None)
    num_classes = recipe.num_classes or (len(class_names) if class_names else task.default_num_classes or 150)
    plan = BatchPlan(len(dataset), recipe.batch_size, accelerator.num_processes, accelerator.process_index,
                     recipe.grad_accum, recipe.seed)
    return _Data(SeededItems(dataset, recipe.seed), plan, task.collate, class_names, num_classes)


# --------------------------------------------------------------------- stage 3: model and optimiser
@dataclass
class _ModelParts:
    model: nn.Module  # prepared (DDP on several processes; torch.compile under --compile)
    plain: nn.Module  # the same module without wrappers: the weights' real names
    optimizer: Any
    total: int  # optimiser steps of the whole run


def _optimizer(model: nn.Module, recipe: DenseRecipe) -> torch.optim.Optimizer:
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    groups = [{"params": decay, "weight_decay": recipe.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=recipe.lr, betas=recipe.betas)


def _build_trainables(run: RunFolder, data: _Data, weights: str | Path | None) -> _ModelParts:
    from accelerate.utils import set_seed

    recipe, accelerator = run.recipe, run.accelerator
    task = recipe.dense_task
    set_seed(recipe.seed)  # the same initial weights on every process
    model = build_dense_model(task, recipe.variant, data.num_classes, weights=weights,
                              drop_path_rate=recipe.drop_path_rate, frozen_stages=recipe.frozen_stages,
                              freeze_norms=recipe.freeze_norms, **task.build_options(recipe))
    model, note = sync_batchnorm(model, accelerator.num_processes, accelerator.device.type)
    if note and run.main:
        run.notes.append(note)
    if recipe.grad_checkpointing:
        backbone_network(model).set_grad_checkpointing(True)
    set_seed(recipe.seed, device_specific=True)  # each process its own drop path
    optimizer = _optimizer(model, recipe)
    if recipe.compile:
        model = torch.compile(model)
    prepared, optimizer = accelerator.prepare(model, optimizer)
    total = recipe.iterations or recipe.epochs * data.plan.steps_per_epoch
    return _ModelParts(prepared, accelerator.unwrap_model(prepared, keep_torch_compile=False), optimizer, total)


def _state_parts(run: RunFolder, parts: _ModelParts) -> Trainables:
    return Trainables(parts.plain, parts.optimizer, getattr(run.accelerator, "scaler", None), prepared=parts.model)


# --------------------------------------------------------------------- the iterations
def _step_losses(run: RunFolder, window: list[dict[str, torch.Tensor]], step: int) -> dict[str, float]:
    """The loss parts of one optimiser step: mean over its micro-batches and over processes (every process
    calls this, so a non-finite loss stops all of them at once)."""
    names = list(window[0])
    local = torch.stack([torch.stack([w[n].float() for w in window]).mean() for n in names])
    values = run.accelerator.reduce(local.to(run.accelerator.device), reduction="mean").tolist()
    if not all(v == v and abs(v) != float("inf") for v in values):
        raise DataError(f"the loss became {values[0]} at iteration {step}; lower the lr (--lr) or check the data")
    return dict(zip(names, values, strict=True))


def _train_steps(run: RunFolder, data: _Data, parts: _ModelParts, state: TrainState, bar: StepProgress) -> list[float]:
    """Iterations until the schedule's end, each a window of `grad_accum` micro-batches per process."""
    accelerator, recipe, plan, task = run.accelerator, run.recipe, data.plan, run.recipe.dense_task
    losses, window = [], []
    parts.model.train()
    while state.step < parts.total:
        for images, targets in plan.batches(data.items, data.collate, recipe.workers, state.epoch, state.batch):
            lr = recipe.lr * lr_factor(state.step, parts.total, recipe, plan.steps_per_epoch)
            for group in parts.optimizer.param_groups:
                group["lr"] = lr
            window.append(micro_step(accelerator, parts.model, parts.optimizer, recipe.grad_clip, task.loss, images,
                                     targets, accelerator.device))
            state.batch += 1
            if not accelerator.sync_gradients:
                continue
            it, state.step = state.step, state.step + 1
            values, window = _step_losses(run, window, it), []
            losses.append(values["loss"])
            state.samples += recipe.batch_size
            bar.update(state.step, loss=values["loss"], lr=lr)
            if it % recipe.log_every == 0 or state.step == parts.total:
                run.log.write("train", step=state.step, iteration=it, lr=lr, **values)
            save, stop = run.saving.due(state.step)
            if save and state.step < parts.total:  # the last train state is written by `_finish`
                run.save(state, _state_parts(run, parts))
            crash_point(f"step-{state.step}")
            if stop and state.step < parts.total:
                raise KeyboardInterrupt
            if state.step == parts.total:
                break
        if state.batch == plan.micro_per_epoch:
            state.epoch, state.batch = state.epoch + 1, 0
    return losses


# --------------------------------------------------------------------- the end
def _same_buffers(accelerator, model: nn.Module) -> None:
    """The main process's buffers on every process (BatchNorm running statistics drift apart where they are
    not synchronised: on CPUs), so that what is evaluated on each process is what the weights file holds."""
    if accelerator.num_processes > 1:
        from accelerate.utils import broadcast

        for buffer in model.buffers():
            buffer.copy_(broadcast(buffer.detach().clone(), from_process=0))


def _finish(run: RunFolder, data: _Data, parts: _ModelParts, state: TrainState, eval_data, progress: bool,
            saved: bool) -> tuple[Path, dict[str, float] | None]:
    """The last train state (unless resumed from it), the weights file, the evaluation, summary.json: all
    derived from the saved state, so a run killed anywhere here resumes to the same files."""
    accelerator, recipe, out = run.accelerator, run.recipe, run.out
    _same_buffers(accelerator, parts.plain)
    if not saved:
        run.save(state, _state_parts(run, parts))
    weights = gather_model_state(accelerator, parts.model)  # every process: a collective under FSDP / ZeRO-3
    if run.main:
        save_dense_checkpoint(out / "model.safetensors", parts.plain, recipe, data.class_names, data.num_classes,
                              state.step, state=weights)
    crash_point("final:weights")
    metrics = None
    if eval_data is not None:
        metrics = evaluate_dense(parts.plain, eval_data, recipe.dense_task, num_classes=data.num_classes,
                                 progress=progress, scale=recipe.scale, accelerator=accelerator)
        if run.main:
            atomic_write_text(out / "metrics.json", json.dumps(metrics, indent=2))
        run.log.write("eval", step=state.step, **metrics)
    run.finish({"world_size": accelerator.num_processes, "steps": state.step, "metrics": metrics})
    crash_point("final:summary")
    accelerator.wait_for_everyone()
    return out / "model.safetensors", metrics


def train_dense(
        recipe: DenseRecipe,
        data: str | Dataset,
        output: str | Path,
        weights: str | Path | None = None,
        eval_data: str | Dataset | None = None,
        progress: bool = True,
        overwrite: bool = False,
        resume: bool | str | Path = False,
        explicit: dict[str, Any] | None = None,
) -> TrainResult:
    """Fine-tune `recipe.task` on `data` (`coco:PATH`, `ade20k:PATH` or a Dataset) into the run folder `output`.

    `weights`: ImageNet weights for the backbone (a dccnext checkpoint or ConvFormer weights). Writes
    `model.safetensors` (what `dccnext eval` reads), `recipe.yaml`, `log.jsonl`, `checkpoints/` (the train
    states) and `summary.json`; evaluates on `eval_data` at the end (`metrics.json`). `resume`: True continues
    the newest train state under `output` (or starts the run), a path names one train state. `explicit`: the
    recipe keys the user gave (None: all of them), which a resumed run's recipe must agree with.
    Under `accelerate launch`, every process calls this.
    """
    run = RunFolder.launch(recipe, Path(output), resume=resume, overwrite=overwrite, explicit=explicit,
                           micro=lambda r, world: micro_batch(r.batch_size, world, r.grad_accum))
    try:
        return _train(run, data, weights, eval_data, progress)
    finally:
        run.close()


def _train(run: RunFolder, data: str | Dataset, weights, eval_data, progress: bool) -> TrainResult:
    world = run.accelerator.num_processes
    bar = StepProgress("iteration", enabled=progress and run.main)
    tell = Teller(run.main, bar)
    tell.notes(run.notes)
    done = on_main_process(run.accelerator, run.completed)
    if done is not None:
        tell(f"{run.out} is complete ({done['steps']} steps); nothing to do")
        return TrainResult(run.out, run.out / "model.safetensors", done["steps"], world, done.get("metrics"),
                           resumed_from=run.train_state)
    dense = _build_data(run, data)
    parts = _build_trainables(run, dense, weights)
    run.start({**run.recipe.to_dict(), "weights": str(weights) if weights else None, "data": str(data)})
    state = run.restore(_state_parts(run, parts), RunLimits(parts.total, dense.plan.steps_per_epoch,
                                                            run.recipe.batch_size))
    run.log.write("start", world_size=world, micro_batch=dense.plan.micro, grad_accum=run.recipe.grad_accum,
                     iterations=parts.total, step=state.step, device=str(run.accelerator.device),
                     resumed_from=str(run.train_state) if run.train_state else None)
    tell.start(run, state)
    bar.start(parts.total, state.step, title=f"training {run.recipe.task}" if bar.enabled else "")
    resumed_at_end = state.step == parts.total
    try:
        with run.saving:
            losses = _train_steps(run, dense, parts, state, bar)
    except KeyboardInterrupt:
        raise run.interrupted(state.step, f"--task {run.recipe.task} --data {data}") from None
    finally:
        bar.stop()
    path, metrics = _finish(run, dense, parts, state, eval_data, progress, saved=resumed_at_end)
    return TrainResult(run.out, path, state.step, world, metrics, losses=losses, resumed_from=run.train_state)
