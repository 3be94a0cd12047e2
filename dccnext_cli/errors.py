"""The expected failures of dccnext: each carries one line that names the problem and the fix.

Library code raises these; `cli/app.py` prints the message and exits with status 2. Anything else
that escapes is a bug and keeps its traceback.
"""

from __future__ import annotations


class DCCNeXtError(Exception):
    """Base of every failure a user can cause and fix (bad input, bad file, bad option)."""


class ConfigError(DCCNeXtError, ValueError):
    """A model config, recipe or option value that cannot be used."""


class CheckpointError(DCCNeXtError):
    """A weights file that is missing, truncated, of another model, or inconsistent with its metadata."""


class DataError(DCCNeXtError):
    """A data source that is missing, empty or unreadable."""


class ImageError(DCCNeXtError):
    """An image file that is missing, not an image, or corrupt."""


class OutputExistsError(DCCNeXtError):
    """An output that would overwrite something the user has, without --overwrite."""


class DiskFullError(DCCNeXtError):
    """A write that ran out of space (ENOSPC) or quota (EDQUOT); nothing half-written was left behind."""
