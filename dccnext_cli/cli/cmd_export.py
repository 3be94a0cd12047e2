"""`dccnext export`: safetensors, a timm / Hub folder, ONNX, TorchScript or torch.export, each checked against eager."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer
from rich.table import Table

from ..export_formats import FORMATS, GRAPH_FORMATS, MIN_EXPORT_SIZE
from . import early_checks
from .options import (
    CheckpointOpt,
    JsonOpt,
    ModelSetOpt,
    OverwriteOpt,
    VariantOpt,
    choices,
    console,
    format_resolution,
    parse_model_sets,
    parse_resolution,
    print_json,
)

if TYPE_CHECKING:
    from ..export import ExportResult

Format = choices("Format", FORMATS)
EXAMPLES = """\
dccnext export --checkpoint model.safetensors --format onnx -o model.onnx
dccnext export --checkpoint b2.safetensors --format timm -o dccnext_b2/
"""


def _verdict(check) -> str:
    if not check.ok:
        return "[red]no[/]"
    return f"[yellow]yes[/]: {check.why_ok}" if check.why_ok else "[green]yes[/]"


def report_table(result: ExportResult) -> Table:
    """One row per check: what read the file back, which input (WIDTHxHEIGHT), the difference, the verdict."""
    table = Table(title=f"{result.format} -> {result.path} ({result.dtype}), read back and compared with eager",
                  title_justify="left")
    for column in ("read back by", "input", "max abs diff", "tolerance", "ok"):
        table.add_column(column, justify="left" if column in ("read back by", "input", "ok") else "right")
    for c in result.checks:
        size = f"{c.size}: " if c.size else ""
        table.add_row(c.loaded_by, f"{size}{format_resolution(c.shape[2:])}, batch {c.shape[0]}",
                      f"{c.max_abs_diff:.2e}", f"{c.tolerance:g}", _verdict(c))
    return table


def _render(result: ExportResult) -> None:
    console.print(report_table(result))
    for note in result.notes:
        console.print(f"[dim]{note}[/]", highlight=False)


def export(
        output: Annotated[Path, typer.Option("-o", "--output", help="File to write (a folder for timm and hub).")],
        fmt: Annotated[Format, typer.Option("--format", metavar="FORMAT", case_sensitive=False,
                                            help="What to write: " + ", ".join(FORMATS) + ".")],
        checkpoint: CheckpointOpt = None,
        variant: VariantOpt = None,
        features: Annotated[
            bool, typer.Option("--features", help="Export the four-stage backbone (strides 4-32), not the classifier.")
        ] = False,
        half: Annotated[bool, typer.Option("--half", help="float16 weights (not ONNX).")] = False,
        bf16: Annotated[bool, typer.Option("--bf16", help="bfloat16 weights (not ONNX).")] = False,
        res: Annotated[
            Optional[str],
            typer.Option("--res", metavar="WxH", help="Check (and trace) size: 224 or WIDTHxHEIGHT such as 1280x800; "
                                                      f"graph formats at least {MIN_EXPORT_SIZE} px. Default: the size "
                                                      "the checkpoint was trained at."),
        ] = None,
        push: Annotated[
            Optional[str],
            typer.Option("--push", metavar="REPO_ID", help="--format hub: upload the checked folder to this Hugging "
                                                           "Face Hub repo (needs `hf auth login`)."),
        ] = None,
        overwrite: OverwriteOpt = False,
        set_: ModelSetOpt = None,
        json_out: JsonOpt = False,
) -> None:
    """Export a checkpoint in one of six formats, checked against eager PyTorch.

    Formats: safetensors (the dccnext weights file; timm loads it by name), timm (a folder with config.json
    and model.safetensors for timm.create_model("local-dir:FOLDER", pretrained=True)), hub (the timm folder
    plus a model card README.md for the Hugging Face Hub; --push REPO_ID uploads it), onnx (opset 18, dynamo
    exporter), torchscript (traced), exported-program (torch.export, .pt2). Graph formats have a dynamic batch
    and dynamic height and width of at least 160 px (from there K is a constant of the graph); weights formats
    keep the size the model was trained at.

    The checkpoint (or a freshly initialised --variant) is written, loaded back and compared with the eager
    model at --res (default: the checkpoint's input_size, else 224) and at a second size that exercises the
    dynamic shapes.
    """
    if half and bf16:
        raise typer.BadParameter("choose one of --half and --bf16", param_hint="--half/--bf16")
    resolution = parse_resolution(res)
    if resolution is not None and min(resolution) < MIN_EXPORT_SIZE and fmt.value in GRAPH_FORMATS:
        raise typer.BadParameter(f"{format_resolution(resolution)}: {fmt.value} exports need at least "
                                 f"{MIN_EXPORT_SIZE} px (stage 4 must hold K tokens); weights formats take any size",
                                 param_hint="--res")
    checkpoint = early_checks.checkpoint_file(checkpoint)
    early_checks.export_output(fmt.value, output, overwrite)
    from ..export import export_model, load_source

    model, meta = load_source(checkpoint, variant.value if variant else None, parse_model_sets(set_))
    dtype = "float16" if half else "bfloat16" if bf16 else "float32"
    status = console.status(f"exporting to {fmt.value} and checking it against the eager model", spinner="dots")
    with contextlib.nullcontext() if json_out else status:
        result = export_model(model, meta, fmt.value, output, features=features, dtype=dtype,
                              resolution=resolution, overwrite=overwrite, push=push)
    if json_out:
        print_json(result.to_dict())
    else:
        _render(result)
        if not result.ok:
            console.print("[yellow]warning:[/] reduced precision exceeds its tolerance on these inputs")


def register(app: typer.Typer) -> None:
    app.command("export", epilog=EXAMPLES)(export)
