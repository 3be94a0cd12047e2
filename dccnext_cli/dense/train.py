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
import yaml
from torch.utils.data import Dataset

from ..common.crash_points import crash_point
from ..common.files import append_text, atomic_write_text, check_run_folder, remove_run_files
from ..common.progress import StepProgress
from ..common.recipe_files import read_yaml
from ..common.run_lock import lock_folder, unlock_folder
from ..errors import CheckpointError, ConfigError, DataError, OutputExistsError
from ..training.accelerator import make_accelerator, micro_batch
from ..training.full_state import gather_model_state
from ..training.run_state import (
    Trainables,
    TrainState,
    find_checkpoint,
    load_run_state,
    read_train_state,
    recover_checkpoints,
    save_run_state,
)
from ..training.state_checks import RunLimits, check_counters
from .batches import BatchPlan, SeededItems
from .checkpoint import save_dense_checkpoint
from .data import SegAugment
from .evaluate import evaluate_dense
from .models import sync_batchnorm
from .recipe import DenseRecipe
from .tasks import build_dense_model

__all__ = ["DenseTrainResult", "train_dense", "lr_factor", "RUN_FILES"]

RUN_FILES = ("model.safetensors", "recipe.yaml", "log.jsonl", "metrics.json", "summary.json", "checkpoints")


@dataclass
class DenseTrainResult:
    checkpoint: Path  # the weights file, RUN/model.safetensors
    iterations: int
    losses: list[float] = field(default_factory=list)  # per iteration this call ran, mean over processes
    metrics: dict[str, float] | None = None
    world_size: int = 1
    resumed_from: Path | None = None


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
    recipe: DenseRecipe
    accelerator: Any
    out: Path
    checkpoint: Path | None  # the training-state checkpoint to continue from
    overwrite: bool
    notes: list[str] = field(default_factory=list)  # told to the user and written to the log

    @property
    def main(self) -> bool:
        return self.accelerator.is_main_process


def _check_output(out: Path, resume: bool, overwrite: bool) -> None:
    """A new run needs an empty (or new) folder; --resume continues one; --overwrite replaces the run's files."""
    if out.exists() and not out.is_dir():
        raise OutputExistsError(f"-o {out} is a file; give a folder for the run")
    check_run_folder(out, RUN_FILES)  # a symbolic link at a run file: refused, never written through
    if out.is_dir() and any(out.iterdir()) and not (resume or overwrite):
        raise OutputExistsError(f"{out} is not empty; choose another folder, pass --resume to continue the run "
                                "there or --overwrite to start it again")


def _prepare_run(recipe: DenseRecipe, output: str | Path, resume: bool | str | Path, overwrite: bool) -> _Run:
    accelerator = make_accelerator(recipe.amp, recipe.grad_accum)
    micro_batch(recipe.batch_size, accelerator.num_processes, recipe.grad_accum)  # refuses an uneven split
    out = Path(output)
    _check_output(out, bool(resume), overwrite)  # every process: nothing is written yet
    notes: list[str] = []
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        lock_folder(out)  # one writer per run folder
        if resume:
            recover_checkpoints(out, notes)
    accelerator.wait_for_everyone()
    try:
        checkpoint = _checkpoint_to_resume(out, resume, recipe, notes)
    except (CheckpointError, ConfigError):
        if accelerator.is_main_process:
            unlock_folder(out)
        raise
    return _Run(recipe, accelerator, out, checkpoint, overwrite and not resume,
                notes if accelerator.is_main_process else [])


def _checkpoint_to_resume(out: Path, resume: bool | str | Path, recipe: DenseRecipe, notes: list[str]) -> Path | None:
    if not resume:
        return None
    checkpoint = find_checkpoint(Path(resume) if isinstance(resume, (str, Path)) else out, notes)
    if isinstance(resume, (str, Path)) and checkpoint is None:
        raise CheckpointError(f"--resume {resume}: no training checkpoint there")
    if checkpoint is not None:
        _check_same_recipe(out, recipe)
    return checkpoint


RESUME_MAY_CHANGE = ("workers", "log_every", "checkpoint_every", "keep_last")  # how, not what, the run trains


