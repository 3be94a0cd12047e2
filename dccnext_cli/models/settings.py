"""The operator's switches: one documented settings object instead of module globals to patch.

Each switch picks between formulations that give the same numbers (the tests hold every one to the
reference), or sizes a block of work; none changes a result. Speed-ups that change how the blocks run
(in-place activations, FFN batch slices) are not settings: `optimize_for_inference` applies them.
Read the current values with `operator_settings()`; change them for a block of code with
`use_operator_settings(...)` (as timm's `set_layer_config`), or for the whole process with `set_operator_settings(...)`:

    from dccnext_cli.models.settings import use_operator_settings

    with use_operator_settings(backend="reference"):
        logits = model(images)
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import typing
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

from ..common.recipe_files import check_rules
from ..errors import ConfigError

__all__ = ["OperatorSettings", "operator_settings", "set_operator_settings", "use_operator_settings"]


@dataclass(frozen=True)
class OperatorSettings:
    """How DCConv computes (models/dcconv.py's backend table); measured on the project's 2-core AMD EPYC."""

    # Which formulation runs in eager mode: "reference" (plain aten ops, the oracle), "cpu" (small C++ loops
    # compiled on first use, CPU tensors only), "inductor" (the reference compiled by Inductor; both need a C++
    # compiler, else the reference runs), "triton" (CUDA kernels, atomic scatter-add backward),
    # "triton-deterministic" (backward through the reverse index) or "auto": "cpu" on the CPU, Triton on CUDA where
    # it is installed, else the reference. Exporting, the meta device and torch.compile pick their own form
    # whatever this says.
    backend: Literal["auto", "reference", "cpu", "inductor", "triton", "triton-deterministic"] = "auto"
    # The form exported graphs take: "torch" (torch.export, TorchScript: a stable sort, the convolution one slot
    # at a time) or "onnx" (a topk, one gather of all slots, the GELU in the op order onnxruntime fuses; the ONNX
    # export sets it).
    export_target: Literal["torch", "onnx"] = "torch"
    # Distances (query rows x tokens of one image, images grouped up to this size) computed at once on the CPU;
    # above this, query rows are chunked. 2M floats (8 MiB) keep a chunk in cache between the matmul that writes it
    # and the top-k that reads it. The chunk's rows depend on the token count alone, never on the batch.
    distance_chunk_elements: int = 1 << 21
    # The same on other devices: 64M floats (256 MiB, plus 512 MiB of int64 selection keys), so at (64, 14, 14, C)
    # or a 1280x800 stage 3 a few launches in all.
    device_distance_elements: int = 1 << 26

    def __post_init__(self) -> None:
        sizes = [(f"operator setting {name}", getattr(self, name), getattr(self, name) >= 1, "must be >= 1")
                 for name in ("distance_chunk_elements", "device_distance_elements")]
        choices = [(name, getattr(self, name), getattr(self, name) in allowed, f"must be {_one_of(allowed)}")
                   for name, allowed in _choices().items()]
        check_rules(sizes + choices)

    def replace(self, **changes: Any) -> OperatorSettings:
        unknown = set(changes) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            known = ", ".join(f.name for f in dataclasses.fields(self))
            raise ConfigError(f"unknown operator setting(s) {', '.join(sorted(unknown))}; known: {known}")
        return dataclasses.replace(self, **changes)


def _one_of(allowed: tuple[str, ...]) -> str:
    return " or ".join([", ".join(map(repr, allowed[:-1])), repr(allowed[-1])])


@functools.cache
def _choices() -> dict[str, tuple[str, ...]]:
    """Each Literal field's allowed values, read once from the annotations."""
    hints = typing.get_type_hints(OperatorSettings)
    return {name: typing.get_args(hint) for name, hint in hints.items() if typing.get_origin(hint) is Literal}


_current = OperatorSettings()


def operator_settings() -> OperatorSettings:
    """The settings in force."""
    return _current


def set_operator_settings(**changes: Any) -> OperatorSettings:
    """Change settings for the rest of the process; returns the previous settings."""
    global _current
    previous, _current = _current, _current.replace(**changes)
    return previous


@contextlib.contextmanager
def use_operator_settings(**changes: Any) -> Iterator[OperatorSettings]:
    """Change settings inside a `with` block; the previous ones come back however the block ends."""
    global _current
    previous, _current = _current, _current.replace(**changes)
    try:
        yield _current
    finally:
        _current = previous
