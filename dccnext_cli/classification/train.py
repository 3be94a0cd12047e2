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

import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
import yaml

from ..common.crash_points import crash_point
from ..common.files import append_text, atomic_write_text, check_run_folder, check_writable, remove_run_files
from ..common.recipe_files import build_recipe, read_yaml
from ..common.run_lock import lock_folder, unlock_folder
from ..data.images import eval_transform
from ..data.loading import Batches, build_loader, train_transform
from ..data.sources import ImageSplit, open_split, parse_data
from ..errors import CheckpointError, ConfigError, DataError, DCCNeXtError, OutputExistsError
from ..models.config import DCCNeXtConfig
from ..models.dccnext import DCCNeXt
from ..models.pretrained import WarmStartReport, load_backbone_weights
from ..models.weights import CheckpointMeta, save_weights
from ..training.accelerator import (
    configure_engine,
    engine_name,
    make_accelerator,
    micro_batch,
    on_main_process,
    shards_parameters,
)
from ..training.full_state import StateView, every_rank_weights_digest, gather_model_state
from ..training.run_state import (
    Trainables,
    TrainState,
    find_checkpoint,
    list_checkpoints,
    load_run_state,
    prune_checkpoints,
    read_train_state,
    recover_checkpoints,
    save_run_state,
)
from ..training.shards import all_gather_objects
from ..training.state_checks import RunLimits, check_counters
from .callbacks import TrainCallback
from .evaluate import EvalResult, Lockstep, evaluate_batches
from .recipe import TrainRecipe

__all__ = ["TrainResult", "TrainingInterrupted", "train", "prepare_output", "RUN_FILES"]

RUN_FILES = ("model.safetensors", "best.safetensors", "recipe.yaml", "log.jsonl", "summary.json", "checkpoints", "tb")


class TrainingInterrupted(DCCNeXtError):
    """Ctrl-C: the run folder keeps its newest checkpoint; the message says how to continue."""

    exit_code = 130


@dataclass
class TrainResult:
    output: Path
    weights: Path
    epochs: int
    steps: int
    world_size: int
    wall_s: float
    metrics: dict[str, Any] | None = None
    skipped_images: int = 0
    ranks: list[dict[str, Any]] = field(default_factory=list)
    samples: int = 0  # training images drawn (resumed runs included), whatever the launch shape


TENSORBOARD_OFF = ("TensorBoard is off (not installed): scalars go to log.jsonl only; "
                   "pip install 'dccnext-cli[tensorboard]' to have them under tb/")


class _Log:
    """JSON lines on the main process (and TensorBoard scalars when tensorboard is installed)."""

    def __init__(self, run_dir: Path, enabled: bool):
        self.path, self.enabled, self.tb = run_dir / "log.jsonl", enabled, None
        if enabled:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(run_dir / "tb"))
            except ImportError:
                pass

    def write(self, event: str, **values: Any) -> None:
        if not self.enabled:
            return
        append_text(self.path, json.dumps({"event": event, "time": round(time.time(), 3), **values}) + "\n")
        if self.tb is not None and "step" in values:
            for key, value in values.items():
                if isinstance(value, (int, float)) and key not in ("step", "epoch"):
                    self.tb.add_scalar(f"{event}/{key}", value, values["step"])

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


# --------------------------------------------------------------------- the run folder and the launch
def prepare_output(output: str | Path | None, variant: str, *, resume: bool, overwrite: bool) -> Path:
    """The run folder: new, resumed (`resume`), or emptied of a previous run's files (`overwrite`)."""
    if output is None:
        return Path("runs") / f"{variant}-{datetime.now():%Y%m%d-%H%M%S}"
    out = Path(output)
    if out.exists() and not out.is_dir():
        raise OutputExistsError(f"-o {out} is a file; give a folder for the run")
    check_writable(out / "recipe.yaml", "-o")  # under a file, or in a read-only folder: refused before the work
    check_run_folder(out, RUN_FILES)  # a symbolic link at a run file: refused, never written through
    owned = [out / name for name in RUN_FILES if (out / name).exists()]
    if resume:
        return out
    if owned and not overwrite:
        raise OutputExistsError(f"{out} already holds a run ({owned[0].name}); pass --resume to continue it or "
                                "--overwrite to start again")
    return out


def _micro_batch(recipe: TrainRecipe, world: int) -> int:
    micro = micro_batch(recipe.batch_size, world, recipe.grad_accum)
    if recipe.uses_mixup and micro % 2:
        raise ConfigError(f"Mixup/CutMix needs an even batch per process, got {micro}; change batch_size")
    return micro


