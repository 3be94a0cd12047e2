"""The training loop: the paper's recipe on Hugging Face Accelerate, from one CPU to many GPUs and nodes.

    dccnext train --variant b0                                  # one process, embedded data, quickstart recipe
    accelerate launch --multi_gpu --num_processes 8 -m dccnext_cli train --recipe imagenet/b2

One process per device; `batch_size` in the recipe is the total per optimiser step, split over processes and
gradient-accumulation steps, so a recipe means the same thing on 1 or 64 GPUs. Without CUDA the Accelerator is
made with `cpu=True`, which is what makes `accelerate launch --multi_gpu` start real CPU processes (notes.md).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
import yaml

from ..checkpoint import CheckpointMeta, atomic_write, save_weights
from ..data.images import eval_transform
from ..data.loading import build_loader, train_transform
from ..data.sources import open_split, parse_data
from ..errors import CheckpointError, ConfigError, DataError, DCCNeXtError, OutputExistsError
from ..models.config import variant_config
from ..models.dccnext import DCCNeXt
from ..models.dense import load_backbone_weights
from .evaluate import EvalResult, evaluate_batches
from .recipe import TrainRecipe
from .run_state import TrainState, clean_stale, latest_checkpoint, list_checkpoints, load_run_state, save_run_state

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
        with self.path.open("a") as f:
            f.write(json.dumps({"event": event, "time": round(time.time(), 3), **values}) + "\n")
        if self.tb is not None and "step" in values:
            for key, value in values.items():
                if isinstance(value, (int, float)) and key not in ("step", "epoch"):
                    self.tb.add_scalar(f"{event}/{key}", value, values["step"])

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def prepare_output(output: str | Path | None, variant: str, *, resume: bool, overwrite: bool) -> Path:
    """The run folder: new, resumed (`resume`), or emptied of a previous run's files (`overwrite`)."""
    if output is None:
        return Path("runs") / f"{variant}-{datetime.now():%Y%m%d-%H%M%S}"
    out = Path(output)
    if out.exists() and not out.is_dir():
        raise OutputExistsError(f"-o {out} is a file; give a folder for the run")
    owned = [out / name for name in RUN_FILES if (out / name).exists()]
    if resume:
        return out
    if owned and not overwrite:
        raise OutputExistsError(f"{out} already holds a run ({owned[0].name}); pass --resume to continue it or "
                                "--overwrite to start again")
    return out


def _clear_run(out: Path) -> None:
    for name in RUN_FILES:
        p = out / name
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()


def _mixed_precision(amp: str) -> str:
    if amp != "auto":
        return amp
    return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"


def make_accelerator(recipe: TrainRecipe):
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=not torch.cuda.is_available(), mixed_precision=_mixed_precision(recipe.amp),
                              gradient_accumulation_steps=recipe.grad_accum)
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if accelerator.num_processes != launched:
        raise ConfigError(f"{launched} processes were launched but Accelerate formed a group of "
                          f"{accelerator.num_processes}; on CPUs launch with --multi_gpu (see README)")
    return accelerator


