"""The training loop: the paper's recipe on Hugging Face Accelerate, from one CPU to many GPUs and nodes.

    dccnext train --variant b0                                  # one process, embedded data, quickstart recipe
    accelerate launch --multi_gpu --num_processes 8 -m dccnext_cli train --recipe imagenet/b2

One process per device; `batch_size` in the recipe is the total per optimiser step, split over processes and
gradient-accumulation steps, so a recipe means the same thing on 1 or 64 GPUs. Without CUDA the Accelerator is
made with `cpu=True`, which is what makes `accelerate launch --multi_gpu` start real CPU processes.

`train` reads top to bottom in named stages: prepare the run, build the data, build the model and optimiser,
restore or start the state, then one epoch and one evaluate-and-save at a time, and the summary.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import torch

from ..common.crash_points import crash_point
from ..data.images import eval_transform
from ..data.loading import Batches, build_loader, device_finish, train_transform
from ..data.sources import ImageSplit, open_split, parse_data
from ..errors import ConfigError, DataError
from ..models.config import DCCNeXtConfig
from ..models.dccnext import DCCNeXt
from ..models.pretrained import WarmStartReport, load_backbone_weights
from ..models.weights import CheckpointMeta, save_weights
from ..training.accelerator import (
    configure_engine,
    engine_name,
    micro_batch,
    micro_step,
    on_main_process,
    shards_parameters,
)
from ..training.full_state import StateView, every_rank_weights_digest, gather_model_state
from ..training.run_folder import RunFolder, Teller, TrainResult
from ..training.run_state import Trainables, TrainState, prune_checkpoints, read_train_state
from ..training.shards import all_gather_objects
from ..training.state_checks import RunLimits
from .callbacks import TrainCallback
from .evaluate import EvalResult, Lockstep, evaluate_batches
from .recipe import TrainRecipe

__all__ = ["TrainResult", "train"]


def _micro_batch(recipe: TrainRecipe, world: int) -> int:
    micro = micro_batch(recipe.batch_size, world, recipe.grad_accum)
    if recipe.uses_mixup and micro % 2:
        raise ConfigError(f"Mixup/CutMix needs an even batch per process, got {micro}; change batch_size")
    return micro


# --------------------------------------------------------------------- data
@dataclass
class _Data:
    """Stage 2: the loaders and what the schedule needs to know about them."""

    uri: str
    train_split: ImageSplit
    batches: Batches
    eval_batches: Batches | None
    num_classes: int
    micro_per_epoch: int  # micro-batches per process per epoch, a multiple of grad_accum
    steps_per_epoch: int  # optimiser steps per epoch


def _open_eval_split(source, recipe: TrainRecipe) -> ImageSplit | None:
    if not recipe.eval_split:
        return None
    try:
        return open_split(source, recipe.eval_split, streaming=recipe.streaming,
                          image_column=recipe.image_column, label_column=recipe.label_column)
    except DataError as e:
        raise DataError(f"{e} (evaluation split; --set eval_split=NAME picks another, "
                        "--set eval_split=null trains without one)") from None


def _build_data(run: RunFolder) -> _Data:
    recipe, accelerator = run.recipe, run.accelerator
    rank, world = accelerator.process_index, accelerator.num_processes
    source = parse_data(recipe.data)
    train_split = open_split(source, recipe.train_split, streaming=recipe.streaming,
                             image_column=recipe.image_column, label_column=recipe.label_column)
    eval_split = _open_eval_split(source, recipe)
    num_classes = train_split.num_classes or recipe.num_classes  # data that names its classes wins
    if num_classes is None:
        raise ConfigError(f"{source.uri} does not name its classes; set --set num_classes=N")
    samples = train_split.num_samples or recipe.train_samples
    if samples is None:
        raise ConfigError(f"{source.uri} is a stream of unknown length; set --set train_samples=N for the schedule")
    device_side = accelerator.device.type == "cuda"  # uint8 batches, normalised and erased on the GPU
    batches = build_loader(train_split, train_transform(recipe, device_side), run.micro, train=True, seed=recipe.seed,
                           rank=rank, world=world, workers=recipe.workers, shuffle_buffer=recipe.shuffle_buffer,
                           samples_per_epoch=samples, finish=device_finish(recipe) if device_side else None)
    micro_per_epoch = batches.steps_per_epoch
    if recipe.train_samples:  # caps an epoch of any source (a quick run: --set train_samples=N)
        micro_per_epoch = min(micro_per_epoch, recipe.train_samples // (run.micro * world))
        samples = min(samples, recipe.train_samples)
    micro_per_epoch -= micro_per_epoch % recipe.grad_accum
    if micro_per_epoch == 0:
        raise DataError(f"{source.uri} ({recipe.train_split}) gives {samples} images an epoch, fewer than one batch "
                        f"of {recipe.batch_size}; lower --batch-size")
    eval_batches = None
    if eval_split is not None:
        eval_tf = eval_transform(recipe.input_size, crop_pct=recipe.crop_pct, interpolation=recipe.interpolation,
                                 mean=recipe.mean, std=recipe.std)
        eval_batches = build_loader(eval_split, eval_tf, max(run.micro, 64), train=False, rank=rank, world=world,
                                    workers=recipe.workers)
    return _Data(source.uri, train_split, batches, eval_batches, num_classes, micro_per_epoch,
                 micro_per_epoch // recipe.grad_accum)


# --------------------------------------------------------------------- model and optimiser
@dataclass
class _ModelParts:
    """Stage 3: the prepared model and what updates it."""

    config: DCCNeXtConfig
    model: torch.nn.Module  # wrapped by Accelerate (and torch.compile)
    optimizer: Any
    scheduler: Any
    mixup: Any
    criterion: torch.nn.Module
    total_steps: int
    loaded: str | None  # what --weights loaded, for the log
    warm_start: WarmStartReport | None = None  # a ConvFormer warm start: what it loaded and left at init


def _criterion(recipe: TrainRecipe):
    from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy

    if recipe.uses_mixup:
        return SoftTargetCrossEntropy()
    if recipe.smoothing > 0:
        return LabelSmoothingCrossEntropy(recipe.smoothing)
    return torch.nn.CrossEntropyLoss()


def _build_trainables(run: RunFolder, data: _Data) -> _ModelParts:
    from accelerate.utils import set_seed
    from timm.data import Mixup
    from timm.optim import create_optimizer_v2
    from timm.scheduler import CosineLRScheduler

    recipe = run.recipe
    set_seed(recipe.seed, device_specific=True)
    config = recipe.model_config().replace(num_classes=data.num_classes)
    model = DCCNeXt(config)
    loaded, warm_start = load_backbone_weights(model, recipe.pretrained, recipe.variant) if recipe.pretrained \
        else (None, None)
    if recipe.grad_checkpointing:
        model.set_grad_checkpointing(True)
    peak = recipe.peak_lr()
    optimizer = create_optimizer_v2(model, opt=recipe.opt, lr=peak, weight_decay=recipe.weight_decay)
    total_steps = data.steps_per_epoch * recipe.epochs
    # a peak below the recipe's floor (a tiny --lr) caps the floor, or the "decay" would raise the lr
    scheduler = CosineLRScheduler(optimizer, t_initial=total_steps, lr_min=min(recipe.min_lr, peak),
                                  warmup_t=round(recipe.warmup_epochs * data.steps_per_epoch),
                                  warmup_lr_init=min(recipe.warmup_lr, peak), t_in_epochs=False)
    if recipe.compile:
        model = torch.compile(model)
    configure_engine(run.accelerator, run.micro, recipe.grad_clip)  # DeepSpeed's "auto" micro-batch and clipping
    model, optimizer = run.accelerator.prepare(model, optimizer)
    mixup = Mixup(mixup_alpha=recipe.mixup, cutmix_alpha=recipe.cutmix, prob=recipe.mixup_prob,
                  switch_prob=recipe.mixup_switch_prob, label_smoothing=recipe.smoothing,
                  num_classes=data.num_classes) if recipe.uses_mixup else None
    return _ModelParts(config, model, optimizer, scheduler, mixup, _criterion(recipe), total_steps, loaded,
                       warm_start)


def _plain_model(run: RunFolder, parts: _ModelParts) -> torch.nn.Module:
    """The model without DDP and torch.compile wrappers: the weights' real names."""
    return run.accelerator.unwrap_model(parts.model, keep_torch_compile=False)


