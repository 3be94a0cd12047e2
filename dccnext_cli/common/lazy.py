"""Package attributes that load on first use (PEP 562), so `dccnext --help` never waits for torch.

A package lists which submodule holds each public name; the submodule is imported the first time one of
its names is read, and the name is then cached in the package like an ordinary import.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Iterable

__all__ = ["lazy_exports"]


def lazy_exports(package: str, exports: dict[str, Iterable[str]]) -> tuple[Callable[[str], object], Callable[[], list]]:
    """`__getattr__` and `__dir__` for `package`, given {".submodule": names it provides}."""
    where = {name: module for module, names in exports.items() for name in names}

    def __getattr__(name: str) -> object:
        if name not in where:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(where[name], package), name)
        vars(sys.modules[package])[name] = value  # later reads skip __getattr__
        return value

    def __dir__() -> list[str]:
        return sorted(set(vars(sys.modules[package])) | set(where))

    return __getattr__, __dir__
