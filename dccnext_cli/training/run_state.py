"""Train states as transactions: plain files (no pickle), a manifest written last, the last N kept.

A train state is `RUN/checkpoints/step-00001234/`:

    model.safetensors       the model's tensors, whole (gathered from FSDP / ZeRO-3 shards)
    optimizer.safetensors   the optimiser's full state keyed by parameter name (see full_state.py) and the fp16
                            grad scaler's, tensors + JSON structure
    rng-<rank>.json         every random generator of each process (see rng_state.py)
    train_state.json        the loop's position (`TrainState`)
    manifest.json           written last: every file's size and sha256, the step

Nothing here unpickles: a run folder may have been edited by anyone, and `--resume` must never execute code from
it. A folder is a train state only when its manifest is valid and every file matches it; anything else is skipped
(resume falls back to the previous train state and says so). A train state is built under a hidden temporary name
and committed with one rename; one being replaced (the same step saved twice) is moved aside first and deleted
only once its replacement is in place, so a kill at any moment leaves a complete train state where resume finds it.

The main process writes the whole train state (the other processes' random states are gathered to it) and reads
it back on resume (broadcasting to the others), so a run folder on the main node's local disk is enough, and a
train state resumes on another number of processes (see `load_run_state`).
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..common.crash_points import crash_point
from ..common.files import fsync, write_file
from ..common.tensor_tree import load_tree, save_tree
from ..errors import CheckpointError, ConfigError, DCCNeXtError
from .accelerator import engine_name, on_main_process
from .full_state import gather_model_state, gather_optimizer_state, load_full_state
from .rng_state import capture_rng, reseed_rng, restore_rng
from .shards import all_gather_objects
from .state_checks import check_state_tensors

__all__ = ["TrainState", "Trainables", "save_run_state", "load_run_state", "find_train_state", "list_train_states",
           "recover_train_states", "prune_train_states", "train_state_problem", "read_train_state"]

CHECKPOINT_DIR = "checkpoints"  # where a run keeps its train states
PREFIX = "step-"
MANIFEST = "manifest.json"
FORMAT = "dccnext-train-state/1"
_TMP, _REPLACED, _OLD = ".tmp", ".replaced", ".old"


@dataclass
class TrainState:
    """Where the loop is; saved as train_state.json in every train state."""

    epoch: int = 0  # the epoch in progress
    batch: int = 0  # micro-batches of that epoch already consumed by each process
    step: int = 0  # optimiser steps taken
    world_size: int = 1
    micro_batch: int = 0
    skipped_images: int = 0
    micro_steps: int = 0  # Accelerate's micro-batch counter (which micro-batches sync gradients)
    metrics: dict[str, Any] | None = None  # the latest evaluation, so a resumed run reports it too
    samples: int = 0  # training images consumed by all processes together, whatever the launch shape
    task: dict[str, Any] = field(default_factory=dict)  # the task's own entries, checked by the task

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1)


@dataclass
class Trainables:
    """What a train state holds besides the loop's position (the objects are updated in place on load)."""

    model: torch.nn.Module  # the plain model (no DDP / compile wrapper)
    optimizer: Any
    scaler: Any = None  # Accelerate's fp16 GradScaler, when there is one
    generator: torch.Generator | None = None  # the training DataLoader's generator
    prepared: torch.nn.Module | None = None  # the model as `accelerator.prepare` returned it (None: `model`)


def _folder_step(path: Path) -> int | None:
    digits = path.name[len(PREFIX):]
    return int(digits) if path.name.startswith(PREFIX) and digits.isdigit() else None