# --------------------------------------------------------------------- state: restore or start
def _state_parts(run: RunFolder, data: _Data, parts: _ModelParts) -> Trainables:
    """What a training checkpoint holds besides the loop's position."""
    return Trainables(_plain_model(run, parts), parts.optimizer, getattr(run.accelerator, "scaler", None),
                      data.batches.loader.generator, prepared=parts.model)


# --------------------------------------------------------------------- saving
def _save_weights_file(run: RunFolder, data: _Data, parts: _ModelParts, name: str, epoch: int,
                       metrics: dict[str, Any] | None) -> None:
    """Every process gathers (FSDP and ZeRO-3 hold shards); the main process writes."""
    weights = gather_model_state(run.accelerator, parts.model)
    if not run.main:
        return
    meta = CheckpointMeta(run.recipe.variant, parts.config, data.train_split.class_names, epoch,
                          input_size=tuple(run.recipe.input_size), recipe=run.recipe.to_dict(),
                          metrics={"top1": metrics["top1"], "top5": metrics["top5"]} if metrics else None)
    save_weights(run.out / name, StateView(weights), meta)


# --------------------------------------------------------------------- one epoch
class _Throughput:
    """Images per second over the window since the last log line (training only)."""

    def __init__(self):
        self.reset()

    def reset(self) -> None:
        self.start, self.images = time.perf_counter(), 0

    def rate(self) -> float:
        value = self.images / max(time.perf_counter() - self.start, 1e-9)
        self.reset()
        return value


