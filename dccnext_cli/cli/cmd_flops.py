"""`dccnext flops`: parameters and FLOPs (multiply-accumulates) of any variant at any resolution."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Optional

import typer
from rich.table import Table

from ..models.config import PAPER_TABLE1, VARIANTS
from ..tasks import TASKS, DenseTask, get_task, is_dense
from .options import (
    DEFAULT_TASK,
    JsonOpt,
    ModelSetOpt,
    ResOpt,
    Task,
    VariantOpt,
    console,
    format_grid,
    format_resolution,
    parse_int_pair,
    parse_model_sets,
    parse_resolution,
    print_json,
)

if TYPE_CHECKING:
    from ..models.flops import FlopReport
    from ..models.paper_tables import CountedRow

EXAMPLES = """\
dccnext flops
dccnext flops --variant b2 --res 1280x800 --task retinanet
"""
TASK_HELP = "classification, or a dense model (default --variant b2; FPN and heads split out): " + ", ".join(
    f"{name} (default --res {format_resolution(task.default_resolution)})" for name, task in TASKS.items()
    if is_dense(task)) + "."


def _g(value: int) -> str:
    return f"{value / 1e9:.2f}"


def _m(value: int) -> str:
    return f"{value / 1e6:.2f}"


def _breakdown(report: FlopReport, task: DenseTask | None = None) -> Table:
    model = f"dccnext_{report.variant}" + (f" {task.name}" if task is not None else "")
    table = Table(title=f"{model} at {format_resolution(report.resolution)}, per image: params in M, FLOPs in G",
                  caption="grid: the stage's tokens, rows x columns", title_justify="left", caption_justify="left")
    for column in ("part", "grid", "params", "dense", "distances", "cluster", "total"):
        table.add_column(column, justify="left" if column == "part" else "right")
    for part in report.parts:
        grid = format_grid(part.grid) if part.grid else ""
        table.add_row(
            part.name, grid, _m(part.params), _g(part.dense_flops),
            _g(part.distance_flops) if part.distance_flops else "",
            _g(part.cluster_flops) if part.cluster_flops else "",
            _g(part.flops),
        )
    table.add_section()
    table.add_row("total", "", _m(report.params), "", "", "", _g(report.flops_per_image), style="bold")
    return table


def _summary(reports: list[FlopReport]) -> Table:
    res = reports[0].resolution
    table = Table(title=f"DCCNeXt at {format_resolution(res)} beside the paper's Table 1 (224x224)",
                  title_justify="left")
    for column in ("variant", "params (M)", "paper", "GFLOPs", "paper", "FLOPs diff"):
        table.add_column(column, justify="right")
    for report in reports:
        paper_params, paper_flops = PAPER_TABLE1[report.variant]
        diff = (report.flops_per_image / 1e9 - paper_flops) / paper_flops * 100 if res == (224, 224) else None
        table.add_row(
            report.variant, f"{report.params / 1e6:.2f}", f"{paper_params:.1f}", _g(report.flops_per_image),
            f"{paper_flops:.1f}", f"{diff:+.1f} %" if diff is not None else "n/a (not 224)",
        )
    return table


def _json(report: FlopReport) -> dict:
    """The report's JSON with its size written as --res takes it (WIDTHxHEIGHT); grids stay [rows, columns]."""
    return {**report.to_dict(), "resolution": format_resolution(report.resolution)}


