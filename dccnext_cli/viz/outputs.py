"""The files the figure commands write, checked before any model work: neither torch nor matplotlib loads here."""

from __future__ import annotations

import os
from pathlib import Path

from ..common.files import check_new_output
from ..errors import ConfigError

__all__ = ["FIGURE_SUFFIXES", "HTML_SUFFIXES", "check_output", "check_html_output"]

FIGURE_SUFFIXES = (".png", ".svg", ".pdf")
HTML_SUFFIXES = (".html", ".htm")


def check_output(path: str | os.PathLike, overwrite: bool) -> Path:
    """Refuse an unknown extension, a folder or an existing file (unless overwrite) before any work is done."""
    path = Path(path)
    if path.suffix.lower() not in FIGURE_SUFFIXES:
        raise ConfigError(f"-o {path}: the figure format comes from the extension; use .png, .svg or .pdf")
    if path.is_dir():
        raise ConfigError(f"-o {path} is a folder; give a file name such as {path / 'figure.png'}")
    check_new_output(path, overwrite, "-o")
    return path


def check_html_output(path: str | os.PathLike, overwrite: bool) -> Path:
    """Refuse a non-HTML name, a folder, an existing file (unless overwrite) or an unwritable place."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"--html {path} is a folder; give a file name such as {path / 'clusters.html'}")
    if path.suffix.lower() not in HTML_SUFFIXES:
        raise ConfigError(f"--html {path}: the page is a .html file; name it e.g. {path.with_suffix('.html').name}")
    check_new_output(path, overwrite, "--html")
    return path
