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

from ..common.recipe_files import parse_overrides
from ..errors import ConfigError
from ..models.config import VARIANTS, checked_model_changes
from ..models.precision import DEFAULT_PRECISION, PRECISIONS
from ..tasks import CLASSIFICATION_TASK, TASKS, is_dense

MAX_SIZE = 8192  # px a side, every command: B0's first stage alone holds 2 GB of activations at 8192x8192
MIN_SIZE = 32  # px: the stem (stride 4) and three stride-2 downsamplings leave at least one token

console = Console()


def choices(name: str, values) -> type[Enum]:
    """A str Enum of `values` for Typer's choice lists, built from a registry."""
    return Enum(name, {value: value for value in values}, type=str)


Variant = choices("Variant", VARIANTS)
Precision = choices("Precision", PRECISIONS)
Task = choices("Task", TASKS)


def parse_resolution(value: str | None, option: str = "--res") -> tuple[int, int] | None:
    """'224' -> (224, 224); '1280x800' (WIDTHxHEIGHT, as the paper and MMDetection write it) -> (800, 1280).

    The one place a size typed on the command line becomes the (height, width) the library takes.
    """
    if value is None:
        return None
    text = value.strip().lower()
    parts = text.split("x") if "x" in text else [text, text]
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        raise typer.BadParameter(
            f"{value!r} is not a resolution; write 224 or WIDTHxHEIGHT such as 1280x800", param_hint=f"'{option}'"
        )
    width, height = (int(p) for p in parts)
    if min(height, width) < MIN_SIZE:
        raise typer.BadParameter(
            f"{width}x{height} is too small; width and height must be at least {MIN_SIZE} px", param_hint=f"'{option}'"
        )
    if max(height, width) > MAX_SIZE:
        raise typer.BadParameter(f"{height}x{width} is too large; at most {MAX_SIZE} px a side (beyond it one "
                                 "image's activations outgrow any device's memory)", param_hint=f"'{option}'")
    return height, width


def format_resolution(size: tuple[int, int] | list[int]) -> str:
    """(height, width) -> 'WIDTHxHEIGHT': how every command prints a size, the way --res reads it."""
    height, width = size
    return f"{width}x{height}"


def format_grid(grid: tuple[int, int] | list[int]) -> str:
    """(rows, columns) of a token grid -> 'ROWSxCOLUMNS' (a grid is counted the other way round from a size)."""
    rows, columns = grid
    return f"{rows}x{columns}"


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


def parse_model_sets(items: list[str] | None) -> dict[str, Any]:
    """`--set model.FIELD=VALUE` items -> checked model options (the commands that build a model from --variant)."""
    parsed = parse_overrides(items)
    other = sorted(set(parsed) - {"model"})
    if other:
        raise ConfigError(f"--set {other[0]}=...: this command takes model options, written --set model.FIELD=VALUE "
                          "(e.g. --set model.global_op=none)")
    return checked_model_changes(parsed.get("model", {}), "--set model")


ModelSetOpt = Annotated[Optional[list[str]], typer.Option(
    "--set", metavar="model.FIELD=VALUE",
    help="A model option over the variant's (a DCCNeXtConfig field; YAML value; repeatable), e.g. "
         "--set model.global_op=none --set model.cluster_sizes=[8,8]. Only with --variant: a checkpoint carries "
         "its config.")]
VARIANT_HELP = "Model variant: " + ", ".join(VARIANTS) + " (any case)."
VariantOpt = Annotated[Optional[Variant], typer.Option("--variant", case_sensitive=False, help=VARIANT_HELP)]
RES_HELP = ("Input size: 224 (square) or WIDTHxHEIGHT as the paper writes it (1280x800 is landscape); "
            "at least 32 px.")
ResOpt = Annotated[Optional[str], typer.Option("--res", metavar="WxH", help=RES_HELP)]
JsonOpt = Annotated[
    bool, typer.Option("--json", help="Print one machine-readable JSON result on stdout, nothing else.")
]
WEIGHTS_HELP = ("A dccnext weights file (.safetensors, from `train` or `export`), or a run folder of `train` "
                "(its model.safetensors). --checkpoint is the same option under its former name.")
# The weights file of eval, predict, export, ... ("weights"; a train state is RUN/checkpoints/step-N)
CheckpointOpt = Annotated[Optional[Path], typer.Option("--weights", "--checkpoint", help=WEIGHTS_HELP)]
RequiredCheckpointOpt = Annotated[Path, typer.Option("--weights", "--checkpoint", help=WEIGHTS_HELP)]
PrecisionOpt = Annotated[Precision, typer.Option(
    "--precision", help="Number format of the weights and activations: fp32 (float32, as trained) or bf16 "
                        "(bfloat16: 1.4-2x faster on CPUs with AVX512-BF16 or AMX; top-1 within a few hundredths "
                        "of a point in our check). DCConv's distances stay float32 either way.")]
DEFAULT_PRECISION_OPT = Precision(DEFAULT_PRECISION)
OverwriteOpt = Annotated[bool, typer.Option("--overwrite", help="Replace existing outputs instead of refusing.")]

DATA_SOURCES = ("builtin:fashion-mnist (the embedded set), imagefolder:PATH (PATH/train/<class>/..., "
                "PATH/validation/<class>/...), parquet:GLOB (Hub-style shards: image bytes + label; split from "
                "file names), hf:REPO[:CONFIG] (a Hub dataset, streamed; ImageNet: hf:timm/imagenet-1k-wds), or "
                "for a dense task coco:PATH / ade20k:PATH.")
TASK_HELP = "classification, or a dense task: " + "; ".join(
    f"{name}, {task.summary}" for name, task in TASKS.items() if is_dense(task)) + "."
TaskOpt = Annotated[Task, typer.Option("--task", help=TASK_HELP)]
DEFAULT_TASK = Task(CLASSIFICATION_TASK.name)


def given_options(ctx: typer.Context) -> list[str]:
    """The options given on the command line (not left at their defaults), spelled as the user types them."""
    from click.core import ParameterSource

    return [option_name(param) for param in ctx.command.params
            if ctx.get_parameter_source(param.name) not in (ParameterSource.DEFAULT, None)]


def option_name(param) -> str:
    """An option's name as tasks declare it: its first long spelling (--output for -o, --weights for its former
    name --checkpoint)."""
    return next((opt for opt in param.opts if opt.startswith("--")), param.opts[0])


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