# options that set how a launch runs the recipe, not what it trains: a resumed run may change them
LAUNCH_OPTIONS = ("grad_accum",)


def _recipe_from_run(out: Path, recipe: TrainRecipe, explicit: dict[str, Any]) -> TrainRecipe:
    """A resumed run keeps the recipe it was started with; a conflicting explicit value is an error, except for
    the launch options (gradient accumulation: the total batch stays the recipe's)."""
    saved_path = out / "recipe.yaml"
    if not saved_path.is_file():
        return recipe
    saved = build_recipe(TrainRecipe, read_yaml(saved_path), str(saved_path))
    for key in explicit:
        if key not in LAUNCH_OPTIONS and getattr(saved, key) != getattr(recipe, key):
            raise ConfigError(f"{out} was started with {key}={getattr(saved, key)!r}; a resumed run keeps its "
                              f"recipe (remove the {key} option or start a new run)")
    return replace(saved, **{key: getattr(recipe, key) for key in LAUNCH_OPTIONS if key in explicit})


@dataclass
class _Run:
    """Stage 1, the launch: who we are in the process group, where the run lives, what it resumes."""

    recipe: TrainRecipe
    accelerator: Any
    out: Path
    checkpoint: Path | None  # the training checkpoint to continue from, if any
    resume: bool
    micro: int  # images per process per micro-batch
    notes: list[str] = field(default_factory=list)  # what resuming had to skip or complete, told to the user

    @property
    def main(self) -> bool:
        return self.accelerator.is_main_process


def _prepare_run(recipe: TrainRecipe, output: str | Path | None, resume: bool | str | Path, overwrite: bool,
                 explicit: dict[str, Any]) -> _Run:
    """The main process alone looks at the run folder (it may be on its node-local disk) and tells the others
    where the run lives, which checkpoint it continues and with which recipe."""
    accelerator = make_accelerator(recipe.amp, recipe.grad_accum)
    notes: list[str] = []

    def decide() -> tuple[Path, Path | None, TrainRecipe]:
        out = prepare_output(output, recipe.variant, resume=bool(resume), overwrite=overwrite)
        if out.is_dir():
            lock_folder(out)  # before anything is written; a second writer stops here
            if resume:
                recover_checkpoints(out, notes)
        checkpoint = None
        if isinstance(resume, (str, Path)):
            checkpoint = find_checkpoint(Path(resume), notes)
            if checkpoint is None:
                raise CheckpointError(f"--resume {resume}: no training checkpoint there")
        elif resume:
            checkpoint = find_checkpoint(out, notes)
        return out, checkpoint, _recipe_from_run(out, recipe, explicit) if resume else recipe

    out, checkpoint, recipe = on_main_process(accelerator, decide)
    accelerator.gradient_accumulation_steps = recipe.grad_accum  # a resumed run's own, or the one asked for now
    return _Run(recipe, accelerator, out, checkpoint, bool(resume), _micro_batch(recipe, accelerator.num_processes),
                notes if accelerator.is_main_process else [])


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


def _build_data(run: _Run) -> _Data:
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
    batches = build_loader(train_split, train_transform(recipe), run.micro, train=True, seed=recipe.seed, rank=rank,
                           world=world, workers=recipe.workers, shuffle_buffer=recipe.shuffle_buffer,
                           samples_per_epoch=samples)
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
class _Trainables:
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


def _build_trainables(run: _Run, data: _Data) -> _Trainables:
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
    return _Trainables(config, model, optimizer, scheduler, mixup, _criterion(recipe), total_steps, loaded,
                       warm_start)


def _plain_model(run: _Run, parts: _Trainables) -> torch.nn.Module:
    """The model without DDP and torch.compile wrappers: the weights' real names."""
    return run.accelerator.unwrap_model(parts.model, keep_torch_compile=False)


# --------------------------------------------------------------------- state: restore or start
def _state_parts(run: _Run, data: _Data, parts: _Trainables) -> Trainables:
    """What a training checkpoint holds besides the loop's position."""
    return Trainables(_plain_model(run, parts), parts.optimizer, getattr(run.accelerator, "scaler", None),
                      data.batches.loader.generator, prepared=parts.model)


