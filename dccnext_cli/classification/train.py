"""Training a classifier: the paper's recipe on Hugging Face Accelerate, from one CPU to many GPUs and nodes.

    dccnext train --variant b0                                  # one process, embedded data, quickstart recipe
    accelerate launch --multi_gpu --num_processes 8 -m dccnext_cli train --recipe imagenet/b2

One process per device; `batch_size` in the recipe is the total per optimiser step, split over processes and
gradient-accumulation steps, so a recipe means the same thing on 1 or 64 GPUs. Without CUDA the Accelerator is
made with `cpu=True`, which is what makes `accelerate launch --multi_gpu` start real CPU processes.

The loop is training/loop.py's, the same for every task; `ClassificationEngine` is what a classifier adds to
it: the loaders, the model, optimiser, cosine schedule, Mixup and loss, each epoch's evaluation and weights.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import torch

from ..common.crash_points import crash_point
from ..data.images import eval_transform
from ..data.loading import build_loader, device_finish, train_transform
from ..data.sources import open_split, parse_data
from ..errors import ConfigError, DataError
from ..models.dccnext import DCCNeXt
from ..models.pretrained import load_backbone_weights
from ..models.weights import CheckpointMeta, save_weights
from ..training.accelerator import engine_name, shards_parameters
from ..training.full_state import every_rank_weights_digest, gather_model_state
from ..training.loop import train as train_loop
from ..training.run_folder import RunFolder, TrainResult
from ..training.run_state import TrainState
from ..training.shards import all_gather_objects, strided_share
from ..training.state_checks import refuse
from .callbacks import TrainCallback
from .evaluate import EvalResult, Lockstep, evaluate_batches
from .recipe import TrainRecipe

__all__ = ["TrainResult", "train", "ClassificationEngine"]


# --------------------------------------------------------------------- the task engine of training/loop.py
class ClassificationEngine:
    """A classifier's data, model, loss and evaluation for `train_loop` (see training/loop.py)."""

    resume_args = ""

    def __init__(self, run: RunFolder, callbacks: Sequence[TrainCallback], reporter):
        self.run, self.recipe, self.callbacks, self.epochs = run, run.recipe, callbacks, run.recipe.epochs
        self.reporter = reporter if run.main else None  # what the user reads comes from the main process

    def prepare(self, run: RunFolder) -> dict[str, Any]:
        self._data(run)
        self._model(run)
        self.title = f"training {self.recipe.variant} on {self.uri}"
        return self.recipe.to_dict()

    def _data(self, run: RunFolder) -> None:
        """The loaders, and the epoch's micro-batches and optimiser steps."""
        recipe, accelerator = run.recipe, run.accelerator  # a resumed run's own recipe
        rank, world = accelerator.process_index, accelerator.num_processes
        if recipe.uses_mixup and run.micro % 2:
            raise ConfigError(f"Mixup/CutMix needs an even batch per process, got {run.micro}; change batch_size")
        source = parse_data(recipe.data)
        columns = {"streaming": recipe.streaming, "image_column": recipe.image_column,
                   "label_column": recipe.label_column}
        self.uri, self.train_split, eval_split = source.uri, open_split(source, recipe.train_split, **columns), None
        if recipe.eval_split:
            try:
                eval_split = open_split(source, recipe.eval_split, **columns)
            except DataError as e:
                raise DataError(f"{e} (evaluation split; --set eval_split=NAME picks another, "
                                "--set eval_split=null trains without one)") from None
        self.num_classes = self.train_split.num_classes or recipe.num_classes  # data that names its classes wins
        if self.num_classes is None:
            raise ConfigError(f"{source.uri} does not name its classes; set --set num_classes=N")
        samples = self.train_split.num_samples or recipe.train_samples
        if samples is None:
            raise ConfigError(f"{source.uri} is a stream of unknown length; set --set train_samples=N for the "
                              "schedule")
        device_side = accelerator.device.type == "cuda"  # uint8 batches, normalised and erased on the GPU
        self.batches = build_loader(self.train_split, train_transform(recipe, device_side), run.micro, train=True,
                                    seed=recipe.seed, rank=rank, world=world, workers=recipe.workers,
                                    shuffle_buffer=recipe.shuffle_buffer, samples_per_epoch=samples,
                                    finish=device_finish(recipe) if device_side else None)
        self.generator = self.batches.loader.generator
        micro_per_epoch = self.batches.steps_per_epoch
        if recipe.train_samples:  # caps an epoch of any source (a quick run: --set train_samples=N)
            micro_per_epoch = min(micro_per_epoch, recipe.train_samples // (run.micro * world))
            samples = min(samples, recipe.train_samples)
        self.micro_per_epoch = micro_per_epoch - micro_per_epoch % recipe.grad_accum
        if self.micro_per_epoch == 0:
            raise DataError(f"{source.uri} ({recipe.train_split}) gives {samples} images an epoch, fewer than one "
                            f"batch of {recipe.batch_size}; lower --batch-size")
        self.steps_per_epoch = self.micro_per_epoch // recipe.grad_accum
        self.eval_batches = None
        if eval_split is not None:
            eval_tf = eval_transform(recipe.input_size, crop_pct=recipe.crop_pct, interpolation=recipe.interpolation,
                                     mean=recipe.mean, std=recipe.std)
            self.eval_batches = build_loader(eval_split, eval_tf, max(run.micro, 64), train=False, rank=rank,
                                             world=world, workers=recipe.workers)

    def _model(self, run: RunFolder) -> None:
        """The model (warm-started from --weights), its optimiser, lr schedule, Mixup and loss, prepared."""
        from accelerate.utils import set_seed
        from timm.data import Mixup
        from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
        from timm.optim import create_optimizer_v2
        from timm.scheduler import CosineLRScheduler

        recipe = run.recipe
        set_seed(recipe.seed, device_specific=True)
        self.config = recipe.model_config().replace(num_classes=self.num_classes)
        model = DCCNeXt(self.config)
        self.loaded, self.warm_start = load_backbone_weights(model, recipe.pretrained, recipe.variant) \
            if recipe.pretrained else (None, None)  # what --weights loaded, and what a ConvFormer left at init
        if recipe.grad_checkpointing:
            model.set_grad_checkpointing(True)
        peak = recipe.peak_lr()
        optimizer = create_optimizer_v2(model, opt=recipe.opt, lr=peak, weight_decay=recipe.weight_decay)
        self.total_steps = self.steps_per_epoch * recipe.epochs
        # a peak below the recipe's floor (a tiny --lr) caps the floor, or the "decay" would raise the lr
        self.scheduler = CosineLRScheduler(optimizer, t_initial=self.total_steps, lr_min=min(recipe.min_lr, peak),
                                           warmup_t=round(recipe.warmup_epochs * self.steps_per_epoch),
                                           warmup_lr_init=min(recipe.warmup_lr, peak), t_in_epochs=False)
        if recipe.compile:
            model = torch.compile(model)
        self.model, self.optimizer = run.accelerator.prepare(model, optimizer)
        self.mixup = Mixup(mixup_alpha=recipe.mixup, cutmix_alpha=recipe.cutmix, prob=recipe.mixup_prob,
                           switch_prob=recipe.mixup_switch_prob, label_smoothing=recipe.smoothing,
                           num_classes=self.num_classes) if recipe.uses_mixup else None
        self.criterion = SoftTargetCrossEntropy() if recipe.uses_mixup else LabelSmoothingCrossEntropy(
            recipe.smoothing) if recipe.smoothing > 0 else torch.nn.CrossEntropyLoss()

    def started(self, state: TrainState) -> dict[str, Any]:
        """This task's entries of a resumed train state checked (the best top-1 so far, and its epoch)."""
        path, top1, epoch = self.run.train_state, state.task.get("best_top1"), state.task.get("best_epoch", 0)
        if not (top1 is None or type(top1) in (int, float) and math.isfinite(top1) and 0 <= top1 <= 100):
            raise refuse(path / "train_state.json", "best_top1", top1, "is not a percentage")
        if not (type(epoch) is int and 0 <= epoch <= state.epoch):
            raise refuse(path / "train_state.json", "best_epoch", epoch, f"is not an epoch up to {state.epoch}")
        if self.warm_start is not None and self.reporter is not None:
            self.reporter.message(self.warm_start.table())
        return {"data": self.uri, "num_classes": self.num_classes, "pretrained": self.loaded,
                "warm_start": self.warm_start.to_dict() if self.warm_start else None}

    def micro_batches(self, state: TrainState):
        return self.batches.epoch(state.epoch, skip_batches=state.batch)

    def inputs(self, batch, state: TrainState) -> tuple:
        (images, labels, skipped), device, mixup = batch, self.run.accelerator.device, self.mixup
        state.skipped_images += skipped
        if mixup is not None and len(labels) % 2:
            images, labels = images[:-1], labels[:-1]
        if len(labels) == 0:
            raise DataError(f"a whole batch of {self.uri} failed to decode; check the data")
        if int(labels.max()) >= self.num_classes:
            raise DataError(f"label {int(labels.max())} in {self.uri} is outside 0..{self.num_classes - 1}; set "
                            "--set num_classes=N")
        for callback in self.callbacks:
            callback.on_batch(images, labels)
        images, labels = self.batches.to_device(images, device), labels.to(device)
        return mixup(images, labels) if mixup is not None else (images, labels)

    def loss(self, model: torch.nn.Module, images: torch.Tensor, targets: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"loss": self.criterion(model(images), targets)}

    def schedule(self, step: int) -> None:
        self.scheduler.step_update(step)

    def end_epoch(self, state: TrainState) -> None:
        """Evaluate when due (keeping the best weights); a train state when no step count asks for them; an epoch
        before the last also writes the weights (the last one's are written by `finish`, after its train state)."""
        run, recipe, epoch = self.run, self.recipe, state.epoch - 1
        last = state.epoch == recipe.epochs
        if self.eval_batches is not None and (last or recipe.eval_every and state.epoch % recipe.eval_every == 0):
            metrics = self._evaluate()
            state.metrics = metrics.to_dict()
            run.log.write("eval", epoch=epoch, step=state.step, **state.metrics)
            if self.reporter is not None:
                self.reporter.message(f"epoch {state.epoch}/{recipe.epochs}: top-1 {metrics.top1:.2f}%  "
                                      f"top-5 {metrics.top5:.2f}%  loss {metrics.loss:.4f}")
            if state.task.get("best_top1") is None or metrics.top1 > state.task["best_top1"]:
                state.task.update(best_top1=metrics.top1, best_epoch=state.epoch)
                self._save_weights("best.safetensors", state)
                crash_point(f"epoch{epoch}:best")
        if not recipe.checkpoint_every:
            run.save(state)
        if not last:
            self._save_weights("model.safetensors", state)
            crash_point(f"epoch{epoch}:weights")

    def _evaluate(self) -> EvalResult:
        """The end-of-epoch evaluation, with its own progress bar on the main process; every process scores
        every world-th image of the first `eval_samples` (training/shards.py), the counts are summed."""
        run, accelerator, reporter = self.run, self.run.accelerator, self.reporter
        sampler, rank, world = self.eval_batches.sampler, accelerator.process_index, accelerator.num_processes
        share = None if self.recipe.eval_samples is None else strided_share(self.recipe.eval_samples, rank, world)
        known = [n for n in (share, strided_share(sampler.n, rank, world) if sampler else None) if n is not None]
        advance, done = (lambda n: None), (lambda: None)
        if reporter is not None and hasattr(reporter, "phase"):
            advance, done = reporter.phase("evaluating", min(known) if known else None)
        # under FSDP and DeepSpeed through the engine (the unwrapped module may hold shards only); under DDP
        # through the plain module, whose forward is no collective, so processes may score different numbers
        model = self.model if engine_name(accelerator) in ("fsdp", "deepspeed") else run.parts.model
        lockstep = None
        if shards_parameters(accelerator):  # every forward pass is a collective: all processes run as many
            lockstep = Lockstep(lambda mine: bool(accelerator.reduce(
                torch.tensor([float(mine)], device=accelerator.device), reduction="sum").item()),
                torch.zeros(1, 3, *self.recipe.input_size, device=accelerator.device))
        try:
            return evaluate_batches(model, self.eval_batches.epoch(0), self.num_classes,
                                    device=accelerator.device, max_samples=share, autocast=accelerator.autocast,
                                    reduce=lambda t: accelerator.reduce(t, reduction="sum"), on_batch=advance,
                                    lockstep=lockstep)
        finally:
            done()

    def _save_weights(self, name: str, state: TrainState) -> None:
        """Every process gathers (FSDP and ZeRO-3 hold shards); the main process writes."""
        weights = gather_model_state(self.run.accelerator, self.model)
        if not self.run.main:
            return
        metrics = state.metrics
        meta = CheckpointMeta(self.recipe.variant, self.config, self.train_split.class_names, state.epoch,
                              input_size=tuple(self.recipe.input_size), recipe=self.recipe.to_dict(),
                              metrics={"top1": metrics["top1"], "top5": metrics["top5"]} if metrics else None)
        save_weights(self.run.out / name, weights, meta)

    def finish(self, state: TrainState) -> dict[str, Any]:
        """The final weights and the summary's entries, derived from the saved state only, so a run resumed
        after a kill here writes the same bytes."""
        accelerator = self.run.accelerator
        mine: dict[str, Any] = {"rank": accelerator.process_index, "skipped_images": state.skipped_images}
        if self.callbacks:  # a collective under FSDP: every process has the same callbacks (from the environment)
            digest = every_rank_weights_digest(accelerator, self.model)
            for callback in self.callbacks:
                mine.update(callback.on_end(digest))
        ranks = all_gather_objects(accelerator, mine)
        skipped = sum(r["skipped_images"] for r in ranks)
        if skipped:
            self.run.log.write("warning", message=f"{skipped} images could not be decoded and were skipped")
        self._save_weights("model.safetensors", state)
        crash_point("final:weights")
        return {"epochs": self.recipe.epochs, "metrics": state.metrics, "best_top1": state.task.get("best_top1"),
                "best_epoch": state.task.get("best_epoch"), "skipped_images": skipped, "ranks": ranks}


def train(recipe: TrainRecipe, output: str | Path | None = None, *, resume: bool | str | Path = False,
          overwrite: bool = False, reporter=None, explicit: dict[str, Any] | None = None,
          callbacks: Sequence[TrainCallback] = ()) -> TrainResult:
    """Train a classifier as the recipe says.

    `resume`: True continues the newest train state under `output` (or starts the run if it has none); a path
    names one train state folder (`output/checkpoints/step-N`) to continue from. `explicit`: the recipe keys the
    user gave (None: all of them), which a resumed run's recipe must agree with. `callbacks` see every batch
    and add to each process's entry of the summary (see `callbacks.RankProbe`).
    """
    out = Path(output) if output is not None else Path("runs") / f"{recipe.variant}-{datetime.now():%Y%m%d-%H%M%S}"
    return train_loop(recipe, out, lambda run: ClassificationEngine(run, callbacks, reporter), reporter,
                      resume=resume, overwrite=overwrite, explicit=explicit)
