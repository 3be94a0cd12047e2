"""`dccnext predict`: the top-5 classes of images, by name, with probabilities."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from . import early_checks
from .options import DEFAULT_PRECISION_OPT, JsonOpt, PrecisionOpt, RequiredCheckpointOpt, print_json

EXAMPLES = """\
dccnext predict --checkpoint model.safetensors shirt.png boot.png
dccnext predict --checkpoint b2.safetensors --top 3 --json cat.jpg
dccnext predict --checkpoint b2.safetensors --precision bf16 cat.jpg
"""


def predict_cmd(
        images: Annotated[list[Path], typer.Argument(metavar="IMAGE", help="Image files (JPEG, PNG, WebP, ...; any "
                                                                          "mode).", show_default=False)],
        checkpoint: RequiredCheckpointOpt,
        top: Annotated[int, typer.Option("--top", min=1, help="How many classes to list.")] = 5,
        precision: PrecisionOpt = DEFAULT_PRECISION_OPT,
        json_out: JsonOpt = False,
) -> None:
    """Classify images: the top classes by name, with probabilities.

    The class names and the evaluation transform come from the checkpoint file.
    """
    checkpoint = early_checks.checkpoint_file(checkpoint)
    early_checks.image_files(images)
    from ..classification.predict import predict
    from ..common.text import printable

    predictions = predict(checkpoint, images, top_k=top, precision=precision.value)
    if json_out:
        print_json([p.to_dict() for p in predictions])
        return
    console = Console()
    for p in predictions:
        table = Table(title=escape(printable(Path(p.image).name)), title_justify="left")
        table.add_column("class")
        table.add_column("probability", justify="right")
        for name, prob in p.top:
            table.add_row(escape(printable(name)), f"{100 * prob:.1f} %")  # names come from the file
        console.print(table)


def register(app: typer.Typer) -> None:
    app.command("predict", epilog=EXAMPLES)(predict_cmd)
