"""Every snippet in the README and docs/ runs as written, or says why not and which test covers it.

A fenced ```python or ```bash block runs in a fresh process in an empty folder (bash with `dccnext` meaning
this checkout's `python -m dccnext_cli`). A block that cannot run here (a long training, a GPU launch, data
from the network, an install) is preceded by `<!-- snippet: not run (REASON) -->`, and the reason must name
where the same thing is tested.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
NOT_RUN = r"(?:<!-- snippet: not run \((?P<reason>[^)]*(?:\([^)]*\)[^)]*)*)\) -->\n)?"
FENCE = re.compile(NOT_RUN + r"```(?P<lang>python|bash)\n(?P<code>.*?)^```", re.S | re.M)


def _snippets() -> list[tuple[str, str, str, str | None]]:
    out = []
    for doc in DOCUMENTS:
        text = doc.read_text()
        for match in FENCE.finditer(text):
            line = text[:match.start("code")].count("\n") + 1
            out.append((f"{doc.relative_to(ROOT)}:{line}", match["lang"], match["code"], match["reason"]))
    return out


SNIPPETS = _snippets()
RUN = [s for s in SNIPPETS if s[3] is None]


def test_snippets_that_do_not_run_say_why_and_where_they_are_tested():
    assert len(RUN) >= 4 and len(SNIPPETS) > len(RUN)
    for where, _, _, reason in SNIPPETS:
        if reason is not None:
            assert re.search(r"test|\.ci/run|the suite", reason), f"{where}: say which test covers it"


@pytest.mark.parametrize("where, lang, code", [s[:3] for s in RUN], ids=[s[0] for s in RUN])
def test_snippet_runs_as_written(where, lang, code, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "100"}
    if lang == "python":
        cmd = [sys.executable, "-c", code]
    else:
        cmd = ["bash", "-euo", "pipefail", "-c", f'dccnext() {{ "{sys.executable}" -m dccnext_cli "$@"; }}\n{code}']
    done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"{where} failed:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