def flops(
        variant: VariantOpt = None,
        res: ResOpt = None,
        task: Annotated[
            Task,
            typer.Option("--task", help=TASK_HELP),
        ] = DEFAULT_TASK,
        batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Images per batch; totals multiply.")] = 1,
        cluster_size: Annotated[
            Optional[str],
            typer.Option("--cluster-size", metavar="K3,K4",
                         help="K per DCC stage (stage 3,stage 4), e.g. 12,18; counts the centre."),
        ] = None,
        subvector_interval: Annotated[
            Optional[str],
            typer.Option(
                "--subvector-interval", metavar="D3,D4",
                help="Sub-vector interval d per DCC stage, e.g. 8,8; 1 = all channels.",
            ),
        ] = None,
        set_: ModelSetOpt = None,
        paper_tables: Annotated[bool, typer.Option(
            "--paper-tables", help="Tables 1, 5 and 6 of the paper beside our counts, every row built from its "
                                   "model options (B1 for the ablations).")] = False,
        json_out: JsonOpt = False,
) -> None:
    """Parameters and FLOPs of any variant at any size, dense heads included.

    1 multiply-accumulate = 1 FLOP, as in the paper. With --variant: that variant with a per-stage breakdown.
    Without: all five beside the paper's Table 1.
    DCConv is counted by the paper's rule (distances n^2*ceil(E/d) + cluster conv n*K'*E), the rest by
    torch's FlopCounterMode on a meta-device model (no memory, any resolution). Dense tasks count every
    layer with weights up to the data-dependent post-processing, as MMDetection's FLOP counter does.
    """
    if paper_tables:
        _paper_tables(json_out)
        return
    spec = get_task(task.value)
    resolution = parse_resolution(res) or spec.default_resolution
    changes = parse_model_sets(set_)
    if (sizes := parse_int_pair("--cluster-size")(cluster_size)) is not None:
        changes["cluster_sizes"] = sizes
    if (intervals := parse_int_pair("--subvector-interval")(subvector_interval)) is not None:
        changes["subvector_intervals"] = intervals
    if is_dense(spec):
        _dense(spec, variant.value if variant else "b2", resolution, batch_size, changes, json_out)
        return
    from ..models.flops import count_variant

    names = [variant.value] if variant else list(VARIANTS)
    reports = [count_variant(name, resolution, batch_size, **changes) for name in names]

    if json_out:
        print_json(_json(reports[0]) if variant else [_json(r) for r in reports])
        return
    if variant:
        console.print(_breakdown(reports[0]))
    else:
        console.print(_summary(reports))
    if batch_size > 1:
        for r in reports:
            console.print(f"dccnext_{r.variant}: batch {batch_size} -> {r.flops / 1e9:.2f} GFLOPs in total")
    console.print(f"[dim]{reports[0].note}[/]", highlight=False)


def _paper_tables(json_out: bool) -> None:
    """Tables 1, 5 and 6 beside the paper (--paper-tables)."""
    from ..models.flops import count_variant
    from ..models.paper_tables import TABLE5, TABLE6, count_paper_table

    table1 = [count_variant(name) for name in VARIANTS]
    table5 = count_paper_table(TABLE5)
    table6 = count_paper_table(TABLE6, high_res=True)
    if json_out:
        print_json({"table1": [r.to_dict() for r in table1], "table5": [r.to_dict() for r in table5],
                    "table6": [r.to_dict() for r in table6]})
        return
    console.print(_summary(table1))
    console.print(_ablation_table("Table 5: cluster size K, B1 at 224x224", table5))
    console.print(_ablation_table("Table 6: from a mixer without spatial op to DCCNeXt, B1", table6))
    console.print("[dim]paper '-': a figure we do not have. Each row is B1 with model options (--json lists them; "
                  "recipes/ablation/ trains each row); for top-1 see the paper's Tables 5 and 6.[/]", highlight=False)
    console.print(f"[dim]{table1[0].note}[/]", highlight=False)


def _ablation_table(title: str, rows: list[CountedRow]) -> Table:
    table = Table(title=title, title_justify="left")
    high_res = rows[0].high_res is not None
    columns = ["row", "params (M)", "paper", "GFLOPs 224", "paper"]
    columns += ["GFLOPs 1280x800", "paper"] if high_res else []
    for column in columns:
        table.add_column(column, justify="left" if column == "row" else "right")
    for counted in rows:
        row = counted.row
        cells = [row.label, _m(counted.report.params), _paper(row.paper_params_m, 1),
                 f"{counted.report.flops_per_image / 1e9:.3f}", _paper(row.paper_gflops, 2)]
        if high_res:
            cells += [_g(counted.high_res.flops_per_image), _paper(row.paper_gflops_high_res, 1)]
        table.add_row(*cells)
    return table


def _paper(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _dense(task: DenseTask, variant: str, resolution: tuple[int, int], batch_size: int, changes: dict,
           json_out: bool) -> None:
    from ..dense.flops import count_task

    report = count_task(task, variant, resolution, batch_size, **changes)
    paper = task.paper_b2 if variant == "b2" and resolution == task.default_resolution else None
    if json_out:
        print_json({**_json(report), "task": task.name,
                    "paper": {"params_m": paper[0], "flops_g": paper[1]} if paper else None})
        return
    console.print(_breakdown(report, task))
    if paper:
        console.print(
            f"paper (b2 {task.name}): {paper[0]:.1f} M params, {paper[1]:.1f} GFLOPs; "
            f"here {report.params / 1e6:.2f} M, "
            f"{report.flops_per_image / 1e9:.2f} GFLOPs ({(report.flops_per_image / 1e9 - paper[1]) / paper[1]:+.1%})"
        )
    if batch_size > 1:
        console.print(f"batch {batch_size} -> {report.flops / 1e9:.2f} GFLOPs in total")
    console.print(f"[dim]{report.note}[/]", highlight=False)


def register(app: typer.Typer) -> None:
    app.command("flops", epilog=EXAMPLES)(flops)
