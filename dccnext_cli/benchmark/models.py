"""What `dccnext benchmark` can measure: a dccnext variant, its control, any timm model, or a weights file."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError
from ..models.config import VARIANTS

__all__ = ["ModelSpec", "resolve_model", "MODEL_HELP"]

MODEL_HELP = ("dccnext_b0 .. dccnext_b4; control_b0 .. control_b4 (the same network with 7x7 depthwise convs in "
              "stages 3-4 instead of DCConv, global_op=conv); any timm model (convformer_s18, convnext_tiny, ...); "
              "or a dccnext .safetensors weights file.")


@dataclass(frozen=True)
class ModelSpec:
    """A named model and how to build it (afresh for every setting, on any device, meta included)."""

    name: str
    build: Callable[[], nn.Module]
    is_dccnext: bool
    source: dict[str, Any] = field(default_factory=dict)  # how a memory probe subprocess rebuilds it


def _dccnext(name: str, changes: dict[str, Any]) -> ModelSpec | None:
    family, _, variant = name.lower().partition("_")
    if family not in ("dccnext", "control") or variant not in VARIANTS:
        return None
    from ..models.dccnext import create_dccnext

    options = {**changes, **({"global_op": "conv"} if family == "control" else {})}
    return ModelSpec(f"{family}_{variant}", lambda: create_dccnext(variant, **options), True,
                     {"name": name, "changes": changes})


def _weights_file(name: str, changes: dict[str, Any]) -> ModelSpec | None:
    path = Path(name)
    if path.suffix != ".safetensors":
        return None
    if not path.is_file():
        raise ConfigError(f"{name}: no such weights file; name a dccnext .safetensors file from `train` or `export`")
    from ..models.dccnext import DCCNeXt
    from ..models.weights import read_meta

    meta = read_meta(path)
    if not meta.is_classifier:
        raise ConfigError(f"{name} holds a {meta.task} model; `benchmark` measures classifiers (and backbones)")
    config = meta.config.replace(**changes) if changes else meta.config
    return ModelSpec(path.stem, lambda: DCCNeXt(config), True, {"name": os.fspath(path), "changes": changes})


def resolve_model(name: str, changes: dict[str, Any] | None = None) -> ModelSpec:
    """The model a command-line name means; `changes` (--set model.FIELD=...) apply to dccnext models only.

    Weights files are measured with their architecture and fresh weights: speed does not depend on the values.
    """
    changes = changes or {}
    spec = _dccnext(name, changes) or _weights_file(name, changes)
    if spec is not None:
        return spec
    import timm

    if not timm.is_model(name):
        raise ConfigError(f"{name!r} is not a model here; name one of: {MODEL_HELP}")
    return ModelSpec(name, lambda: timm.create_model(name, pretrained=False), False, {"name": name, "changes": {}})


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def gmacs(spec: ModelSpec, resolution: tuple[int, int]) -> float | None:
    """Multiply-accumulates per image in G, counted on the meta device (DCConv by the paper's rule)."""
    from ..models.flops import count_model

    try:
        with torch.device("meta"):
            model = spec.build()
        return count_model(model, resolution, {"model": ""}).flops_per_image / 1e9
    except Exception:  # a model the counter cannot trace on the meta device: the column stays empty
        return None
