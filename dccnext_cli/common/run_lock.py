"""One writer per run folder: an OS lock on the folder itself, released by the kernel when the process dies.

`fcntl.flock` on the folder's own descriptor needs no lock file (so a refused or failed command leaves the
folder exactly as it was) and cannot go stale: a killed run's lock disappears with it.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from ..errors import OutputExistsError

__all__ = ["lock_folder", "unlock_folder"]

_HELD: dict[str, int] = {}  # folder -> descriptor, kept open for the life of the process


def lock_folder(folder: Path, what: str = "dccnext train") -> None:
    """Take the folder's exclusive lock (idempotent in one process) or refuse in one line."""
    key = str(Path(folder).resolve())
    if key in _HELD:
        return
    fd = os.open(key, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise OutputExistsError(f"{folder} is in use by another {what} (one writer per run folder); wait for it "
                                "to finish or choose another -o") from None
    _HELD[key] = fd


def unlock_folder(folder: Path) -> None:
    """Release the lock (the end of a run; a process that dies releases it anyway)."""
    fd = _HELD.pop(str(Path(folder).resolve()), None)
    if fd is not None:
        os.close(fd)
