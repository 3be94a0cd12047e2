"""Fine-tuning the dense models on Accelerate: `train_dense`, from one CPU to many GPUs.

    dccnext train --task semantic-fpn --data ade20k:ADE -o runs/seg
    accelerate launch --multi_gpu --num_processes 8 -m dccnext_cli train --task semantic-fpn --data ade20k:ADE ...

The loop, the run folder, the resume policy, the train states and the log are `training/`'s, as for
classification; `DenseEngine` adds each process's share of every global batch (`batches.py`), the model
(SyncBatchNorm on GPUs, AdamW without weight decay on 1-D parameters), the lr schedule and the end (the weights
file gathered on every process, the sharded evaluation, metrics.json). `batch_size` is the total per step; the
lr is the recipe's times `lr_factor`: linear warm-up, then poly (segmentation) or step (detection 1x) decay.
Each task computes its own loss (`DenseTask.loss`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from torch.utils.data import Dataset

from ..common.crash_points import crash_point
from ..common.files import atomic_write_text
from ..common.progress import StepProgress
from ..training.full_state import gather_model_state
from ..training.loop import train as train_loop
from ..training.run_folder import RunFolder, TrainResult
from ..training.run_state import TrainState
from .batches import BatchPlan, SeededItems
from .checkpoint import backbone_network, save_dense_checkpoint
from .data import SegAugment
from .evaluate import evaluate_dense
from .models import sync_batchnorm
from .recipe import DenseRecipe
from .tasks import build_dense_model

__all__ = ["train_dense", "lr_factor", "DenseEngine"]


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


# --------------------------------------------------------------------- the end
def _same_buffers(accelerator, model: nn.Module) -> None:
    """The main process's buffers on every process (BatchNorm running statistics drift apart where they are
    not synchronised: on CPUs), so that what is evaluated on each process is what the weights file holds."""
    if accelerator.num_processes > 1:
        from accelerate.utils import broadcast

        for buffer in model.buffers():
            buffer.copy_(broadcast(buffer.detach().clone(), from_process=0))


# --------------------------------------------------------------------- the task engine of training/loop.py
class DenseEngine:
    """A dense task's data, model, loss, lr schedule and final evaluation for `train_loop` (training/loop.py)."""

    epochs, generator = None, None  # a dense recipe counts iterations; its data is seeded per image (batches.py)

    def __init__(self, run: RunFolder, data: str | Dataset, weights, eval_data, progress: bool):
        self.run, self.recipe, self.task = run, run.recipe, run.recipe.dense_task
        self.data_spec, self.weights, self.eval_data, self.progress = data, weights, eval_data, progress
        self.resume_args, self.title = f"--task {self.recipe.task} --data {data}", f"training {self.recipe.task}"

    def prepare(self, run: RunFolder) -> dict[str, Any]:
        """Each process's share of every global batch (batches.py), then the model and its optimiser."""
        from accelerate.utils import set_seed

        recipe, accelerator, task = run.recipe, run.accelerator, self.task
        augment = SegAugment(recipe.crop_size, recipe.scale, recipe.ratio_range, recipe.hflip)
        dataset = task.open_data(self.data_spec, train=True, num_classes=recipe.num_classes, augment=augment,
                                 hflip=recipe.hflip)
        self.class_names = getattr(dataset, "class_names", None)
        self.num_classes = recipe.num_classes or (len(self.class_names) if self.class_names
                                                  else task.default_num_classes or 150)
        self.items, self.plan = SeededItems(dataset, recipe.seed), BatchPlan(
            len(dataset), recipe.batch_size, accelerator.num_processes, accelerator.process_index, recipe.grad_accum,
            recipe.seed)
        self.steps_per_epoch, self.micro_per_epoch = self.plan.steps_per_epoch, self.plan.micro_per_epoch
        set_seed(recipe.seed)  # the same initial weights on every process
        model = build_dense_model(task, recipe.variant, self.num_classes, weights=self.weights,
                                  drop_path_rate=recipe.drop_path_rate, frozen_stages=recipe.frozen_stages,
                                  freeze_norms=recipe.freeze_norms, **task.build_options(recipe))
        model, note = sync_batchnorm(model, accelerator.num_processes, accelerator.device.type)
        if note and run.main:
            run.notes.append(note)
        if recipe.grad_checkpointing:
            backbone_network(model).set_grad_checkpointing(True)
        set_seed(recipe.seed, device_specific=True)  # each process its own drop path
        trained, decay = [p for p in model.parameters() if p.requires_grad], recipe.weight_decay
        optimizer = torch.optim.AdamW([{"params": [p for p in trained if p.ndim > 1], "weight_decay": decay},
                                       {"params": [p for p in trained if p.ndim <= 1], "weight_decay": 0.0}],
                                      lr=recipe.lr, betas=recipe.betas)  # no weight decay on 1-D parameters
        if recipe.compile:
            model = torch.compile(model)
        self.model, self.optimizer = accelerator.prepare(model, optimizer)
        self.total_steps = recipe.iterations or recipe.epochs * self.steps_per_epoch
        return {**recipe.to_dict(), "weights": str(self.weights) if self.weights else None,
                "data": str(self.data_spec)}

    def started(self, state: TrainState) -> dict[str, Any]:
        return {"iterations": self.total_steps}

    def micro_batches(self, state: TrainState):
        return self.plan.batches(self.items, self.task.collate, self.recipe.workers, state.epoch, state.batch)

    def inputs(self, batch, state: TrainState) -> tuple:
        return (*batch, self.run.accelerator.device)

    def loss(self, model: nn.Module, *inputs: Any) -> dict[str, torch.Tensor]:
        return self.task.loss(model, *inputs)

    def schedule(self, step: int) -> None:
        lr = self.recipe.lr * lr_factor(step, self.total_steps, self.recipe, self.steps_per_epoch)
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def end_epoch(self, state: TrainState) -> None:
        pass  # a dense recipe evaluates once, at the end

    def finish(self, state: TrainState) -> dict[str, Any]:
        """The weights file and the evaluation (metrics.json), derived from the saved state only, so a run killed
        anywhere here resumes to the same files."""
        run, recipe, plain = self.run, self.recipe, self.run.parts.model  # without wrappers: the weights' names
        _same_buffers(run.accelerator, plain)
        weights = gather_model_state(run.accelerator, self.model)  # every process: a collective under FSDP / ZeRO-3
        if run.main:
            save_dense_checkpoint(run.out / "model.safetensors", plain, recipe, self.class_names, self.num_classes,
                                  state.step, state=weights)
        crash_point("final:weights")
        metrics = None
        if self.eval_data is not None:
            metrics = evaluate_dense(plain, self.eval_data, self.task, num_classes=self.num_classes,
                                     progress=self.progress, scale=recipe.scale, accelerator=run.accelerator)
            if run.main:
                atomic_write_text(run.out / "metrics.json", json.dumps(metrics, indent=2))
            run.log.write("eval", step=state.step, **metrics)
        return {"metrics": metrics}


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
    return train_loop(recipe, Path(output), lambda run: DenseEngine(run, data, weights, eval_data, progress),
                      StepProgress("iteration", enabled=progress), resume=resume, overwrite=overwrite,
                      explicit=explicit)
