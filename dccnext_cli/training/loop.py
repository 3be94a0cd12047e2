"""The one training loop: every task's run goes through the same stages, and the task supplies a `TaskEngine`.

    result = train(recipe, out, ClassificationEngine, reporter, resume=..., overwrite=..., explicit=...)

Everything a task does its own way is one call on its engine (classification/train.py, dense/train.py): the data,
the model and optimiser, the inputs and loss of a micro-batch, the lr schedule, an epoch's end (evaluation, the
weights), the final weights and evaluation. Everything else is here, once: when a train state is saved (steps,
minutes, Ctrl-C), how a resumed epoch continues in its middle, the log lines and progress, the order of the last
files. Work done once per optimiser step goes in `_optimizer_step`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import torch

from ..common.crash_points import crash_point
from ..errors import DataError
from .accelerator import configure_engine, engine_name, micro_step, on_main_process
from .run_folder import RunFolder, Teller, TrainResult
from .run_state import Trainables, TrainState, prune_train_states
from .state_checks import RunLimits

__all__ = ["TaskEngine", "train"]


class TaskEngine(Protocol):
    """What a task supplies; `prepare` sets the model, optimiser and counts, the rest runs in the loop's order."""

    model: torch.nn.Module  # as `accelerator.prepare` returned it
    optimizer: Any
    generator: torch.Generator | None  # the training data's own random generator, if any
    total_steps: int  # optimiser steps of the whole run
    steps_per_epoch: int
    micro_per_epoch: int  # micro-batches per process per epoch, a multiple of grad_accum
    epochs: int | None  # the recipe's epochs (None: as many as total_steps takes)
    resume_args: str  # what the resume command needs besides -o and --resume (e.g. --task, --data)
    title: str  # what the progress bar says it trains

    def prepare(self, run: RunFolder) -> dict[str, Any]: ...  # data, model, optimiser; returns recipe.yaml's record
    def started(self, state: TrainState) -> dict[str, Any]: ...  # the task's part of the "start" log line
    def micro_batches(self, state: TrainState): ...  # the rest of epoch `state.epoch` from micro-batch `state.batch`
    def inputs(self, batch: Any, state: TrainState) -> tuple: ...  # a micro-batch as the loss takes it
    def loss(self, model: torch.nn.Module, *inputs: Any) -> dict[str, torch.Tensor]: ...  # named parts, summed
    def schedule(self, step: int) -> None: ...  # the lr of optimiser step `step` (0-based)
    def end_epoch(self, state: TrainState) -> None: ...  # `state.epoch - 1` has ended: evaluation, weights
    def finish(self, state: TrainState) -> dict[str, Any]: ...  # final weights, evaluation: the summary's entries


def train(recipe: Any, out: Path, engine: Callable[[RunFolder], TaskEngine], reporter, *, resume: bool | str | Path,
          overwrite: bool, explicit: dict[str, Any] | None) -> TrainResult:
    """Train the task of `engine(run)` in the run folder `out` (every process of a launch calls this): the run
    folder (run_folder.py, with the recipe a resumed run keeps), then the stages below; the lock is released
    however it ends."""
    run = RunFolder.launch(recipe, out, resume=resume, overwrite=overwrite, explicit=explicit)
    try:
        return _train(run, engine(run), reporter)
    finally:
        run.close()


def _train(run: RunFolder, engine: TaskEngine, reporter) -> TrainResult:
    start_time, tell = time.time(), Teller(run.main, reporter)
    tell.notes(run.notes)
    done = on_main_process(run.accelerator, run.completed)
    if done is not None:
        tell(f"{run.out} is complete ({done.steps} steps); nothing to do")
        return done
    configure_engine(run.accelerator, run.micro, run.recipe.grad_clip)  # DeepSpeed's "auto" micro-batch, clipping
    run.start(engine.prepare(run))
    accelerator = run.accelerator
    run.parts = Trainables(accelerator.unwrap_model(engine.model, keep_torch_compile=False), engine.optimizer,
                           getattr(accelerator, "scaler", None), engine.generator, prepared=engine.model)
    state = run.restore(RunLimits(engine.total_steps, engine.steps_per_epoch, run.recipe.batch_size, engine.epochs))
    run.log.write("start", world_size=accelerator.num_processes, micro_batch=run.micro,
                  grad_accum=run.recipe.grad_accum, engine=engine_name(accelerator), step=state.step,
                  samples=state.samples, steps_per_epoch=engine.steps_per_epoch, total_steps=engine.total_steps,
                  device=str(accelerator.device), mixed_precision=accelerator.mixed_precision,
                  resumed_from=str(run.train_state) if run.train_state else None, **engine.started(state))
    tell.start(run, state)
    engine.schedule(state.step)
    if reporter is not None and run.main:
        reporter.start(engine.total_steps, state.step, engine.title if getattr(reporter, "enabled", True) else "")
    steps = _StepStats(run, engine, reporter)
    try:
        with run.saving:
            engine.model.train()
            _epochs(run, engine, state, steps)
    except KeyboardInterrupt:
        raise run.interrupted(state.step, engine.resume_args) from None
    finally:
        tell.stop()
    if run.saved != (state.step, state.epoch):  # the last train state, unless it is the one just saved or resumed
        run.save(state)
    if run.main:  # a save interrupted before its pruning is finished here
        prune_train_states(run.out, run.recipe.keep_last, state.step)
    summary = {"world_size": accelerator.num_processes, "steps": state.step, "samples": state.samples,
               **engine.finish(state), "wall_s": round(time.time() - start_time, 1)}
    run.finish(summary)
    crash_point("final:summary")
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return TrainResult.from_summary(run.out, summary, steps.losses, run.train_state)


