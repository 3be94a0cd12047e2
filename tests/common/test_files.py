"""The one write path: a full disk is one line with nothing left, staged outputs appear whole, temporaries of
dead processes go, and nothing is written through a link in a run folder."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from dccnext_cli.common.files import (
    DISK_FREE_ENV,
    append_text,
    atomic_write,
    atomic_write_text,
    check_run_folder,
    is_disk_full,
    remove_stale,
    staged,
    write_file,
)
from dccnext_cli.errors import DiskFullError, OutputExistsError
from tests.reliability.disks import can_mount, tmpfs


def _listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_a_full_disk_is_recognised_and_other_errors_are_not():
    """/dev/full answers every write with ENOSPC (safetensors' own writer is met on a real tmpfs, below)."""
    with pytest.raises(OSError) as python_error:
        with open("/dev/full", "wb") as f:
            f.write(b"x" * 10000)
            f.flush()
    assert is_disk_full(python_error.value)
    assert not is_disk_full(ValueError("bad value")) and not is_disk_full(OSError(13, "Permission denied"))


def test_an_injected_full_disk_is_one_line_and_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv(DISK_FREE_ENV, "100")
    (tmp_path / "target.txt").write_text("the old one")
    with pytest.raises(DiskFullError) as e:
        atomic_write_text(tmp_path / "target.txt", "x" * 1000)
    assert str(e.value).startswith(f"the disk is full: could not write {tmp_path / 'target.txt'} (it needs 1.0 KB")
    assert _listing(tmp_path) == ["target.txt"] and (tmp_path / "target.txt").read_text() == "the old one"
    with pytest.raises(DiskFullError):
        write_file(tmp_path / "part.bin", lambda p: p.write_bytes(b"y" * 1000))
    assert _listing(tmp_path) == ["target.txt"]
    atomic_write_text(tmp_path / "small.txt", "fits")  # under the budget: written
    assert (tmp_path / "small.txt").read_text() == "fits"


@pytest.mark.skipif(not can_mount(), reason="mounting a tmpfs needs root")
def test_a_real_full_disk_names_the_space_that_was_free(tmp_path):
    with tmpfs(tmp_path / "disk", "64k") as disk:
        with pytest.raises(DiskFullError) as e:
            atomic_write(disk / "big.safetensors", lambda tmp: save_file({"t": torch.zeros(100_000)}, tmp))
        assert _listing(disk) == []
    message = str(e.value)
    assert f"could not write {disk / 'big.safetensors'} (it needs more than the" in message, message
    assert "that were free there" in message and "choose another -o" in message


def test_staged_output_appears_whole_or_not_at_all(tmp_path):
    out = tmp_path / "folder"
    with pytest.raises(RuntimeError):
        with staged(out, folder=True) as building:
            (building / "a.txt").write_text("a")
            raise RuntimeError("the check failed")
    assert _listing(tmp_path) == []
    with staged(out, folder=True) as building:
        (building / "a.txt").write_text("a")
        assert not out.exists()
    assert _listing(out) == ["a.txt"] and _listing(tmp_path) == ["folder"]
    with staged(tmp_path / "file.onnx") as target:
        assert target.name == "file.onnx" and target.parent.name.startswith(".file.onnx.")  # the suffix is kept
        target.write_text("graph")
    assert (tmp_path / "file.onnx").read_text() == "graph" and _listing(tmp_path) == ["file.onnx", "folder"]


def test_temporaries_of_dead_processes_are_removed_others_kept(tmp_path):
    dead = os.fork()
    if dead == 0:
        os._exit(0)
    os.waitpid(dead, 0)
    (tmp_path / f".out.{dead}.tmp").mkdir()
    (tmp_path / f".out.{dead}.tmp" / "model.safetensors").write_text("half")
    (tmp_path / f".out.{dead}.ab12_x.tmp").write_text("half")
    (tmp_path / ".out.1.tmp").write_text("a live process's")  # PID 1 is alive
    (tmp_path / ".other.99999999.tmp").write_text("another output's")
    remove_stale(tmp_path / "out")
    assert _listing(tmp_path) == [".other.99999999.tmp", ".out.1.tmp"]


def test_nothing_is_written_through_a_link_in_a_run_folder(tmp_path):
    run, outside = tmp_path / "run", tmp_path / "outside.txt"
    (run / "checkpoints").mkdir(parents=True)
    outside.write_text("theirs\n")
    (run / "log.jsonl").symlink_to(outside)
    with pytest.raises(OutputExistsError, match="log.jsonl is a symbolic link"):
        append_text(run / "log.jsonl", "line\n")
    with pytest.raises(OutputExistsError, match="log.jsonl is a symbolic link"):
        check_run_folder(run, ("log.jsonl", "checkpoints"))
    (run / "log.jsonl").unlink()
    (run / "checkpoints" / ".step-00000004.tmp").symlink_to(tmp_path, target_is_directory=True)
    check_run_folder(run, ("log.jsonl", "checkpoints"))  # a link at our temporary name: removed, not followed
    assert _listing(run / "checkpoints") == [] and outside.read_text() == "theirs\n"
    (run / "checkpoints" / "step-00000004").symlink_to(tmp_path, target_is_directory=True)
    with pytest.raises(OutputExistsError, match="step-00000004 is a symbolic link"):
        check_run_folder(run, ("log.jsonl", "checkpoints"))
    append_text(run / "log.jsonl", "line\n")
    append_text(run / "log.jsonl", "two\n")
    assert (run / "log.jsonl").read_text() == "line\ntwo\n"
