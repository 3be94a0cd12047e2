"""`train --task` and `eval --task`: the dense engine behind the same commands as classification."""

from __future__ import annotations

import json

from dccnext_cli.models.weights import read_meta


def test_train_and_eval_semantic_fpn_from_the_cli(run_cli, ade_root, tmp_path):
    out = tmp_path / "seg"
    r = run_cli("train", "--task", "semantic-fpn", "--variant", "b0", "--data", f"ade20k:{ade_root}", "-o", out,
                "--set", "iterations=1", "--batch-size", "2", "--set", "crop_size=[64,64]",
                "--set", "scale=[128,64]", "--workers", "0", "--set", "num_classes=5", "--json")
    assert r.exit_code == 0, r.output
    summary = json.loads(r.stdout)
    assert summary["iterations"] == 1 and 0 <= summary["metrics"]["mIoU"] <= 1
    meta = read_meta(out / "model.safetensors")
    assert meta.task == "semantic-fpn" and meta.variant == "b0"
    r = run_cli("eval", "--checkpoint", out / "model.safetensors", "--data", f"ade20k:{ade_root}", "--json")
    assert r.exit_code == 0, r.output
    got = json.loads(r.stdout)
    assert got["task"] == "semantic-fpn" and 0 <= got["mIoU"] <= 1  # the task comes from the checkpoint


def test_dense_task_needs_its_data(run_cli, tmp_path):
    r = run_cli("train", "--task", "retinanet", "-o", tmp_path / "x")
    assert r.exit_code == 2 and "--task retinanet needs --data (coco:PATH)" in r.text
    r = run_cli("train", "--task", "retinanet", "--data", "imagefolder:/x", "-o", tmp_path / "x")
    assert r.exit_code == 2 and "retinanet reads coco:PATH" in r.text


def test_dense_batch_that_does_not_split_and_a_run_folder_in_use(run_cli, ade_root, tmp_path):
    args = ["train", "--task", "semantic-fpn", "--variant", "b0", "--data", f"ade20k:{ade_root}"]
    r = run_cli(*args, "--batch-size", "2", "--grad-accum", "3", "-o", tmp_path / "a")
    assert r.exit_code == 2 and "batch_size must be a multiple of grad_accum 3" in r.text
    keep = tmp_path / "b"
    keep.mkdir()
    (keep / "notes.txt").write_text("mine")
    (keep / "log.jsonl").write_text("")
    r = run_cli(*args, "-o", keep)  # the same -o rule as classification: a folder holding a run's files
    assert r.exit_code == 2 and "already holds a run (log.jsonl); pass --resume to continue it or --overwrite" \
        in r.text, r.text
    assert sorted(p.name for p in keep.iterdir()) == ["log.jsonl", "notes.txt"]
    r = run_cli(*args, "--resume", keep / "checkpoints" / "step-00000002")
    assert r.exit_code == 2 and "step-00000002 is not a usable train state: no manifest" in r.text, r.text
    assert "Traceback" not in r.output
