"""The rows of a benchmark in timm's benchmark.py columns (CSV, JSON) and as tables with ratios."""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence

from rich.table import Table

from .pipeline import PipelineResult
from .suite import Result

__all__ = ["COLUMNS", "timm_rows", "to_csv", "tables", "pipeline_verdict"]

# timm's benchmark.py names first (its CSV tables: infer_* / train_* per model), then what it does not record
TIMM_COLUMNS = ("model", "infer_samples_per_sec", "infer_step_time", "infer_batch_size", "infer_img_size",
                "infer_gmacs", "param_count", "train_samples_per_sec", "train_step_time", "train_batch_size",
                "train_img_size")
EXTRA_COLUMNS = ("resolution", "device", "precision", "mode", "channels_last", "infer_peak_mib", "train_peak_mib",
                 "infer_ratio", "train_ratio")
COLUMNS = TIMM_COLUMNS + EXTRA_COLUMNS


def _round(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


def timm_rows(results: Sequence[Result]) -> list[dict]:
    """One row per model and setting, inference and training of the same setting side by side, as timm does."""
    rows: dict[tuple, dict] = {}
    for r in results:
        s = r.setting
        key = (r.model, s.batch_size, s.resolution, s.precision, s.mode, s.channels_last, r.device)
        row = rows.setdefault(key, {
            "model": r.model, "param_count": round(r.param_count_m, 2),
            "resolution": f"{s.resolution[1]}x{s.resolution[0]}", "device": r.device, "precision": s.precision,
            "mode": s.mode, "channels_last": s.channels_last})
        k = s.kind
        row.update({f"{k}_samples_per_sec": round(r.samples_per_sec, 2), f"{k}_step_time": round(r.step_ms, 3),
                    f"{k}_batch_size": s.batch_size, f"{k}_img_size": s.resolution[1],
                    f"{k}_peak_mib": _round(r.peak_mib, 1), f"{k}_ratio": round(r.ratio, 3)})
        if k == "infer":
            row["infer_gmacs"] = _round(r.gmacs, 3)
    return [{column: row.get(column) for column in COLUMNS} for row in rows.values()]


def to_csv(rows: Sequence[dict]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: "" if v is None else v for k, v in row.items()} for row in rows)
    return out.getvalue()


def tables(results: Sequence[Result]) -> list[Table]:
    """A table per setting: img/s, ms per step, the ratio to the first model, memory, size and MACs."""
    out, by_setting = [], {}
    for r in results:
        by_setting.setdefault((r.setting, r.device), []).append(r)
    for (setting, device), group in by_setting.items():
        table = Table(title=f"{setting.describe()} on {device}", title_justify="left",
                      caption=f"x first: img/s over {group[0].model}'s; median of interleaved rounds",
                      caption_justify="left")
        for column in ("model", "img/s", "ms/step", "x first", "peak MiB", "params M", "GMACs"):
            table.add_column(column, justify="left" if column == "model" else "right")
        for r in group:
            table.add_row(r.model, f"{r.samples_per_sec:.1f}", f"{r.step_ms:.1f}", f"{r.ratio:.2f}",
                          "" if r.peak_mib is None else f"{r.peak_mib:.0f}", f"{r.param_count_m:.2f}",
                          "" if r.gmacs is None else f"{r.gmacs:.2f}")
        out.append(table)
    return out


def pipeline_verdict(pipe: PipelineResult, results: Sequence[Result]) -> list[str]:
    """Which limits training: the input pipeline or the step, for each model trained at the pipeline's size."""
    where = "normalised and erased on the device" if pipe.device_side else "whole on the CPU"
    lines = [f"input pipeline: {pipe.samples_per_sec:.1f} img/s from {pipe.data} with {pipe.workers} workers, "
             f"recipe {pipe.recipe} at {pipe.resolution[1]}x{pipe.resolution[0]} ({where})"]
    for r in results:
        if r.setting.kind != "train" or r.setting.resolution != pipe.resolution:
            continue
        limit = "the input pipeline" if pipe.samples_per_sec < r.samples_per_sec else "the training step"
        lines.append(f"  {r.model} ({r.setting.describe()}): step {r.samples_per_sec:.1f} img/s -> "
                     f"training is limited by {limit}")
    return lines
