"""`train` on a full disk: one line naming the file and the space, exit 2, and nothing half-written.

At the first checkpoint of a new run, and at the next checkpoint of a resumed one, whose last complete
checkpoint must stay exactly as it was (and resume once there is space). A real tmpfs when the test runs as root
(the checkpoint's safetensors writer then meets the ENOSPC itself), else an ENOSPC injected into the write path.
"""

from __future__ import annotations

import shutil
import signal

import pytest

from dccnext_cli.training.run_state import list_train_states, train_state_problem
from tests.reliability.disks import can_mount, files_under, last_line_error, tmpfs

# Where a tmpfs can be mounted (CI runs as root) the injected variant repeats it: it runs with -m slow there.
DISKS = [pytest.param("tmpfs", marks=pytest.mark.skipif(not can_mount(), reason="mounting a tmpfs needs root")),
         pytest.param("injected", marks=[pytest.mark.slow] if can_mount() else [])]


def _snapshot(folder):
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _no_partial(run) -> None:
    hidden = [name for name in files_under(run) if any(part.startswith(".") for part in name.split("/"))]
    assert hidden == [], hidden


@pytest.mark.parametrize("disk", DISKS)
def test_first_checkpoint_on_a_full_disk(dccnext, small_images, train_args, tmp_path, disk):
    if disk == "tmpfs":
        with tmpfs(tmp_path / "disk", "1m") as where:
            done = dccnext(*train_args(small_images, where / "run"))
            left, listing = _snapshot(where / "run"), files_under(where / "run")
            _no_partial(where / "run")
    else:
        done = dccnext(*train_args(small_images, tmp_path / "run"), env={"DCCNEXT_DISK_FREE": "1000000"})
        left, listing = _snapshot(tmp_path / "run"), files_under(tmp_path / "run")
        _no_partial(tmp_path / "run")
    assert done.returncode == 2, done.stderr[-3000:]
    line = last_line_error(done.stderr)
    assert "the disk is full" in line and "step-00000002/model.safetensors" in line and "free there" in line, line
    assert not any(name.startswith("checkpoints/step-") for name in listing), listing
    assert set(left) <= {"recipe.yaml", "log.jsonl"}, listing


@pytest.mark.parametrize("disk", DISKS)
def test_resume_on_a_full_disk_keeps_the_last_checkpoint(dccnext, small_images, train_args, tmp_path, disk):
    run = tmp_path / "killed"
    done = dccnext(*train_args(small_images, run), env={"DCCNEXT_CRASH_AT": "checkpoint-2-0:committed"})
    assert done.returncode == -signal.SIGKILL, done.stderr[-2000:]
    used = sum(p.stat().st_size for p in run.rglob("*") if p.is_file())
    if disk == "tmpfs":
        with tmpfs(tmp_path / "disk", f"{used // 1024 + 4096}k") as where:  # the next checkpoint cannot fit
            shutil.copytree(run, where / "run")
            before = _snapshot(where / "run" / "checkpoints")
            done = dccnext(*train_args(small_images, where / "run"), "--resume")
            after = _snapshot(where / "run" / "checkpoints")
            _no_partial(where / "run")
            shutil.rmtree(run)
            shutil.copytree(where / "run", run)
    else:
        before = _snapshot(run / "checkpoints")
        done = dccnext(*train_args(small_images, run), "--resume", env={"DCCNEXT_DISK_FREE": "1000000"})
        after = _snapshot(run / "checkpoints")
        _no_partial(run)
    assert done.returncode == 2, done.stderr[-3000:]
    line = last_line_error(done.stderr)
    assert "the disk is full" in line and "step-00000004" in line, line
    assert after == before  # the last complete state untouched, nothing half-written beside it
    (checkpoint,) = list_train_states(run)
    assert checkpoint.name == "step-00000002" and train_state_problem(checkpoint) is None
    again = dccnext(*train_args(small_images, run), "--resume")  # space again: the run goes on from it
    assert again.returncode == 0, again.stderr[-3000:]
