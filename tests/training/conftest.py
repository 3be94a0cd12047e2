"""Fixtures of the shared-engine tests: a small image folder from the embedded Fashion-MNIST, and `dccnext`
started as a real process (`python -m dccnext_cli`)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def images(tmp_path_factory) -> Path:
    """2 classes x 16 training images, 2 x 4 validation images, 28x28 PNGs from the embedded set."""
    from dccnext_cli.data.builtin import open_builtin

    root = tmp_path_factory.mktemp("images")
    data = open_builtin("fashion-mnist", "train")
    counts = {0: 0, 1: 0}
    for i in range(len(data)):
        label = int(data.labels[i])
        if label in counts and counts[label] < 20:
            folder = root / ("train" if counts[label] < 16 else "validation") / f"class{label}"
            folder.mkdir(parents=True, exist_ok=True)
            data[i]["image"].save(folder / f"{i}.png")
            counts[label] += 1
        if all(c == 20 for c in counts.values()):
            return root
    raise AssertionError("not enough images")


def env(**extra: str) -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1",
            "HF_DATASETS_OFFLINE": "1", **extra}


def dccnext(*args, extra_env: dict[str, str] | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    """`python -m dccnext_cli ARGS` to the end, as a user runs it."""
    return subprocess.run([sys.executable, "-m", "dccnext_cli", *map(str, args)], env=env(**(extra_env or {})),
                          capture_output=True, text=True, timeout=timeout, cwd=ROOT)


def start(*args, stderr_to: Path) -> subprocess.Popen:
    """`python -m dccnext_cli ARGS` in the background (stderr to a file: it may be long)."""
    return subprocess.Popen([sys.executable, "-m", "dccnext_cli", *map(str, args)], env=env(), cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=stderr_to.open("w"), text=True)
