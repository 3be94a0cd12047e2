"""The command root: help, version, `python -m`, and subcommands added by third-party entry points."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

import dccnext_cli
from dccnext_cli.cli.app import build_app

PLUGIN_DIR = Path(__file__).resolve().parents[2] / "examples" / "plugin"


def install_fake_distribution(site: Path, entry_points: str) -> None:
    """What pip leaves for a package with entry points: a dist-info folder on sys.path."""
    dist = site / "dccnext_test_plugins-0.1.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: dccnext-test-plugins\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[dccnext_cli.commands]\n" + entry_points)


@pytest.fixture
def plugin_site(tmp_path, monkeypatch):
    site = tmp_path / "site"
    site.mkdir()
    monkeypatch.syspath_prepend(str(PLUGIN_DIR))
    monkeypatch.syspath_prepend(str(site))
    return site


def test_plugin_command_is_added(plugin_site):
    install_fake_distribution(plugin_site, "hello = dccnext_hello_plugin:hello\n")
    result = CliRunner().invoke(build_app(), ["hello", "--name", "ada"])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == "hello, ada, from a dccnext plugin"
    assert "hello" in CliRunner().invoke(build_app(), ["--help"]).stdout


def test_broken_plugin_warns_and_the_rest_still_work(plugin_site, capsys):
    install_fake_distribution(
        plugin_site, "broken = dccnext_no_such_module:cmd\nhello = dccnext_hello_plugin:hello\n"
    )
    app = build_app()
    warning = capsys.readouterr().err
    assert "plugin command 'broken'" in warning and "failed to load" in warning
    result = CliRunner().invoke(app, ["flops", "--variant", "b0", "--res", "64", "--json"])
    assert result.exit_code == 0, result.output
    assert '"flops"' in result.stdout
    assert CliRunner().invoke(app, ["hello"]).exit_code == 0


def test_help_lists_commands_and_version(run_cli):
    result = run_cli("--help")
    assert result.exit_code == 0 and "flops" in result.stdout
    version = run_cli("--version")
    assert version.exit_code == 0 and version.stdout.strip() == f"dccnext {dccnext_cli.__version__}"


def test_python_dash_m_runs_the_cli():
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.run(
        [sys.executable, "-m", "dccnext_cli", "flops", "--variant", "b0", "--res", "64", "--json"],
        capture_output=True, text=True, cwd=root, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert '"params": 5206978' in proc.stdout


def test_expected_errors_become_one_line_and_exit_2(plugin_site):
    (plugin_site / "dccnext_failing_plugin.py").write_text(
        "from dccnext_cli.errors import CheckpointError\n"
        "def boom():\n"
        "    raise CheckpointError('model.safetensors is truncated; re-export it')\n"
    )
    install_fake_distribution(plugin_site, "boom = dccnext_failing_plugin:boom\n")
    result = CliRunner().invoke(build_app(), ["boom"])
    assert result.exit_code == 2
    assert result.stderr.strip() == "error: model.safetensors is truncated; re-export it"
    assert "Traceback" not in result.output