def _restore_or_start(run: _Run, data: _Data, parts: _Trainables, overwrite: bool) -> TrainState:
    """Stage 4: the loop's position, from the checkpoint being resumed or fresh (writing recipe.yaml)."""
    accelerator, world = run.accelerator, run.accelerator.num_processes
    state = TrainState(world_size=world, micro_batch=run.micro)
    if run.main:
        run.out.mkdir(parents=True, exist_ok=True)
        lock_folder(run.out)
    if run.resume and run.checkpoint is not None:
        state = load_run_state(accelerator, run.checkpoint, _state_parts(run, data, parts), run.notes)
        check_counters(state, run.checkpoint / "train_state.json", RunLimits(
            parts.total_steps, data.steps_per_epoch, run.recipe.batch_size, run.recipe.epochs))
        if state.samples == 0:  # a checkpoint from before the image count was kept
            state.samples = state.step * run.recipe.batch_size
        if (state.world_size, state.micro_batch) != (world, run.micro):
            _reshape(run, state)
        accelerator.step = state.micro_steps
    elif run.main:
        if overwrite:  # only now, when everything has been checked
            remove_run_files(run.out, RUN_FILES)
        atomic_write_text(run.out / "recipe.yaml", yaml.safe_dump(run.recipe.to_dict(), sort_keys=False))
    accelerator.wait_for_everyone()
    return state


