"""Full disks for the reliability tests (helpers): a real one where the test can mount it, else an injected one.

As root (CI) a test mounts a tmpfs of a few kilobytes or megabytes, so every writer (safetensors' Rust, torch's
C++ serialisers, Python) meets a real ENOSPC. Elsewhere `DCCNEXT_DISK_FREE` makes the one write path fail every
file larger than the budget, as a full disk would (see dccnext_cli/common/files.py).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def can_mount() -> bool:
    return os.geteuid() == 0 and shutil.which("mount") is not None


@contextmanager
def tmpfs(where: Path, size: str) -> Iterator[Path]:
    """A tmpfs of `size` (mount's syntax: 64k, 2m) at `where`, unmounted afterwards."""
    where.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], check=True)
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def free_bytes(where: Path) -> int:
    return shutil.disk_usage(where).free


def files_under(folder: Path) -> list[str]:
    """Everything a folder holds, hidden entries included (what a half-written output would leave)."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def one_line(stderr: str) -> str:
    """The one line a refused command prints: the whole of stderr."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr[-3000:]
    assert "Traceback" not in stderr
    return lines[0]


def last_line_error(stderr: str) -> str:
    """A command that worked a while (progress, notes) then stopped: one error line, the last, no traceback."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], stderr[-3000:]
    assert "Traceback" not in stderr
    return errors[0]
