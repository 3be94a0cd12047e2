"""A command that starts at once: help and version import none of the heavy libraries, and the package's
public names and timm registration still work when they load lazily."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import dccnext_cli
from dccnext_cli.cli.app import build_app

ROOT = Path(__file__).resolve().parents[2]
HEAVY = ("torch", "timm", "torchvision", "matplotlib", "datasets", "accelerate")
COMMANDS = sorted(info.name for info in build_app().registered_commands)


def _imported(*args: str) -> set[str]:
    """The top-level packages `python -X importtime -m dccnext_cli ARGS` imported (from its import log)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "80"}
    result = subprocess.run([sys.executable, "-X", "importtime", "-m", "dccnext_cli", *args], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    return {line.rpartition("|")[2].strip().split(".")[0] for line in result.stderr.splitlines()
            if line.startswith("import time:")}


@pytest.mark.parametrize("args", [("--help",), ("--version",), *((name, "--help") for name in COMMANDS)],
                         ids=lambda args: " ".join(args))
def test_help_and_version_import_no_heavy_library(args):
    imported = _imported(*args)
    assert "typer" in imported  # the log was read
    assert not imported & set(HEAVY), f"dccnext {' '.join(args)} imported {sorted(imported & set(HEAVY))}"


def test_every_command_is_checked():
    assert {"train", "eval", "predict", "flops", "export", "visualize-clusters", "kernel-weights"} <= set(COMMANDS)


@pytest.mark.parametrize("first", [
    "import dccnext_cli; import sys; assert 'torch' not in sys.modules and 'timm' not in sys.modules; import timm",
    "import timm; import dccnext_cli",
    "from dccnext_cli.models import dcconv",  # imports timm half-way through its own import
    "from dccnext_cli.models.dccnext import DCCNeXt",
    "import dccnext_cli.dense as dense; dense.build_dense_model",
])
def test_the_models_are_registered_with_timm_whatever_is_imported_first(first):
    code = (f"{first}\nimport sys, timm\nm = timm.create_model('dccnext_b0')\n"
            "hooks = [f for f in sys.meta_path if type(f).__module__ == 'dccnext_cli._timm_registration']\n"
            "print(type(m).__name__, timm.is_model('dccnext_b4'), len(hooks))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["DCCNeXt", "True", "0"]  # registered, and the import hook is gone


@pytest.mark.parametrize("package", ["dccnext_cli", "dccnext_cli.models", "dccnext_cli.dense", "dccnext_cli.viz"])
def test_every_lazy_name_resolves(package):
    module = __import__(package, fromlist=["_"])
    missing = [name for name in module.__all__ if getattr(module, name, None) is None]
    assert not missing
    assert set(module.__all__) <= set(dir(module))
    with pytest.raises(AttributeError, match="has no attribute 'no_such_name'"):
        module.no_such_name  # noqa: B018


def test_timm_knows_the_models_in_this_process():
    import timm

    assert [name for name in timm.list_models("dccnext_*")] == [f"dccnext_b{i}" for i in range(5)]
    assert dccnext_cli.DCCNeXt.__name__ == "DCCNeXt"
