"""Text read from files, made safe to print: control characters shown, never obeyed by the terminal.

Class names and metadata come from weights files anyone may have written; an ANSI escape in a class name would
clear the screen or rewrite what came before, a bidirectional override would reorder it. `printable` shows
every such character as a Python-style escape (`\\x1b`, `\\u202e`); the text is otherwise unchanged.
"""

from __future__ import annotations

import unicodedata

__all__ = ["printable"]

_BIDI = {"\u061c", "\u200e", "\u200f", *(chr(c) for c in range(0x202A, 0x202F)),
         *(chr(c) for c in range(0x2066, 0x206A))}


def _shown(char: str) -> str:
    if unicodedata.category(char) == "Cc" or char in _BIDI:
        code = ord(char)
        return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"
    return char


def printable(text: str) -> str:
    """`text` with its control and bidirectional-formatting characters escaped."""
    return "".join(_shown(c) for c in str(text))
