"""Options every command shares: same names, same parsing, same errors (docs/architecture.md).

Choices come from the registries (variants, tasks, export formats), never from lists written here.
"""

from __future__ import annotations

import json
import math
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console

from ..models.config import VARIANTS
from ..tasks import CLASSIFICATION_TASK, TASKS, is_dense

MAX_SIZE = 8192  # px a side, every command: B0's first stage alone holds 2 GB of activations at 8192x8192
MIN_SIZE = 32  # px: the stem (stride 4) and three stride-2 downsamplings leave at least one token

console = Console()


def choices(name: str, values) -> type[Enum]:
    """A str Enum of `values` for Typer's choice lists, built from a registry."""
    return Enum(name, {value: value for value in values}, type=str)


Variant = choices("Variant", VARIANTS)
Task = choices("Task", TASKS)


def parse_resolution(value: str | None, option: str = "--res") -> tuple[int, int] | None:
    """'224' -> (224, 224); '1280x800' -> (1280, 800) as height x width; at least 32 px each."""
    if value is None:
        return None
    text = value.strip().lower()
    parts = text.split("x") if "x" in text else [text, text]
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        raise typer.BadParameter(
            f"{value!r} is not a resolution; write 224 or HEIGHTxWIDTH such as 1280x800", param_hint=f"'{option}'"
        )
    height, width = (int(p) for p in parts)
    if min(height, width) < MIN_SIZE:
        raise typer.BadParameter(
            f"{height}x{width} is too small; height and width must be at least {MIN_SIZE} px", param_hint=f"'{option}'"
        )
    if max(height, width) > MAX_SIZE:
        raise typer.BadParameter(f"{height}x{width} is too large; at most {MAX_SIZE} px a side (beyond it one "
                                 "image's activations outgrow any device's memory)", param_hint=f"'{option}'")
    return height, width


def parse_int_pair(name: str, minimum: int = 1):
    """A parser for 'A,B' (one value per DCC stage; a single value applies to both)."""

    def parse(value: str | None) -> tuple[int, int] | None:
        if value is None:
            return None
        parts = [p.strip() for p in value.split(",")]
        if len(parts) not in (1, 2) or not all(p.lstrip("-").isdigit() for p in parts):
            raise typer.BadParameter(
                f"{value!r} is not valid; write one integer per DCC stage, e.g. 12,18", param_hint=f"'{name}'"
            )
        ints = [int(p) for p in parts]
        if any(v < minimum for v in ints):
            raise typer.BadParameter(f"must be at least {minimum}, got {value}", param_hint=f"'{name}'")
        return (ints[0], ints[0]) if len(ints) == 1 else (ints[0], ints[1])

    return parse


VariantOpt = Annotated[Optional[Variant], typer.Option("--variant", help="Model variant: b0, b1, b2, b3 or b4.")]
ResOpt = Annotated[
    Optional[str],
    typer.Option("--res", help="Input size: 224 (square) or HEIGHTxWIDTH such as 1280x800; at least 32 px."),
]
JsonOpt = Annotated[
    bool, typer.Option("--json", help="Print one machine-readable JSON result on stdout, nothing else.")
]
CheckpointOpt = Annotated[
    Optional[Path],
    typer.Option("--checkpoint", help="A dccnext .safetensors file (from `train` or `export`).", dir_okay=False),
]
OverwriteOpt = Annotated[bool, typer.Option("--overwrite", help="Replace existing outputs instead of refusing.")]

DATA_HELP = ("Images: builtin:fashion-mnist (the embedded set; default), imagefolder:PATH "
             "(PATH/train/<class>/..., PATH/validation/<class>/...), parquet:GLOB (Hub-style shards: image bytes + "
             "label; split from file names), or hf:REPO[:CONFIG] (a Hub dataset, streamed; ImageNet: "
             "hf:timm/imagenet-1k-wds).")
TaskOpt = Annotated[Task, typer.Option("--task", help="classification or a dense task: " + ", ".join(
    f"{name} ({task.summary})" for name, task in TASKS.items() if is_dense(task)) + ".")]
DEFAULT_TASK = Task(CLASSIFICATION_TASK.name)


def _finite(obj: Any) -> Any:
    """NaN and infinities (a diverged model's probabilities) become null: JSON has no such numbers."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def print_json(obj: Any) -> None:
    """The --json result: one JSON document on stdout, nothing else."""
    sys.stdout.write(json.dumps(_finite(obj), indent=2, allow_nan=False) + "\n")
    sys.stdout.flush()