def _reshape(run: _Run, state: TrainState) -> None:
    """Elastic resume: a checkpoint written by another launch shape (processes x micro-batch x accumulation)
    continues at the same optimiser step and image count; each process skips the same number of optimiser
    steps of the epoch. The images of the rest of the epoch are dealt out differently, so the run is no longer
    the bitwise continuation of the one saved, and the user is told."""
    world, accum = run.accelerator.num_processes, run.recipe.grad_accum
    saved_accum = max(run.recipe.batch_size // max(state.world_size * state.micro_batch, 1), 1)
    steps_in_epoch = state.batch // saved_accum
    note = (f"{run.checkpoint} was written by {state.world_size} processes x {state.micro_batch} images x "
            f"{saved_accum} accumulation steps; continuing on {world} x {run.micro} x {accum} at step {state.step} "
            f"({state.samples} images seen), no longer bitwise the run that was saved")
    if world > state.world_size:
        note += f" (processes {state.world_size}..{world - 1} start from fresh random states)"
    run.notes.append(note)
    state.world_size, state.micro_batch = world, run.micro
    state.batch, state.micro_steps = steps_in_epoch * accum, state.step * accum


# --------------------------------------------------------------------- saving
def _save_weights_file(run: _Run, data: _Data, parts: _Trainables, name: str, epoch: int,
                       metrics: dict[str, Any] | None) -> None:
    """Every process gathers (FSDP and ZeRO-3 hold shards); the main process writes."""
    weights = gather_model_state(run.accelerator, parts.model)
    if not run.main:
        return
    meta = CheckpointMeta(run.recipe.variant, parts.config, data.train_split.class_names, epoch,
                          input_size=tuple(run.recipe.input_size), recipe=run.recipe.to_dict(),
                          metrics={"top1": metrics["top1"], "top5": metrics["top5"]} if metrics else None)
    save_weights(run.out / name, StateView(weights), meta)


def _checkpoint(run: _Run, data: _Data, parts: _Trainables, state: TrainState) -> None:
    """The full training state; every process takes part."""
    state.micro_steps = run.accelerator.step
    save_run_state(run.accelerator, run.out, state, _state_parts(run, data, parts), run.recipe.keep_last)


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


def _train_one_epoch(run: _Run, data: _Data, parts: _Trainables, state: TrainState, epoch: int, log: _Log,
                     reporter, callbacks: Sequence[TrainCallback], speed: _Throughput) -> None:
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
        images, labels = images.to(accelerator.device), labels.to(accelerator.device)
        targets = labels
        if parts.mixup is not None:
            images, targets = parts.mixup(images, labels)
        with accelerator.accumulate(model):
            with accelerator.autocast():
                loss = parts.criterion(model(images), targets)
            accelerator.backward(loss)
            if recipe.grad_clip and accelerator.sync_gradients:
                accelerator.clip_grad_norm_(model.parameters(), recipe.grad_clip)
            parts.optimizer.step()
            parts.optimizer.zero_grad(set_to_none=True)
        state.batch += 1
        state.samples += run.micro * accelerator.num_processes  # drawn from the data, decodable or not
        speed.images += len(labels) * accelerator.num_processes
        if not accelerator.sync_gradients:
            continue
        state.step += 1
        parts.scheduler.step_update(state.step)
        _report_step(run, data, parts, state, epoch, loss, log, reporter, speed)
        if recipe.checkpoint_every and state.step % recipe.checkpoint_every == 0:
            _checkpoint(run, data, parts, state)


def _report_step(run: _Run, data: _Data, parts: _Trainables, state: TrainState, epoch: int, loss: torch.Tensor,
                 log: _Log, reporter, speed: _Throughput) -> None:
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
    log.write("train", epoch=epoch, step=state.step, loss=round(loss_value, 5), lr=lr, img_s=round(rate, 1))
    if show:
        reporter.update(state.step, loss=loss_value, lr=lr, img_s=rate)


# --------------------------------------------------------------------- evaluate and save
def _eval_share(run: _Run, data: _Data) -> tuple[int | None, int | None]:
    """This process's part of `eval_samples` (a total over all processes; None: all its images), and how many
    images it will score (None: a stream of unknown length)."""
    total, world, rank = run.recipe.eval_samples, run.accelerator.num_processes, run.accelerator.process_index
    share = None if total is None else total // world + (rank < total % world)
    sampler = data.eval_batches.sampler
    known = [n for n in (share, len(range(rank, sampler.n, world)) if sampler is not None else None) if n is not None]
    return share, min(known) if known else None


def _evaluate(run: _Run, data: _Data, parts: _Trainables, reporter) -> EvalResult:
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


def _evaluate_and_save(run: _Run, data: _Data, parts: _Trainables, state: TrainState, epoch: int, log: _Log,
                       reporter) -> None:
    """End of an epoch: evaluate when due (keeping the best weights), then checkpoint; an epoch before the last
    also writes the weights (the last one's are written by `_finish`, after its checkpoint)."""
    recipe = run.recipe
    last = epoch == recipe.epochs - 1
    if data.eval_batches is not None and (last or (recipe.eval_every and (epoch + 1) % recipe.eval_every == 0)):
        metrics = _evaluate(run, data, parts, reporter)
        state.metrics = metrics.to_dict()
        log.write("eval", epoch=epoch, step=state.step, **state.metrics)
        if reporter is not None and run.main:
            reporter.message(f"epoch {epoch + 1}/{recipe.epochs}: top-1 {metrics.top1:.2f}%  "
                             f"top-5 {metrics.top5:.2f}%  loss {metrics.loss:.4f}")
        if state.best_top1 is None or metrics.top1 > state.best_top1:
            state.best_top1, state.best_epoch = metrics.top1, epoch + 1
            _save_weights_file(run, data, parts, "best.safetensors", epoch + 1, state.metrics)
            crash_point(f"epoch{epoch}:best")
    state.epoch = epoch + 1
    if not recipe.checkpoint_every or last:
        _checkpoint(run, data, parts, state)
    if not last:
        _save_weights_file(run, data, parts, "model.safetensors", state.epoch, state.metrics)
        crash_point(f"epoch{epoch}:weights")


# --------------------------------------------------------------------- the end
def _summary(state: TrainState, world: int, epochs: int, wall_s: float, ranks: list[dict[str, Any]]) -> dict:
    return {"world_size": world, "epochs": epochs, "steps": state.step, "wall_s": round(wall_s, 1),
            "metrics": state.metrics, "best_top1": state.best_top1, "best_epoch": state.best_epoch,
            "skipped_images": sum(r["skipped_images"] for r in ranks), "samples": state.samples, "ranks": ranks}


def _finish(run: _Run, data: _Data, parts: _Trainables, state: TrainState, log: _Log,
            callbacks: Sequence[TrainCallback], wall_s: float) -> TrainResult:
    """After the last checkpoint: the final weights, then the summary (the run's commit mark), both derived
    from the checkpointed state only, so a run resumed after a kill here writes the same bytes."""
    accelerator = run.accelerator
    mine: dict[str, Any] = {"rank": accelerator.process_index, "skipped_images": state.skipped_images}
    if callbacks:  # a collective under FSDP: every process has the same callbacks (from the environment)
        digest = every_rank_weights_digest(accelerator, parts.model)
        for callback in callbacks:
            mine.update(callback.on_end(digest))
    ranks = all_gather_objects(accelerator, mine)
    summary = _summary(state, accelerator.num_processes, run.recipe.epochs, wall_s, ranks)
    if summary["skipped_images"]:
        log.write("warning", message=f"{summary['skipped_images']} images could not be decoded and were skipped")
    if run.main:  # a save interrupted before its pruning is finished here
        prune_checkpoints(run.out, run.recipe.keep_last, state.step)
    _save_weights_file(run, data, parts, "model.safetensors", state.epoch, state.metrics)
    crash_point("final:weights")
    log.write("end", **summary)
    log.close()
    if run.main:
        atomic_write_text(run.out / "summary.json", json.dumps(summary, indent=1))
        crash_point("final:summary")
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return _result(run.out, summary, wall_s)


def _result(out: Path, summary: dict[str, Any], wall_s: float) -> TrainResult:
    return TrainResult(out, out / "model.safetensors", summary["epochs"], summary["steps"], summary["world_size"],
                       wall_s, summary["metrics"], summary["skipped_images"], summary["ranks"],
                       summary.get("samples", 0))


def _completed(run: _Run) -> TrainResult | None:
    """A resumed run whose last checkpoint ends the schedule and whose summary records it: nothing to do."""
    if run.checkpoint is None:
        return None
    state = read_train_state(run.checkpoint)
    try:
        summary = json.loads((run.out / "summary.json").read_text())
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    if state.epoch < run.recipe.epochs or not isinstance(summary, dict) or summary.get("steps") != state.step \
            or not (run.out / "model.safetensors").is_file():
        return None
    try:
        return _result(run.out, summary, float(summary.get("wall_s", 0.0)))
    except (KeyError, TypeError):
        return None


def _start_log(run: _Run, data: _Data, parts: _Trainables, state: TrainState) -> _Log:
    log = _Log(run.out, run.main)
    log.write("start", world_size=run.accelerator.num_processes, micro_batch=run.micro,
              grad_accum=run.recipe.grad_accum, engine=engine_name(run.accelerator), step=state.step,
              samples=state.samples,
              steps_per_epoch=data.steps_per_epoch, total_steps=parts.total_steps,
              resumed_from=str(run.checkpoint) if run.checkpoint else None, data=data.uri,
              num_classes=data.num_classes, device=str(run.accelerator.device),
              mixed_precision=run.accelerator.mixed_precision, pretrained=parts.loaded,
              warm_start=parts.warm_start.to_dict() if parts.warm_start else None)
    for note in run.notes:
        log.write("warning", message=note)
    return log


def _tell(run: _Run, reporter, text: str, warning: bool = False) -> None:
    if reporter is not None and run.main:
        reporter.warning(text) if warning else reporter.message(text)


def train(recipe: TrainRecipe, output: str | Path | None = None, *, resume: bool | str | Path = False,
          overwrite: bool = False, reporter=None, explicit: dict[str, Any] | None = None,
          callbacks: Sequence[TrainCallback] = ()) -> TrainResult:
    """Train a classifier as the recipe says.

    `resume`: True continues the newest checkpoint under `output` (or starts the run if it has none); a path
    names one checkpoint folder (`output/checkpoints/step-N`) to continue from. `callbacks` see every batch
    and add to each process's entry of the summary (see `callbacks.RankProbe`).
    """
    run = _prepare_run(recipe, output, resume, overwrite, explicit or {})
    try:
        return _train(run, overwrite, reporter, callbacks)
    finally:
        unlock_folder(run.out)


def _train(run: _Run, overwrite: bool, reporter, callbacks: Sequence[TrainCallback]) -> TrainResult:
    start_time, recipe = time.time(), run.recipe  # a resumed run keeps its own recipe
    for note in run.notes:
        _tell(run, reporter, note, warning=True)
    done = on_main_process(run.accelerator, lambda: _completed(run))
    if done is not None:
        _tell(run, reporter, f"{run.out} is complete ({done.steps} steps); nothing to do")
        return done
    data = _build_data(run)
    parts = _build_trainables(run, data)
    told = len(run.notes)
    state = _restore_or_start(run, data, parts, overwrite)
    for note in run.notes[told:]:  # what resuming had to change (another launch shape)
        _tell(run, reporter, note, warning=True)
    log = _start_log(run, data, parts, state)
    if reporter is not None and run.main and parts.warm_start is not None:
        reporter.message(parts.warm_start.table())
    if run.main and log.tb is None:
        log.write("note", message=TENSORBOARD_OFF)
        if reporter is not None:
            reporter.message(TENSORBOARD_OFF)
    parts.scheduler.step_update(state.step)
    if reporter is not None and run.main:
        reporter.start(parts.total_steps, state.step, f"training {recipe.variant} on {data.uri}")
    speed = _Throughput()
    try:
        parts.model.train()
        for epoch in range(state.epoch, recipe.epochs):
            state.epoch = epoch
            _train_one_epoch(run, data, parts, state, epoch, log, reporter, callbacks, speed)
            state.batch = 0
            _evaluate_and_save(run, data, parts, state, epoch, log, reporter)
            speed.reset()  # img/s counts training only
    except KeyboardInterrupt:
        if reporter is not None and run.main:
            reporter.stop()
        again = "" if list_checkpoints(run.out) else " (no checkpoint yet: it starts again)"
        raise TrainingInterrupted(f"interrupted at step {state.step}; continue with: dccnext train -o {run.out} "
                                  f"--resume{again}") from None
    if reporter is not None and run.main:
        reporter.stop()
    return _finish(run, data, parts, state, log, callbacks, time.time() - start_time)
