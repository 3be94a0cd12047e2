"""Fixtures for the reliability tests: a small image folder from the embedded Fashion-MNIST, and `dccnext`
processes started from a server that has the imports done already (see runner.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from fashion_images import write_image_folder

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def small_images(tmp_path_factory) -> Path:
    """2 classes x 8 training images, 2 x 4 validation images, 28x28 PNGs from the embedded set."""
    return write_image_folder(tmp_path_factory.mktemp("small_images"), 8, 4)


@dataclass
class Done:
    returncode: int
    stdout: str
    stderr: str


class Runner:
    """Starts `dccnext ARGS` as a forked real process (env: extra variables) and waits for it."""

    def __init__(self, scratch: Path):
        self.scratch, self.count = scratch, 0
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1",
               "HF_DATASETS_OFFLINE": "1"}
        self.proc = subprocess.Popen([sys.executable, str(Path(__file__).parent / "runner.py")], cwd=ROOT, env=env,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def __call__(self, *args, env: dict[str, str] | None = None) -> Done:
        self.count += 1
        out, err = self.scratch / f"{self.count}.out", self.scratch / f"{self.count}.err"
        request = {"args": [str(a) for a in args], "env": env or {}, "out": str(out), "err": str(err)}
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        answer = json.loads(self.proc.stdout.readline())
        return Done(answer["returncode"], out.read_text(), err.read_text())

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


@pytest.fixture(scope="session")
def dccnext(tmp_path_factory):
    runner = Runner(tmp_path_factory.mktemp("runner"))
    yield runner
    runner.close()


def small_run_args(images: Path, out: Path, epochs: int = 2, keep_last: int = 1) -> list[str]:
    """The smallest real run: 16 images in batches of 4 (4 steps an epoch), a checkpoint every 2 steps."""
    return ["train", "--data", f"imagefolder:{images}", "--res", "32", "--epochs", str(epochs), "--batch-size",
            "4", "--workers", "0", "--set", "checkpoint_every=2", "--set", f"keep_last={keep_last}", "--set",
            "eval_samples=8", "--set", "log_every=1", "-o", str(out), "--json"]


@pytest.fixture(scope="session")
def train_args():
    return small_run_args
