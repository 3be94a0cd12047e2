"""`dccnext kernel-weights`: the paper's Figure 4, mean |W| per kernel slot of each chosen DCConv."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from ..errors import ConfigError
from . import early_checks
from .figures import BlocksOpt, DpiOpt, err_console, model_json, output_opt, warn_random
from .options import CheckpointOpt, JsonOpt, ModelSetOpt, OverwriteOpt, VariantOpt, parse_model_sets, print_json

EXAMPLES = """\
dccnext kernel-weights --checkpoint model.safetensors -o kernel_weights.png
dccnext kernel-weights --variant b2 --blocks all-dcc --csv
"""


def kernel_weights_cmd(
        variant: VariantOpt = None,
        checkpoint: CheckpointOpt = None,
        blocks: BlocksOpt = None,
        output: output_opt("kernel_weights.png", "--json/--csv") = None,
        dpi: DpiOpt = 150,
        json_out: JsonOpt = False,
        csv_out: Annotated[
            bool, typer.Option("--csv", help="Print block,stage,slot,mean_abs_weight,trained as CSV on stdout.")
        ] = False,
        overwrite: OverwriteOpt = False,
        set_: ModelSetOpt = None,
) -> None:
    """Plot each DCConv's kernel weight per slot, the paper's Figure 4.

    |W| of each chosen DCConv, averaged over channels, against the slot k = 0..K-1: a heat map across blocks
    and one curve per block. Slot 0 weighs the centre, slot k its
    k-th nearest token; a trained model that relies on nearness shows falling curves.

    With a checkpoint that records its training size (metadata input_size), slots k >= K' (the
    stage's token count at that size, when smaller than K) never received a gradient: they are
    hatched in the heat map and hollow on the curves. Without --checkpoint: a fresh model (default b2).
    """
    if json_out and csv_out:
        raise ConfigError("choose one of --json and --csv")
    if output is None and not (json_out or csv_out):
        output = Path("kernel_weights.png")
    checkpoint = early_checks.checkpoint_file(checkpoint)
    early_checks.figure_outputs(output, None, overwrite)
    from ..viz.figure import save_figure
    from ..viz.kernel_weights import kernel_csv, kernel_figure, kernel_weights
    from ..viz.model_source import load_model, parse_blocks

    source = load_model(checkpoint, variant.value if variant else None, parse_model_sets(set_))
    warn_random(source)
    kernels = kernel_weights(source, parse_blocks(blocks, source.model))
    if json_out:
        print_json({"model": model_json(source), "blocks": [k.to_dict() for k in kernels]})
    elif csv_out:
        sys.stdout.write(kernel_csv(kernels))
        sys.stdout.flush()
    if output is not None:
        save_figure(kernel_figure(source, kernels), output, dpi)
        (err_console if json_out or csv_out else Console()).print(f"wrote {output}", highlight=False)


def register(app: typer.Typer) -> None:
    app.command("kernel-weights", epilog=EXAMPLES)(kernel_weights_cmd)
