"""The cost model against the per-block formula of docs/model.md (section 3) and the paper's Table 1."""

from __future__ import annotations

import json
import math

import pytest
import timm
import torch

from dccnext_cli.models.config import PAPER_TABLE1, variant_config
from dccnext_cli.models.dcconv import DCConv
from dccnext_cli.models.flops import count_variant, dcconv_macs


def conv_out(size: int, kernel: int, stride: int, pad: int) -> int:
    return (size + 2 * pad - kernel) // stride + 1


def formula_macs(variant: str, height: int, width: int, ks=(12, 18), ds=(8, 8), num_classes: int = 1000) -> int:
    """MACs from the per-block rule plus stem, downsampling and head, written out by hand."""
    cfg = variant_config(variant)
    dims, depths = cfg.dims, cfg.depths
    h, w = conv_out(height, 7, 4, 2), conv_out(width, 7, 4, 2)
    total = 3 * dims[0] * 49 * h * w  # stem
    for i, (c, depth) in enumerate(zip(dims, depths, strict=True)):
        if i:
            h, w = conv_out(h, 3, 2, 1), conv_out(w, 3, 2, 1)
            total += dims[i - 1] * c * 9 * h * w  # downsampling conv
        n = h * w
        for _ in range(depth):
            block = 12 * c * c * n + 36 * c * n  # four linears + ConvFFN depthwise 3x3
            if i < 2:
                block += 98 * c * n  # 7x7 depthwise on 2C
            else:
                k, d = ks[i - 2], ds[i - 2]
                block += n * n * math.ceil(2 * c / d) + n * min(k, n) * 2 * c
            total += block
    c4 = dims[-1]
    return total + c4 * 4 * c4 + 4 * c4 * num_classes  # MLP head


@pytest.mark.parametrize(
    "variant,res,ks,ds",
    [("b0", (224, 224), (12, 18), (8, 8)), ("b2", (1280, 800), (12, 18), (8, 1)), ("b1", (96, 160), (18, 18), (3, 5))],
)
def test_counter_matches_the_per_block_formula(variant, res, ks, ds):
    report = count_variant(variant, res, cluster_sizes=ks, subvector_intervals=ds)
    assert report.flops_per_image == formula_macs(variant, *res, ks=ks, ds=ds)


def test_dcconv_rule_rounds_channels_up_and_clamps_k():
    assert dcconv_macs(196, 640, 12, 8) == (196 * 196 * 80, 196 * 12 * 640)
    assert dcconv_macs(9, 10, 18, 3) == (81 * 4, 9 * 9 * 10)


@pytest.mark.parametrize("variant", ["b1", "b2", "b3", "b4"])
def test_table1_flops_within_3_percent(variant):
    report = count_variant(variant)
    paper_params, paper_flops = PAPER_TABLE1[variant]
    assert abs(report.flops / 1e9 - paper_flops) / paper_flops < 0.03
    assert report.params == sum(p.params for p in report.parts)


def test_batch_size_multiplies_totals():
    one, four = count_variant("b0", (64, 64)), count_variant("b0", (64, 64), batch_size=4)
    assert four.flops == 4 * one.flops and four.params == one.params


