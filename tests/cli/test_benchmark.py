"""`dccnext benchmark`: rows in timm's benchmark.py columns, ratios to the first model, the input pipeline line."""

from __future__ import annotations

import csv
import json

import timm

from dccnext_cli.benchmark.measure import Setting, Step, interleaved
from dccnext_cli.benchmark.report import TIMM_COLUMNS
from dccnext_cli.models.flops import count_variant


def test_benchmark_writes_timm_columns_for_both_models(run_cli, tmp_path):
    out = tmp_path / "bench.csv"
    result = run_cli("benchmark", "dccnext_b0", "convformer_s18", "--res", "64", "--batch-size", "2", "--csv", out)
    assert result.exit_code == 0, result.output
    with out.open() as f:
        reader = csv.DictReader(f)
        rows = list(reader)
    assert list(reader.fieldnames[:len(TIMM_COLUMNS)]) == list(TIMM_COLUMNS)
    assert [row["model"] for row in rows] == ["dccnext_b0", "convformer_s18"]
    for row in rows:
        assert float(row["infer_samples_per_sec"]) > 0 and float(row["infer_step_time"]) > 0
        assert (row["infer_batch_size"], row["infer_img_size"], row["resolution"]) == ("2", "64", "64x64")
        assert float(row["infer_peak_mib"]) > 0  # the probe process's resident high-water mark
        assert row["train_samples_per_sec"] == ""  # --bench infer: no training columns
    b0 = count_variant("b0", (64, 64))
    assert float(rows[0]["param_count"]) == round(b0.params / 1e6, 2)
    assert float(rows[0]["infer_gmacs"]) == round(b0.flops_per_image / 1e9, 3)  # DCConv by the paper's rule
    convformer = timm.create_model("convformer_s18")
    assert float(rows[1]["param_count"]) == round(sum(p.numel() for p in convformer.parameters()) / 1e6, 2)
    speed = [float(row["infer_samples_per_sec"]) for row in rows]
    assert abs(float(rows[1]["infer_ratio"]) - speed[1] / speed[0]) < 2e-3  # img/s are rounded to 0.01
    assert "x first" in result.output and "wrote 2 rows" in result.output


def test_benchmark_refuses_an_existing_csv_and_unknown_models(run_cli, tmp_path):
    out = tmp_path / "bench.csv"
    out.write_text("mine\n")
    result = run_cli("benchmark", "dccnext_b0", "--res", "64", "--csv", out)
    assert result.exit_code == 2 and "exists; pass --overwrite" in result.text
    assert out.read_text() == "mine\n"
    result = run_cli("benchmark", "dccnext_b9", "--res", "64")
    assert result.exit_code == 2 and "'dccnext_b9' is not a model here" in result.text
    assert "Traceback" not in result.output


def test_benchmark_training_step_beside_the_input_pipeline(run_cli):
    """--data times the pipeline with the recipe `train` uses (the quickstart's 56x56 for the embedded set) and
    adds a training step at that size, then names what limits training."""
    result = run_cli("benchmark", "control_b0", "--data", "builtin:fashion-mnist", "--workers", "0", "--batch-size",
                     "4", "--rounds", "1", "--warmup", "0", "--no-memory", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    row = report["rows"][0]
    assert row["model"] == "control_b0" and row["resolution"] == "56x56"
    assert row["train_samples_per_sec"] > 0 and row["infer_samples_per_sec"] > 0 and row["train_peak_mib"] is None
    pipe = report["pipeline"]
    assert pipe["recipe"] == "quickstart" and pipe["resolution"] == [56, 56] and pipe["samples_per_sec"] > 0
    assert pipe["batches"] == 20 and not pipe["device_side"]


def test_interleaved_rounds_rotate_the_order():
    order = []
    steps = {name: Step(lambda name=name: order.append(name), model=None) for name in "abc"}
    times = interleaved(steps, device=__import__("torch").device("cpu"), warmup=1, rounds=3)
    assert order == list("abc") + list("abc") + list("bca") + list("cab")
    assert all(len(t) == 3 for t in times.values())
    assert Setting("infer", 2, (64, 96)).describe() == "infer, batch 2, 96x64, fp32, eager"
