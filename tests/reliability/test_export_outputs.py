"""Every export format, whole at -o or nothing there: on a full disk, and when the process is SIGKILLed.

A full disk (a real tmpfs of 64 KB when the test runs as root, else an ENOSPC injected into the one write path)
ends in one line naming the file and the space, exit status 2, and leaves the disk as it was: before, the
exported-program format aborted from C++ (exit -6) and the others ended in a traceback. A SIGKILL at the last
moment before the output is moved into place (and, for folders, between their files) leaves nothing at -o; the
next run on the same path writes it and removes what the killed one left.
"""

from __future__ import annotations

import signal

import pytest

from dccnext_cli.models.config import variant_config
from dccnext_cli.models.dccnext import DCCNeXt
from dccnext_cli.models.weights import CheckpointMeta, save_weights
from tests.reliability.disks import can_mount, files_under, one_line, tmpfs

# Graph formats trace the model (tens of seconds each on two cores): their kill-and-rerun runs with -m slow.
SLOW = pytest.mark.slow
FORMATS = ["safetensors", "timm", "hub", "torchscript", "exported-program", pytest.param("onnx", marks=SLOW)]
KILL_FORMATS = ["safetensors", "timm", "hub", pytest.param("torchscript", marks=SLOW),
                pytest.param("exported-program", marks=SLOW), pytest.param("onnx", marks=SLOW)]
FOLDERS = ("timm", "hub")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A real weights file of a tiny custom DCCNeXt (16-32 channels, one block a stage): fast to trace."""
    path = tmp_path_factory.mktemp("tiny") / "tiny.safetensors"
    config = variant_config("b0").replace(num_classes=3, dims=(16, 16, 32, 32), depths=(1, 1, 1, 1))
    save_weights(path, DCCNeXt(config), CheckpointMeta("custom", config, ["a", "b", "c"], 1, input_size=(32, 32)))
    return path


def _export(tiny, fmt: str, out) -> list[str]:
    return ["export", "--checkpoint", tiny, "--format", fmt, "--res", "160", "-o", out, "--json"]


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_full_disk_is_one_line_and_leaves_nothing(dccnext, tiny, tmp_path, fmt):
    if can_mount():
        with tmpfs(tmp_path / "disk", "64k") as disk:
            done = dccnext(*_export(tiny, fmt, disk / "out"))
            left = files_under(disk)
    else:
        disk = tmp_path / "disk"
        disk.mkdir()
        done = dccnext(*_export(tiny, fmt, disk / "out"), env={"DCCNEXT_DISK_FREE": "65536"})
        left = files_under(disk)
    assert done.returncode == 2, (done.returncode, done.stderr[-3000:])  # not -6: no C++ abort
    line = one_line(done.stderr)
    assert "the disk is full" in line and "free" in line and "choose another -o" in line, line
    assert left == [], left


@pytest.mark.parametrize("fmt", KILL_FORMATS)
def test_a_kill_leaves_nothing_at_the_output_and_a_rerun_writes_it(dccnext, tiny, tmp_path, fmt):
    out = tmp_path / "out"
    moments = ["staged:out"] + (["written:model.safetensors"] if fmt in FOLDERS else [])
    for moment in moments:
        done = dccnext(*_export(tiny, fmt, out), env={"DCCNEXT_CRASH_AT": moment})
        assert done.returncode == -signal.SIGKILL, f"never reached {moment}: {done.stderr[-2000:]}"
        assert not out.exists(), (moment, files_under(tmp_path))
        assert any(name.startswith(".out.") for name in files_under(tmp_path))  # what the kill left, hidden
    done = dccnext(*_export(tiny, fmt, out))
    assert done.returncode == 0, done.stderr[-3000:]
    if fmt in FOLDERS:
        assert {"config.json", "model.safetensors"} <= set(files_under(out))
    else:
        assert out.is_file() and out.stat().st_size > 0
    assert files_under(tmp_path) == sorted(["out", *(f"out/{n}" for n in files_under(out))])  # no leftovers
