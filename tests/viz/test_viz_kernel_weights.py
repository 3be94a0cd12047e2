"""kernel-weights: the values are the checkpoint's tensors, untrained slots are marked, figures are written."""

from __future__ import annotations

import csv
import io
import json

import numpy as np
import pytest
from safetensors.torch import load_file

from dccnext_cli.viz.kernel_weights import kernel_figure, kernel_weights
from dccnext_cli.viz.model_source import load_model


def test_values_are_the_checkpoint_tensors(run_cli, b0_checkpoint):
    tensors = load_file(str(b0_checkpoint))
    result = run_cli("kernel-weights", "--checkpoint", b0_checkpoint, "--blocks", "all-dcc", "--json")
    assert result.exit_code == 0, result.output
    blocks = json.loads(result.stdout)["blocks"]
    assert [b["block"] for b in blocks] == list(range(7, 14))
    for b in blocks:
        weight = tensors[b["param"]]  # (K, E)
        assert weight.shape[0] == b["cluster_size"] == (12 if b["stage"] == 3 else 18)
        np.testing.assert_allclose(b["mean_abs_weight"], weight.double().abs().mean(1).numpy(), rtol=1e-12)
        # trained at 64 px: stage 3 has 16 tokens (all 12 slots used), stage 4 only 4 tokens
        assert b["trained_slots"] == (12 if b["stage"] == 3 else 4)
    # the fixture's kernels fall off with the slot, and the plot's data says so
    assert all(b["mean_abs_weight"][0] > b["mean_abs_weight"][-1] for b in blocks)


def test_csv_matches_json(run_cli, b0_checkpoint):
    as_json = json.loads(run_cli("kernel-weights", "--checkpoint", b0_checkpoint, "--json").stdout)
    result = run_cli("kernel-weights", "--checkpoint", b0_checkpoint, "--csv")
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert len(rows) == 12 + 18  # default blocks: 7 (stage 3) and 12 (stage 4)
    for b in as_json["blocks"]:
        mine = [r for r in rows if int(r["block"]) == b["block"]]
        assert [int(r["slot"]) for r in mine] == list(range(b["cluster_size"]))
        np.testing.assert_allclose([float(r["mean_abs_weight"]) for r in mine], b["mean_abs_weight"], rtol=1e-8)
        assert [r["trained"] == "true" for r in mine] == [k < b["trained_slots"] for k in range(b["cluster_size"])]


def test_figure_marks_untrained_slots(b0_checkpoint):
    source = load_model(b0_checkpoint)
    kernels = kernel_weights(source, [7, 12])
    fig = kernel_figure(source, kernels)
    heat, curves = fig.axes[0], fig.axes[1]
    hatched = [p for p in heat.patches if p.get_gid() == "untrained"]
    assert len(hatched) == 1  # only block 12 (stage 4) has slots it never trained
    assert hatched[0].get_x() == 4 - 0.5 and hatched[0].get_width() == 18 - 4 and hatched[0].get_y() == 1 - 0.5
    assert heat.get_xlabel().startswith("slot k") and curves.get_ylabel() == "mean |W| over channels"
    labels = [t.get_text() for t in curves.get_legend().get_texts()]
    assert labels[:2] == ["block 7 (stage 3, K=12)", "block 12 (stage 4, K=18)"]
    np.testing.assert_allclose(curves.lines[0].get_ydata(), kernels[0].values)


def test_fresh_model_and_photo_free_figure(run_cli, tmp_path):
    out = tmp_path / "k.png"
    result = run_cli("kernel-weights", "--variant", "b0", "-o", out)
    assert result.exit_code == 0, result.output
    assert "random weights" in result.stderr
    assert out.read_bytes().startswith(b"\x89PNG")
    data = json.loads(run_cli("kernel-weights", "--variant", "b0", "--json").stdout)
    assert data["model"]["random_weights"] is True
    assert all(b["trained_slots"] is None for b in data["blocks"])


def test_training_size_metadata_forms(b0_checkpoint, tmp_path):
    from dccnext_cli.errors import CheckpointError
    from dccnext_cli.models.dccnext import DCCNeXt
    from dccnext_cli.models.weights import load_weights, read_meta, save_weights

    state, meta = load_weights(b0_checkpoint)
    model = DCCNeXt(meta.config)
    model.load_state_dict(state)
    for text, expected in (("96", (96, 96)), ("[96, 160]", (96, 160))):
        meta.input_size = None
        meta.extra["input_size"] = text  # written as another tool might write it
        save_weights(tmp_path / "c.safetensors", model, meta)
        assert load_model(tmp_path / "c.safetensors").train_size == expected
    # 96x160: stage 4 is 3x5 = 15 tokens, so 15 of its 18 slots were trained
    assert [k.trained_slots for k in kernel_weights(load_model(tmp_path / "c.safetensors"), [7, 12])] == [12, 15]
    meta.extra["input_size"] = "big"
    save_weights(tmp_path / "bad.safetensors", model, meta)
    with pytest.raises(CheckpointError, match="input_size"):  # refused when the header is read, before any model
        read_meta(tmp_path / "bad.safetensors")
    with pytest.raises(CheckpointError, match="input_size"):
        load_model(tmp_path / "bad.safetensors")