def _check_labels(labels: torch.Tensor, data: _Data) -> None:
    if len(labels) == 0:
        raise DataError(f"a whole batch of {data.uri} failed to decode; check the data")
    if int(labels.max()) >= data.num_classes:
        raise DataError(f"label {int(labels.max())} in {data.uri} is outside 0..{data.num_classes - 1}; "
                        "set --set num_classes=N")


def _train_one_epoch(run: RunFolder, data: _Data, parts: _ModelParts, state: TrainState, epoch: int, reporter,
                     callbacks: Sequence[TrainCallback], speed: _Throughput) -> None:
    accelerator, recipe, model = run.accelerator, run.recipe, parts.model
    for images, labels, skipped in data.batches.epoch(epoch, skip_batches=state.batch):
        if state.batch >= data.micro_per_epoch:
            break
        state.skipped_images += skipped
        if parts.mixup is not None and len(labels) % 2:
            images, labels = images[:-1], labels[:-1]
        _check_labels(labels, data)
        for callback in callbacks:
            callback.on_batch(images, labels)
        images, labels = data.batches.to_device(images, accelerator.device), labels.to(accelerator.device)
        targets = labels
        if parts.mixup is not None:
            images, targets = parts.mixup(images, labels)
        loss = micro_step(accelerator, model, parts.optimizer, recipe.grad_clip,
                          lambda m, x, y: {"loss": parts.criterion(m(x), y)}, images, targets)["loss"]
        state.batch += 1
        state.samples += run.micro * accelerator.num_processes  # drawn from the data, decodable or not
        speed.images += len(labels) * accelerator.num_processes
        if not accelerator.sync_gradients:
            continue
        state.step += 1
        parts.scheduler.step_update(state.step)
        _report_step(run, data, parts, state, epoch, loss, reporter, speed)
        save, stop = run.saving.due(state.step)
        if save:
            run.save(state, _state_parts(run, data, parts))
        crash_point(f"step-{state.step}")
        if stop:
            raise KeyboardInterrupt


def _report_step(run: RunFolder, data: _Data, parts: _ModelParts, state: TrainState, epoch: int, loss: torch.Tensor,
                 reporter, speed: _Throughput) -> None:
    """Every `log_every` steps (and at the end of an epoch): the mean loss over processes, lr and img/s."""
    lr = parts.optimizer.param_groups[0]["lr"]
    show = reporter is not None and run.main
    if state.step % run.recipe.log_every and state.batch != data.micro_per_epoch:
        if show:
            reporter.update(state.step)
        return
    loss_value = float(run.accelerator.reduce(loss.detach().float(), reduction="mean"))
    if not math.isfinite(loss_value):
        raise DataError(f"the loss became {loss_value} at step {state.step}; lower the lr")
    rate = speed.rate()
    run.log.write("train", epoch=epoch, step=state.step, loss=round(loss_value, 5), lr=lr, img_s=round(rate, 1))
    if show:
        reporter.update(state.step, loss=loss_value, lr=lr, img_s=rate)


