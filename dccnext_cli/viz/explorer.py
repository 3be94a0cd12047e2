"""Figure 3 as one interactive page: every patch of every chosen block shows its cluster.

`explorer_html` turns one `ImageClusters` (from `compute_clusters`) into a self-contained HTML file:
the image as the model saw it (a base64 PNG), each block's full index table and grid, its K and d and
Figure 4's mean |W| per slot (`kernel_weights`), all as one JSON blob that a small plain-JavaScript
template (`explorer.html`, package data beside this module) draws. No network resource, no build step:
the file opens offline from file://.

Grid cells carry `data-row`, `data-col` and `data-token`; a cell of the shown cluster has `data-role`
("center" or "member") and `data-slot` (0 = the centre, then nearer to farther), so that tests and
scripts can read back what the page shows. The URL fragment `#block=7&cell=3,5` (1-based block,
0-based cell of that block's grid) names a view and restores it when the page is opened.
"""

from __future__ import annotations

import base64
import io
import json
import os
from importlib import resources
from pathlib import Path

import numpy as np
from PIL import Image

from ..common.files import atomic_write
from ..data.images import load_image
from ..errors import ConfigError
from .clusters import ImageClusters
from .kernel_weights import kernel_weights
from .model_source import ModelSource, dcconv_blocks
from .outputs import HTML_SUFFIXES, check_html_output

__all__ = ["HTML_SUFFIXES", "check_html_output", "check_explorer_inputs", "explorer_data", "explorer_html",
           "write_explorer"]

TEMPLATE = "explorer.html"
DATA_MARKER = "__DCCNEXT_EXPLORER_DATA__"


def check_explorer_inputs(images: list[Path]) -> None:
    """One page shows one image: refuse several, and a missing or unreadable one before any model work."""
    if len(images) != 1:
        raise ConfigError(f"--html draws one image per page, got {len(images)}; run once per image")
    load_image(images[0])


def _png_data_url(image: np.ndarray) -> str:
    """(H, W, 3) floats in [0, 1] -> a PNG data URL (lossless: the pixels the model saw, 8-bit)."""
    pixels = (np.clip(image, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(buffer, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def explorer_data(
        result: ImageClusters,
        source: ModelSource,
        center: tuple[int, int] | None = None,
) -> dict:
    """Everything the page shows, as plain JSON-able data (the indices exactly as the forward pass left them)."""
    blocks = [b.block for b in result.blocks]
    layers = dcconv_blocks(source.model)
    kernels = {k.block: k for k in kernel_weights(source, blocks)}
    first = result.blocks[0]
    if center is None:
        center = first.centers[0] if first.centers else (first.grid[0] // 2, first.grid[1] // 2)
    return {
        "title": f"DCCNeXt cluster explorer: {result.path.name}",
        "model": {**source.to_dict(), "label": source.label},
        "image": {
            "name": result.path.name,
            "original_size": list(result.original_size),
            "input_size": list(result.image.shape[:2]),
            "src": _png_data_url(result.image),
        },
        "initial": {"block": first.block, "cell": [int(center[0]), int(center[1])]},
        "blocks": [
            {
                "block": b.block,
                "stage": b.stage,
                "grid": list(b.grid),
                "cluster_size": b.cluster_size,
                "effective_cluster_size": b.effective_k,
                "subvector_interval": layers[b.block].subvector_interval,
                "indices": b.indices.tolist(),
                "mean_abs_weight": [float(v) for v in kernels[b.block].values],
                "trained_slots": kernels[b.block].trained_slots,
            }
            for b in result.blocks
        ],
    }


def _script_json(data: dict) -> str:
    """JSON safe inside <script>: no '<', '>' or '&' can end the element or start a comment."""
    text = json.dumps(data, separators=(",", ":"), allow_nan=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def explorer_html(result: ImageClusters, source: ModelSource, center: tuple[int, int] | None = None) -> str:
    """The page as a string: the template with the data inlined."""
    template = resources.files(__package__).joinpath(TEMPLATE).read_text(encoding="utf-8")
    if template.count(DATA_MARKER) != 1:
        raise RuntimeError(f"{TEMPLATE} must hold {DATA_MARKER} exactly once")
    return template.replace(DATA_MARKER, _script_json(explorer_data(result, source, center)))


def write_explorer(
        path: str | os.PathLike,
        result: ImageClusters,
        source: ModelSource,
        center: tuple[int, int] | None = None,
) -> Path:
    """Write the page atomically (a partial page never appears at `path`)."""
    text = explorer_html(result, source, center)
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
