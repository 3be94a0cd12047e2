"""A run folder is data, never code, and has one writer.

`--resume` reads only safetensors and JSON, so a pickle planted anywhere in a run folder (under every name
Accelerate's checkpoints used, or in place of one of ours, with a forged manifest) is never executed: the resume
either ignores it or refuses the checkpoint in one line. Two `train` processes on one folder: the second is
refused in one line before it writes anything.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import pickle
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from dccnext_cli.training.run_state import list_train_states

OLD_NAMES = ["custom_checkpoint_0.pkl", "random_states_0.pkl", "optimizer.bin", "scheduler.bin", "scaler.pt",
             "pytorch_model.bin", "model.bin", "sampler.bin", "dl_state_dict.bin", "state.pt", "rng.pkl"]
OURS = ["manifest.json", "train_state.json", "model.safetensors", "optimizer.safetensors", "rng-0.json"]


class Planted:
    """Unpickling this touches the marker file: proof that code from the run folder ran."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def _plant(path: Path, marker: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix in (".pkl", ".json"):
        path.write_bytes(pickle.dumps({"state": 1, "payload": Planted(marker)}))
    else:
        torch.save({"state": torch.zeros(2), "payload": Planted(marker)}, path)


def _forge_manifest(checkpoint: Path) -> None:
    """What an attacker who knows the format would do: list every file with its real digest."""
    manifest = json.loads((checkpoint / "manifest.json").read_text())
    manifest["files"] = {p.name: {"bytes": p.stat().st_size, "sha256": hashlib.sha256(p.read_bytes()).hexdigest()}
                         for p in sorted(checkpoint.iterdir()) if p.name != "manifest.json"}
    (checkpoint / "manifest.json").write_text(json.dumps(manifest))


@pytest.fixture(scope="module")
def finished_run(dccnext, small_images, train_args, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("finished") / "run"
    done = dccnext(*train_args(small_images, out, epochs=1, keep_last=2))
    assert done.returncode == 0, done.stderr
    assert [p.name for p in list_train_states(out)] == ["step-00000002", "step-00000004"]
    return out




def test_a_planted_pickle_can_run_code(tmp_path):
    """The test's own check: the planted file does execute when something unpickles it."""
    marker = tmp_path / "ran"
    _plant(tmp_path / "optimizer.bin", marker)
    torch.load(tmp_path / "optimizer.bin", weights_only=False)
    assert marker.exists()


@pytest.mark.parametrize("target", ["extra", *OURS])
def test_resume_never_executes_a_planted_pickle(dccnext, small_images, train_args, finished_run, tmp_path, target):
    run, marker = tmp_path / "run", tmp_path / "code-ran"
    shutil.copytree(finished_run, run)
    (run / "summary.json").unlink()  # the resume must load the checkpoint, not stop at "complete"
    newest = list_train_states(run)[-1]
    if target == "extra":  # every name the old format used, in every checkpoint, the run folder and a new step
        for folder in [*list_train_states(run), run, run / "checkpoints" / "step-00000099"]:
            for name in OLD_NAMES:
                _plant(folder / name, marker)
        _forge_manifest(newest)
    else:  # one of our own files replaced, the manifest forged to match
        (newest / target).unlink()
        _plant(newest / target, marker)
        if target != "manifest.json":
            _forge_manifest(newest)
    done = dccnext(*train_args(small_images, run, epochs=1, keep_last=2), "--resume")
    assert not marker.exists(), f"code planted as {target} was executed"
    assert "Traceback" not in done.stderr
    if target == "extra":  # ignored: the new step has no manifest, the real checkpoints resume as they are
        assert done.returncode == 0, done.stderr
        assert "skipping train state step-00000099: no manifest" in done.stderr
    elif target == "manifest.json":  # not a checkpoint: resume falls back to the previous one, saying so
        assert done.returncode == 0, done.stderr
        assert f"skipping train state {newest.name}" in done.stderr
    else:
        assert done.returncode == 2, done.stderr
        assert len(done.stderr.strip().splitlines()) == 1 and newest.name in done.stderr, done.stderr


def test_a_second_writer_is_refused_in_one_line(dccnext, small_images, train_args, tmp_path):
    out = tmp_path / "run"
    args = train_args(small_images, out, epochs=500)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    log = (tmp_path / "first.err").open("w")
    first = subprocess.Popen([sys.executable, "-m", "dccnext_cli", *args], env=env, stdout=subprocess.DEVNULL,
                             stderr=log, cwd=Path(__file__).resolve().parents[2])
    try:
        deadline = time.time() + 180
        while not (out / "recipe.yaml").exists() and first.poll() is None and time.time() < deadline:
            time.sleep(0.1)
        assert first.poll() is None, (tmp_path / "first.err").read_text()
        recipe = (out / "recipe.yaml").read_bytes()
        for extra in (["--resume"], ["--overwrite"]):
            second = dccnext(*args, *extra)
            assert second.returncode == 2, second.stderr
            assert "in use by another dccnext train" in second.stderr
            assert len(second.stderr.strip().splitlines()) == 1 and "Traceback" not in second.stderr
        assert first.poll() is None and (out / "recipe.yaml").read_bytes() == recipe
        events = [json.loads(line)["event"] for line in (out / "log.jsonl").read_text().splitlines()]
        assert events.count("start") == 1
    finally:
        first.kill()
        first.wait()
        log.close()
    fd = os.open(out, os.O_RDONLY)  # the kernel released the killed writer's lock
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    finally:
        os.close(fd)
