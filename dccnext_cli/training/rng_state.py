"""Every random generator a training process draws from, as plain JSON (no pickle), checked on the way back.

Python's `random`, NumPy's global generator, torch's CPU generator, every CUDA device's generator and the data
loader's own generator: a resumed run that restores all of them draws the same numbers the uninterrupted run
would have (Mixup, drop path, worker seeds). A state that does not have the right shape is refused, not ignored:
a run that silently continued with other random numbers would no longer be the run it claims to be.
"""

from __future__ import annotations

import hashlib
import random
from typing import Any

import numpy as np
import torch

from ..errors import CheckpointError

__all__ = ["capture_rng", "restore_rng", "reseed_rng"]


def _bytes(t: torch.Tensor) -> list[int]:
    return t.to(torch.uint8).tolist()


def capture_rng(generator: torch.Generator | None = None) -> dict[str, Any]:
    """The state of every generator this process uses, JSON-ready."""
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "python": [version, list(internal), gauss],
        "numpy": [kind, keys.tolist(), int(pos), int(has_gauss), float(cached)],
        "torch": _bytes(torch.get_rng_state()),
        "cuda": [_bytes(s) for s in torch.cuda.get_rng_state_all()] if torch.cuda.is_available() else [],
        "loader": _bytes(generator.get_state()) if generator is not None else None,
    }


def _byte_tensor(value: Any, length: int | None, what: str) -> torch.Tensor:
    if not (isinstance(value, list) and all(isinstance(v, int) and 0 <= v < 256 for v in value)):
        raise ValueError(f"{what} is not a list of bytes")
    if length is not None and len(value) != length:
        raise ValueError(f"{what} has {len(value)} bytes, expected {length}")
    return torch.tensor(value, dtype=torch.uint8)


def restore_rng(state: Any, source: str, generator: torch.Generator | None = None) -> None:
    """Put every generator back as `capture_rng` found it; a damaged state is a CheckpointError naming `source`."""
    try:
        if not isinstance(state, dict):
            raise ValueError("not a mapping")
        version, internal, gauss = state["python"]
        if not (isinstance(internal, list) and len(internal) == 625 and all(isinstance(v, int) for v in internal)):
            raise ValueError("python state is not 625 integers")
        kind, keys, pos, has_gauss, cached = state["numpy"]
        if kind != "MT19937" or not isinstance(keys, list) or len(keys) != 624:
            raise ValueError("numpy state is not an MT19937 state")
        torch_state = _byte_tensor(state["torch"], len(torch.get_rng_state()), "torch state")
        cuda = state["cuda"]
        if torch.cuda.is_available() and len(cuda) != torch.cuda.device_count():
            raise ValueError(f"{len(cuda)} CUDA generator states for {torch.cuda.device_count()} devices")
        loader = state.get("loader")
        if generator is not None and loader is not None:
            generator.set_state(_byte_tensor(loader, len(generator.get_state()), "loader state"))
        random.setstate((version, tuple(internal), gauss))
        np.random.set_state((kind, np.array(keys, dtype=np.uint32), int(pos), int(has_gauss), float(cached)))
        torch.set_rng_state(torch_state)
        if torch.cuda.is_available():
            torch.cuda.set_rng_state_all([_byte_tensor(s, None, "CUDA state") for s in cuda])
    except (KeyError, ValueError, TypeError, OverflowError, RuntimeError) as e:
        raise CheckpointError(f"{source} holds a damaged random-generator state ({e}); resume from another "
                              "train state (--resume RUN/checkpoints/step-N)") from None


def reseed_rng(step: int, rank: int, generator: torch.Generator | None = None) -> None:
    """A process that has no saved state (a run resumed on more processes than it was saved on): every generator
    seeded from (step, rank), so such a resume is repeatable and no two processes draw the same numbers."""
    seed = int.from_bytes(hashlib.blake2b(f"resume-{step}-{rank}".encode(), digest_size=8).digest(), "little") >> 1
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if generator is not None:
        generator.manual_seed(seed)
