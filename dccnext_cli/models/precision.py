"""Inference precision: the number format a model's weights and activations take for `predict` and `eval`.

`fp32` is float32, the format the model trains and is checked in. `bf16` casts the weights and the input to
bfloat16: on CPUs with AVX512-BF16 or AMX (and on GPUs) oneDNN then runs the convolutions and matmuls at about
twice the arithmetic rate and half the memory traffic. DCConv's distances stay float32 whatever the model's
format (`dcconv.cluster_indices` casts its sub-vectors), because the expansion |q|^2 + |k|^2 - 2 q.k cancels
in 8 mantissa bits. The names are plain strings here so that the CLI lists them without importing torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..errors import ConfigError

if TYPE_CHECKING:
    import torch

__all__ = ["PRECISIONS", "DEFAULT_PRECISION", "precision_dtype", "to_precision"]

PRECISIONS = {"fp32": "float32", "bf16": "bfloat16"}  # the option's value -> the torch dtype's name
DEFAULT_PRECISION = "fp32"


def precision_dtype(precision: str) -> torch.dtype:
    """The torch dtype of a precision name; an unknown name is a ConfigError that lists the known ones."""
    import torch

    if precision not in PRECISIONS:
        raise ConfigError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    return getattr(torch, PRECISIONS[precision])


def to_precision(model: torch.nn.Module, precision: str) -> torch.dtype:
    """Cast the model's floating parameters and buffers in place; returns the dtype inputs must take."""
    dtype = precision_dtype(precision)
    model.to(dtype)
    return dtype