def _check_same_recipe(out: Path, recipe: DenseRecipe) -> None:
    """A resumed run trains what it was started to train: any other recipe value is refused, naming it."""
    if not (out / "recipe.yaml").is_file():
        return  # no record to compare with (a checkpoint passed from elsewhere)
    saved = read_yaml(out / "recipe.yaml")
    if not isinstance(saved, dict):
        return
    for key, value in recipe.to_dict().items():
        if key not in RESUME_MAY_CHANGE and key in saved and saved[key] != value:
            raise ConfigError(f"{out} was started with {key}={saved[key]!r}, not {value!r}; resume with the "
                              "options it was started with (see its recipe.yaml)")


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
    model: nn.Module  # prepared (DDP on several processes)
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
        run.notes.append(note)
    set_seed(recipe.seed, device_specific=True)  # each process its own drop path
    optimizer = _optimizer(model, recipe)
    prepared, optimizer = accelerator.prepare(model, optimizer)
    total = recipe.iterations or recipe.epochs * data.plan.steps_per_epoch
    return _Trainables(prepared, accelerator.unwrap_model(prepared), optimizer, total)


# --------------------------------------------------------------------- stage 4: restore or start
def _state_parts(run: _Run, parts: _Trainables) -> Trainables:
    return Trainables(parts.plain, parts.optimizer, getattr(run.accelerator, "scaler", None), prepared=parts.model)


def _restore_or_start(run: _Run, data: _Data, parts: _Trainables, weights: str | Path | None,
                      data_spec: str | Dataset) -> TrainState:
    accelerator, world = run.accelerator, run.accelerator.num_processes
    state = TrainState(world_size=world, micro_batch=data.plan.micro)
    if run.checkpoint is not None:
        state = load_run_state(accelerator, run.checkpoint, _state_parts(run, parts))
        check_counters(state, run.checkpoint / "train_state.json", RunLimits(
            parts.total, data.plan.steps_per_epoch, run.recipe.batch_size))
        if (state.world_size, state.micro_batch) != (world, data.plan.micro):
            raise CheckpointError(f"{run.checkpoint} was written by {state.world_size} processes with micro-batches "
                                  f"of {state.micro_batch}; resume it with the same launch")
        accelerator.step = state.micro_steps
    elif run.main:
        if run.overwrite:  # only now, when everything has been checked
            remove_run_files(run.out, RUN_FILES)
        atomic_write_text(run.out / "recipe.yaml", yaml.safe_dump(
            {**run.recipe.to_dict(), "weights": str(weights) if weights else None, "data": str(data_spec)},
            sort_keys=False))
    accelerator.wait_for_everyone()
    return state


# --------------------------------------------------------------------- the iterations
def _log(run: _Run, event: str, **values: Any) -> None:
    if run.main:
        append_text(run.out / "log.jsonl", json.dumps({"event": event, **values}) + "\n")


def _checkpoint(run: _Run, parts: _Trainables, state: TrainState) -> None:
    """The full training state; every process takes part."""
    state.micro_steps = run.accelerator.step
    save_run_state(run.accelerator, run.out, state, _state_parts(run, parts), run.recipe.keep_last)


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