def list_train_states(run_dir: Path) -> list[Path]:
    """The committed train state folders, oldest first (not yet verified)."""
    folder = Path(run_dir) / CHECKPOINT_DIR
    if not folder.is_dir():
        return []
    return sorted((p for p in folder.iterdir() if p.is_dir() and _folder_step(p) is not None), key=_folder_step)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def train_state_problem(folder: Path, step: int | None = None) -> str | None:
    """Why `folder` is not a complete train state of `step` (by default the one its name says; None when it is
    complete): manifest, sizes, digests, step."""
    step = _folder_step(folder) if step is None else step
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
    except FileNotFoundError:
        return "no manifest (an unfinished or foreign train state)"
    except (OSError, ValueError, UnicodeDecodeError):
        return "an unreadable manifest"
    if not (isinstance(manifest, dict) and manifest.get("format") == FORMAT and isinstance(manifest.get("files"), dict)
            and isinstance(manifest.get("world_size"), int) and manifest["world_size"] >= 1):
        return f"a manifest that is not {FORMAT}"
    if step is not None and manifest.get("step") != step:
        return f"a manifest for step {manifest.get('step')!r}"
    files = manifest["files"]
    required = {"model.safetensors", "optimizer.safetensors", "train_state.json",
                *(f"rng-{rank}.json" for rank in range(manifest["world_size"]))}
    if required - set(files):
        return f"a manifest without {sorted(required - set(files))[0]}"
    for name, entry in files.items():
        path = folder / str(name)
        if "/" in str(name) or not isinstance(entry, dict) or not path.is_file():
            return f"{name} missing"
        if path.stat().st_size != entry.get("bytes") or _sha256(path) != entry.get("sha256"):
            return f"{name} does not match its manifest digest"
    return None


def find_train_state(path: Path, notes: list[str]) -> Path | None:
    """The newest valid train state of a run folder (or `path` itself when it names one); each invalid one
    skipped is added to `notes`. Refuses when train states exist but none is valid."""
    path = Path(path)
    if _folder_step(path) is not None and path.parent.name == CHECKPOINT_DIR:
        problem = train_state_problem(path)
        if problem:
            raise CheckpointError(f"{path} is not a usable train state: {problem}")
        return path
    found = list_train_states(path)
    for candidate in reversed(found):
        problem = train_state_problem(candidate)
        if problem is None:
            return candidate
        notes.append(f"skipping train state {candidate.name}: {problem}")
    if found:
        raise CheckpointError(f"no usable train state in {path / CHECKPOINT_DIR} ({notes[-1].split(': ', 1)[1]}); "
                              "start again with --overwrite")
    return None


def recover_train_states(run_dir: Path, notes: list[str]) -> None:
    """Finish what a kill interrupted (main process, under the run lock): a complete temporary or replaced
    train state whose step is missing is put in place; every other temporary is removed."""
    folder = Path(run_dir) / CHECKPOINT_DIR
    if folder.is_dir():
        for suffix in (_TMP, _REPLACED):
            for hidden in sorted(folder.glob(f".{PREFIX}*{suffix}")):
                final = folder / hidden.name[1:-len(suffix)]
                if _folder_step(final) is not None and not final.exists() and not train_state_problem(
                        hidden, _folder_step(final)):
                    hidden.rename(final)
                    notes.append(f"completed train state {final.name}, interrupted while being committed")
        for stale in [*folder.glob(f".{PREFIX}*{_TMP}"), *folder.glob(f".{PREFIX}*{_REPLACED}"),
                      *folder.glob(f".{PREFIX}*{_OLD}")]:
            shutil.rmtree(stale, ignore_errors=True)
    for stale in Path(run_dir).glob(".*.tmp"):  # atomic_write's temporaries (model.safetensors, summary.json)
        if stale.is_file():
            stale.unlink(missing_ok=True)


def prune_train_states(run_dir: Path, keep_last: int, step: int) -> None:
    """Keep the newest `keep_last` train states up to `step` (main process; a newer one, left by a run that was
    resumed from an older train state, is never counted in)."""
    kept = [p for p in list_train_states(run_dir) if _folder_step(p) <= step]
    for old in kept[:-keep_last]:  # hide first, then delete: never seen half-deleted
        hidden = old.with_name(f".{old.name}{_OLD}")
        old.rename(hidden)
        shutil.rmtree(hidden, ignore_errors=True)


