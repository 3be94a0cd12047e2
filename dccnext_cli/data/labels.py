"""Labels as the loaders hand them on: class indices 0..N-1, whatever the column holds.

A label column holds integers (a `ClassLabel`, or plain ints) or class names as strings. Names are mapped
through the class names the caller knows (a `ClassLabel`'s, or a checkpoint's when it is evaluated) only when
every name is one of them; otherwise, and for a negative or non-integer index, the split is refused in one line
naming the row, before a batch is drawn (map-style splits are checked whole; a stream record by record).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from ..errors import DataError

__all__ = ["name_map", "check_labels", "to_label"]


def _is_index(value: Any) -> bool:
    return hasattr(value, "__index__") and not isinstance(value, bool)


def name_map(first: Any, column: str, where: str, known: Sequence[str] | None) -> dict[str, int] | None:
    """The name -> index map for a column of strings (None for a column of indices); refused without names."""
    if not isinstance(first, str):
        return None
    if not known:
        raise DataError(f"{where}: column {column!r} holds class names as strings ({first!r}), and no class list "
                        "says which index each is; store integer labels 0..N-1 or cast the column to a "
                        "datasets.ClassLabel with the names")
    return {name: i for i, name in enumerate(known)}


def to_label(value: Any, column: str, where: str, names: dict[str, int] | None) -> int:
    """One record's label as a class index, or one line naming what is wrong with it."""
    if isinstance(value, str) and names is not None:
        if value not in names:
            shown = ", ".join(list(names)[:5]) + (", ..." if len(names) > 5 else "")
            raise DataError(f"{where}: label {value!r} in column {column!r} is not one of the class names "
                            f"({shown}); fix the row or evaluate with the checkpoint trained on these classes")
        return names[value]
    if not _is_index(value):
        raise DataError(f"{where}: label {value!r} in column {column!r} is not a class index; labels are "
                        "integers 0..N-1 (or class names with a class list)")
    if int(value) < 0:
        raise DataError(f"{where}: label {int(value)} in column {column!r} is negative; labels are class "
                        "indices 0..N-1: fix or drop that row")
    return int(value)


def check_labels(values: Iterable[Any], column: str, where: str, names: dict[str, int] | None) -> None:
    """Every label of a map-style split, before training or evaluation draws a batch (row numbers from 0)."""
    for row, value in enumerate(values):
        to_label(value, column, f"{where}, row {row}", names)
