"""`dccnext` as a real process (`python -m dccnext_cli`), the way a user starts it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def env(**extra: str) -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1",
            "HF_DATASETS_OFFLINE": "1", **extra}


def dccnext(*args, extra_env: dict[str, str] | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    """`python -m dccnext_cli ARGS` to the end."""
    return subprocess.run([sys.executable, "-m", "dccnext_cli", *map(str, args)], env=env(**(extra_env or {})),
                          capture_output=True, text=True, timeout=timeout, cwd=ROOT)


def start(*args, stderr_to: Path) -> subprocess.Popen:
    """`python -m dccnext_cli ARGS` in the background (stderr to a file: it may be long)."""
    return subprocess.Popen([sys.executable, "-m", "dccnext_cli", *map(str, args)], env=env(), cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=stderr_to.open("w"), text=True)
