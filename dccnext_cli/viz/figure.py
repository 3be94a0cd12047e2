"""Headless matplotlib plumbing shared by both figures: the Agg backend, colours, saving by extension."""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: no display is ever needed

from matplotlib.figure import Figure  # noqa: E402

from ..common.files import atomic_write  # noqa: E402
from .outputs import FIGURE_SUFFIXES, check_output  # noqa: E402

__all__ = ["CENTER_COLOR", "MEMBER_COLOR", "FORMATS", "save_figure", "check_output"]

CENTER_COLOR = "#e8000b"  # red
MEMBER_COLOR = "#ff9f1c"  # orange
FORMATS = {suffix: suffix[1:] for suffix in FIGURE_SUFFIXES}


def save_figure(fig: Figure, path: str | os.PathLike, dpi: int = 150) -> Path:
    """Write the figure atomically, in the format its extension names."""
    path = Path(path)
    fmt = FORMATS[path.suffix.lower()]
    return atomic_write(path, lambda tmp: fig.savefig(tmp, format=fmt, dpi=dpi, bbox_inches="tight"))
