"""`dccnext train`: the paper's recipe on one CPU, one GPU, or many through `accelerate launch`."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console
from rich.table import Table

from ..common.progress import StepProgress
from ..errors import ConfigError
from ..tasks import DenseTask, check_options, get_task, is_dense
from . import early_checks
from .options import (
    DATA_SOURCES,
    DEFAULT_TASK,
    VARIANT_HELP,
    JsonOpt,
    OverwriteOpt,
    ResOpt,
    TaskOpt,
    Variant,
    given_options,
    parse_resolution,
    print_json,
)

RECIPE_HELP = ("A bundled recipe (quickstart, imagenet/b0 ... imagenet/b4) or a YAML file. Default: quickstart "
               "without --data, else the paper's ImageNet recipe for the variant.")
EPOCHS_HELP = "Epochs (recipe key epochs). [default: the recipe's: 3 in quickstart, 300 in imagenet/*]"
WORKERS_HELP = "DataLoader workers per process. [default: the recipe's: 1 in quickstart, 8 in imagenet/*]"
SET_HELP = "Override any recipe key, e.g. --set lr=1e-3 --set input_size=[160,160] (repeatable; YAML values)."


EXAMPLES = """\
dccnext train -o runs/quick
dccnext train --variant b2 --data hf:timm/imagenet-1k-wds -o runs/b2
"""

DataOpt = Annotated[Optional[str], typer.Option(
    "--data", metavar="SOURCE", help="Images to train on (default: the embedded Fashion-MNIST): " + DATA_SOURCES)]
TrainVariantOpt = Annotated[Optional[Variant], typer.Option(
    "--variant", case_sensitive=False, help=VARIANT_HELP + " [default: b0, or the --recipe's]")]
RecipeOpt = Annotated[Optional[str], typer.Option("--recipe", metavar="RECIPE", help=RECIPE_HELP)]
SetOpt = Annotated[Optional[list[str]], typer.Option("--set", metavar="KEY=VALUE", help=SET_HELP)]
ResumeOpt = Annotated[Optional[str], typer.Option(
    "--resume", metavar="[auto|PATH]",
    help="Continue an interrupted run: bare or 'auto' resumes -o DIR from its newest train state (or starts "
         "it); a PATH names a run folder or one of its checkpoints/step-* train states.")]
WeightsOpt = Annotated[Optional[Path], typer.Option(
    "--weights", help="Start from these weights: a dccnext checkpoint (its head is replaced) or timm "
                      "ConvFormer weights (warm start); dense tasks: the backbone's ImageNet weights.")]


def train_cmd(
        ctx: typer.Context,
        variant: TrainVariantOpt = None,
        data: DataOpt = None,
        recipe: RecipeOpt = None,
        set_: SetOpt = None,
        epochs: Annotated[Optional[int], typer.Option("--epochs", help=EPOCHS_HELP)] = None,
        batch_size: Annotated[Optional[int], typer.Option(
            "--batch-size", help="Total images per optimiser step over all processes (the paper: 4096).")] = None,
        lr: Annotated[Optional[float], typer.Option(
            "--lr", help="Peak learning rate (default: lr_base x batch / 1024).")] = None,
        res: ResOpt = None,
        grad_accum: Annotated[Optional[int], typer.Option("--grad-accum", help="Gradient accumulation steps.")] = None,
        workers: Annotated[Optional[int], typer.Option("--workers", help=WORKERS_HELP)] = None,
        seed: Annotated[Optional[int], typer.Option("--seed", help="Random seed.")] = None,
        amp: Annotated[Optional[str], typer.Option(
            "--amp", metavar="MODE", help="Mixed precision: auto (bf16 on GPUs that have it), no, bf16, fp16.")] = None,
        compile_: Annotated[Optional[bool], typer.Option(
            "--compile/--no-compile", help="torch.compile the model (30-60 s to start, faster steps).")] = None,
        grad_checkpointing: Annotated[Optional[bool], typer.Option(
            "--grad-checkpointing/--no-grad-checkpointing", help="Recompute activations: less memory.")] = None,
        checkpoint_every: Annotated[Optional[int], typer.Option(
            "--checkpoint-every",
            help="Optimiser steps between train states (0: each epoch; dense tasks: at the end). A train state is "
                 "also saved every checkpoint_minutes (recipe key, default 10) and on the first Ctrl-C.")] = None,
        output: Annotated[Optional[Path], typer.Option(
            "-o", "--output", help="Run folder (default: runs/<variant>-<date-time>).", file_okay=False)] = None,
        resume: ResumeOpt = None,
        overwrite: OverwriteOpt = False,
        task: TaskOpt = DEFAULT_TASK,
        weights: WeightsOpt = None,
        json_out: JsonOpt = False,
) -> None:
    """Train DCCNeXt on images, or a detector or segmenter with --task.

    With no --data: B0 on the embedded Fashion-MNIST with the quickstart recipe (minutes on a laptop). With
    --data: the paper's ImageNet recipe (AdamW, cosine with 20 warm-up epochs, RandAugment, Mixup/CutMix,
    label smoothing, random erasing, drop path) unless --recipe says otherwise.

    Writes OUTPUT/model.safetensors (the weights, with class names), best.safetensors, recipe.yaml, log.jsonl
    (and TensorBoard under tb/ when installed) and checkpoints/ (train states; --resume continues the newest).
    The first Ctrl-C finishes the step, saves a train state and prints the command that resumes; a second one
    quits at once.

    Dense tasks: --res sets the training crop (semantic-fpn) or the detectors' shorter and longer side (1280x800:
    800 and 1280).

    Many GPUs or nodes: accelerate launch --multi_gpu --num_processes 8 -m dccnext_cli train --recipe
    imagenet/b2.
    """
    early_checks.weights_file(weights)
    spec = get_task(task.value)
    check_options(spec, "train", given_options(ctx))
    from ..common.recipe_files import parse_overrides

    size = parse_resolution(res)
    options: dict[str, Any] = {k: v for k, v in {
        "variant": variant.value if variant else None, "epochs": epochs, "batch_size": batch_size, "lr": lr,
        "grad_accum": grad_accum, "workers": workers, "seed": seed, "amp": amp, "compile": compile_,
        "grad_checkpointing": grad_checkpointing, "checkpoint_every": checkpoint_every,
        **(spec.size_keys(size) if size else {})}.items() if v is not None}
    overrides = _merge_options(parse_overrides(set_), options)
    if resume not in (None, "auto"):
        output = _run_folder(Path(resume))
    if resume is not None and output is None:
        raise ConfigError("--resume needs the run folder: pass -o DIR (or --resume DIR)")
    resume_from: bool | Path = Path(resume) if resume not in (None, "auto") else resume is not None
    if is_dense(spec):
        _train_dense(spec, data, recipe, overrides, output, weights, overwrite, json_out, resume_from)
    else:
        early_checks.train_data(data, recipe, set_, variant.value if variant else None)
        _train_classifier(data, recipe, overrides, output, weights, overwrite, json_out, resume_from)


def _train_classifier(data: str | None, recipe: str | None, overrides: dict[str, Any], output: Path | None,
                      weights: Path | None, overwrite: bool, json_out: bool, resume: bool | Path) -> None:
    from ..classification.callbacks import callbacks_from_env
    from ..classification.recipe import default_recipe_name, load_recipe
    from ..classification.train import train

    overrides = _merge_options(overrides, {k: v for k, v in {
        "data": data, "pretrained": str(weights) if weights else None}.items() if v is not None})
    config = load_recipe(recipe or default_recipe_name(data, overrides.get("variant")), overrides)
    console = Console(stderr=True)
    if data is None and recipe is None and resume is False:
        console.print("no --data: training on the embedded Fashion-MNIST with the [bold]quickstart[/] recipe",
                      highlight=False)
    result = train(config, output, resume=resume, overwrite=overwrite,
                   reporter=StepProgress("step", enabled=not json_out), explicit=overrides,
                   callbacks=callbacks_from_env())
    _report(result, config.variant, json_out, console)


_OPTION_OF = {"input_size": "--res", "crop_size": "--res", "min_size": "--res", "max_size": "--res",
              "pretrained": "--weights", "data": "--data"}  # recipe keys whose option has another name


def _merge_options(sets: dict[str, Any], explicit: dict[str, Any]) -> dict[str, Any]:
    """--set values and explicit options together; one key given both ways is refused, whichever would win."""
    both = sorted(set(sets) & set(explicit))
    if both:
        key = both[0]
        option = _OPTION_OF.get(key, "--" + key.replace("_", "-"))
        raise ConfigError(f"{key} is given twice ({option} and --set {key}=...); keep one of them")
    return {**sets, **explicit}


def _report(result, variant: str, json_out: bool, console: Console) -> None:
    """The run's summary: one JSON document, or a small table on stderr."""
    summary = {"output": str(result.output), "weights": str(result.weights), "epochs": result.epochs,
               "steps": result.steps, "samples": result.samples, "world_size": result.world_size,
               "wall_s": round(result.wall_s, 1),
               "metrics": result.metrics, "skipped_images": result.skipped_images}
    if json_out:
        print_json(summary)
        return
    processes = "1 process" if result.world_size == 1 else f"{result.world_size} processes"
    table = Table(title=f"trained {variant}: {result.steps} steps in {result.wall_s / 60:.1f} min on {processes}",
                  show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    table.add_row("weights", str(result.weights))
    if result.metrics:
        table.add_row("top-1", f"{result.metrics['top1']:.2f} %")
        table.add_row("top-5", f"{result.metrics['top5']:.2f} %")
    if result.skipped_images:
        table.add_row("skipped images", f"[yellow]{result.skipped_images}[/] (could not be decoded)")
    console.print(table)


def _run_folder(path: Path) -> Path:
    if path.name.startswith("step-") and path.parent.name == "checkpoints":
        return path.parent.parent
    if not path.is_dir():
        raise ConfigError(f"--resume {path}: no such run folder")
    return path


def _train_dense(task: DenseTask, data: str | None, recipe: str | None, overrides: dict[str, Any],
                 output: Path | None, weights: Path | None, overwrite: bool, json_out: bool,
                 resume: bool | Path) -> None:
    from ..dense.recipe import load_dense_recipe
    from ..dense.train import train_dense

    if data is None:
        raise ConfigError(f"--task {task.name} needs --data ({task.data_scheme}:PATH)")
    if output is None:
        raise ConfigError(f"--task {task.name} needs -o DIR for the run")
    overrides = {**overrides, "task": task.name}
    config = load_dense_recipe(recipe or task.name, overrides)
    result = train_dense(config, data, output, weights=weights, eval_data=data, progress=not json_out,
                         overwrite=overwrite, resume=resume, explicit=overrides)
    if os.environ.get("RANK", "0") != "0":  # under accelerate launch, the main process reports
        return
    summary = {"output": str(output), "weights": str(result.weights), "iterations": result.steps,
               "world_size": result.world_size, "metrics": result.metrics}
    if json_out:
        print_json(summary)
    else:
        Console(stderr=True).print(f"wrote {result.weights}  metrics: {result.metrics}", highlight=False)


def register(app: typer.Typer) -> None:
    app.command("train", epilog=EXAMPLES)(train_cmd)
