"""`dccnext train` end to end on small real data: files written, corrupt images counted, the run folder
protected, bad input refused, and exact resumption after SIGKILL. Several processes: test_engines.py."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from engine_data import CLASSES, TINY, TRAIN_PER_CLASS
from safetensors.torch import load_file

from dccnext_cli.models.weights import read_meta


def test_train_streaming_imagefolder_writes_run_and_counts_corrupt(run_cli, imagefolder_corrupt, tmp_path):
    out = tmp_path / "run"
    r = run_cli("train", "--data", f"imagefolder:{imagefolder_corrupt}", *TINY, "--set", "streaming=true",
                "--grad-accum", "2", "--grad-checkpointing", "-o", out, "--json")
    assert r.exit_code == 0, r.output
    summary = json.loads(r.stdout)
    assert summary["skipped_images"] >= 1 and summary["steps"] == (CLASSES * TRAIN_PER_CLASS + 1) // 16
    assert summary["samples"] == summary["steps"] * 16  # images drawn for training: steps x (8 x 2)
    assert summary["metrics"]["samples"] == 16 and 0 <= summary["metrics"]["top1"] <= 100
    for name in ("model.safetensors", "best.safetensors", "recipe.yaml", "log.jsonl", "summary.json"):
        assert (out / name).is_file(), name
    meta = read_meta(out / "model.safetensors")
    assert meta.variant == "b0" and meta.num_classes == CLASSES and meta.epoch == 1
    assert meta.class_names == ["Dress", "Pullover", "T-shirt-top", "Trouser"]
    assert meta.input_size == (32, 32)
    recipe = meta.recipe
    assert recipe["auto_augment"] == "rand-m9-mstd0.5-inc1" and recipe["mixup"] == 0.8  # the paper's recipe
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert log[0]["micro_batch"] == 8 and log[0]["steps_per_epoch"] == summary["steps"]  # 16 = 2 x 8
    events = [e["event"] for e in log]
    assert events[0] == "start" and "train" in events and "eval" in events and events[-1] == "end"
    # the run folder is protected: same -o again is refused and nothing changes
    before = (out / "model.safetensors").read_bytes()
    r = run_cli("train", "--data", f"imagefolder:{imagefolder_corrupt}", *TINY, "-o", out)
    assert r.exit_code == 2 and "already holds a run" in r.text and "--overwrite" in r.text
    assert (out / "model.safetensors").read_bytes() == before


@pytest.mark.parametrize("args, message", [
    (["--data", "imagefolder:/no/such/folder"], "folder /no/such/folder does not exist"),
    (["--set", "learning_rate=0.1"], "unknown key(s) learning_rate"),
    (["--set", "epochs=two"], "epochs must be an integer, got 'two'"),
    (["--batch-size", "0"], "batch_size must be at least 1"),
    (["--recipe", "no-such-recipe"], "no recipe 'no-such-recipe'"),
    (["--variant", "b0", "--set", "batch_size=7", "--set", "mixup=0.8"], "needs an even batch"),
])
def test_bad_input_is_one_line_and_exit_2(run_cli, tmp_path, args, message):
    out = tmp_path / "run"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    r = run_cli("train", *args, "-o", out)
    assert r.exit_code == 2, r.output
    assert message in r.text and "Traceback" not in r.output
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]  # nothing written, nothing lost


def test_broken_recipe_file(run_cli, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("epochs: [1, 2\n")
    r = run_cli("train", "--recipe", bad, "-o", tmp_path / "run")
    assert r.exit_code == 2 and "is not valid YAML" in r.text


def _default_sigint() -> None:
    """A suite started in the background (`cmd &`) inherits SIGINT ignored, and Python then never raises
    KeyboardInterrupt: the child gets the terminal's default back, as a user's `dccnext train` has it."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _launch(args: list[str], env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "dccnext_cli", "train", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=_default_sigint)