def _weights_digest(model: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def _micro_batch(recipe: TrainRecipe, world: int) -> int:
    per_step = world * recipe.grad_accum
    if recipe.batch_size % per_step:
        raise ConfigError(f"batch_size {recipe.batch_size} (the total per optimiser step) is not divisible by "
                          f"{world} processes x {recipe.grad_accum} accumulation steps")
    micro = recipe.batch_size // per_step
    if recipe.uses_mixup and micro % 2:
        raise ConfigError(f"Mixup/CutMix needs an even batch per process, got {micro}; change batch_size")
    return micro


def _criterion(recipe: TrainRecipe):
    from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy

    if recipe.uses_mixup:
        return SoftTargetCrossEntropy()
    if recipe.smoothing > 0:
        return LabelSmoothingCrossEntropy(recipe.smoothing)
    return torch.nn.CrossEntropyLoss()


def _recipe_from_run(out: Path, recipe: TrainRecipe, explicit: dict[str, Any]) -> TrainRecipe:
    """A resumed run keeps the recipe it was started with; a conflicting explicit value is an error."""
    saved_path = out / "recipe.yaml"
    if not saved_path.is_file():
        return recipe
    from .recipe_files import build_recipe

    saved = build_recipe(TrainRecipe, yaml.safe_load(saved_path.read_text()), str(saved_path))
    for key in explicit:
        if getattr(saved, key) != getattr(recipe, key):
            raise ConfigError(f"{out} was started with {key}={getattr(saved, key)!r}; a resumed run keeps its "
                              f"recipe (remove the {key} option or start a new run)")
    return saved


def train(recipe: TrainRecipe, output: str | Path | None = None, *, resume: bool | str | Path = False,
          overwrite: bool = False, reporter=None, explicit: dict[str, Any] | None = None) -> TrainResult:
    """Train a classifier as the recipe says.

    `resume`: True continues the newest checkpoint under `output` (or starts the run if it has none); a path
    names one checkpoint folder (`output/checkpoints/step-N`) to continue from.
    """
    from accelerate.utils import broadcast_object_list, set_seed
    from timm.data import Mixup
    from timm.optim import create_optimizer_v2
    from timm.scheduler import CosineLRScheduler

    start_time = time.time()
    accelerator = make_accelerator(recipe)
    world, rank, main = accelerator.num_processes, accelerator.process_index, accelerator.is_main_process
    out_holder = [str(prepare_output(output, recipe.variant, resume=resume, overwrite=overwrite)) if main else None]
    out = Path(broadcast_object_list(out_holder)[0] if world > 1 else out_holder[0])
    checkpoint = None
    if isinstance(resume, (str, Path)):
        checkpoint = latest_checkpoint(Path(resume))
        if checkpoint is None:
            raise CheckpointError(f"--resume {resume}: no training checkpoint there")
    elif resume:
        checkpoint = latest_checkpoint(out)
    if resume:
        recipe = _recipe_from_run(out, recipe, explicit or {})
    micro = _micro_batch(recipe, world)

    # data
    source = parse_data(recipe.data)
    train_split = open_split(source, recipe.train_split, streaming=recipe.streaming,
                             image_column=recipe.image_column, label_column=recipe.label_column)
    eval_split = None
    if recipe.eval_split:
        try:
            eval_split = open_split(source, recipe.eval_split, streaming=recipe.streaming,
                                    image_column=recipe.image_column, label_column=recipe.label_column)
        except DataError as e:
            raise DataError(f"{e} (evaluation split; --set eval_split=NAME picks another, "
                            "--set eval_split=null trains without one)") from None
    num_classes = train_split.num_classes or recipe.num_classes  # data that names its classes wins
    if num_classes is None:
        raise ConfigError(f"{source.uri} does not name its classes; set --set num_classes=N")
    samples = train_split.num_samples or recipe.train_samples
    if samples is None:
        raise ConfigError(f"{source.uri} is a stream of unknown length; set --set train_samples=N for the schedule")
    batches = build_loader(train_split, train_transform(recipe), micro, train=True, seed=recipe.seed, rank=rank,
                           world=world, workers=recipe.workers, shuffle_buffer=recipe.shuffle_buffer,
                           samples_per_epoch=samples)
    micro_per_epoch = batches.steps_per_epoch - batches.steps_per_epoch % recipe.grad_accum
    if micro_per_epoch == 0:
        raise DataError(f"{source.uri} ({recipe.train_split}) has {samples} images, fewer than one batch of "
                        f"{recipe.batch_size}; lower --batch-size")
    steps_per_epoch = micro_per_epoch // recipe.grad_accum
    eval_batches = None
    if eval_split is not None:
        eval_tf = eval_transform(recipe.input_size, crop_pct=recipe.crop_pct, interpolation=recipe.interpolation,
                                 mean=recipe.mean, std=recipe.std)
        eval_batches = build_loader(eval_split, eval_tf, max(micro, 64), train=False, rank=rank, world=world,
                                    workers=recipe.workers)

    # model, optimiser, schedule
    set_seed(recipe.seed, device_specific=True)
    config = variant_config(recipe.variant).replace(num_classes=num_classes, drop_path_rate=recipe.drop_path)
    model = DCCNeXt(config)
    loaded = load_backbone_weights(model, recipe.pretrained, recipe.variant) if recipe.pretrained else None
    if recipe.grad_checkpointing:
        model.set_grad_checkpointing(True)
    peak = recipe.peak_lr()
    optimizer = create_optimizer_v2(model, opt=recipe.opt, lr=peak, weight_decay=recipe.weight_decay)
    total_steps = steps_per_epoch * recipe.epochs
    # a peak below the recipe's floor (a tiny --lr) caps the floor, or the "decay" would raise the lr
    scheduler = CosineLRScheduler(optimizer, t_initial=total_steps, lr_min=min(recipe.min_lr, peak),
                                  warmup_t=round(recipe.warmup_epochs * steps_per_epoch),
                                  warmup_lr_init=min(recipe.warmup_lr, peak), t_in_epochs=False)
    if recipe.compile:
        model = torch.compile(model)
    model, optimizer = accelerator.prepare(model, optimizer)

    def plain_model() -> torch.nn.Module:  # without DDP and torch.compile wrappers: the weights' real names
        return accelerator.unwrap_model(model, keep_torch_compile=False)

    state = TrainState(world_size=world, micro_batch=micro)
    accelerator.register_for_checkpointing(state)
    mixup = Mixup(mixup_alpha=recipe.mixup, cutmix_alpha=recipe.cutmix, prob=recipe.mixup_prob,
                  switch_prob=recipe.mixup_switch_prob, label_smoothing=recipe.smoothing,
                  num_classes=num_classes) if recipe.uses_mixup else None
    criterion = _criterion(recipe)

    if resume and checkpoint is not None:
        clean_stale(out)
        load_run_state(accelerator, checkpoint)
        if (state.world_size, state.micro_batch) != (world, micro):
            raise CheckpointError(f"{checkpoint} was written by {state.world_size} processes with batches of "
                                  f"{state.micro_batch}; resume it with the same launch")
        if state.batch >= micro_per_epoch:
            state.epoch, state.batch = state.epoch + 1, 0
    elif main:
        if overwrite:  # only now, when everything has been checked
            _clear_run(out)
        out.mkdir(parents=True, exist_ok=True)
        atomic_write(out / "recipe.yaml", lambda tmp: Path(tmp).write_text(yaml.safe_dump(recipe.to_dict(),
                                                                                         sort_keys=False)))
    accelerator.wait_for_everyone()
    log = _Log(out, main)
    log.write("start", world_size=world, micro_batch=micro, steps_per_epoch=steps_per_epoch, total_steps=total_steps,
              resumed_from=str(checkpoint) if checkpoint else None, data=source.uri, num_classes=num_classes,
              device=str(accelerator.device), mixed_precision=accelerator.mixed_precision, pretrained=loaded)
    scheduler.step_update(state.step)
    meta_extra = {"input_size": json.dumps(list(recipe.input_size)), "recipe": json.dumps(recipe.to_dict())}
    class_names = train_split.class_names

    def save_weights_file(name: str, epoch: int, metrics: EvalResult | None) -> None:
        if main:
            extra = dict(meta_extra)
            if metrics is not None:
                extra["eval"] = json.dumps({"top1": metrics.top1, "top5": metrics.top5})
            save_weights(out / name, plain_model(),
                         CheckpointMeta(recipe.variant, config, class_names, epoch, extra=extra))

    def checkpoint_now(metrics: EvalResult | None = None) -> None:
        save_run_state(accelerator, out, state, recipe.keep_last)
        save_weights_file("model.safetensors", state.epoch, metrics)

    fingerprint, seen = hashlib.blake2b(digest_size=8), 0
    if reporter is not None and main:
        reporter.start(total_steps, state.step, f"training {recipe.variant} on {source.uri}")
    metrics: EvalResult | None = None
    window_start, window_images = time.perf_counter(), 0
    try:
        model.train()
        for epoch in range(state.epoch, recipe.epochs):
            state.epoch = epoch
            for images, labels, skipped in batches.epoch(epoch, skip_batches=state.batch):
                if state.batch >= micro_per_epoch:
                    break
                state.skipped_images += skipped
                if mixup is not None and len(labels) % 2:
                    images, labels = images[:-1], labels[:-1]
                if len(labels) == 0:
                    raise DataError(f"a whole batch of {source.uri} failed to decode; check the data")
                if int(labels.max()) >= num_classes:
                    raise DataError(f"label {int(labels.max())} in {source.uri} is outside 0..{num_classes - 1}; "
                                    "set --set num_classes=N")
                fingerprint.update(labels.numpy().tobytes())
                # a sparse sample of pixels tells the images apart without a full pass over every batch
                fingerprint.update(images.flatten(1)[:, ::997].sum(1).numpy().round(3).tobytes())
                seen += len(labels)
                images, labels = images.to(accelerator.device), labels.to(accelerator.device)
                targets = labels
                if mixup is not None:
                    images, targets = mixup(images, labels)
                with accelerator.accumulate(model):
                    with accelerator.autocast():
                        loss = criterion(model(images), targets)
                    accelerator.backward(loss)
                    if recipe.grad_clip and accelerator.sync_gradients:
                        accelerator.clip_grad_norm_(model.parameters(), recipe.grad_clip)
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
                state.batch += 1
                window_images += len(labels) * world
                if not accelerator.sync_gradients:
                    continue
                state.step += 1
                scheduler.step_update(state.step)
                lr = optimizer.param_groups[0]["lr"]
                if state.step % recipe.log_every == 0 or state.batch == micro_per_epoch:
                    loss_value = float(accelerator.reduce(loss.detach().float(), reduction="mean"))
                    if not math.isfinite(loss_value):
                        raise DataError(f"the loss became {loss_value} at step {state.step}; lower the lr")
                    rate = window_images / max(time.perf_counter() - window_start, 1e-9)
                    window_start, window_images = time.perf_counter(), 0
                    log.write("train", epoch=epoch, step=state.step, loss=round(loss_value, 5), lr=lr,
                              img_s=round(rate, 1))
                    if reporter is not None and main:
                        reporter.update(state.step, loss=loss_value, lr=lr, img_s=rate)
                elif reporter is not None and main:
                    reporter.update(state.step)
                if recipe.checkpoint_every and state.step % recipe.checkpoint_every == 0:
                    checkpoint_now()
            state.batch = 0
            last = epoch == recipe.epochs - 1
            if eval_batches is not None and (last or (recipe.eval_every and (epoch + 1) % recipe.eval_every == 0)):
                metrics = evaluate_batches(plain_model(), eval_batches.epoch(0), num_classes, device=accelerator.device,
                                           max_samples=recipe.eval_samples, autocast=accelerator.autocast,
                                           reduce=lambda t: accelerator.reduce(t, reduction="sum"))
                log.write("eval", epoch=epoch, step=state.step, **metrics.to_dict())
                if reporter is not None and main:
                    reporter.message(f"epoch {epoch + 1}/{recipe.epochs}: top-1 {metrics.top1:.2f}%  "
                                     f"top-5 {metrics.top5:.2f}%  loss {metrics.loss:.4f}")
                if state.best_top1 is None or metrics.top1 > state.best_top1:
                    state.best_top1, state.best_epoch = metrics.top1, epoch + 1
                    save_weights_file("best.safetensors", epoch + 1, metrics)
                window_start, window_images = time.perf_counter(), 0  # img/s counts training only
            state.epoch = epoch + 1
            if not recipe.checkpoint_every or last:
                checkpoint_now(metrics)
            elif main:
                save_weights_file("model.safetensors", state.epoch, metrics)
    except KeyboardInterrupt:
        if reporter is not None and main:
            reporter.stop()
        again = "" if list_checkpoints(out) else " (no checkpoint yet: it starts again)"
        raise TrainingInterrupted(f"interrupted at step {state.step}; continue with: dccnext train -o {out} "
                                  f"--resume{again}") from None
    if reporter is not None and main:
        reporter.stop()

    # what each process saw and ended with: the distributed test checks these
    unwrapped = plain_model()
    mine = {"rank": rank, "samples": seen, "data_fingerprint": fingerprint.hexdigest(),
            "weights_digest": _weights_digest(unwrapped), "skipped_images": state.skipped_images}
    if world > 1:
        from accelerate.utils import gather_object

        ranks = gather_object([mine])
    else:
        ranks = [mine]
    skipped_total = sum(r["skipped_images"] for r in ranks)
    if skipped_total:
        log.write("warning", message=f"{skipped_total} images could not be decoded and were skipped")
    result = TrainResult(out, out / "model.safetensors", recipe.epochs, state.step, world, time.time() - start_time,
                         metrics.to_dict() if metrics else None, skipped_total, ranks)
    summary = {"world_size": world, "epochs": recipe.epochs, "steps": state.step, "wall_s": round(result.wall_s, 1),
               "metrics": result.metrics, "best_top1": state.best_top1, "best_epoch": state.best_epoch,
               "skipped_images": skipped_total, "ranks": ranks}
    log.write("end", **summary)
    log.close()
    if main:
        atomic_write(out / "summary.json", lambda tmp: Path(tmp).write_text(json.dumps(summary, indent=1)))
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return result
