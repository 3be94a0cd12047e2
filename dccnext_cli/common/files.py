"""The one write path: atomic files, staged outputs, no-follow appends, and a full disk as one line.

Every file dccnext writes goes through here, so that:
- a crash never leaves a half-written file where a good one was (`atomic_write`: temp file + fsync + rename), and
  an output built of several files (an export folder) appears at its path whole or not at all (`staged`);
- the temporaries of a killed process (named `.NAME.PID.tmp`) are removed by the next write to the same path;
- a full disk or quota (ENOSPC, EDQUOT), whichever writer met it (Python, safetensors' Rust, torch's C++
  writers are given bytes to write from Python), is one line naming what was written, the space it needed and
  where, with the partial file removed;
- nothing is written through a symbolic link inside a run folder (`append_text` opens with O_NOFOLLOW,
  `check_run_folder` refuses links among a run's own names).

`DCCNEXT_DISK_FREE=BYTES` (tests only, like `DCCNEXT_CRASH_AT`) makes every file larger than BYTES fail as a
full disk would, where a test cannot mount a small file system.
"""

from __future__ import annotations

import errno
import glob
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from ..errors import ConfigError, DCCNeXtError, DiskFullError, OutputExistsError
from .crash_points import crash_point

__all__ = ["atomic_write", "atomic_write_text", "atomic_write_bytes", "append_text", "check_writable",
           "check_new_output", "check_run_folder", "remove_run_files", "staged", "write_file",
           "reporting_full_disk", "is_disk_full", "remove_stale", "fsync", "DISK_FREE_ENV"]

DISK_FREE_ENV = "DCCNEXT_DISK_FREE"
_FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT}
# How writers that do not raise OSError say it: safetensors (Rust io::Error), torch's stream writer
_FULL_TEXTS = ("No space left on device", "Disk quota exceeded", "os error 28", "os error 122", "StorageFull",
               "FilesystemQuotaExceeded")


def is_disk_full(error: BaseException) -> bool:
    """Whether `error` is a write that ran out of space or quota, whatever library raised it."""
    if isinstance(error, OSError) and error.errno in _FULL_ERRNOS:
        return True
    return not isinstance(error, DCCNeXtError) and any(text in str(error) for text in _FULL_TEXTS)


def _size(n: int) -> str:
    for unit in ("bytes", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1000
    return ""


def _free_bytes(folder: Path) -> int | None:
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return None


_HIDDEN = re.compile(r"^\.(.+?)(\.\d+)?(\.\w+)?\.tmp$")  # `.NAME.PID.tmp`, mkstemp's, `.step-N.tmp`


def _shown(path: Path) -> Path:
    """The path a user knows: hidden temporaries named as what they become."""
    parts: list[str] = []
    for part in path.parts:
        match = _HIDDEN.match(part)
        name = match.group(1) if match else part
        if not (parts and parts[-1] == name):
            parts.append(name)
    return Path(*parts)


def _disk_full(path: Path, needed: int | None, free_before: int | None) -> DiskFullError:
    free = _free_bytes(path.parent)
    if needed:
        need = f"it needs {_size(needed)}" + (f", {_size(free)} are free there" if free is not None else "")
    elif free_before is not None:
        need = f"it needs more than the {_size(free_before)} that were free there"
    else:
        need = "it needs more space than is free there"
    return DiskFullError(f"the disk is full: could not write {_shown(path)} ({need}); nothing was left "
                         "half-written: free some space or choose another -o, then run again")


@contextmanager
def reporting_full_disk(path: str | os.PathLike, needed: int | None = None,
                        partial: str | os.PathLike | None = None) -> Iterator[None]:
    """Turn a full disk met inside the block into one `DiskFullError` line about `path`: the `needed` bytes
    when known, else more than what was free when it began; `partial`, the file being written, is removed."""
    free_before = None if needed else _free_bytes(Path(path).parent)
    try:
        yield
    except BaseException as e:
        if not is_disk_full(e):
            raise
        if partial is not None and os.path.isfile(partial) and not os.path.islink(partial):
            os.unlink(partial)  # before the free space is measured
        raise _disk_full(Path(path), needed, free_before) from None


def _simulate_full_disk(tmp: str) -> None:
    """The test hook: a file larger than DCCNEXT_DISK_FREE bytes fails as on a full disk."""
    budget = os.environ.get(DISK_FREE_ENV)
    if budget is not None and os.path.getsize(tmp) > int(budget):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), tmp)


