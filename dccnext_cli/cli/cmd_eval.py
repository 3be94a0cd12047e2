"""`dccnext eval`: top-1/top-5 and loss of a weights file on any data source."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from ..common.progress import StepProgress
from ..errors import ConfigError
from ..models.weights import read_meta
from ..tasks import DenseTask, check_options, get_task, is_dense
from . import early_checks
from .options import (
    DATA_SOURCES,
    DEFAULT_PRECISION_OPT,
    DEFAULT_TASK,
    JsonOpt,
    PrecisionOpt,
    RequiredCheckpointOpt,
    TaskOpt,
    format_resolution,
    given_options,
    print_json,
)

EXAMPLES = """\
dccnext eval --weights model.safetensors
dccnext eval --weights b2.safetensors --data imagefolder:/data/imagenet
dccnext eval --weights b2.safetensors --precision bf16
"""


def eval_cmd(
        ctx: typer.Context,
        checkpoint: RequiredCheckpointOpt,
        data: Annotated[Optional[str], typer.Option(
            "--data", metavar="SOURCE", help="Images to score (default: the checkpoint's own evaluation data, "
                                             "else the embedded test split): " + DATA_SOURCES)] = None,
        split: Annotated[Optional[str], typer.Option(
            "--split", metavar="SPLIT",
            help="Split to score (default: the run's eval split; test for builtin:).")] = None,
        batch_size: Annotated[Optional[int], typer.Option(
            "--batch-size", min=1, help="Images per forward pass (default: 256; dense tasks 1).")] = None,
        workers: Annotated[int, typer.Option("--workers", min=0, help="DataLoader worker processes.")] = 0,
        limit: Annotated[Optional[int], typer.Option("--limit", min=1, help="Score at most this many images.")] = None,
        task: TaskOpt = DEFAULT_TASK,
        precision: PrecisionOpt = DEFAULT_PRECISION_OPT,
        json_out: JsonOpt = False,
) -> None:
    """Score a checkpoint: top-1 and top-5, or COCO AP and mIoU for a dense one.

    A classifier is scored with the evaluation transform of its training recipe (size, crop, interpolation,
    normalisation: read from the file) and reports top-1, top-5 (percent) and the cross-entropy loss. A dense
    checkpoint (its task read from the file, or --task) reports COCO AP or mIoU on --data.
    """
    checkpoint = early_checks.checkpoint_file(checkpoint)
    early_checks.data_source(data)
    spec = get_task(task.value)
    meta = read_meta(checkpoint)
    if not is_dense(spec) and not meta.is_classifier:
        spec = get_task(meta.task)  # a dense checkpoint says what it is
    check_options(spec, "eval", given_options(ctx))
    batch_size = batch_size or spec.eval_batch_size
    if is_dense(spec):
        _eval_dense(spec, checkpoint, data, split, batch_size, workers, limit, precision.value, json_out)
        return
    from ..classification.evaluate import evaluate_checkpoint

    result = evaluate_checkpoint(checkpoint, data, split, batch_size=batch_size, workers=workers, max_samples=limit,
                                 progress=StepProgress("image", enabled=not json_out), precision=precision.value)
    if json_out:
        print_json({**result.to_dict(), "resolution": format_resolution(result.extra["resolution"])})
        return
    table = Table(title=f"{checkpoint.name} on {result.extra['data']} ({result.extra['split']})")
    for column in ("top-1", "top-5", "loss", "images"):
        table.add_column(column, justify="right")
    table.add_row(f"{result.top1:.2f} %", f"{result.top5:.2f} %", f"{result.loss:.4f}", str(result.samples))
    Console().print(table)
    if result.skipped_images:
        Console(stderr=True).print(f"[yellow]warning:[/] {result.skipped_images} images could not be decoded "
                                   "and were skipped", highlight=False)


def _eval_dense(task: DenseTask, checkpoint: Path, data: str | None, split: str | None, batch_size: int,
                workers: int, limit: int | None, precision: str, json_out: bool) -> None:
    from ..dense.evaluate import score_dense

    if data is None:
        raise ConfigError(f"--task {task.name} needs --data ({task.data_scheme}:PATH)")
    accelerator = None
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # under accelerate launch: each process scores a block
        from ..training.accelerator import make_accelerator

        accelerator = make_accelerator("no", 1)
    score = score_dense(checkpoint, data, task, batch_size=batch_size, progress=not json_out,
                        accelerator=accelerator, workers=workers, limit=limit, split=split, precision=precision)
    if accelerator is not None and not accelerator.is_main_process:
        return
    report = {"checkpoint": str(checkpoint), "task": task.name, "split": split or "validation", **score.metrics,
              "images": score.images, "batches": score.batches, "dtype": score.dtype}
    if json_out:
        print_json(report)
    else:
        Console().print(report)


def register(app: typer.Typer) -> None:
    app.command("eval", epilog=EXAMPLES)(eval_cmd)
