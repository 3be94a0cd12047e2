"""Fine-tuning the dense models on Accelerate: `train_dense`, from one CPU to many GPUs.

    dccnext train --task semantic-fpn --data ade20k:ADE -o runs/seg
    accelerate launch --multi_gpu --num_processes 8 -m dccnext_cli train --task semantic-fpn --data ade20k:ADE ...

The same loop shape as classification's, in named stages: `_prepare_run` (the Accelerator, the run folder,
what to resume), `_build_data` (each process's share of every global batch, `batches.py`), `_build_trainables`
(the model, SyncBatchNorm on GPUs, AdamW without weight decay on 1-D parameters, `accelerator.prepare`),
`_restore_or_start`, the iterations (`_train_steps`), and `_finish` (the last training-state checkpoint, the
weights file gathered on every process (`gather_model_state`), the sharded evaluation, summary.json).

The recipe's `batch_size` is the total per optimiser step: each process takes `batch / (processes x
grad_accum)` images per micro-batch. The lr is the recipe's times `lr_factor` of the optimiser step: linear
warm-up, then poly (segmentation) or step (detection 1x) decay. Training-state checkpoints (`training/
run_state.py`: safetensors + JSON, a manifest written last) go under RUN/checkpoints/ every `checkpoint_every`
iterations and at the end; `resume` continues the newest. Each task computes its own loss (`DenseTask.loss`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from torch.utils.data import Dataset

from ..common.crash_points import crash_point
from ..common.files import atomic_write_text
from ..common.progress import StepProgress
from ..errors import DataError, DCCNeXtError
from ..training.accelerator import make_accelerator, micro_batch, on_main_process
from ..training.full_state import gather_model_state
from ..training.run_folder import RunFolder, Teller
from ..training.run_state import Trainables, TrainState
from ..training.saving import SaveSchedule
from .batches import BatchPlan, SeededItems
from .checkpoint import backbone_network, save_dense_checkpoint
from .data import SegAugment
from .evaluate import evaluate_dense
from .models import sync_batchnorm
from .recipe import DenseRecipe
from .tasks import build_dense_model

__all__ = ["DenseTrainResult", "train_dense", "lr_factor"]


@dataclass
class DenseTrainResult:
    output: Path  # the run folder
    weights: Path  # RUN/model.safetensors
    steps: int  # optimiser steps (iterations) of the run
    losses: list[float] = field(default_factory=list)  # per iteration this call ran, mean over processes
    metrics: dict[str, float] | None = None
    world_size: int = 1
    resumed_from: Path | None = None  # the train state continued


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


# --------------------------------------------------------------------- stage 1: the launch and the run folder
@dataclass
class _Run:
    folder: RunFolder

    @property
    def recipe(self) -> DenseRecipe:
        return self.folder.recipe

    @property
    def accelerator(self):
        return self.folder.accelerator

    @property
    def main(self) -> bool:
        return self.folder.main


def _prepare_run(recipe: DenseRecipe, output: str | Path, resume: bool | str | Path, overwrite: bool,
                 explicit: dict[str, Any] | None) -> _Run:
    accelerator = make_accelerator(recipe.amp, recipe.grad_accum)
    folder = RunFolder.open(accelerator, recipe, Path(output), resume=resume, overwrite=overwrite, explicit=explicit)
    accelerator.gradient_accumulation_steps = folder.recipe.grad_accum
    try:
        micro_batch(folder.recipe.batch_size, accelerator.num_processes, folder.recipe.grad_accum)  # an uneven split
    except DCCNeXtError:
        folder.close()
        raise
    return _Run(folder)


# --------------------------------------------------------------------- stage 2: data
@dataclass
class _Data:
    items: SeededItems
    plan: BatchPlan
    collate: Any
    class_names: list[str] | None
    num_classes: int


def _build_data(run: _Run, data: str | Dataset) -> _Data:
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
class _Trainables:
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


def _build_trainables(run: _Run, data: _Data, weights: str | Path | None) -> _Trainables:
    from accelerate.utils import set_seed

    recipe, accelerator = run.recipe, run.accelerator
    task = recipe.dense_task
    set_seed(recipe.seed)  # the same initial weights on every process
    model = build_dense_model(task, recipe.variant, data.num_classes, weights=weights,
                              drop_path_rate=recipe.drop_path_rate, frozen_stages=recipe.frozen_stages,
                              freeze_norms=recipe.freeze_norms, **task.build_options(recipe))
    model, note = sync_batchnorm(model, accelerator.num_processes, accelerator.device.type)
    if note and run.main:
        run.folder.notes.append(note)
    if recipe.grad_checkpointing:
        backbone_network(model).set_grad_checkpointing(True)
    set_seed(recipe.seed, device_specific=True)  # each process its own drop path
    optimizer = _optimizer(model, recipe)
    if recipe.compile:
        model = torch.compile(model)
    prepared, optimizer = accelerator.prepare(model, optimizer)
    total = recipe.iterations or recipe.epochs * data.plan.steps_per_epoch
    return _Trainables(prepared, accelerator.unwrap_model(prepared, keep_torch_compile=False), optimizer, total)


def _state_parts(run: _Run, parts: _Trainables) -> Trainables:
    return Trainables(parts.plain, parts.optimizer, getattr(run.accelerator, "scaler", None), prepared=parts.model)


# --------------------------------------------------------------------- the iterations
def _micro_step(run: _Run, parts: _Trainables, images, targets) -> dict[str, torch.Tensor]:
    """Forward and backward of one micro-batch; the optimiser steps on the last of each accumulation window."""
    accelerator, recipe = run.accelerator, run.recipe
    with accelerator.accumulate(parts.model):
        with accelerator.autocast():
            loss_parts = recipe.dense_task.loss(parts.model, images, targets, accelerator.device)
        loss = sum(loss_parts.values())
        accelerator.backward(loss)
        if recipe.grad_clip and accelerator.sync_gradients:
            accelerator.clip_grad_norm_(parts.model.parameters(), recipe.grad_clip)
        parts.optimizer.step()
        parts.optimizer.zero_grad(set_to_none=True)
    return {"loss": loss.detach(), **{k: v.detach() for k, v in loss_parts.items()}}


def _step_losses(run: _Run, window: list[dict[str, torch.Tensor]], step: int) -> dict[str, float]:
    """The loss parts of one optimiser step: mean over its micro-batches and over processes (every process
    calls this, so a non-finite loss stops all of them at once)."""
    names = list(window[0])
    local = torch.stack([torch.stack([w[n].float() for w in window]).mean() for n in names])
    values = run.accelerator.reduce(local.to(run.accelerator.device), reduction="mean").tolist()
    if not all(v == v and abs(v) != float("inf") for v in values):
        raise DataError(f"the loss became {values[0]} at iteration {step}; lower the lr (--lr) or check the data")
    return dict(zip(names, values, strict=True))


def _train_steps(run: _Run, data: _Data, parts: _Trainables, state: TrainState, bar: StepProgress,
                 saving: SaveSchedule) -> list[float]:
    """Iterations until the schedule's end, each a window of `grad_accum` micro-batches per process."""
    accelerator, recipe, plan = run.accelerator, run.recipe, data.plan
    losses, window = [], []
    parts.model.train()
    while state.step < parts.total:
        for images, targets in plan.batches(data.items, data.collate, recipe.workers, state.epoch, state.batch):
            lr = recipe.lr * lr_factor(state.step, parts.total, recipe, plan.steps_per_epoch)
            for group in parts.optimizer.param_groups:
                group["lr"] = lr
            window.append(_micro_step(run, parts, images, targets))
            state.batch += 1
            if not accelerator.sync_gradients:
                continue
            it, state.step = state.step, state.step + 1
            values, window = _step_losses(run, window, it), []
            losses.append(values["loss"])
            state.samples += recipe.batch_size
            bar.update(state.step, loss=values["loss"], lr=lr)
            if it % recipe.log_every == 0 or state.step == parts.total:
                run.folder.log.write("train", step=state.step, iteration=it, lr=lr, **values)
            save, stop = saving.due(state.step)
            if save and state.step < parts.total:  # the last train state is written by `_finish`
                run.folder.save(state, _state_parts(run, parts))
                saving.saved()
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


