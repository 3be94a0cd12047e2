"""The run folder, one object for every task: everything `train` decides about `-o DIR`, under one set of rules.

    folder = RunFolder.launch(recipe, output, resume=..., overwrite=..., explicit=...)
    folder.start(recipe_dict)                      # lock, --overwrite's removal, recipe.yaml (a new run only)
    folder.parts = Trainables(model, optimizer, ...)  # what a train state holds besides the loop's position
    state = folder.restore(limits)                 # the newest complete train state, or a fresh TrainState
    folder.save(state)                             # a train state under checkpoints/step-N (every process calls)
    folder.finish(summary)                         # summary.json: the run's commit mark

(training/loop.py makes these calls, in this order, for every task.)

Only the main process touches the folder (it may be on the main node's local disk); what it decides (the folder,
the train state to continue, the recipe of a resumed run) reaches the other processes by broadcast, errors
included. The rules, the same for classification and dense tasks:

- `-o DIR` is refused when DIR already holds a run's files (RUN_FILES), unless `--resume` continues it or
  `--overwrite` replaces those files (and nothing else the folder holds); other files in DIR are left alone.
- `--resume` keeps the recipe the run was started with. An option given now that disagrees with it is refused,
  naming the key, except the launch keys (LAUNCH_KEYS: how the run is carried out, not what it trains), which
  take the new value. A caller that passes a whole recipe (`explicit=None`) has given every key.
- A train state written by another launch shape (processes x micro-batch x accumulation) continues at the same
  optimiser step and image count (elastic resume), and the user is told it is no longer bitwise the run saved.
- One `log.jsonl` (and TensorBoard scalars under tb/ when tensorboard is installed), written by the main process.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import yaml

from ..common.crash_points import crash_point
from ..common.files import append_text, atomic_write_text, check_run_folder, check_writable, remove_run_files
from ..common.recipe_files import build_recipe, read_yaml
from ..common.run_lock import lock_folder, unlock_folder
from ..errors import CheckpointError, ConfigError, DCCNeXtError, OutputExistsError
from . import run_state as states
from .accelerator import make_accelerator, micro_batch, on_main_process
from .run_state import Trainables, TrainState
from .saving import SaveSchedule
from .state_checks import RunLimits, check_counters

__all__ = ["RunFolder", "RunLog", "Teller", "TrainResult", "RUN_FILES", "LAUNCH_KEYS", "TrainingInterrupted"]

RUN_FILES = ("model.safetensors", "best.safetensors", "recipe.yaml", "log.jsonl", "metrics.json", "summary.json",
             "checkpoints", "tb")
# recipe keys that say how a launch carries the run out, not what it trains: a resumed run may change them
LAUNCH_KEYS = ("grad_accum", "workers", "log_every", "checkpoint_every", "checkpoint_minutes", "keep_last")
TENSORBOARD_OFF = ("TensorBoard is off (not installed): scalars go to log.jsonl only; "
                   "pip install 'dccnext-cli[tensorboard]' to have them under tb/")


@dataclass
class TrainResult:
    """What `train` and `train_dense` return: where the run is, how far it went, what it measured."""

    output: Path  # the run folder
    weights: Path  # RUN/model.safetensors
    steps: int  # optimiser steps (iterations) of the run
    world_size: int = 1
    metrics: dict[str, Any] | None = None
    epochs: int = 0
    wall_s: float = 0.0
    skipped_images: int = 0
    ranks: list[dict[str, Any]] = field(default_factory=list)
    samples: int = 0  # training images drawn (resumed runs included), whatever the launch shape
    losses: list[float] = field(default_factory=list)  # per optimiser step this call ran, mean over processes
    resumed_from: Path | None = None  # the train state continued

    @classmethod
    def from_summary(cls, out: Path, summary: dict[str, Any], losses: list[float], resumed_from: Path | None):
        return cls(out, out / "model.safetensors", summary["steps"], summary["world_size"], summary.get("metrics"),
                   summary.get("epochs", 0), float(summary.get("wall_s", 0.0)), summary.get("skipped_images", 0),
                   summary.get("ranks", []), summary.get("samples", 0), losses, resumed_from)


class TrainingInterrupted(DCCNeXtError):
    """Ctrl-C: the message says which train state was kept and how to continue."""

    exit_code = 130


class RunLog:
    """JSON lines on the main process, and TensorBoard scalars of every event that has a step."""

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
                if isinstance(value, (int, float)) and key not in ("step", "epoch", "iteration"):
                    self.tb.add_scalar(f"{event}/{key}", value, values["step"])

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def check_output(out: Path, resume: bool, overwrite: bool) -> None:
    """The one -o rule: a folder that holds a run's files is refused unless resumed or overwritten."""
    if out.exists() and not out.is_dir():
        raise OutputExistsError(f"-o {out} is a file; give a folder for the run")
    check_writable(out / "recipe.yaml", "-o")  # under a file, or in a read-only folder: refused before the work
    check_run_folder(out, RUN_FILES)  # a symbolic link at a run file: refused, never written through
    owned = [out / name for name in RUN_FILES if (out / name).exists()]
    if owned and not (resume or overwrite):
        raise OutputExistsError(f"{out} already holds a run ({owned[0].name}); pass --resume to continue it or "
                                "--overwrite to start again")


