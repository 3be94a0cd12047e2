"""Shared test setup: offline Hugging Face, a private HF cache, few threads, and the CLI runner."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
if not os.path.exists("/dev/nvidia0"):
    # No GPU: Triton kernels run under Triton's interpreter (exact, slow). Triton reads this when triton.language
    # is first imported, which torch may do, so it is set before torch is imported.
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

import dccnext_cli  # noqa: E402,F401  (registers the timm models)

_BOX = str.maketrans({c: " " for c in "│╭╮╰╯─┃━"})


@pytest.fixture(autouse=True)
def _hf_home(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path_factory.getbasetemp() / "hf_home"))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def cli_app():
    from dccnext_cli.cli.app import build_app

    return build_app()


@pytest.fixture
def run_cli(cli_app):
    """Invoke the CLI in-process; returns the Click result (exit_code, stdout, stderr)."""
    from typer.testing import CliRunner

    runner = CliRunner()

    def run(*args: str):
        result = runner.invoke(cli_app, [str(a) for a in args], catch_exceptions=False)
        # Rich wraps usage errors in a box: `.text` is the output as one plain line, for message checks.
        result.text = " ".join(result.output.translate(_BOX).split())
        return result

    return run


@pytest.fixture
def fresh_compiles():
    """Dynamo's compiled variants forgotten (Inductor's disk cache stays): past its limit of variants per function
    (dtypes, batch 1, inference tensors: a test suite makes many) a compiled backend runs its function eagerly,
    which an op-count test would read as the backend's own count."""
    torch._dynamo.reset()
    yield