def _train_steps(run: _Run, data: _Data, parts: _Trainables, state: TrainState, bar: StepProgress) -> list[float]:
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
            bar.update(state.step, loss=values["loss"], lr=lr)
            if it % recipe.log_every == 0 or state.step == parts.total:
                _log(run, "train", iteration=it, lr=lr, **values)
            if recipe.checkpoint_every and state.step % recipe.checkpoint_every == 0 and state.step < parts.total:
                _checkpoint(run, parts, state)
            crash_point(f"iteration-{state.step}")
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
    """The last checkpoint (unless resumed from it), the weights file, the evaluation, summary.json: all
    derived from the checkpointed state, so a run killed anywhere here resumes to the same files."""
    accelerator, recipe = run.accelerator, run.recipe
    _same_buffers(accelerator, parts.plain)
    if not saved:
        _checkpoint(run, parts, state)
    weights = gather_model_state(accelerator, parts.model)  # every process: a collective under FSDP / ZeRO-3
    path = run.out / "model.safetensors"
    if run.main:
        save_dense_checkpoint(path, parts.plain, recipe, data.class_names, data.num_classes, state.step,
                              state=weights)
    crash_point("final:weights")
    metrics = None
    if eval_data is not None:
        metrics = evaluate_dense(parts.plain, eval_data, recipe.dense_task, num_classes=data.num_classes,
                                 progress=progress, scale=recipe.scale, accelerator=accelerator)
        if run.main:
            atomic_write_text(run.out / "metrics.json", json.dumps(metrics, indent=2))
        _log(run, "eval", iteration=state.step, **metrics)
    if run.main:
        summary = {"world_size": accelerator.num_processes, "iterations": state.step, "metrics": metrics}
        atomic_write_text(run.out / "summary.json", json.dumps(summary, indent=1))
        crash_point("final:summary")
    accelerator.wait_for_everyone()
    return path, metrics


def _completed(run: _Run) -> DenseTrainResult | None:
    """A resumed run whose summary records the checkpoint's last iteration: nothing to do."""
    if run.checkpoint is None:
        return None
    try:
        summary = json.loads((run.out / "summary.json").read_text())
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    state = read_train_state(run.checkpoint)
    if not isinstance(summary, dict) or summary.get("iterations") != state.step \
            or not (run.out / "model.safetensors").is_file():
        return None
    return DenseTrainResult(run.out / "model.safetensors", state.step, [], summary.get("metrics"),
                            run.accelerator.num_processes, run.checkpoint)


def train_dense(
        recipe: DenseRecipe,
        data: str | Dataset,
        output: str | Path,
        weights: str | Path | None = None,
        eval_data: str | Dataset | None = None,
        progress: bool = True,
        overwrite: bool = False,
        resume: bool | str | Path = False,
) -> DenseTrainResult:
    """Fine-tune `recipe.task` on `data` (`coco:PATH`, `ade20k:PATH` or a Dataset) into the run folder `output`.

    `weights`: ImageNet weights for the backbone (a dccnext checkpoint or ConvFormer weights). Writes
    `model.safetensors` (what `dccnext eval` reads), `recipe.yaml`, `log.jsonl`, `checkpoints/` (the training
    state) and `summary.json`; evaluates on `eval_data` at the end (`metrics.json`). `resume`: True continues
    the newest checkpoint under `output` (or starts the run), a path names a run folder or one checkpoint.
    Under `accelerate launch`, every process calls this.
    """
    run = _prepare_run(recipe, output, resume, overwrite)
    try:
        return _train(run, data, weights, eval_data, progress)
    finally:
        if run.main:
            unlock_folder(run.out)


def _train(run: _Run, data: str | Dataset, weights, eval_data, progress: bool) -> DenseTrainResult:
    done = _completed(run)
    if done is not None:
        return done
    dense = _build_data(run, data)
    parts = _build_trainables(run, dense, weights)
    state = _restore_or_start(run, dense, parts, weights, data)
    _log(run, "start", world_size=run.accelerator.num_processes, micro_batch=dense.plan.micro,
         grad_accum=run.recipe.grad_accum, iterations=parts.total, device=str(run.accelerator.device),
         resumed_from=str(run.checkpoint) if run.checkpoint else None)
    bar = StepProgress("iteration", enabled=progress and run.main)
    bar.start(parts.total, state.step, title=f"training {run.recipe.task}" if bar.enabled else "")
    for note in run.notes:  # what resuming skipped or completed, and what this launch cannot do
        _log(run, "warning", message=note)
        if bar.enabled:
            bar.warning(note)
    resumed_at_end = state.step == parts.total
    try:
        losses = _train_steps(run, dense, parts, state, bar)
    finally:
        bar.stop()
    path, metrics = _finish(run, dense, parts, state, eval_data, progress, saved=resumed_at_end)
    return DenseTrainResult(path, state.step, losses, metrics, run.accelerator.num_processes, run.checkpoint)
