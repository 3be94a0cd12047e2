"""The operator's switches: one documented settings object instead of module globals to patch.

Each switch picks between formulations that give the same numbers (the tests hold every one to the
reference), or sizes a block of work; none changes a result. Read the current values with
`operator_settings()`; change them for a block of code with `use_operator_settings(...)` (as timm's
`set_layer_config`), or for the whole process with `set_operator_settings(...)`:

    from dccnext_cli.models.settings import use_operator_settings

    with use_operator_settings(ffn_chunk_bytes=0, pointwise_as_conv_on_cpu=False):
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

from ..errors import ConfigError

__all__ = ["OperatorSettings", "operator_settings", "set_operator_settings", "use_operator_settings"]


@dataclass(frozen=True)
class OperatorSettings:
    """How DCConv and the blocks compute; measured on the project's 2-core AMD EPYC with benchmarks/compare.py."""

    # Blocks' linears on CPU as 1x1 convolutions (oneDNN) instead of matrix products (MKL): the same GEMMs ran
    # 1.1-1.4x faster, the B2 training step 1.16x. The parameters are those of nn.Linear either way.
    pointwise_as_conv_on_cpu: bool = True
    # Inference runs the ConvFFN over slices of the batch whose 4C-wide hidden tensor takes at most this many
    # bytes (0: never): slices stay in cache (B2 1.2x faster at batch 32). Training keeps the whole batch.
    ffn_chunk_bytes: int = 16 << 20
    # Distances (query rows x tokens of one image, images grouped up to this size) computed at once; above
    # this, query rows are chunked. 2M floats (8 MiB) keep a chunk in cache between the matmul that writes it
    # and the top-k that reads it. The chunk's rows depend on the token count alone, never on the batch.
    distance_chunk_elements: int = 1 << 21
    # How the cluster convolution runs inside torch.compile: "inductor" (fused gather) or "custom_op".
    compile_impl: Literal["inductor", "custom_op"] = "inductor"
    # Output rows per block of the fast cluster convolution (output block + gather buffer stay in L2).
    block_rows: int = 512
    # Rows per block of its backward: five ops per slot and block, so fewer, larger blocks pay (measured).
    backward_block_rows: int = 1024
    # Which eager operator runs: "cpu" (cache-sized row blocks; two shortcuts read a flag back from the tensor:
    # the centre slot read in place, and top-k's tie repair done on the few rows that need it), "device" (whole-
    # tensor ops, nothing read back to the host, a number of kernel launches that does not grow with batch x
    # tokens) or "auto": "device" for tensors on any device but the CPU. Both give the same numbers.
    eager_path: Literal["auto", "cpu", "device"] = "auto"
    # On the device path, distances (query rows x tokens, images grouped) computed at once: 64M floats (256 MiB,
    # plus 512 MiB of int64 selection keys), so at (64, 14, 14, C) or a 1280x800 stage 3 a few launches in all.
    device_distance_elements: int = 1 << 26
    # The eager cluster convolution's kernels: "pytorch" (aten ops: in cache-sized row blocks on the "cpu" path,
    # in one block on the "device" path), "triton" (models/dcconv_triton.py: a fixed number of kernel launches
    # whatever the batch; atomic scatter-add backward), "triton-deterministic" (backward through the reverse
    # index) or "auto": Triton for CUDA tensors where Triton is installed, else "pytorch". Every choice
    # accumulates in float32 (float64 for float64 inputs) and returns the input's dtype. The Triton kernels
    # need CUDA, or TRITON_INTERPRET=1 set before their first use (slow; how the tests run them on the CPU).
    eager_kernels: Literal["auto", "pytorch", "triton", "triton-deterministic"] = "auto"
    # Cluster selection in exported graphs: "sort" (stable sort: torch.export, TorchScript) or "topk"
    # (ONNX has no Sort; its TopK puts equal values in index order, the stable sort's tie rule).
    export_indices: Literal["sort", "topk"] = "sort"
    # The exact GELU in exported graphs: "aten" (torch's gelu op) or "erf" (x * (1 + erf(x / sqrt 2)) * 0.5,
    # in that order: the pattern onnxruntime fuses into one Gelu node; the ONNX export sets it).
    export_gelu: Literal["aten", "erf"] = "aten"
    # The cluster convolution in exported graphs: "loop" (one gather, multiply and add per slot: memory of one
    # activation) or "gather" (the reference: all K slots in one gather, multiply, sum over K; K activations of
    # memory, and onnxruntime ran it 1.2x (batch 32) to 3x (batch 1) faster; the ONNX export sets it).
    export_cluster_conv: Literal["loop", "gather"] = "loop"

    def __post_init__(self) -> None:
        for name in ("ffn_chunk_bytes",):
            if getattr(self, name) < 0:
                raise ConfigError(f"operator setting {name} must be >= 0, got {getattr(self, name)}")
        for name in ("distance_chunk_elements", "device_distance_elements", "block_rows", "backward_block_rows"):
            if getattr(self, name) < 1:
                raise ConfigError(f"operator setting {name} must be >= 1, got {getattr(self, name)}")
        for name, choices in _choices().items():
            if getattr(self, name) not in choices:
                listed = " or ".join([", ".join(map(repr, choices[:-1])), repr(choices[-1])])
                raise ConfigError(f"{name} must be {listed}, got {getattr(self, name)!r}")

    def replace(self, **changes: Any) -> OperatorSettings:
        unknown = set(changes) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            known = ", ".join(f.name for f in dataclasses.fields(self))
            raise ConfigError(f"unknown operator setting(s) {', '.join(sorted(unknown))}; known: {known}")
        return dataclasses.replace(self, **changes)


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
