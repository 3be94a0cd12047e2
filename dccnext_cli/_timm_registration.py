"""`import dccnext_cli` registers dccnext_b0 ... dccnext_b4 with timm without importing timm (or torch) itself.

timm keeps its model registry in memory and has no entry points, so the models must be registered in every
process that calls `timm.create_model("dccnext_b0")`. Importing them eagerly would cost every `dccnext --help`
the ~5 s of torch, timm and torchvision. Instead: if timm is already imported, register now; otherwise an
import hook registers as soon as timm is imported and no module of this package is half-way through its own
import (a package module that imports timm, such as `models.dcconv`, must finish before `models.dccnext`,
which needs it, can run). Once registered, the hook removes itself.
"""

from __future__ import annotations

import importlib
import importlib.abc
import sys
from types import ModuleType
from typing import Any

__all__ = ["register_with_timm"]

PACKAGE = "dccnext_cli"
MODELS = "dccnext_cli.models.dccnext"  # its @register_model functions are the registration


def _ours(name: str) -> bool:
    return name == PACKAGE or name.startswith(PACKAGE + ".")


def _importing_ours(but: str = "") -> bool:
    """True while a module of this package (other than `but`) is being imported: its body still running."""
    return any(getattr(getattr(module, "__spec__", None), "_initializing", False)
               for name, module in list(sys.modules.items()) if _ours(name) and name != but)


def _register_when_ready(but: str = "") -> None:
    hooks = [finder for finder in sys.meta_path if isinstance(finder, _Hook)]
    if not hooks or "timm" not in sys.modules or _importing_ours(but):
        return
    for hook in hooks:
        sys.meta_path.remove(hook)
    importlib.import_module(MODELS)


class _ThenRegister:
    """A module's own loader, then a registration attempt (other loader methods pass through)."""

    def __init__(self, loader: Any):
        self.loader = loader

    def create_module(self, spec) -> ModuleType | None:
        return self.loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        self.loader.exec_module(module)
        _register_when_ready(but=module.__name__)  # its body has run; importlib marks it done only after this

    def __getattr__(self, name: str) -> Any:
        return getattr(self.loader, name)


class _Hook(importlib.abc.MetaPathFinder):
    """Finds timm and this package's modules with the finders after it, wrapping their loaders."""

    def find_spec(self, name, path, target=None):
        if name != "timm" and not _ours(name):
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(name, path, target)
            if spec is not None:
                if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                    spec.loader = _ThenRegister(spec.loader)
                return spec
        return None


def register_with_timm() -> None:
    """Make `timm.create_model("dccnext_b0")` work in this process, now or as soon as timm is imported."""
    if not any(isinstance(finder, _Hook) for finder in sys.meta_path):
        sys.meta_path.insert(0, _Hook())
    _register_when_ready(but=PACKAGE)  # called last in the package's __init__: nothing of ours needs it