def test_sigkill_then_resume_matches_uninterrupted_run_bitwise(imagefolder, tmp_path):
    """Map-style data: the resumed run ends with exactly the weights of a run that was never stopped, and at
    no moment is a checkpoint folder present but incomplete."""
    args = ["--data", f"imagefolder:{imagefolder}", "--res", "32", "--epochs", "3", "--batch-size", "8",
            "--workers", "0", "--set", "eval_split=null", "--set", "checkpoint_every=1", "--set", "keep_last=3",
            "--set", "warmup_epochs=1", "--json"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    full, killed = tmp_path / "full", tmp_path / "killed"
    reference = _launch([*args, "-o", str(full)], env)
    proc = _launch([*args, "-o", str(killed)], env)
    seen_complete, deadline = set(), time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        for ckpt in (killed / "checkpoints").glob("step-*"):
            try:
                files = {p.name for p in ckpt.iterdir()}
            except FileNotFoundError:  # pruned (keep_last) between the glob and the listing
                continue
            never_partial = {"train_state.json", "model.safetensors", "optimizer.safetensors", "manifest.json"}
            assert never_partial <= files, files
            seen_complete.add(ckpt.name)
        if len(seen_complete) >= 4:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.05)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    steps_done = max(int(name.split("-")[1]) for name in seen_complete)
    assert steps_done < 3 * CLASSES * TRAIN_PER_CLASS // 8
    resumed = subprocess.run([sys.executable, "-m", "dccnext_cli", "train", *args, "-o", str(killed),
                              "--resume"], env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert reference.wait(timeout=300) == 0, reference.stderr.read()
    log = [json.loads(line) for line in (killed / "log.jsonl").read_text().splitlines()]
    assert [e["resumed_from"] is not None for e in log if e["event"] == "start"] == [False, True]
    a, b = load_file(full / "model.safetensors"), load_file(killed / "model.safetensors")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed weights differ from the uninterrupted run"
    assert all(p.name.startswith("step-") for p in (killed / "checkpoints").iterdir())  # no stale temporaries
    assert len(list((killed / "checkpoints").glob("step-*"))) == 3  # keep_last


def test_ctrl_c_says_how_to_resume(imagefolder, tmp_path):
    out = tmp_path / "run"
    args = ["--data", f"imagefolder:{imagefolder}", "--res", "32", "--epochs", "50", "--batch-size", "8",
            "--workers", "0", "--set", "eval_split=null", "--set", "checkpoint_every=2", "-o", str(out)]
    proc = _launch(args, {**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.time() + 120
    while time.time() < deadline and not list((out / "checkpoints").glob("step-*")):
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert f"continue with: dccnext train -o {out} --resume" in " ".join(stderr.split())
    assert "Traceback" not in stderr


def test_overwrite_keeps_the_old_run_until_the_new_one_is_checked(run_cli, imagefolder, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "model.safetensors").write_bytes(b"old weights")
    r = run_cli("train", "--data", f"imagefolder:{imagefolder}", *TINY, "--set", "eval_split=test",
                "--overwrite", "-o", out)
    assert r.exit_code == 2 and "has no test/ folder" in r.text and "eval_split=null" in r.text
    assert (out / "model.safetensors").read_bytes() == b"old weights"
    r = run_cli("train", "--data", f"imagefolder:{imagefolder}", *TINY, "--overwrite", "-o", out, "--json",
                "--set", "train_samples=32", "--set", "eval_samples=5")  # caps a map-style source too
    assert r.exit_code == 0, r.output
    assert read_meta(out / "model.safetensors").num_classes == CLASSES
    summary = json.loads(r.stdout)
    assert summary["steps"] == 2 and summary["metrics"]["samples"] == 5


def test_fine_tune_from_a_checkpoint_with_another_head(run_cli, imagefolder, tmp_path):
    from dccnext_cli.models.config import variant_config
    from dccnext_cli.models.dccnext import DCCNeXt
    from dccnext_cli.models.weights import CheckpointMeta, save_weights

    source = DCCNeXt(variant_config("b0").replace(num_classes=10))
    weights = save_weights(tmp_path / "pre.safetensors", source, CheckpointMeta("b0", source.config, None, 5))
    out = tmp_path / "ft"
    r = run_cli("train", "--data", f"imagefolder:{imagefolder}", *TINY, "--lr", "1e-12", "--set", "eval_split=null",
                "--weights", weights, "-o", out, "--json")
    assert r.exit_code == 0, r.output
    tuned = load_file(out / "model.safetensors")
    assert tuned["head.fc.fc2.weight"].shape[0] == CLASSES
    before = source.state_dict()
    assert torch.allclose(tuned["stem.conv.weight"], before["stem.conv.weight"], atol=1e-6)
    start = json.loads((out / "log.jsonl").read_text().splitlines()[0])
    assert "ImageNet weights from" in start["pretrained"]


def test_warm_start_from_convformer_prints_what_was_loaded(run_cli, imagefolder, tmp_path):
    """`--weights` with ConvFormer weights: a table of loaded / renamed / left-at-init tensors and their shares."""
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(1)
    source = {k: torch.randn_like(v) for k, v in timm.create_model("convformer_s18").state_dict().items()}
    weights = tmp_path / "convformer_s18.safetensors"
    save_file(source, str(weights))
    out = tmp_path / "warm"
    r = run_cli("train", "--data", f"imagefolder:{imagefolder}", *TINY, "--variant", "b2", "--lr", "1e-12",
                "--set", "eval_split=null", "--weights", weights, "-o", out, "--json")
    assert r.exit_code == 0, r.output
    table = r.stderr[r.stderr.index("ConvFormer warm start"):]
    for row in ("loaded ", "loaded, renamed", "left at init", "source tensors unused", "mlp.dwconv.weight"):
        assert row in table, row
    start = json.loads((out / "log.jsonl").read_text().splitlines()[0])
    report = start["warm_start"]
    assert report["loaded, renamed"]["tensors"] == 6  # the 7x7 token-mixer convs of stages 1-2 (3 + 3 blocks)
    shares = [report[k]["share"] for k in ("loaded", "loaded, renamed", "left at init")]
    assert sum(shares) == pytest.approx(1.0, abs=1e-5) and 0 < report["left at init"]["share"] < 0.2
    json.loads(r.stdout)  # stdout stays one JSON document
