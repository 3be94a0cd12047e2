"""A training state checked against the recipe and the model before the first step of a resumed run.

A train state's manifest proves its files are the ones written, not that what they say is true: a hand-edited
`train_state.json` with `epoch: 1000000000` would resume, train nothing and report a finished run; an
optimiser tensor of another shape would load and fail at the first step deep inside the optimiser. Every
counter is held to the bounds the recipe and the data give, every tensor to the shape and dtype the model and
the optimiser expect; anything else is one line naming the file and the field.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..errors import CheckpointError
from .full_state import is_fsdp1

__all__ = ["RunLimits", "check_counters", "check_state_tensors", "refuse", "MAX_PROCESSES"]

MAX_PROCESSES = 1 << 16
_WRAPPERS = ("module.", "_orig_mod.")  # DDP and torch.compile prefixes of parameter names
# Per-parameter statistics that factored optimisers (Adafactor) keep smaller than the parameter
_FACTORED = ("row", "col", "factor")


@dataclass(frozen=True)
class RunLimits:
    """What the recipe and the data allow a resumed run's counters to be."""

    total_steps: int  # optimiser steps of the whole run
    steps_per_epoch: int  # optimiser steps of one epoch
    batch_size: int  # images per optimiser step, all processes together
    epochs: int | None = None  # the recipe's epochs (None: as many as total_steps takes)


def refuse(path: Path, field: str, value: Any, why: str) -> CheckpointError:
    """A train state's field that does not fit the run, as one line naming the file and the field."""
    return CheckpointError(f"{path}: {field}={value!r} {why}; the train state does not belong to this run (or was "
                           "edited): resume an earlier train state or start again with --overwrite")


def check_counters(state: Any, path: Path, limits: RunLimits) -> None:
    """`state` (a TrainState read from `path`) against the run's bounds, before the loop uses it."""
    steps = max(limits.steps_per_epoch, 1)
    epochs = limits.epochs if limits.epochs is not None else -(-limits.total_steps // steps)
    if not 1 <= state.world_size <= MAX_PROCESSES:
        raise refuse(path, "world_size", state.world_size, f"is not a process count (1..{MAX_PROCESSES})")
    if not 1 <= state.micro_batch <= limits.batch_size:
        raise refuse(path, "micro_batch", state.micro_batch, f"is outside 1..{limits.batch_size} (the batch size)")
    accum = max(limits.batch_size // (state.world_size * state.micro_batch), 1)
    bounds = {
        "step": (state.step, limits.total_steps, "the run's optimiser steps"),
        "epoch": (state.epoch, epochs, "the recipe's epochs"),
        "batch": (state.batch, steps * accum, "the micro-batches of one epoch"),
        "micro_steps": (state.micro_steps, (limits.total_steps + 1) * accum, "the run's micro-batches"),
        "samples": (state.samples, (limits.total_steps + 1) * limits.batch_size, "the images the run draws"),
    }
    for field, (value, most, what) in bounds.items():
        if not 0 <= value <= most:
            raise refuse(path, field, value, f"is outside 0..{most} ({what})")
    if state.epoch == epochs and state.batch:
        raise refuse(path, "batch", state.batch, f"is past the end of the last epoch ({epochs})")
    if state.samples and state.skipped_images > state.samples:
        raise refuse(path, "skipped_images", state.skipped_images, f"is more than the {state.samples} images drawn")


def _plain_name(name: str) -> str:
    for prefix in _WRAPPERS:
        name = name.replace(prefix, "")
    return name


def _check_weights(path: Path, weights: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    found = {_plain_name(name): tuple(t.shape) for name, t in weights.items()}
    shapes = {name: tuple(t.shape) for name, t in expected.items()}  # DTensors report their whole shapes
    if found != shapes:
        wrong = sorted(set(found) ^ set(shapes)) or sorted(k for k in found if found[k] != shapes[k])
        raise CheckpointError(f"cannot resume from {path}: it does not fit this model ({wrong[0]})")
    for name, tensor in weights.items():
        want = expected[_plain_name(name)]
        if tensor.dtype != want.dtype:
            raise CheckpointError(f"{path}: tensor {name} is {str(tensor.dtype).removeprefix('torch.')}, the model "
                                  f"holds {str(want.dtype).removeprefix('torch.')}; the train state is damaged")
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise CheckpointError(f"{path}: tensor {name} holds NaN or Inf (a diverged run?); resume an earlier "
                                  "train state")


def _check_parameter_state(path: Path, name: str, entry: Any, param: torch.Tensor) -> None:
    if not isinstance(entry, dict):
        raise CheckpointError(f"{path}: state of {name} is not a mapping; the train state is damaged")
    for key, value in entry.items():
        field = f"state.{name}.{key}"
        if not isinstance(value, torch.Tensor):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise CheckpointError(f"{path}: {field} is {value!r}, not a number; the train state is damaged")
            continue
        if value.dim() == 0:
            ok = value.is_floating_point() and bool(torch.isfinite(value)) or not value.is_floating_point()
        elif any(part in str(key) for part in _FACTORED):
            ok = value.dim() <= param.dim() and value.numel() <= param.numel() and value.is_floating_point()
        else:
            ok = tuple(value.shape) == tuple(param.shape) and value.is_floating_point()
        if not ok:
            raise CheckpointError(f"{path}: {field} is a {str(value.dtype).removeprefix('torch.')} tensor of shape "
                                  f"{list(value.shape)}, the optimiser expects {list(param.shape)} (the parameter's "
                                  "shape) in floating point; the train state is damaged")
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise CheckpointError(f"{path}: {field} holds NaN or Inf; resume an earlier train state")


def _check_optimizer(path: Path, optimizer: Any, params: dict[str, torch.Tensor]) -> None:
    if not isinstance(optimizer, dict) or not isinstance(optimizer.get("state", {}), dict) \
            or not isinstance(optimizer.get("param_groups", []), list):
        raise CheckpointError(f"{path}: the optimiser entry is not torch's state and param_groups; it is damaged")
    for group in optimizer.get("param_groups", []):
        names = group.get("params", []) if isinstance(group, dict) else None
        if not isinstance(names, list):
            raise CheckpointError(f"{path}: param_groups holds a group without a parameter list; it is damaged")
        unknown = [n for n in names if isinstance(n, str) and _plain_name(n) not in params]
        if unknown:
            raise CheckpointError(f"{path}: param_groups names {unknown[0]!r}, which this model does not have")
    for name, entry in optimizer.get("state", {}).items():
        param = params.get(_plain_name(str(name)))
        if param is None:
            if isinstance(name, int):
                continue  # the first format numbered parameters; torch checks those itself
            raise CheckpointError(f"{path}: state.{name} is for a parameter this model does not have")
        _check_parameter_state(path, str(name), entry, param)


def check_state_tensors(folder: Path, model: torch.nn.Module, weights: dict[str, torch.Tensor] | None,
                        tree: dict[str, Any] | None) -> None:
    """Main process, before anything is loaded: the weights' names, shapes, dtypes (and finiteness) as the model
    holds them, the optimiser state's tensors shaped as its parameters."""
    if is_fsdp1(model):
        return  # asking the model is a collective the main process cannot make alone; the strict load checks
    folder = Path(folder)
    expected = {_plain_name(n): t for n, t in model.state_dict().items()}
    if weights is not None:
        _check_weights(folder / "model.safetensors", weights, expected)
    optimizer = (tree or {}).get("optimizer")
    if optimizer is not None:
        params = {_plain_name(n): p for n, p in model.named_parameters()}
        _check_optimizer(folder / "optimizer.safetensors", optimizer, params)