def save_run_state(accelerator, run_dir: Path, state: TrainState, parts: Trainables, keep_last: int) -> Path:
    """Every process calls this (gathering sharded weights is a collective); the main process alone writes:
    every process's random state, the weights, the optimiser, the position, the manifest last; then it commits
    the folder with one rename and prunes old train states. The other processes never touch the run folder, so
    it may live on the main process's node-local disk."""
    prepared = parts.prepared if parts.prepared is not None else parts.model
    model_state = gather_model_state(accelerator, prepared)
    optimizer_state = gather_optimizer_state(accelerator, prepared, parts.optimizer)
    rngs = all_gather_objects(accelerator, capture_rng(parts.generator))  # every process's, for the main one
    final = Path(run_dir) / CHECKPOINT_DIR / f"{PREFIX}{state.step:08d}"
    moment = f"checkpoint-{state.step}-{state.epoch}"  # crash points (a step is saved twice: mid-epoch, at its end)
    if accelerator.is_main_process:
        tree = {"optimizer": optimizer_state, "scaler": parts.scaler.state_dict() if parts.scaler is not None else None,
                "engine": engine_name(accelerator)}
        _write_train_state(final, moment, state, model_state, tree, rngs)
        prune_train_states(run_dir, keep_last, state.step)
        crash_point(f"{moment}:pruned")
    accelerator.wait_for_everyone()
    return final


def _write_train_state(final: Path, moment: str, state: TrainState, model_state: dict[str, torch.Tensor],
                       tree: dict[str, Any], rngs: list[dict[str, Any]]) -> None:
    """Every file under a hidden name, the manifest (every file's size and digest) last, then one rename."""
    tmp = final.with_name(f".{final.name}{_TMP}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)

    def write(name: str, put) -> None:
        write_file(tmp / name, put)  # fsynced; a full disk is one line, the partial file removed
        crash_point(f"{moment}:{name}")

    try:
        for rank, rng in enumerate(rngs):
            write(f"rng-{rank}.json", lambda p, rng=rng: p.write_text(json.dumps(rng)))
        write("model.safetensors", lambda p: save_file(model_state, str(p)))
        write("optimizer.safetensors", lambda p: save_tree(p, tree))
        write("train_state.json", lambda p: p.write_text(state.to_json()))
        files = {p.name: {"bytes": p.stat().st_size, "sha256": _sha256(p)} for p in sorted(tmp.iterdir())}
        manifest = {"format": FORMAT, "step": state.step, "world_size": len(rngs), "files": files}
        write(MANIFEST, lambda p: p.write_text(json.dumps(manifest, indent=1)))
        fsync(tmp)
    except DCCNeXtError:  # a full disk: no half-written train state stays; the previous ones are untouched
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _commit(tmp, final, moment)


def _commit(tmp: Path, final: Path, moment: str) -> None:
    """Move the finished folder into place; a folder of the same step is moved aside, not deleted, first."""
    aside = final.with_name(f".{final.name}{_REPLACED}")
    if final.exists():
        final.rename(aside)
        crash_point(f"{moment}:aside")
    tmp.rename(final)
    fsync(final.parent)
    crash_point(f"{moment}:committed")
    shutil.rmtree(aside, ignore_errors=True)


def read_train_state(folder: Path) -> TrainState:
    """A train state's position, every field checked for its type: a damaged file is refused, not half-used."""
    path = Path(folder) / "train_state.json"
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError) as e:
        raise CheckpointError(f"cannot read {path} ({e.__class__.__name__})") from None
    except ValueError:
        raise CheckpointError(f"{path} is not valid JSON; the train state is damaged") from None
    if isinstance(data, dict) and "task" not in data:  # written before the task owned its entries
        legacy = {key: data.pop(key, None) for key in ("best_top1", "best_epoch")}
        data["task"] = {key: value for key, value in legacy.items() if value is not None}
    if not isinstance(data, dict) or not set(data) <= {f.name for f in fields(TrainState)}:
        raise CheckpointError(f"{path} does not hold a train state's position; the train state is damaged")
    for key, value in data.items():
        ok = {"task": isinstance(value, dict), "metrics": value is None or isinstance(value, dict)}.get(
            key, isinstance(value, int) and not isinstance(value, bool) and value >= 0)
        if not ok:
            raise CheckpointError(f"{path}: {key}={value!r} is out of range; the train state is damaged")
    return TrainState(**data)