def _finish(run: _Run, data: _Data, parts: _Trainables, state: TrainState, eval_data, progress: bool,
            saved: bool) -> tuple[Path, dict[str, float] | None]:
    """The last train state (unless resumed from it), the weights file, the evaluation, summary.json: all
    derived from the saved state, so a run killed anywhere here resumes to the same files."""
    accelerator, recipe, out = run.accelerator, run.recipe, run.folder.out
    _same_buffers(accelerator, parts.plain)
    if not saved:
        run.folder.save(state, _state_parts(run, parts))
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
        run.folder.log.write("eval", step=state.step, **metrics)
    run.folder.finish({"world_size": accelerator.num_processes, "steps": state.step, "metrics": metrics})
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
) -> DenseTrainResult:
    """Fine-tune `recipe.task` on `data` (`coco:PATH`, `ade20k:PATH` or a Dataset) into the run folder `output`.

    `weights`: ImageNet weights for the backbone (a dccnext checkpoint or ConvFormer weights). Writes
    `model.safetensors` (what `dccnext eval` reads), `recipe.yaml`, `log.jsonl`, `checkpoints/` (the train
    states) and `summary.json`; evaluates on `eval_data` at the end (`metrics.json`). `resume`: True continues
    the newest train state under `output` (or starts the run), a path names one train state. `explicit`: the
    recipe keys the user gave (None: all of them), which a resumed run's recipe must agree with.
    Under `accelerate launch`, every process calls this.
    """
    run = _prepare_run(recipe, output, resume, overwrite, explicit)
    try:
        return _train(run, data, weights, eval_data, progress)
    finally:
        run.folder.close()


