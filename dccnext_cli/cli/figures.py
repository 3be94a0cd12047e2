"""Options and messages shared by the two figure commands (visualize-clusters, kernel-weights)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer
from rich.console import Console

if TYPE_CHECKING:
    from ..viz.model_source import ModelSource

from .options import format_resolution

__all__ = ["BlocksOpt", "DpiOpt", "output_opt", "warn_random", "err_console", "model_json", "sizes_as_typed"]

err_console = Console(stderr=True)

BlocksOpt = Annotated[
    Optional[str],
    typer.Option(
        "--blocks",
        metavar="BLOCKS",
        help="DCC blocks, numbered 1-based over the whole network as in the paper: e.g. 7,16, or all-dcc. "
        "Default: the first DCC block of stage 3 and of stage 4 (B2: 7,16).",
    ),
]
DpiOpt = Annotated[int, typer.Option("--dpi", min=30, max=1200, help="Resolution of PNG output.")]


def output_opt(default: str, machine: str):
    """-o/--output of a figure command: written by default unless only machine output was asked for."""
    return Annotated[
        Optional[Path],
        typer.Option("-o", "--output", metavar="FILE", help=f"Figure file: .png, .svg or .pdf. Default {default} "
                     f"(none with {machine} unless -o is given)."),
    ]


def sizes_as_typed(data: dict, *keys: str) -> dict:
    """A JSON record with its (height, width) sizes written WIDTHxHEIGHT, as --res takes them."""
    return {**data, **{key: format_resolution(data[key]) for key in keys if data.get(key)}}


def model_json(source: ModelSource) -> dict:
    """Which model a figure shows, for --json (its training size written as --res takes it)."""
    return sizes_as_typed(source.to_dict(), "train_size")


def warn_random(source: ModelSource) -> None:
    """The visible warning for a model without a checkpoint."""
    if source.random_weights:
        err_console.print(
            f"[yellow]warning:[/] no --checkpoint: DCCNeXt-{source.variant.upper()} has random weights, "
            "so what the figure shows says little about a trained model",
            highlight=False,
            soft_wrap=True,
        )