def _read_files(folder: Path, model: torch.nn.Module) -> tuple[TrainState, list[Any], dict[str, torch.Tensor], dict]:
    """Main process: every file of a train state, checked against the model before anything is loaded."""
    state = read_train_state(folder)
    model_file = folder / "model.safetensors"
    try:
        weights = load_file(str(model_file))
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"cannot resume from {model_file}: {str(e).splitlines()[0]}") from None
    rngs = []
    for rank in range(state.world_size):
        rng_file = folder / f"rng-{rank}.json"
        try:
            rngs.append(json.loads(rng_file.read_text()))
        except (OSError, ValueError, UnicodeDecodeError):
            raise CheckpointError(f"cannot read {rng_file}; the train state is damaged") from None
    tree = load_tree(folder / "optimizer.safetensors")
    if not isinstance(tree, dict) or "optimizer" not in tree:
        raise CheckpointError(f"{folder / 'optimizer.safetensors'} holds no optimiser entry; it is damaged")
    check_state_tensors(folder, model, weights, tree)
    return state, rngs, weights, tree


def load_run_state(accelerator, folder: Path, parts: Trainables, notes: list[str] | None = None) -> TrainState:
    """Every process: the loop's position, the model, the optimiser and this process's random state. The main
    process reads the train state and hands it out (the small objects by broadcast, the tensors when they are
    loaded), so the others need no copy, and the process count may differ from the one that wrote it (a process
    without a saved random state gets a fresh one, seeded by its rank)."""
    if engine_name(accelerator) == "deepspeed":
        raise ConfigError("resuming under DeepSpeed is not supported (its optimiser state cannot be stored "
                          "without pickle); resume the run with configs/accelerate/fsdp.yaml or ddp.yaml")
    folder, tensors = Path(folder), {}  # the weights and the optimiser state, on the main process only

    def read() -> tuple:
        state, rngs, tensors["model"], tree = _read_files(folder, parts.model)
        tensors["optimizer"] = tree["optimizer"]
        return state, rngs, tree.get("scaler"), tree.get("engine", "DeepSpeed"), tree["optimizer"] is not None

    state, rngs, scaler, engine, has_optimizer = on_main_process(accelerator, read)
    if not has_optimizer and notes is not None and accelerator.is_main_process:
        notes.append(f"{folder} holds no optimiser state (written under {engine}): the optimiser's moments start "
                     "again")
    try:
        load_full_state(accelerator, parts.prepared if parts.prepared is not None else parts.model, parts.optimizer,
                        tensors.get("model"), tensors.get("optimizer"), with_optimizer=has_optimizer)
        if parts.scaler is not None and scaler is not None:
            parts.scaler.load_state_dict(scaler)
    except (KeyError, TypeError, ValueError, RuntimeError, IndexError) as e:
        raise CheckpointError(f"cannot resume the optimiser from {folder}: {str(e).splitlines()[0]}") from None
    rank = accelerator.process_index
    if rank < len(rngs):
        restore_rng(rngs[rank], str(folder / f"rng-{rank}.json"), parts.generator)
    else:
        reseed_rng(state.step, rank, parts.generator)
    return state