def test_flops_json_for_one_variant(run_cli):
    result = run_cli("flops", "--variant", "b1", "--res", "1280x800", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert isinstance(data["params"], int) and isinstance(data["flops"], int)
    assert data["resolution"] == "1280x800" and data["variant"] == "b1"  # WIDTHxHEIGHT, as --res took it
    assert data["flops"] == formula_macs("b1", 800, 1280)
    assert [p["name"] for p in data["parts"]] == ["stem", "stage 1", "stage 2", "stage 3", "stage 4", "head"]
    assert data["parts"][3]["grid"] == [50, 80]  # landscape: 50 rows x 80 columns at stride 16


def test_flops_json_for_all_variants_with_options(run_cli):
    result = run_cli("flops", "--json", "--cluster-size", "9,9", "--subvector-interval", "1", "--batch-size", "2")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert [d["variant"] for d in data] == ["b0", "b1", "b2", "b3", "b4"]
    for d in data:
        assert d["flops"] == 2 * formula_macs(d["variant"], 224, 224, ks=(9, 9), ds=(1, 1))
        assert d["config"]["cluster_sizes"] == [9, 9]


def test_flops_tables_show_the_paper_and_the_counting_rule(run_cli):
    table = run_cli("flops")
    assert table.exit_code == 0
    assert "Table 1" in table.stdout and "26.67" in table.stdout and "26.7" in table.stdout
    assert "rule" in table.stdout
    breakdown = run_cli("flops", "--variant", "b2")
    assert breakdown.exit_code == 0 and "stage 3" in breakdown.stdout and "14x14" in breakdown.stdout


@pytest.mark.parametrize(
    "args,message",
    [
        (["--variant", "b9"], "'b9' is not one of"),
        (["--res", "1280by800"], "'1280by800' is not a resolution"),
        (["--res", "16"], "at least 32 px"),
        (["--cluster-size", "0"], "must be at least 1"),
        (["--subvector-interval", "a,b"], "one integer per DCC stage"),
        (["--batch-size", "0"], "--batch-size"),
    ],
)
def test_bad_input_exits_2_with_a_clear_message(run_cli, args, message):
    result = run_cli("flops", *args)
    assert result.exit_code == 2
    assert message in result.text
    assert "Traceback" not in result.output


def test_a_users_flop_counter_mode_counts_dcconv_by_the_papers_rule():
    """torch's FlopCounterMode (2 FLOPs per MAC) on the eager CPU model: twice `dccnext flops`' figure."""
    from torch.utils.flop_counter import FlopCounterMode

    model = timm.create_model("dccnext_b1").eval()
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        want = model(x)
        with FlopCounterMode(display=False) as counter:
            out = model(x)
    assert counter.get_total_flops() == 2 * count_variant("b1").flops
    assert torch.equal(out, want), "the custom ops the counter sees compute the same numbers"
    ops = {str(op) for counts in counter.get_flop_counts().values() for op in counts}
    assert {"dccnext.cluster_indices", "dccnext.cluster_conv"} <= ops


def test_flop_counter_mode_counts_the_cluster_convolutions_backward():
    from torch.utils.flop_counter import FlopCounterMode

    layer = DCConv(64, cluster_size=5, subvector_interval=4)
    x = torch.randn(2, 6, 7, 64, requires_grad=True)
    distances, cluster = dcconv_macs(42, 64, 5, 4)
    with FlopCounterMode(display=False) as counter:
        layer(x).sum().backward()
    assert counter.get_total_flops() == 2 * 2 * (distances + cluster) + 2 * 2 * 2 * cluster
    assert x.grad is not None and layer.weight.grad is not None


def test_flops_takes_model_options_and_counts_the_table6_rows(run_cli):
    # Table 6's first row is `global_op=none` alone: the ConvFFN follows the spatial op unless set
    result = run_cli("flops", "--variant", "b1", "--set", "model.global_op=none", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["params"] / 1e6 == pytest.approx(11.22, rel=0.01)
    assert data["flops"] / 1e9 == pytest.approx(1.515, rel=0.01)
    assert data["config"]["global_op"] == "none" and data["config"]["conv_ffn"] is False
    result = run_cli("flops", "--variant", "b1", "--res", "1280x800", "--set", "model.global_op=none", "--json")
    assert json.loads(result.stdout)["flops"] / 1e9 == pytest.approx(30.88, rel=0.01)
    result = run_cli("flops", "--variant", "b1", "--set", "model.global_op=none", "--set", "model.conv_ffn=true",
                     "--json")
    assert json.loads(result.stdout)["params"] / 1e6 == pytest.approx(11.32, rel=0.01)
    result = run_cli("flops", "--variant", "b1", "--res", "1280x800", "--set", "model.conv_ffn=false",
                     "--set", "model.subvector_intervals=[1,1]", "--json")
    assert json.loads(result.stdout)["flops"] / 1e9 == pytest.approx(78.67, rel=0.01)


@pytest.mark.parametrize("item,message", [
    ("model.nonsense=1", "error: --set model: unknown model option(s) nonsense; known: dims, depths,"),
    ("lr=1", "error: --set lr=...: this command takes model options, written --set model.FIELD=VALUE"),
])
def test_flops_refuses_unknown_options_in_one_line(run_cli, item, message):
    result = run_cli("flops", "--variant", "b1", "--set", item)
    assert result.exit_code == 2 and result.text.startswith(message) and len(result.output.splitlines()) == 1


def test_paper_tables_print_every_row_beside_the_paper(run_cli):
    from dccnext_cli.models.paper_tables import TABLE5, TABLE6

    result = run_cli("flops", "--paper-tables", "--json")
    data = json.loads(result.stdout)
    assert [r["label"] for r in data["table5"]] == [row.label for row in TABLE5]
    assert [r["label"] for r in data["table6"]] == [row.label for row in TABLE6]
    none, dcconv = data["table6"][:2]
    assert none["params"] / 1e6 == pytest.approx(none["paper"]["params_m"], rel=0.01)
    assert none["flops_1280x800"] / 1e9 == pytest.approx(none["paper"]["flops_1280x800_g"], rel=0.01)
    assert dcconv["flops"] / 1e9 == pytest.approx(dcconv["paper"]["flops_g"], rel=0.01)
    assert data["table5"][0]["model"] == {"cluster_sizes": [4, 4]}
    text = run_cli("flops", "--paper-tables").text
    assert "Table 5: cluster size K" in text and "Table 6: from a mixer" in text and "DCCConv" in text
    assert "see the paper's Tables 5 and 6" in text
