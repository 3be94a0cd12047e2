"""`dccnext benchmark`: img/s, step time and memory of models side by side, in timm's benchmark.py columns."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Optional

import typer

from ..errors import ConfigError, OutputExistsError
from .options import (
    ModelSetOpt,
    OverwriteOpt,
    choices,
    console,
    parse_model_sets,
    parse_resolution,
    print_json,
)

EXAMPLES = """\
dccnext benchmark dccnext_b2 control_b2 convformer_s18
dccnext benchmark dccnext_b0 convformer_s18 --res 64 --batch-size 2 --csv bench.csv
dccnext benchmark dccnext_b2 --bench both --precision bf16 --mode eager --mode compiled --batch-size 256
dccnext benchmark dccnext_b0 --bench train --data builtin:fashion-mnist --workers 2
"""


# Choice lists as the other commands build theirs (options.choices); the values measure.py takes
Bench = choices("Bench", ("infer", "train", "both"))
Mode = choices("Mode", ("eager", "compiled"))
BenchPrecision = choices("BenchPrecision", ("fp32", "bf16", "fp16"))
Device = choices("Device", ("auto", "cpu", "cuda"))


def _settings(bench: Bench, batch_sizes: list[int], resolutions: list[tuple[int, int]], precisions: list[str],
              modes: list[str], channels_last: bool):
    from ..benchmark.measure import Setting

    kinds = ["infer", "train"] if bench is Bench.both else [bench.value]
    return [Setting(kind, batch, res, precision, mode, channels_last)
            for mode in modes for precision in precisions for res in resolutions for batch in batch_sizes
            for kind in kinds]


def _check_output(csv_path: Path | None, overwrite: bool) -> None:
    if csv_path is None:
        return
    if csv_path.is_dir():
        raise ConfigError(f"--csv {csv_path} is a folder; name a file such as {csv_path / 'bench.csv'}")
    if csv_path.exists() and not overwrite:
        raise OutputExistsError(f"--csv {csv_path} exists; pass --overwrite to replace it, or name another file")
    from ..common.files import check_writable

    check_writable(csv_path, "--csv")


def benchmark(
        models: Annotated[list[str], typer.Argument(
            metavar="MODEL...", help="What to measure, the first being the baseline of the ratios: " + (
                "dccnext_b0..b4; control_b0..b4 (7x7 depthwise convs instead of DCConv); any timm model "
                "(convformer_s18, convnext_tiny); or a dccnext .safetensors file."), show_default=False)],
        bench: Annotated[Bench, typer.Option("--bench", help="Inference, a training step (AdamW), or both.")
                         ] = Bench.infer,
        res: Annotated[Optional[list[str]], typer.Option(
            "--res", metavar="WxH", help="Input size, 224 or WIDTHxHEIGHT; repeatable. [default: 224]")] = None,
        batch_size: Annotated[Optional[list[int]], typer.Option(
            "--batch-size", min=1, help="Images per step; repeatable. [default: 256 on a GPU, 32 on the CPU]")
        ] = None,
        precision: Annotated[Optional[list[BenchPrecision]], typer.Option(
            "--precision", help="fp32, bf16 or fp16; repeatable. Inference casts the model, training uses "
                                "autocast (mixed precision). [default: fp32]")] = None,
        mode: Annotated[Optional[list[Mode]], typer.Option(
            "--mode", help="eager, or compiled with torch.compile (minutes of compiling first); repeatable. "
                           "[default: eager]")] = None,
        channels_last: Annotated[bool, typer.Option("--channels-last", help="NHWC memory layout.")] = False,
        device: Annotated[Device, typer.Option("--device", help="auto: the GPU when there is one.")] = Device.auto,
        threads: Annotated[Optional[int], typer.Option(
            "--threads", min=1, help="CPU threads for torch. [default: torch's, one per core]")] = None,
        warmup: Annotated[int, typer.Option("--warmup", min=0, help="Untimed steps per model first.")] = 2,
        rounds: Annotated[int, typer.Option(
            "--rounds", min=1, help="Timed steps per model, in rotating order; the median is reported.")] = 5,
        memory: Annotated[bool, typer.Option(
            "--memory/--no-memory", help="Peak memory per step: the CUDA allocator's, or on the CPU the resident "
                                         "high-water mark of a probe process (eager only).")] = True,
        data: Annotated[Optional[str], typer.Option(
            "--data", metavar="SOURCE", help="Also time the input pipeline of this training source (the recipe "
                                             "`train` would use) and say whether it or the step limits training.")
        ] = None,
        workers: Annotated[Optional[int], typer.Option(
            "--workers", min=0, help="DataLoader workers for --data. [default: one per core, at most 8]")] = None,
        csv_out: Annotated[Optional[Path], typer.Option(
            "--csv", metavar="FILE", help="Write the rows as CSV with timm's benchmark.py column names.",
            dir_okay=True)] = None,
        overwrite: OverwriteOpt = False,
        set_: ModelSetOpt = None,
        json_out: Annotated[bool, typer.Option("--json", help="Print the rows (and the pipeline) as JSON.")] = False,
) -> None:
    """Speed and memory of DCCNeXt beside any timm model, in timm's columns.

    img/s, ms per step, peak memory, parameters and GMACs of each model. Every model of a setting is built
    afresh, warmed up, then timed in interleaved rounds (the order rotates each round) so that a drifting
    machine moves all of them alike; the median is reported, with the ratio to the first model. Rows carry
    timm's benchmark.py column names (infer_samples_per_sec, infer_step_time, infer_batch_size, infer_img_size,
    infer_gmacs, param_count, train_*), so --csv files sit beside timm's published tables.
    """
    resolutions = [parse_resolution(r) for r in (res or ["224"])]
    changes = parse_model_sets(set_)
    _check_output(csv_out, overwrite)
    if data is not None:  # the pipeline is set beside a training step at the recipe's size
        bench = Bench.both if bench is Bench.infer else bench
        if res is None:
            from ..benchmark.pipeline import recipe_for

            resolutions = [tuple(recipe_for(data).input_size)]
    _run(models, bench, resolutions, batch_size, [p.value for p in precision or [BenchPrecision.fp32]],
         [m.value for m in mode or [Mode.eager]], channels_last, device.value, threads, warmup, rounds, memory,
         data, workers, csv_out, changes, json_out)


def _run(models, bench, resolutions, batch_sizes, precisions, modes, channels_last, device_name, threads, warmup,
         rounds, memory, data, workers, csv_out, changes, json_out) -> None:
    import torch

    from ..benchmark.models import resolve_model
    from ..benchmark.pipeline import time_pipeline
    from ..benchmark.report import pipeline_verdict, tables, timm_rows, to_csv
    from ..benchmark.suite import run_suite, steps_per_setting
    from ..common.files import atomic_write_text
    from ..common.progress import StepProgress

    if device_name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda: no CUDA device is visible here; use --device cpu")
    device = torch.device("cuda" if device_name == "auto" and torch.cuda.is_available() else
                          "cpu" if device_name == "auto" else device_name)
    if threads:
        torch.set_num_threads(threads)
    specs = [resolve_model(name, changes) for name in models]
    if changes and not all(spec.is_dccnext for spec in specs):
        console.print("note: --set applies to the dccnext models only", highlight=False)
    settings = _settings(bench, batch_sizes or [256 if device.type == "cuda" else 32], resolutions, precisions,
                         modes, channels_last)
    progress = StepProgress(unit="step", enabled=not json_out)
    progress.start(len(settings) * steps_per_setting(len(specs), warmup, rounds),
                   title="" if json_out else f"benchmarking {len(specs)} model(s) in {len(settings)} setting(s) on "
                                             f"{device}")
    try:
        results = run_suite(specs, settings, device, warmup=warmup, rounds=rounds, memory=memory,
                            tick=progress.advance)
    finally:
        progress.stop()
    pipe = None
    if data is not None:
        pipe = time_pipeline(data, settings[0].batch_size, min(8, os.cpu_count() or 1) if workers is None else workers,
                             device, resolution=resolutions[0])
    rows = timm_rows(results)
    if csv_out is not None:
        atomic_write_text(csv_out, to_csv(rows))
    if json_out:
        print_json({"rows": rows, "pipeline": pipe.to_dict() if pipe else None})
        return
    for table in tables(results):
        console.print(table)
    if pipe is not None:
        for line in pipeline_verdict(pipe, results):
            console.print(line, highlight=False)
    if csv_out is not None:
        console.print(f"wrote {len(rows)} rows to {csv_out}", highlight=False)


def register(app: typer.Typer) -> None:
    app.command("benchmark", epilog=EXAMPLES)(benchmark)
