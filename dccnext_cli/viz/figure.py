"""Headless matplotlib plumbing shared by both figures: the Agg backend, colours, saving by extension."""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: no display is ever needed

from matplotlib.figure import Figure  # noqa: E402

from ..common.files import atomic_write, check_writable  # noqa: E402
from ..errors import ConfigError, OutputExistsError  # noqa: E402

__all__ = ["CENTER_COLOR", "MEMBER_COLOR", "FORMATS", "save_figure", "check_output"]

CENTER_COLOR = "#e8000b"  # red
MEMBER_COLOR = "#ff9f1c"  # orange
FORMATS = {".png": "png", ".svg": "svg", ".pdf": "pdf"}


def check_output(path: str | os.PathLike, overwrite: bool) -> Path:
    """Refuse an unknown extension or an existing file (unless overwrite) before any work is done."""
    path = Path(path)
    if path.suffix.lower() not in FORMATS:
        raise ConfigError(f"-o {path}: the figure format comes from the extension; use .png, .svg or .pdf")
    if path.is_dir():
        raise ConfigError(f"-o {path} is a folder; give a file name such as {path / 'figure.png'}")
    if path.exists() and not overwrite:
        raise OutputExistsError(f"{path} exists; pass --overwrite to replace it or choose another -o")
    check_writable(path, "-o")
    return path


def save_figure(fig: Figure, path: str | os.PathLike, dpi: int = 150) -> Path:
    """Write the figure atomically, in the format its extension names."""
    path = Path(path)
    fmt = FORMATS[path.suffix.lower()]
    return atomic_write(path, lambda tmp: fig.savefig(tmp, format=fmt, dpi=dpi, bbox_inches="tight"))