# --------------------------------------------------------------------- evaluate and save
def _eval_share(run: RunFolder, data: _Data) -> tuple[int | None, int | None]:
    """This process's part of `eval_samples` (a total over all processes; None: all its images), and how many
    images it will score (None: a stream of unknown length)."""
    total, world, rank = run.recipe.eval_samples, run.accelerator.num_processes, run.accelerator.process_index
    share = None if total is None else total // world + (rank < total % world)
    sampler = data.eval_batches.sampler
    known = [n for n in (share, len(range(rank, sampler.n, world)) if sampler is not None else None) if n is not None]
    return share, min(known) if known else None


def _evaluate(run: RunFolder, data: _Data, parts: _ModelParts, reporter) -> EvalResult:
    """The end-of-epoch evaluation, with its own progress bar on the main process."""
    accelerator, (share, count) = run.accelerator, _eval_share(run, data)
    advance, done = (lambda n: None), (lambda: None)
    if reporter is not None and run.main and hasattr(reporter, "phase"):
        advance, done = reporter.phase("evaluating", count)
    # under FSDP and DeepSpeed through the engine (the unwrapped module may hold shards only); under DDP through
    # the plain module, whose forward is no collective, so processes may score different numbers of batches
    model = parts.model if engine_name(accelerator) in ("fsdp", "deepspeed") else _plain_model(run, parts)
    lockstep = None
    if shards_parameters(accelerator):  # every forward pass is a collective: all processes run as many
        lockstep = Lockstep(lambda mine: bool(accelerator.reduce(torch.tensor([float(mine)], device=accelerator.device),
                                                                 reduction="sum").item()),
                            torch.zeros(1, 3, *run.recipe.input_size, device=accelerator.device))
    try:
        return evaluate_batches(model, data.eval_batches.epoch(0), data.num_classes,
                                device=accelerator.device, max_samples=share, autocast=accelerator.autocast,
                                reduce=lambda t: accelerator.reduce(t, reduction="sum"), on_batch=advance,
                                lockstep=lockstep)
    finally:
        done()


def _evaluate_and_save(run: RunFolder, data: _Data, parts: _ModelParts, state: TrainState, epoch: int,
                       reporter) -> None:
    """End of an epoch: evaluate when due (keeping the best weights), then checkpoint; an epoch before the last
    also writes the weights (the last one's are written by `_finish`, after its checkpoint)."""
    recipe = run.recipe
    last = epoch == recipe.epochs - 1
    if data.eval_batches is not None and (last or (recipe.eval_every and (epoch + 1) % recipe.eval_every == 0)):
        metrics = _evaluate(run, data, parts, reporter)
        state.metrics = metrics.to_dict()
        run.log.write("eval", epoch=epoch, step=state.step, **state.metrics)
        if reporter is not None and run.main:
            reporter.message(f"epoch {epoch + 1}/{recipe.epochs}: top-1 {metrics.top1:.2f}%  "
                             f"top-5 {metrics.top5:.2f}%  loss {metrics.loss:.4f}")
        if state.best_top1 is None or metrics.top1 > state.best_top1:
            state.best_top1, state.best_epoch = metrics.top1, epoch + 1
            _save_weights_file(run, data, parts, "best.safetensors", epoch + 1, state.metrics)
            crash_point(f"epoch{epoch}:best")
    state.epoch = epoch + 1
    if not recipe.checkpoint_every or last:
        run.save(state, _state_parts(run, data, parts))
    if not last:
        _save_weights_file(run, data, parts, "model.safetensors", state.epoch, state.metrics)
        crash_point(f"epoch{epoch}:weights")


# --------------------------------------------------------------------- the end
def _summary(state: TrainState, world: int, epochs: int, wall_s: float, ranks: list[dict[str, Any]]) -> dict:
    return {"world_size": world, "epochs": epochs, "steps": state.step, "wall_s": round(wall_s, 1),
            "metrics": state.metrics, "best_top1": state.best_top1, "best_epoch": state.best_epoch,
            "skipped_images": sum(r["skipped_images"] for r in ranks), "samples": state.samples, "ranks": ranks}


