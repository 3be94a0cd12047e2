"""Atomic file writing: a crash never leaves a half-written file where a good one was."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from ..errors import ConfigError, OutputExistsError

__all__ = ["atomic_write", "atomic_write_text", "check_writable", "check_new_output", "remove_run_files"]


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> Path:
    """Call `write(tmp_path)` and move the result onto `path` in one rename; no partial file survives."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; the file should get the usual permissions
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """`atomic_write` for a text file."""
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def check_writable(path: str | os.PathLike, option: str) -> None:
    """Refuse, before any work, a place where `atomic_write` could not write: under a file, or in a folder
    without write permission (the first existing folder on the way, since the missing ones are made)."""
    parent = Path(path).absolute().parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise ConfigError(f"{option} {path}: {parent} is a file, not a folder; choose another place")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigError(f"{option} {path}: the folder {parent} is not writable; choose another place")


def check_new_output(path: str | os.PathLike, overwrite: bool, option: str = "-o") -> None:
    """Refuse, before any work, an output that exists (unless `overwrite`) or could not be written."""
    if Path(path).exists() and not overwrite:
        raise OutputExistsError(f"{path} already exists; pass --overwrite to replace it or choose another {option}")
    check_writable(path, option)


def remove_run_files(folder: Path, names: tuple[str, ...]) -> None:
    """Delete a run's own files and folders (`--overwrite`), and nothing else the folder holds."""
    for name in names:
        path = folder / name
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
