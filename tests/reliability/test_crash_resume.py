"""A kill at any moment of a save, then `--resume`, ends exactly where an uninterrupted run ends.

The loop names its moments (`DCCNEXT_CRASH_AT`, see common/crash_points.py): after each file of a checkpoint,
after the manifest, after the old checkpoint of the same step is moved aside, after the commit, after pruning,
after the best and the per-epoch weights, after the final weights, after the summary. One run folder is killed at
each moment in turn, resumed each time (every resume continues from what the previous kill left), and must end
with the same bytes as a run never stopped; a finished run resumed again rewrites nothing.
"""

from __future__ import annotations

import json
import shutil
import signal

import torch
from safetensors import safe_open
from safetensors.torch import load_file

from dccnext_cli.training.run_state import list_train_states, train_state_problem

# 16 images, batches of 4: 4 steps an epoch, a checkpoint every 2 steps, so step 4 ends epoch 0 and step 8 is
# saved twice (mid-epoch, then at the end of the last epoch); keep_last=1 prunes at every save. A kill after a
# manifest leaves a complete temporary that the resume commits, so each moment below is still ahead when reached.
MOMENTS = [
    *(f"checkpoint-2-0:{name}" for name in ("rng-0.json", "model.safetensors", "optimizer.safetensors",
                                             "train_state.json", "committed")),
    "checkpoint-4-0:pruned", "epoch0:best", "epoch0:weights", "checkpoint-6-1:manifest.json",
    "checkpoint-8-1:committed",
    # here the run forks: the replacement of step 8 killed after its commit (see BRANCH)
    "checkpoint-8-2:manifest.json", "checkpoint-8-2:aside", "final:weights", "final:summary",
]
BRANCH_AFTER, BRANCH = "checkpoint-8-1:committed", "checkpoint-8-2:committed"
DETERMINISTIC = ("world_size", "epochs", "steps", "metrics", "best_top1", "best_epoch", "skipped_images")


def _same_safetensors(a, b) -> None:
    """Same tensors bit for bit and the same metadata (safetensors orders the metadata keys at random)."""
    with safe_open(str(a), "pt") as fa, safe_open(str(b), "pt") as fb:
        assert fa.metadata() == fb.metadata(), a.name
        assert sorted(fa.keys()) == sorted(fb.keys()), a.name
        for key in fa.keys():
            x, y = fa.get_tensor(key), fb.get_tensor(key)
            assert x.dtype == y.dtype and torch.equal(x, y), (a.name, key)


def _same_result(full, run) -> None:
    for name in ("model.safetensors", "best.safetensors"):
        _same_safetensors(full / name, run / name)
    a, b = (json.loads((folder / "summary.json").read_text()) for folder in (full, run))
    assert {k: a[k] for k in DETERMINISTIC} == {k: b[k] for k in DETERMINISTIC}
    (ref_ckpt,), (new_ckpt,) = list_train_states(full), list_train_states(run)
    assert ref_ckpt.name == new_ckpt.name == "step-00000008"
    for name in ("model.safetensors", "optimizer.safetensors"):
        _same_safetensors(ref_ckpt / name, new_ckpt / name)
    assert (ref_ckpt / "train_state.json").read_text() == (new_ckpt / "train_state.json").read_text()
    stale = [p.name for p in run.rglob(".*")]
    assert not stale, stale


def _snapshot(folder) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_kill_at_every_moment_then_resume_is_bitwise_the_uninterrupted_run(dccnext, small_images, train_args,
                                                                             tmp_path):
    full, killed, branch = tmp_path / "full", tmp_path / "killed", tmp_path / "branch"
    reference = dccnext(*train_args(small_images, full))
    assert reference.returncode == 0, reference.stderr
    for i, moment in enumerate(MOMENTS):
        args = train_args(small_images, killed) + (["--resume"] if i else [])
        done = dccnext(*args, env={"DCCNEXT_CRASH_AT": moment})
        assert done.returncode == -signal.SIGKILL, f"never reached {moment}: {done.stderr[-2000:]}"
        for checkpoint in list_train_states(killed):  # what --resume can find is always complete
            assert train_state_problem(checkpoint) is None, (moment, checkpoint)
        if moment == BRANCH_AFTER:
            shutil.copytree(killed, branch)
    last = dccnext(*train_args(small_images, killed), "--resume")
    assert last.returncode == 0, last.stderr
    assert "is complete" in " ".join(last.stderr.split())  # the last kill came after the summary (rich wraps)
    metrics = json.loads((full / "summary.json").read_text())["metrics"]
    assert metrics is not None and json.loads(last.stdout)["metrics"] == metrics
    _same_result(full, killed)
    done = dccnext(*train_args(small_images, branch), "--resume", env={"DCCNEXT_CRASH_AT": BRANCH})
    assert done.returncode == -signal.SIGKILL, f"never reached {BRANCH}: {done.stderr[-2000:]}"
    assert dccnext(*train_args(small_images, branch), "--resume").returncode == 0
    _same_result(full, branch)
    # a finished run resumed again: nothing rewritten, the metrics kept
    before = _snapshot(killed)
    again = dccnext(*train_args(small_images, killed), "--resume")
    assert again.returncode == 0 and "is complete" in " ".join(again.stderr.split())
    assert json.loads(again.stdout)["metrics"] == metrics
    assert _snapshot(killed) == before
    weights = load_file(killed / "model.safetensors")
    assert weights and all(t.isfinite().all() for t in weights.values())
