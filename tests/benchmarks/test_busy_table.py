"""benchmarks.busy's arithmetic: the ratio B2 keeps to each peer, per quiet/busy cycle and as their median."""

from __future__ import annotations

import pytest

from benchmarks.busy import add_ratios_kept, markdown


def _row(model: str, quiet: list[float], busy: list[float]) -> dict:
    return {"policy": "p", "model": model, "quiet_s": quiet, "busy_s": busy, "slowdown": busy[0] / quiet[0],
            "fitted_s": 1.0, "fitted_threads": 1}


def test_the_ratio_kept_is_taken_per_cycle_then_the_median():
    rows = [_row("dccnext_b2", [1.0, 1.0, 2.0], [2.0, 4.0, 4.0]),
            _row("convformer_s18", [2.0, 2.0, 2.0], [4.0, 4.0, 8.0])]
    add_ratios_kept(rows)
    # cycle 1: both slowed 2x -> 1.0; cycle 2: B2 4x, peer 2x -> 0.5; cycle 3: B2 2x, peer 4x -> 2.0
    assert rows[1]["cycle_ratios_kept"] == pytest.approx([1.0, 0.5, 2.0])
    assert rows[1]["b2_ratio_kept"] == pytest.approx(1.0)
    assert rows[0]["b2_ratio_kept"] == pytest.approx(1.0)
    table = markdown({"inference": rows})
    assert "| p | convformer_s18 | 2000.0 | 4000.0 | 2.00x | 1.00 (1.00, 0.50, 2.00) | 1000.0 (1) |" in table


def test_cycles_of_different_counts_are_refused():
    rows = [_row("dccnext_b2", [1.0, 1.0], [2.0, 2.0]), _row("control_b2", [1.0], [2.0])]
    with pytest.raises(ValueError):
        add_ratios_kept(rows)
