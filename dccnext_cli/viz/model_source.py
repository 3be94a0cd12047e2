"""Which model a figure shows, and which of its blocks (shared by Figures 3 and 4).

Blocks are numbered 1-based over the whole network, as the paper counts them ("blocks 7 and 16" of
B2 are the first DCC blocks of stages 3 and 4).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..models.config import variant_config
from ..models.dccnext import DCCNeXt
from ..models.dcconv import DCConv

__all__ = ["ModelSource", "load_model", "parse_blocks", "default_blocks", "block_stage", "stage_grid"]

DEFAULT_VARIANT = "b2"  # the paper's figures show B2


@dataclass
class ModelSource:
    """A model in eval mode plus what the figures say about it."""

    model: DCCNeXt
    variant: str
    checkpoint: Path | None
    train_size: tuple[int, int] | None  # the input size the checkpoint was trained at, when it says

    @property
    def random_weights(self) -> bool:
        return self.checkpoint is None

    @property
    def label(self) -> str:
        name = f"DCCNeXt-{self.variant.upper()}"
        return f"{name} ({self.checkpoint.name})" if self.checkpoint else f"{name} (random weights)"

    def to_dict(self) -> dict:
        return {
            "variant": self.variant,
            "checkpoint": str(self.checkpoint) if self.checkpoint else None,
            "random_weights": self.random_weights,
            "train_size": list(self.train_size) if self.train_size else None,
        }


def load_model(checkpoint: str | os.PathLike | None = None, variant: str | None = None,
               model_changes: dict[str, Any] | None = None) -> ModelSource:
    """A checkpoint's model, or a freshly initialised variant (default B2, with `model_changes`) without one."""
    if checkpoint is not None and model_changes:
        raise ConfigError("--set model.FIELD=VALUE builds a model from --variant; a checkpoint carries its own config")
    if checkpoint is not None:
        path = Path(checkpoint)
        model, meta = DCCNeXt.from_checkpoint(path)
        if variant is not None and variant != meta.variant.removeprefix("dccnext_"):
            raise ConfigError(
                f"--variant {variant} does not match {path.name}, a {meta.variant} checkpoint; drop --variant"
            )
        source = ModelSource(model, meta.variant.removeprefix("dccnext_"), path, meta.input_size)
    else:
        name = variant or DEFAULT_VARIANT
        source = ModelSource(DCCNeXt(variant_config(name).override(model_changes, "--set model")), name, None, None)
    source.model.eval()
    return source


def dcconv_blocks(model: DCCNeXt) -> dict[int, DCConv]:
    return dict(model.dcconv_layers())


def block_stage(model: DCCNeXt, block: int) -> int:
    """1-based stage of a 1-based block number."""
    end = 0
    for stage, depth in enumerate(model.config.depths, start=1):
        end += depth
        if block <= end:
            return stage
    raise ValueError(f"block {block} is past the last block ({end})")


def default_blocks(model: DCCNeXt) -> list[int]:
    """The paper's choice: the first DCC block of each DCC stage (B2: blocks 7 and 16)."""
    first: dict[int, int] = {}
    for block in dcconv_blocks(model):
        first.setdefault(block_stage(model, block), block)
    return sorted(first.values())


def _ranges(numbers: list[int]) -> str:
    """[7, 8, 9, 12] -> '7-9, 12'."""
    parts, start = [], None
    for i, n in enumerate(numbers):
        if start is None:
            start = n
        if i + 1 == len(numbers) or numbers[i + 1] != n + 1:
            parts.append(str(start) if start == n else f"{start}-{n}")
            start = None
    return ", ".join(parts)


def parse_blocks(spec: str | None, model: DCCNeXt) -> list[int]:
    """'7,16' / 'all-dcc' / None (the paper's default) -> sorted DCC block numbers, or a ConfigError."""
    valid = sorted(dcconv_blocks(model))
    if not valid:
        raise ConfigError(f"this model has no DCConv layers (global_op={model.config.global_op!r}); "
                          "there are no clusters or kernels to show")
    if spec is None:
        return default_blocks(model)
    if spec.strip().lower() in ("all-dcc", "all"):
        return valid
    blocks = []
    for part in spec.split(","):
        part = part.strip()
        if not part.isdigit():
            raise ConfigError(f"--blocks {spec!r}: {part!r} is not a block number; write e.g. 7,16 or all-dcc")
        blocks.append(int(part))
    wrong = [b for b in blocks if b not in valid]
    if wrong:
        raise ConfigError(
            f"block {', '.join(map(str, wrong))} is not a DCC block of this model; "
            f"the DCC blocks are {_ranges(valid)} (or --blocks all-dcc)"
        )
    return sorted(set(blocks))


def stage_grid(model: DCCNeXt, stage: int, size: tuple[int, int]) -> tuple[int, int]:
    """(H, W) token grid of a 1-based stage for an input of `size`, from the strided convs' own arithmetic."""
    convs = [model.stem.conv] + [model.stages[i].downsample.conv for i in range(1, stage)]
    height, width = size
    for conv in convs:
        (kh, kw), (sh, sw), (ph, pw) = conv.kernel_size, conv.stride, conv.padding
        height = (height + 2 * ph - kh) // sh + 1
        width = (width + 2 * pw - kw) // sw + 1
    return height, width