def _epochs(run: RunFolder, engine: TaskEngine, state: TrainState, steps: _StepStats) -> None:
    """Epochs of micro-batches until the schedule's last optimiser step or the recipe's last epoch (a stream may
    give fewer batches than it said); a resumed epoch continues in its middle, or is closed when it has ended."""
    while (state.step < engine.total_steps and state.epoch < (engine.epochs or math.inf)) \
            or state.batch >= engine.micro_per_epoch:
        for batch in engine.micro_batches(state):
            if state.batch >= engine.micro_per_epoch:
                break
            steps.add(micro_step(run.accelerator, engine.model, engine.optimizer, run.recipe.grad_clip, engine.loss,
                                 *engine.inputs(batch, state)))
            state.batch += 1
            state.samples += run.micro * run.accelerator.num_processes  # drawn from the data, decodable or not
            if run.accelerator.sync_gradients:
                _optimizer_step(run, engine, state, steps)
                if state.step >= engine.total_steps:
                    break
        if state.batch < engine.micro_per_epoch and state.step >= engine.total_steps:
            return  # the schedule ends in the middle of an epoch (a recipe's `iterations`)
        state.epoch, state.batch = state.epoch + 1, 0
        engine.end_epoch(state)
        steps.reset()  # img/s counts training only


def _optimizer_step(run: RunFolder, engine: TaskEngine, state: TrainState, steps: _StepStats) -> None:
    """Once per optimiser step (the last micro-batch of an accumulation window has just updated the weights)."""
    state.step += 1
    steps.stepped(state, engine.optimizer.param_groups[0]["lr"])
    engine.schedule(state.step)
    save, stop = run.saving.due(state.step)
    if save:
        run.save(state)
    crash_point(f"step-{state.step}")
    if stop:
        raise KeyboardInterrupt


class _StepStats:
    """The loss parts of every optimiser step (mean over its micro-batches, kept on the device) and img/s; at each
    log step they are averaged over processes at once, checked, logged and shown. No host sync in other steps."""

    def __init__(self, run: RunFolder, engine: TaskEngine, reporter):
        self.run, self.engine, self.reporter = run, engine, reporter if run.main else None
        self.window: list[dict[str, torch.Tensor]] = []
        self.pending: list[torch.Tensor] = []  # per optimiser step not yet logged: its loss parts
        self.losses: list[float] = []  # per optimiser step of this call, mean over processes
        self.reset()

    def reset(self) -> None:
        self.start, self.images = time.perf_counter(), 0

    def add(self, parts: dict[str, torch.Tensor]) -> None:
        self.window.append(parts)
        self.images += self.run.micro * self.run.accelerator.num_processes

    def stepped(self, state: TrainState, lr: float) -> None:
        names = list(self.window[0])
        self.pending.append(torch.stack([torch.stack([w[n].float() for w in self.window]).mean() for n in names]))
        self.window = []
        last = state.step >= self.engine.total_steps or state.batch >= self.engine.micro_per_epoch
        if state.step % self.run.recipe.log_every and not last:
            if self.reporter is not None:
                self.reporter.update(state.step)
            return
        accelerator = self.run.accelerator
        rows = accelerator.reduce(torch.stack(self.pending).to(accelerator.device), reduction="mean").tolist()
        for step, row in enumerate(rows, state.step - len(rows) + 1):
            if not all(math.isfinite(v) for v in row):
                raise DataError(f"the loss became {row[0]} at step {step}; lower the lr (--lr) or check the data")
        self.pending, values = [], dict(zip(names, rows[-1], strict=True))
        self.losses += [row[0] for row in rows]
        rate = self.images / max(time.perf_counter() - self.start, 1e-9)
        self.reset()
        self.run.log.write("train", epoch=state.epoch, step=state.step, lr=lr, img_s=round(rate, 1),
                           **{k: round(v, 5) for k, v in values.items()})
        if self.reporter is not None:
            self.reporter.update(state.step, loss=values["loss"], lr=lr, img_s=rate)