def _train(run: _Run, data: str | Dataset, weights, eval_data, progress: bool) -> DenseTrainResult:
    folder, world = run.folder, run.accelerator.num_processes
    bar = StepProgress("iteration", enabled=progress and run.main)
    tell = Teller(run.main, bar)
    tell.notes(folder.notes)
    done = on_main_process(run.accelerator, folder.completed)
    if done is not None:
        tell(f"{folder.out} is complete ({done['steps']} steps); nothing to do")
        return DenseTrainResult(folder.out, folder.out / "model.safetensors", done["steps"], [], done.get("metrics"),
                                world, folder.train_state)
    dense = _build_data(run, data)
    parts = _build_trainables(run, dense, weights)
    folder.start({**run.recipe.to_dict(), "weights": str(weights) if weights else None, "data": str(data)})
    state = folder.restore(dense.plan.micro, _state_parts(run, parts))
    folder.log.write("start", world_size=world, micro_batch=dense.plan.micro, grad_accum=run.recipe.grad_accum,
                     iterations=parts.total, step=state.step, device=str(run.accelerator.device),
                     resumed_from=str(folder.train_state) if folder.train_state else None)
    tell.start(folder, state)
    bar.start(parts.total, state.step, title=f"training {run.recipe.task}" if bar.enabled else "")
    resumed_at_end = state.step == parts.total
    try:
        with SaveSchedule(run.accelerator, run.recipe.checkpoint_every, run.recipe.checkpoint_minutes) as saving:
            losses = _train_steps(run, dense, parts, state, bar, saving)
    except KeyboardInterrupt:
        raise folder.interrupted(state.step) from None
    finally:
        bar.stop()
    path, metrics = _finish(run, dense, parts, state, eval_data, progress, saved=resumed_at_end)
    return DenseTrainResult(folder.out, path, state.step, losses, metrics, world, folder.train_state)
