"""The plugin example is a real package: pip installs it, and `dccnext` then has its command."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "plugin"


def test_the_example_plugin_installs_and_its_command_runs(tmp_path):
    site, source = tmp_path / "site", tmp_path / "plugin"
    shutil.copytree(EXAMPLE, source)  # the build leaves its files beside the sources: not in the repository
    pip = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation", "--no-index",
           "--target", str(site), str(source)]
    done = subprocess.run(pip, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (site / "dccnext_hello_plugin.py").is_file()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(ROOT)])}

    def dccnext(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "dccnext_cli", *args], capture_output=True, text=True,
                              timeout=120, env=env, cwd=tmp_path)

    hello = dccnext("hello", "--name", "ada")
    assert hello.returncode == 0, hello.stderr
    assert hello.stdout == "hello, ada, from a dccnext plugin\n"
    listing = dccnext("--help")
    assert "hello" in listing.stdout and "Say hello from a plugin." in listing.stdout
    assert "warning" not in listing.stderr
