"""Hooks into the training loop for what only a test or a debugging session needs, off the hot path by default.

`RankProbe` records what each process saw (a fingerprint of its labels and a sparse sample of its pixels) and
ended with (a digest of its whole weights, gathered from shards under FSDP), so a distributed test can check that
the ranks read different data and finished with identical weights. `dccnext train` adds it when the environment
sets `DCCNEXT_RANK_PROBE=1`.
"""

from __future__ import annotations

import hashlib
import os
from typing import Any, Protocol

import torch

__all__ = ["TrainCallback", "RankProbe", "callbacks_from_env"]

PROBE_ENV = "DCCNEXT_RANK_PROBE"


class TrainCallback(Protocol):
    """Called with every micro-batch (on the CPU, before it moves to the device) and once at the end."""

    def on_batch(self, images: torch.Tensor, labels: torch.Tensor) -> None: ...

    def on_end(self, weights_digest: str) -> dict[str, Any]:
        """Entries to add to this process's record in `summary.json` ("ranks"); `weights_digest` is a digest
        of the whole final weights as this process sees them (shards gathered, see training/full_state.py)."""
        ...


class RankProbe:
    """Samples seen, a data fingerprint and the final weights digest of one process."""

    def __init__(self) -> None:
        self.fingerprint = hashlib.blake2b(digest_size=8)
        self.samples = 0

    def on_batch(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        self.fingerprint.update(labels.numpy().tobytes())
        # a sparse sample of pixels tells the images apart without a full pass over every batch
        self.fingerprint.update(images.flatten(1)[:, ::997].sum(1).numpy().round(3).tobytes())
        self.samples += len(labels)

    def on_end(self, weights_digest: str) -> dict[str, Any]:
        return {"samples": self.samples, "data_fingerprint": self.fingerprint.hexdigest(),
                "weights_digest": weights_digest}


def callbacks_from_env() -> list[TrainCallback]:
    """The debug callbacks the environment asks for (`DCCNEXT_RANK_PROBE=1`)."""
    return [RankProbe()] if os.environ.get(PROBE_ENV, "") not in ("", "0") else []
