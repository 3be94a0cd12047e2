"""Figure 3's data: the clusters each DCConv computed in one forward pass over an image.

The indices are the ones the model used (`keep_cluster_indices`), read after the forward; a forward
pre-hook on each chosen DCConv records the (H, W) grid it ran on. Neither changes the model's output.
Token n of a grid of width W is the cell (row, col) = divmod(n, W): row-major, 0-based.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..data.images import IMAGENET_MEAN, IMAGENET_STD, eval_transform, load_image
from ..errors import ConfigError
from ..models.dccnext import DCCNeXt
from .model_source import block_stage, dcconv_blocks

__all__ = ["BlockClusters", "ImageClusters", "compute_clusters", "choose_centers", "resolve_centers", "CENTER_MODES"]

CENTER_MODES = ("auto", "all")


@dataclass
class BlockClusters:
    """One DCConv's clusters for one image."""

    block: int
    stage: int
    grid: tuple[int, int]  # (rows, cols) of the token grid the layer ran on
    cluster_size: int  # K of the layer
    indices: np.ndarray  # (N, K') int64, slot 0 = the centre, then ascending distance
    saliency: np.ndarray  # (N,) L2 norm of each token's DCConv input, used by --centers auto
    centers: list[tuple[int, int]] = field(default_factory=list)  # cells to draw, filled by resolve_centers

    @property
    def effective_k(self) -> int:
        return int(self.indices.shape[1])

    def members(self, center: tuple[int, int]) -> list[tuple[int, int]]:
        """Cells of the cluster centred at `center`, centre first, in the layer's slot order."""
        token = center[0] * self.grid[1] + center[1]
        return [divmod(int(n), self.grid[1]) for n in self.indices[token]]

    def to_dict(self) -> dict:
        return {
            "block": self.block,
            "stage": self.stage,
            "grid": list(self.grid),
            "cluster_size": self.cluster_size,
            "effective_cluster_size": self.effective_k,
            "token_order": "row-major: token n is cell (n // grid_width, n % grid_width)",
            "clusters": [
                {"center": list(c), "members": [list(m) for m in self.members(c)]} for c in self.centers
            ],
            "indices": self.indices.tolist(),
        }


@dataclass
class ImageClusters:
    """One image as the model saw it, and the clusters of the chosen blocks."""

    path: Path
    original_size: tuple[int, int]  # (H, W) of the file
    image: np.ndarray  # (H, W, 3) float in [0, 1]: the model's input, de-normalised
    blocks: list[BlockClusters]
    logits: torch.Tensor  # the output of that forward pass (kept so tests can compare)

    def to_dict(self) -> dict:
        return {
            "path": str(self.path),
            "original_size": list(self.original_size),
            "input_size": list(self.image.shape[:2]),
            "blocks": [b.to_dict() for b in self.blocks],
        }


def _denormalise(x: torch.Tensor) -> np.ndarray:
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return (x * std + mean).clamp(0, 1).permute(1, 2, 0).numpy()


def compute_clusters(
        model: DCCNeXt,
        image_path: str | os.PathLike,
        resolution: tuple[int, int],
        blocks: list[int],
) -> ImageClusters:
    """Run the model once on one image (the eval transform) and read back the chosen blocks' clusters."""
    layers = dcconv_blocks(model)
    pil = load_image(image_path)
    x = eval_transform(resolution)(pil)
    inputs: dict[int, torch.Tensor] = {}
    hooks = [
        layers[b].register_forward_pre_hook(lambda _m, args, b=b: inputs.__setitem__(b, args[0].detach()))
        for b in blocks
    ]
    model.keep_cluster_indices(True)
    try:
        with torch.inference_mode():
            logits = model(x.unsqueeze(0).to(next(model.parameters()).device))
        result = []
        for b in blocks:
            tokens = inputs[b][0]  # (H, W, E)
            result.append(BlockClusters(
                block=b,
                stage=block_stage(model, b),
                grid=(int(tokens.shape[0]), int(tokens.shape[1])),
                cluster_size=layers[b].cluster_size,
                indices=layers[b].last_indices[0].cpu().numpy(),
                saliency=tokens.float().flatten(0, 1).norm(dim=-1).cpu().numpy(),
            ))
    finally:
        model.keep_cluster_indices(False)
        for h in hooks:
            h.remove()
    return ImageClusters(Path(image_path), (pil.height, pil.width), _denormalise(x), result, logits.cpu())


def choose_centers(saliency: np.ndarray, grid: tuple[int, int], count: int) -> list[tuple[int, int]]:
    """`count` salient, spread cells: by descending saliency (the norm of the token's features), each at
    least a third of the grid's shorter side (Chebyshev distance, at least 1) from those already taken;
    the outermost ring is skipped on grids of 5x5 and more (zero padding inflates its features). If too
    few cells qualify, the next most salient ones fill up."""
    rows, cols = grid
    order = np.argsort(-saliency, kind="stable")
    if min(rows, cols) >= 5:
        inner = (order // cols > 0) & (order // cols < rows - 1) & (order % cols > 0) & (order % cols < cols - 1)
        order = np.concatenate([order[inner], order[~inner]])
    gap = max(1, math.ceil(min(rows, cols) / 3))
    chosen: list[tuple[int, int]] = []
    for n in order:
        cell = divmod(int(n), cols)
        if all(max(abs(cell[0] - r), abs(cell[1] - c)) >= gap for r, c in chosen):
            chosen.append(cell)
        if len(chosen) == count:
            return chosen
    for n in order:
        cell = divmod(int(n), cols)
        if cell not in chosen and len(chosen) < count:
            chosen.append(cell)
    return chosen


def resolve_centers(
        blocks: list[BlockClusters],
        mode: str | None,
        explicit: list[tuple[int, int]],
        count: int,
) -> None:
    """Fill each block's `centers`: explicit cells (checked against its grid), 'auto' or 'all'."""
    for b in blocks:
        rows, cols = b.grid
        if explicit:
            for r, c in explicit:
                if not (0 <= r < rows and 0 <= c < cols):
                    raise ConfigError(
                        f"--center {r},{c} is outside block {b.block}'s {rows}x{cols} grid "
                        f"(rows 0-{rows - 1}, columns 0-{cols - 1}); pick a cell inside it or other --blocks"
                    )
            b.centers = list(explicit)
        elif mode == "all":
            b.centers = [(r, c) for r in range(rows) for c in range(cols)]
        elif mode in (None, "auto"):
            b.centers = choose_centers(b.saliency, b.grid, count)
        else:
            raise ConfigError(f"--centers {mode!r} is not a mode; use auto or all, or give --center ROW,COL")


def parse_center(text: str) -> tuple[int, int]:
    """'3,5' -> (3, 5): row and column, 0-based, in the block's token grid."""
    parts = [p.strip() for p in text.split(",")]
    if len(parts) != 2 or not all(p.lstrip("-").isdigit() for p in parts):
        raise ConfigError(f"--center {text!r} is not ROW,COL; write e.g. --center 6,7 (0-based cell of the grid)")
    return int(parts[0]), int(parts[1])
