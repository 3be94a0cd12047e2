"""`import dccnext_cli` registers dccnext_b0 ... dccnext_b4 with timm without importing timm (or torch) itself.

timm keeps its model registry in memory and has no entry points, so the models must be registered in every
process that calls `timm.create_model("dccnext_b0")`. Importing them eagerly would cost every `dccnext --help`
the ~5 s of torch, timm and torchvision. Instead: if timm is already imported, register now; otherwise a
one-shot import hook registers right after timm's own import finishes.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
from types import ModuleType

__all__ = ["register_with_timm"]

MODELS = "dccnext_cli.models.dccnext"  # its @register_model functions are the registration


def _register() -> None:
    importlib.import_module(MODELS)


class _AfterImport(importlib.abc.Loader):
    """Runs timm's own loader, then the registration."""

    def __init__(self, loader: importlib.abc.Loader):
        self.loader = loader

    def create_module(self, spec) -> ModuleType | None:
        return self.loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        self.loader.exec_module(module)
        _register()


class _TimmHook(importlib.abc.MetaPathFinder):
    """Finds timm with the finders after it (once), wrapping its loader in `_AfterImport`."""

    def find_spec(self, name, path, target=None):
        if name != "timm":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.loader is not None:
            spec.loader = _AfterImport(spec.loader)
        return spec


def register_with_timm() -> None:
    """Make `timm.create_model("dccnext_b0")` work in this process, now or as soon as timm is imported."""
    if "timm" in sys.modules:
        _register()
    elif not any(isinstance(finder, _TimmHook) for finder in sys.meta_path):
        sys.meta_path.insert(0, _TimmHook())
