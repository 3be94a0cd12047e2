"""A test hook for crash safety: the process SIGKILLs itself at a named moment of a save.

Where a kill can hurt is decided by the code that writes, so that code names its moments (`crash_point("final:
weights")`) and a test sets `DCCNEXT_CRASH_AT` to one of them: the process dies there exactly as a power cut or
the OOM killer would leave it, without the test guessing at timings. Unset, a crash point costs one lookup.
"""

from __future__ import annotations

import os
import signal

__all__ = ["crash_point", "CRASH_ENV"]

CRASH_ENV = "DCCNEXT_CRASH_AT"


def crash_point(name: str) -> None:
    """SIGKILL this process when `DCCNEXT_CRASH_AT` equals `name` (tests only)."""
    if os.environ.get(CRASH_ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)