def _finish(run: RunFolder, data: _Data, parts: _ModelParts, state: TrainState, callbacks: Sequence[TrainCallback],
            wall_s: float) -> TrainResult:
    """After the last train state: the final weights, then the summary (the run's commit mark), both derived
    from the saved state only, so a run resumed after a kill here writes the same bytes."""
    accelerator = run.accelerator
    mine: dict[str, Any] = {"rank": accelerator.process_index, "skipped_images": state.skipped_images}
    if callbacks:  # a collective under FSDP: every process has the same callbacks (from the environment)
        digest = every_rank_weights_digest(accelerator, parts.model)
        for callback in callbacks:
            mine.update(callback.on_end(digest))
    ranks = all_gather_objects(accelerator, mine)
    summary = _summary(state, accelerator.num_processes, run.recipe.epochs, wall_s, ranks)
    if summary["skipped_images"]:
        run.log.write("warning", message=f"{summary['skipped_images']} images could not be decoded and were skipped")
    if run.main:  # a save interrupted before its pruning is finished here
        prune_checkpoints(run.out, run.recipe.keep_last, state.step)
    _save_weights_file(run, data, parts, "model.safetensors", state.epoch, state.metrics)
    crash_point("final:weights")
    run.finish(summary)
    crash_point("final:summary")
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return _result(run.out, summary, wall_s)


def _result(out: Path, summary: dict[str, Any], wall_s: float) -> TrainResult:
    return TrainResult(out, out / "model.safetensors", summary["steps"], summary["world_size"], summary["metrics"],
                       summary["epochs"], wall_s, summary["skipped_images"], summary["ranks"],
                       summary.get("samples", 0))


def _completed(run: RunFolder) -> TrainResult | None:
    """A resumed run whose summary records its newest train state: nothing to do."""
    summary = run.completed()
    if summary is None or read_train_state(run.train_state).epoch < run.recipe.epochs:
        return None
    try:
        return _result(run.out, summary, float(summary.get("wall_s", 0.0)))
    except (KeyError, TypeError, ValueError):
        return None


def _start_log(run: RunFolder, data: _Data, parts: _ModelParts, state: TrainState) -> None:
    run.log.write("start", world_size=run.accelerator.num_processes, micro_batch=run.micro,
                  grad_accum=run.recipe.grad_accum, engine=engine_name(run.accelerator), step=state.step,
                  samples=state.samples, steps_per_epoch=data.steps_per_epoch, total_steps=parts.total_steps,
                  resumed_from=str(run.train_state) if run.train_state else None, data=data.uri,
                  num_classes=data.num_classes, device=str(run.accelerator.device),
                  mixed_precision=run.accelerator.mixed_precision, pretrained=parts.loaded,
                  warm_start=parts.warm_start.to_dict() if parts.warm_start else None)


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
    run = RunFolder.launch(recipe, out, resume=resume, overwrite=overwrite, explicit=explicit, micro=_micro_batch)
    try:
        return _train(run, reporter, callbacks)
    finally:
        run.close()


def _train(run: RunFolder, reporter, callbacks: Sequence[TrainCallback]) -> TrainResult:
    start_time, recipe, tell = time.time(), run.recipe, Teller(run.main, reporter)  # a resumed run's own recipe
    tell.notes(run.notes)
    done = on_main_process(run.accelerator, lambda: _completed(run))
    if done is not None:
        tell(f"{run.out} is complete ({done.steps} steps); nothing to do")
        return done
    data = _build_data(run)
    parts = _build_trainables(run, data)
    run.start(recipe.to_dict())
    state = run.restore(_state_parts(run, data, parts), RunLimits(parts.total_steps, data.steps_per_epoch,
                                                                   recipe.batch_size, recipe.epochs))
    _start_log(run, data, parts, state)
    tell.start(run, state)
    if parts.warm_start is not None:
        tell(parts.warm_start.table())
    parts.scheduler.step_update(state.step)
    if reporter is not None and run.main:
        reporter.start(parts.total_steps, state.step, f"training {recipe.variant} on {data.uri}")
    speed = _Throughput()
    try:
        with run.saving:
            parts.model.train()
            for epoch in range(state.epoch, recipe.epochs):
                state.epoch = epoch
                _train_one_epoch(run, data, parts, state, epoch, reporter, callbacks, speed)
                state.batch = 0
                _evaluate_and_save(run, data, parts, state, epoch, reporter)
                speed.reset()  # img/s counts training only
    except KeyboardInterrupt:
        tell.stop()
        raise run.interrupted(state.step) from None
    tell.stop()
    return _finish(run, data, parts, state, callbacks, time.time() - start_time)
