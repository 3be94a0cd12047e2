"""Training-state checkpoints: Accelerate's `save_state` folders, committed atomically, last N kept.

A checkpoint is `RUN/checkpoints/step-00001234/` (model, optimizer, scaler, every process's RNG state and the
loop's own `TrainState`). It is written under a hidden temporary name and renamed into place only when every
process has finished writing, so a run killed at any moment leaves either a complete checkpoint or none; stale
temporaries are ignored and removed on resume.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..errors import CheckpointError

__all__ = ["TrainState", "save_run_state", "latest_checkpoint", "list_checkpoints", "CHECKPOINT_DIR"]

CHECKPOINT_DIR = "checkpoints"
PREFIX = "step-"


@dataclass
class TrainState:
    """Where the loop is: registered with Accelerate so that it travels inside every checkpoint."""

    epoch: int = 0  # the epoch in progress
    batch: int = 0  # micro-batches of that epoch already consumed by each process
    step: int = 0  # optimiser steps taken
    world_size: int = 1
    micro_batch: int = 0
    best_top1: float | None = None
    best_epoch: int | None = None
    skipped_images: int = 0

    def state_dict(self) -> dict[str, Any]:
        return asdict(self)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key, value in state.items():
            setattr(self, key, value)


def list_checkpoints(run_dir: Path) -> list[Path]:
    folder = Path(run_dir) / CHECKPOINT_DIR
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_dir() and p.name.startswith(PREFIX))


def latest_checkpoint(path: Path) -> Path | None:
    """The newest complete checkpoint of a run folder, or `path` itself when it is a checkpoint folder."""
    path = Path(path)
    if path.name.startswith(PREFIX) and (path / "train_state.json").is_file():
        return path
    found = list_checkpoints(path)
    return found[-1] if found else None


def save_run_state(accelerator, run_dir: Path, state: TrainState, keep_last: int) -> Path:
    """Every process calls this; the main process commits the folder with one rename and prunes old ones."""
    folder = Path(run_dir) / CHECKPOINT_DIR
    final = folder / f"{PREFIX}{state.step:08d}"
    tmp = folder / f".{final.name}.tmp"
    if accelerator.is_main_process:
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp), safe_serialization=True)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (tmp / "train_state.json").write_text(json.dumps(state.state_dict(), indent=1))
        if final.exists():  # the same step saved twice (end of epoch right after a periodic save)
            shutil.rmtree(final)
        tmp.rename(final)
        for old in list_checkpoints(run_dir)[:-keep_last]:  # hide first, then delete: never seen half-deleted
            hidden = old.with_name(f".{old.name}.old")
            old.rename(hidden)
            shutil.rmtree(hidden, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def clean_stale(run_dir: Path) -> None:
    folder = Path(run_dir) / CHECKPOINT_DIR
    if folder.is_dir():
        for p in [*folder.glob(f".{PREFIX}*.tmp"), *folder.glob(f".{PREFIX}*.old")]:
            shutil.rmtree(p, ignore_errors=True)


def load_run_state(accelerator, checkpoint: Path) -> None:
    if not (checkpoint / "train_state.json").is_file():
        raise CheckpointError(f"{checkpoint} is not a complete training checkpoint (no train_state.json)")
    try:
        accelerator.load_state(str(checkpoint))
    except (RuntimeError, ValueError, OSError, KeyError) as e:
        raise CheckpointError(f"cannot resume from {checkpoint}: {str(e).splitlines()[0]}") from None
