"""The deployment benchmark's arithmetic: ratios to convformer_s18 per (batch, mode), and one table row each."""

from __future__ import annotations

import pytest

from benchmarks.deploy import MODELS, MODES, REF, table, with_ratios


def _rows() -> list[dict]:
    rows = []
    for batch in (1, 32):
        for i, mode in enumerate(MODES):
            for j, name in enumerate(MODELS):
                rows.append({"batch": batch, "model": name, "mode": mode, "median_s": batch * (i + 1) * (j + 1) / 100})
    return rows


def test_ratios_are_the_peer_time_over_this_time_in_the_same_mode_and_batch():
    rows = {(r["batch"], r["mode"], r["model"]): r["vs_convformer_s18"] for r in with_ratios(_rows())}
    assert rows[(32, "compiled", REF)] == 1.0
    assert rows[(32, "compiled", MODELS[0])] == pytest.approx(3.0)  # the reference takes 3x as long: 3x faster
    assert rows[(1, "onnxruntime", MODELS[1])] == pytest.approx(1.5)


def test_table_has_a_row_per_batch_and_mode():
    md = table(with_ratios(_rows())).splitlines()
    assert len(md) == 2 + 2 * len(MODES)
    assert md[2].startswith("| 1 | eager | 10.0 | 3.00x | 20.0 | 1.50x | 30.0 | 1.00x |")
