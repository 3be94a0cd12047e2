"""`dccnext visualize-clusters IMAGE...`: the paper's Figure 3 on any image and checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from ..errors import ConfigError
from . import early_checks
from .figures import BlocksOpt, DpiOpt, err_console, model_json, output_opt, sizes_as_typed, warn_random
from .options import (
    CheckpointOpt,
    JsonOpt,
    ModelSetOpt,
    OverwriteOpt,
    ResOpt,
    VariantOpt,
    format_resolution,
    parse_model_sets,
    parse_resolution,
    print_json,
)

EXAMPLES = """\
dccnext visualize-clusters --checkpoint model.safetensors shirt.png
dccnext visualize-clusters --res 1280x800 --html page.html street.jpg
"""

ImagesArg = Annotated[
    list[Path], typer.Argument(metavar="IMAGE", help="Image files (JPEG, PNG, WebP, ...).", show_default=False)
]
CentersOpt = Annotated[Optional[str], typer.Option(
    "--centers", metavar="MODE",
    help="auto: a few salient, spread cells per block (largest feature norm, a third of the grid apart, not on "
         "the border); all: one small panel per cell of the grid.")]
CenterOpt = Annotated[Optional[list[str]], typer.Option(
    "--center", metavar="ROW,COL", help="ROW,COL of a centre cell (0-based, in each block's grid); repeatable.")]
HtmlOpt = Annotated[Optional[Path], typer.Option(
    "--html", metavar="FILE",
    help="Write an interactive page (one self-contained .html file, works offline): hover a cell to see its "
         "cluster in every block. Without --blocks it holds all DCC blocks; no PNG unless -o is given too.")]


def visualize_clusters(
        images: ImagesArg,
        variant: VariantOpt = None,
        checkpoint: CheckpointOpt = None,
        blocks: BlocksOpt = None,
        centers: CentersOpt = None,
        center: CenterOpt = None,
        num_centers: Annotated[int, typer.Option("--num-centers", min=1, max=12, help="Centres for auto.")] = 3,
        res: ResOpt = None,
        output: output_opt("clusters.png", "--json") = None,
        dpi: DpiOpt = 150,
        json_out: JsonOpt = False,
        html: HtmlOpt = None,
        overwrite: OverwriteOpt = False,
        set_: ModelSetOpt = None,
) -> None:
    """Draw the clusters DCConv computed on images, the paper's Figure 3.

    For each image and chosen block: the image as the model saw it, the stage's patch grid, a centre cell in
    red and its K-1 nearest tokens in orange, read from the forward pass the model ran (asking for them
    changes no output).

    The image goes through the eval transform: resized with its aspect ratio kept, centre-cropped to --res
    (default: the checkpoint's training size, else 224). Without --checkpoint the weights are random
    (default variant b2) and a warning says so. --json prints every block's full index table (token n = cell
    (n // columns, n % columns); grids are rows x columns) and the grid geometry. --html page.html writes the
    same indices as an interactive page for one image (see the README's "Cluster explorer").
    """
    if center and centers:
        raise ConfigError("give either --centers auto|all or --center ROW,COL, not both")
    if centers is not None and centers not in ("auto", "all"):
        raise ConfigError(f"--centers {centers!r} is not a mode; use auto or all, or give --center ROW,COL")
    if output is None and not json_out and html is None:
        output = Path("clusters.png")
    checkpoint = early_checks.checkpoint_file(checkpoint)
    early_checks.figure_outputs(output, html, overwrite)
    early_checks.image_files(images)
    from ..viz.clusters import compute_clusters, parse_center, resolve_centers
    from ..viz.clusters_plot import clusters_figure
    from ..viz.explorer import check_explorer_inputs, write_explorer
    from ..viz.figure import save_figure
    from ..viz.model_source import load_model, parse_blocks

    explicit = [parse_center(c) for c in center or []]
    resolution = parse_resolution(res)
    if html is not None:
        check_explorer_inputs(images)

    source = load_model(checkpoint, variant.value if variant else None, parse_model_sets(set_))
    warn_random(source)
    chosen = parse_blocks(blocks if blocks or html is None else "all-dcc", source.model)
    resolution = resolution or source.train_size or (224, 224)
    results = []
    with err_console.status("running the model..."):
        for path in images:
            result = compute_clusters(source.model, path, resolution, chosen)
            resolve_centers(result.blocks, centers, explicit, num_centers)
            results.append(result)

    if json_out:
        print_json({
            "model": model_json(source),
            "resolution": format_resolution(resolution),
            "transform": "resize with aspect ratio kept, centre crop (timm eval transform, crop_pct 1.0)",
            "images": [sizes_as_typed(r.to_dict(), "original_size", "input_size") for r in results],
        })
    if output is not None:
        with err_console.status(f"drawing {output}..."):
            save_figure(clusters_figure(results, source.label, source.random_weights), output, dpi)
        (err_console if json_out else Console()).print(f"wrote {output}", highlight=False)
    if html is not None:
        write_explorer(html, results[0], source, explicit[0] if explicit else None)
        (err_console if json_out else Console()).print(f"wrote {html}", highlight=False)


def register(app: typer.Typer) -> None:
    app.command("visualize-clusters", epilog=EXAMPLES)(visualize_clusters)