def fsync(path: str | os.PathLike) -> None:
    """Flush a file or a folder (a rename in it) to the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_file(path: str | os.PathLike, write: Callable[[Path], None], needed: int | None = None) -> Path:
    """Call `write(path)` for a file inside a folder that is itself committed later (a checkpoint being built),
    fsync it; a full disk removes the partial file and is one line."""
    path = Path(path)
    try:
        with reporting_full_disk(path, needed, partial=path):
            write(path)
            _simulate_full_disk(str(path))
            fsync(path)
    except BaseException:
        if not path.is_symlink():
            path.unlink(missing_ok=True)
        raise
    return path


def _temporary_prefix(path: Path) -> str:
    return f".{path.name}.{os.getpid()}."


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove(path: Path) -> None:
    """A file, a link (never what it points to) or a folder."""
    if path.is_symlink() or not path.is_dir():
        path.unlink(missing_ok=True)
    else:
        shutil.rmtree(path, ignore_errors=True)


def remove_stale(path: str | os.PathLike) -> None:
    """Remove the temporaries that killed processes left for `path` (`.NAME.PID*.tmp` of a dead PID)."""
    path = Path(path)
    if not path.parent.is_dir():
        return
    for hidden in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        pid = hidden.name[len(path.name) + 2:].split(".", 1)[0]
        if pid.isdigit() and (int(pid) == os.getpid() or not _pid_alive(int(pid))):
            _remove(hidden)


def atomic_write(path: str | os.PathLike, write: Callable[[str], None], needed: int | None = None) -> Path:
    """Call `write(tmp_path)` and move the result onto `path` in one rename; no partial file survives, and a
    full disk is one line (`needed`: the bytes it takes, when known)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(path)
    fd, tmp = tempfile.mkstemp(prefix=_temporary_prefix(path), suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        with reporting_full_disk(path, needed, partial=tmp):
            write(tmp)
            _simulate_full_disk(tmp)
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; the file should get the usual permissions
            fsync(tmp)
        crash_point(f"written:{path.name}")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """`atomic_write` for a text file."""
    data = text.encode("utf-8")
    return atomic_write(path, lambda tmp: Path(tmp).write_bytes(data), needed=len(data))


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """`atomic_write` of bytes made in memory (what torch's C++ writers serialise into a buffer)."""
    return atomic_write(path, lambda tmp: Path(tmp).write_bytes(data), needed=len(data))


def _publish(tmp: Path, path: Path, folder: bool) -> None:
    """Move a staged output onto `path`: one rename, or file by file into a folder the user already has."""
    if not folder:
        os.replace(tmp / path.name, path)
        tmp.rmdir()
    elif path.is_dir() and not path.is_symlink() and any(path.iterdir()):
        for item in sorted(tmp.iterdir()):
            os.replace(item, path / item.name)
        tmp.rmdir()
    else:
        if path.is_dir() and not path.is_symlink():
            path.rmdir()  # empty: the staged folder takes its place
        os.replace(tmp, path)
    fsync(path.parent)


@contextmanager
def staged(path: str | os.PathLike, folder: bool = False) -> Iterator[Path]:
    """Build an output in a hidden sibling folder (`.NAME.PID.tmp`) and move it onto `path` when the block
    succeeds. Yields where to write: that folder (`folder`) or a file of `path`'s own name inside it (loaders
    that go by the suffix still see it). On a failure nothing of it stays, after a kill the next run's
    `remove_stale` removes it; a full disk inside the block is one line."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(path)
    tmp = path.with_name(f"{_temporary_prefix(path)}tmp")
    _remove(tmp)
    tmp.mkdir()
    try:
        with reporting_full_disk(path):
            yield tmp if folder else tmp / path.name
        crash_point(f"staged:{path.name}")
        _publish(tmp, path, folder)
    except BaseException:
        _remove(tmp)
        raise


def append_text(path: str | os.PathLike, text: str) -> None:
    """Append to a log in a run folder without following a symbolic link planted at its name."""
    path = Path(path)
    data = text.encode("utf-8")
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o666)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise OutputExistsError(_link_message(path)) from None
        raise
    try:
        with reporting_full_disk(path, len(data)):
            if os.environ.get(DISK_FREE_ENV) is not None and len(data) > int(os.environ[DISK_FREE_ENV]):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
            os.write(fd, data)
    finally:
        os.close(fd)


def _link_message(path: Path) -> str:
    return (f"{path} is a symbolic link; dccnext writes nothing through a link in a run folder: replace it with "
            "the file itself or remove it")


def check_run_folder(folder: str | os.PathLike, names: tuple[str, ...]) -> None:
    """Before a run writes: a link at one of the run's own names (or inside its checkpoints folder) is refused in
    one line; a link at a hidden temporary name (ours, left by a killed run) is removed, never followed."""
    folder = Path(folder)
    if not folder.is_dir():
        return
    for name in names:
        if (folder / name).is_symlink():
            raise OutputExistsError(_link_message(folder / name))
    for sub in ("checkpoints",):
        inner = folder / sub
        if inner.is_dir() and not inner.is_symlink():
            for item in inner.iterdir():
                if item.is_symlink() and item.name.startswith("."):
                    item.unlink()
                elif item.is_symlink():
                    raise OutputExistsError(_link_message(item))
    for hidden in folder.glob(".*.tmp"):
        if hidden.is_symlink():
            hidden.unlink()


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
        _remove(folder / name)