def recipe_of_run(out: Path, recipe: Any, explicit: dict[str, Any] | None) -> Any:
    """The recipe a resumed run continues: its recipe.yaml's, with the launch keys given now; an explicit value
    that disagrees with it is refused. No recipe.yaml (a train state from elsewhere): the one given."""
    path = out / "recipe.yaml"
    if not path.is_file():
        return recipe
    known = {f.name for f in fields(recipe)}
    saved_dict = read_yaml(path)
    if not isinstance(saved_dict, dict):
        raise CheckpointError(f"{path} does not hold a recipe; start a new run")
    saved = build_recipe(type(recipe), {k: v for k, v in saved_dict.items() if k in known}, str(path))
    asked = known if explicit is None else set(explicit) & known
    for key in sorted(asked - set(LAUNCH_KEYS)):
        if getattr(saved, key) != getattr(recipe, key):
            raise ConfigError(f"{out} was started with {key}={getattr(saved, key)!r}, not {getattr(recipe, key)!r}; "
                              "a resumed run keeps its recipe (see its recipe.yaml), or start a new run")
    return replace(saved, **{key: getattr(recipe, key) for key in LAUNCH_KEYS if key in asked})


@dataclass
class RunFolder:
    """Where a run lives and what it continues; see the module's docstring for the rules."""

    out: Path
    accelerator: Any
    recipe: Any  # the recipe this launch runs (a resumed run's own)
    train_state: Path | None  # the train state to continue, if any
    resume: bool
    overwrite: bool
    notes: list[str] = field(default_factory=list)  # what resuming skipped, completed or changed; main process
    log: RunLog | None = None
    micro: int = 0  # images per process per micro-batch, once the loop knows it
    saving: SaveSchedule | None = None  # when to write a train state (steps, minutes, Ctrl-C); from `start`
    saved: tuple[int, int] | None = None  # (step, epoch) of the train state written or resumed last
    parts: Trainables | None = None  # what a train state holds besides the loop's position, once it is built

    @property
    def main(self) -> bool:
        return self.accelerator.is_main_process

    @classmethod
    def launch(cls, recipe: Any, output: Path, *, resume: bool | str | Path, overwrite: bool,
               explicit: dict[str, Any] | None) -> RunFolder:
        """The Accelerator; the main process checks and locks the folder and finds the train state and the recipe
        it continues (every process gets the result); the images per process per micro-batch of that recipe (a
        batch that does not split is refused)."""
        accelerator = make_accelerator(recipe.amp, recipe.grad_accum)
        main, notes = accelerator.is_main_process, []

        def decide() -> tuple[Path | None, Any]:
            check_output(output, bool(resume), overwrite)
            if output.is_dir():
                lock_folder(output)  # before anything is written; a second writer stops here
                if resume:
                    states.recover_train_states(output, notes)
            if not resume:
                return None, recipe
            train_state = states.find_train_state(Path(resume) if isinstance(resume, (str, Path)) else output,
                                                  notes)
            if train_state is None and isinstance(resume, (str, Path)):
                raise CheckpointError(f"--resume {resume}: no train state there")
            return train_state, recipe_of_run(output, recipe, explicit)

        try:
            train_state, chosen = on_main_process(accelerator, decide)
            run = cls(output, accelerator, chosen, train_state, bool(resume), overwrite, notes if main else [])
            accelerator.gradient_accumulation_steps = chosen.grad_accum  # a resumed run's own, or the one asked
            run.micro = micro_batch(chosen.batch_size, accelerator.num_processes, chosen.grad_accum)
        except DCCNeXtError:
            if main:
                unlock_folder(output)
            raise
        return run

    def completed(self) -> TrainResult | None:
        """The result of a run already finished from this train state (nothing to do), else None. Main only."""
        if self.train_state is None or not self.main:
            return None
        state = states.read_train_state(self.train_state)
        try:
            summary = json.loads((self.out / "summary.json").read_text())
            if summary["steps"] == state.step and (self.out / "model.safetensors").is_file():
                return TrainResult.from_summary(self.out, summary, [], self.train_state)
        except (OSError, ValueError, UnicodeDecodeError, KeyError, TypeError):
            pass
        return None

    def start(self, recipe_record: dict[str, Any]) -> None:
        """Main process: create and lock the folder; a new run (not a resumed one) removes the previous run's
        files under --overwrite, now that every check has passed, and writes recipe.yaml."""
        if self.main:
            self.out.mkdir(parents=True, exist_ok=True)
            lock_folder(self.out)
            if self.train_state is None:
                if self.overwrite and not self.resume:
                    remove_run_files(self.out, RUN_FILES)
                atomic_write_text(self.out / "recipe.yaml", yaml.safe_dump(recipe_record, sort_keys=False))
        self.log = RunLog(self.out, self.main)
        self.saving = SaveSchedule(self.accelerator, self.recipe.checkpoint_every, self.recipe.checkpoint_minutes)

    def restore(self, limits: RunLimits) -> TrainState:
        """Every process: the position, weights, optimiser and random states of the train state continued (the
        main process reads it, the others receive it), checked against `limits`, reshaped to this launch; or a
        fresh start."""
        accelerator, world, micro = self.accelerator, self.accelerator.num_processes, self.micro
        state = TrainState(world_size=world, micro_batch=micro)
        if self.train_state is not None:
            state = states.load_run_state(accelerator, self.train_state, self.parts, self.notes)
            check_counters(state, self.train_state / "train_state.json", limits)
            if state.samples == 0:  # a train state from before the image count was kept
                state.samples = state.step * self.recipe.batch_size
            if (state.world_size, state.micro_batch) != (world, micro):
                self._reshape(state, micro)
            accelerator.step = state.micro_steps
            self.saved = (state.step, state.epoch)
        accelerator.wait_for_everyone()
        return state

    def _reshape(self, state: TrainState, micro: int) -> None:
        """Elastic resume: the same optimiser step and image count on another launch shape; each process skips
        the same number of optimiser steps of the epoch, but the rest of the epoch is dealt out differently."""
        world, accum = self.accelerator.num_processes, self.recipe.grad_accum
        saved_accum = max(self.recipe.batch_size // max(state.world_size * state.micro_batch, 1), 1)
        note = (f"{self.train_state} was written by {state.world_size} processes x {state.micro_batch} images x "
                f"{saved_accum} accumulation steps; continuing on {world} x {micro} x {accum} at step {state.step} "
                f"({state.samples} images seen), no longer bitwise the run that was saved")
        if world > state.world_size:
            note += f" (processes {state.world_size}..{world - 1} start from fresh random states)"
        self.notes.append(note)
        state.world_size, state.micro_batch = world, micro
        state.batch, state.micro_steps = state.batch // saved_accum * accum, state.step * accum

    def save(self, state: TrainState) -> None:
        """A train state at `state.step` (every process calls this; the main process writes)."""
        state.micro_steps = self.accelerator.step
        states.save_run_state(self.accelerator, self.out, state, self.parts, self.recipe.keep_last)
        self.saving.saved()
        self.saved = (state.step, state.epoch)

    def finish(self, summary: dict[str, Any]) -> None:
        """summary.json, written last: the mark of a finished run."""
        if self.log is not None:
            self.log.write("end", **summary)
            self.log.close()
        if self.main:
            atomic_write_text(self.out / "summary.json", json.dumps(summary, indent=1))

    def interrupted(self, step: int, task_args: str = "") -> TrainingInterrupted:
        """What Ctrl-C ends with: the step, the train state kept, the command that continues (`task_args`: what
        it needs besides the run folder, e.g. a dense task's --task and --data)."""
        kept = states.list_train_states(self.out)
        kept = f"kept {kept[-1].relative_to(self.out)}" if kept else "no train state yet: it starts again"
        return TrainingInterrupted(f"interrupted at step {step}: {kept}; continue with: dccnext train "
                                   f"{task_args + ' ' if task_args else ''}-o {self.out} --resume")

    def close(self) -> None:
        if self.main:
            unlock_folder(self.out)


class Teller:
    """What the user reads (main process, through the progress reporter); warnings also go to the log."""

    def __init__(self, main: bool, reporter):
        self.reporter, self.told = reporter if main else None, 0

    def __call__(self, text: str, warning: bool = False) -> None:
        if self.reporter is not None:
            (self.reporter.warning if warning else self.reporter.message)(text)

    def notes(self, notes: list[str]) -> None:
        """The notes not told yet (what resuming skipped, completed or changed)."""
        for note in notes[self.told:]:
            self(note, warning=True)
        self.told = len(notes)

    def start(self, folder: RunFolder, state: TrainState) -> None:
        """Where the run lives and where it starts, before the first step; every note goes to the log too."""
        self.notes(folder.notes)
        for note in folder.notes:
            folder.log.write("warning", message=note)
        self(f"run folder: {folder.out}")
        if folder.resume:
            self(f"resuming from step {state.step}" if folder.train_state else "no saved state: starting at step 0")
        if folder.main and folder.log.tb is None:
            folder.log.write("note", message=TENSORBOARD_OFF)
            self(TENSORBOARD_OFF)
        crash_point("run:started")  # tests: the options resolved, recipe.yaml written, no step taken yet

    def stop(self) -> None:
        if self.reporter is not None:
            self.reporter.stop()
