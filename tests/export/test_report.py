"""The export report labels each check (what read the file back, which input) and explains any pass above the
tolerance in the row itself."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console

from dccnext_cli.cli.cmd_export import report_table
from dccnext_cli.export import ExportResult, ParityCheck


def _checks() -> list[ParityCheck]:
    exact = ParityCheck((1, 3, 224, 224), 0.0, 1e-4, loaded_by="onnxruntime", size="export size")
    swapped = ParityCheck((2, 3, 288, 192), 2e-3, 1e-4, swapped_slots=3, total_slots=10000,
                          max_abs_diff_agreeing=1e-6, agreeing_samples=1, loaded_by="onnxruntime", size="second size")
    failed = ParityCheck((2, 3, 288, 192), 2e-3, 1e-4, loaded_by="torch.jit.load", size="second size")
    return [exact, swapped, failed]


def test_a_pass_above_the_tolerance_says_why():
    exact, swapped, failed = _checks()
    assert exact.ok and exact.why_ok == ""
    assert swapped.ok and swapped.why_ok.startswith("3 of 10000 cluster slots swapped at near ties")
    assert "the 1 samples without one are within it" in swapped.why_ok
    assert not failed.ok and failed.why_ok == ""


def test_rows_name_the_reader_and_the_input_in_width_x_height():
    result = ExportResult("onnx", Path("m.onnx"), "float32", False, _checks())
    console = Console(width=200)
    with console.capture() as captured:
        console.print(report_table(result))
    rows = [line for line in captured.get().splitlines() if "onnxruntime" in line or "torch.jit" in line]
    assert len(rows) == 3
    assert "export size: 224x224, batch 1" in rows[0] and rows[0].rstrip(" │").endswith("yes")
    assert "second size: 192x288, batch 2" in rows[1] and "yes: 3 of 10000 cluster slots" in rows[1]
    assert rows[2].rstrip(" │").endswith("no")
