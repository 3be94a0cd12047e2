"""The network: variants, sizes, the timm API, config options, weights loading and the ConvFormer warm start."""

from __future__ import annotations

import pytest
import timm
import torch
from safetensors.torch import save_file
from timm.optim import create_optimizer_v2

from dccnext_cli import CheckpointError, DCCNeXt, create_dccnext, variant_config, warm_start_from_convformer
from dccnext_cli.models.dccnext import DepthwiseConv2dNHWC
from dccnext_cli.models.weights import CheckpointMeta, save_weights

# The spec's reconstruction (section 2); b1 and b2 round to the paper's Table 1.
SPEC_PARAMS = {"b1": 11.39e6, "b2": 26.67e6, "b3": 56.90e6, "b4": 86.83e6}


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("variant", ["b0", "b1", "b2", "b3", "b4"])
def test_every_variant_runs_at_224_and_matches_the_parameter_table(variant):
    model = create_dccnext(variant).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 224, 224)).shape == (1, 1000)
    if variant in ("b1", "b2"):
        assert round(n_params(model) / 1e6, 1) == {"b1": 11.4, "b2": 26.7}[variant]
    if variant in SPEC_PARAMS:
        assert abs(n_params(model) - SPEC_PARAMS[variant]) / SPEC_PARAMS[variant] < 0.002


@pytest.mark.parametrize("size", [(64, 64), (96, 160), (32, 48), (250, 171)])
def test_any_size_of_at_least_32_px_works(size):
    model = create_dccnext("b0", num_classes=7).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, *size)).shape == (2, 7)


def test_dcc_stages_use_dcconv_with_the_papers_k_and_d():
    model = create_dccnext("b2")
    layers = list(model.dcconv_layers())
    assert [n for n, _ in layers] == list(range(7, 19)), "blocks 7-15 (stage 3) and 16-18 (stage 4)"
    assert {(m.cluster_size, m.subvector_interval, m.dim) for _, m in layers} == {(12, 8, 640), (18, 8, 1024)}
    stage1_spatial = model.stages[0].blocks[0].token_mixer.spatial
    assert isinstance(stage1_spatial, DepthwiseConv2dNHWC) and stage1_spatial.kernel_size == (7, 7)


def test_config_options_change_the_network():
    control = create_dccnext("b0", global_op="conv", ffn_act="starrelu", res_scale=False)
    assert not list(control.dcconv_layers())
    assert not any("res_scale" in n for n, _ in control.named_parameters())
    assert any(n.endswith("mlp.act.scale") for n, _ in control.named_parameters())
    custom = create_dccnext("b0", cluster_sizes=(4, 6), subvector_intervals=(1, 2))
    assert {(m.cluster_size, m.subvector_interval) for _, m in custom.dcconv_layers()} == {(4, 1), (6, 2)}
    with pytest.raises(ValueError, match="unknown model option"):
        create_dccnext("b0", cluster_size=3)
    with pytest.raises(ValueError, match="unknown variant"):
        variant_config("b9")


def test_timm_create_model_and_model_api():
    model = timm.create_model("dccnext_b2", num_classes=10, drop_path_rate=0.1)
    assert isinstance(model, DCCNeXt) and model.num_classes == 10
    assert model.stages[3].blocks[-1].drop_path1.drop_prob == pytest.approx(0.1)
    assert model.pretrained_cfg["classifier"] == "head.fc.fc2" and model.pretrained_cfg["crop_pct"] == 1.0
    assert model.get_classifier().fc2.out_features == 10

    small = timm.create_model("dccnext_b0", num_classes=5).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        feats = small.forward_features(x)
        assert feats.shape == (2, 256, 2, 2)
        assert small.forward_head(feats, pre_logits=True).shape == (2, 256)
        final, inter = small.forward_intermediates(x)
        assert [t.shape[1] for t in inter] == [32, 64, 160, 256] and torch.equal(final, feats)
        torch.testing.assert_close(small.forward_head(feats), small(x))
    small.reset_classifier(3)
    assert small(x).shape == (2, 3)

    groups = timm.models.group_parameters(small, small.group_matcher())
    assert sum(len(g) for g in groups.values()) == len(list(small.named_parameters()))
    no_wd = small.no_weight_decay()
    assert "stages.2.blocks.0.token_mixer.spatial.bias" in no_wd
    assert "stages.2.blocks.0.token_mixer.spatial.weight" not in no_wd
    opt = create_optimizer_v2(small, "adamw", lr=1e-3, weight_decay=0.05)
    decayed = [g for g in opt.param_groups if g["weight_decay"] > 0]
    assert all(p.ndim > 1 for g in decayed for p in g["params"])


def test_grad_checkpointing_gives_the_same_gradients():
    model = create_dccnext("b0", num_classes=4)
    x = torch.randn(2, 3, 64, 64)
    model(x).sum().backward()
    ref = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    model.set_grad_checkpointing(True)
    model(x).sum().backward()
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, ref[n], msg=n)


def test_features_only_at_1280x800():
    model = timm.create_model("dccnext_b0", features_only=True).eval()
    assert model.feature_info.channels() == [32, 64, 160, 256]
    assert model.feature_info.reduction() == [4, 8, 16, 32]
    with torch.no_grad():
        outs = model(torch.randn(1, 3, 1280, 800))
    assert [tuple(o.shape) for o in outs] == [(1, 32, 320, 200), (1, 64, 160, 100), (1, 160, 80, 50), (1, 256, 40, 25)]


def test_features_only_small_input_clamps_k():
    model = timm.create_model("dccnext_b0", features_only=True, out_indices=(2, 3)).eval()
    with torch.no_grad():
        outs = model(torch.randn(1, 3, 96, 96))
    assert [tuple(o.shape) for o in outs] == [(1, 160, 6, 6), (1, 256, 3, 3)]


def test_keeping_indices_does_not_change_outputs():
    model = create_dccnext("b0").eval()
    x = torch.randn(1, 3, 96, 128)
    with torch.no_grad():
        ref = model(x)
        model.keep_cluster_indices(True)
        kept = model(x)
    torch.testing.assert_close(ref, kept, rtol=0, atol=0)
    shapes = [layer.last_indices.shape for _, layer in model.dcconv_layers()]
    assert shapes[0] == (1, 6 * 8, 12) and shapes[-1] == (1, 3 * 4, 12)
    model.keep_cluster_indices(False)
    assert all(layer.last_indices is None for _, layer in model.dcconv_layers())


def test_pretrained_without_a_file_warns_and_keeps_the_random_init(caplog):
    """As timm does for a model without published weights: a warning, and the model."""
    with caplog.at_level("WARNING"):
        torch.manual_seed(0)
        model = timm.create_model("dccnext_b0", pretrained=True)
    assert "No pretrained weights exist for dccnext_b0. Using random initialization." in caplog.text
    torch.manual_seed(0)
    fresh = timm.create_model("dccnext_b0", pretrained=False)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), fresh.state_dict().values(), strict=True))


def test_pretrained_loads_a_local_dccnext_file(tmp_path):
    model = create_dccnext("b0", num_classes=6, cluster_sizes=(8, 9)).eval()
    meta = CheckpointMeta("b0", model.config, class_names=list("abcdef"))
    path = save_weights(tmp_path / "m.safetensors", model, meta)
    loaded = timm.create_model("dccnext_b0", pretrained=True, pretrained_cfg_overlay=dict(file=str(path))).eval()
    assert loaded.num_classes == 6 and loaded.config.cluster_sizes == (8, 9)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)
    with pytest.raises(CheckpointError, match="not dccnext_b1"):
        timm.create_model("dccnext_b1", pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))


def _random_convformer(name: str) -> dict[str, torch.Tensor]:
    torch.manual_seed(1)
    state = timm.create_model(name, pretrained=False).state_dict()
    return {k: torch.randn_like(v) for k, v in state.items()}  # distinct from any init


@pytest.mark.parametrize("variant,convformer", [("b2", "convformer_s18"), ("b3", "convformer_m36")])
def test_warm_start_from_convformer(variant, convformer):
    source = _random_convformer(convformer)
    model = create_dccnext(variant)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    report = warm_start_from_convformer(model, source)
    after = model.state_dict()
    rows = {what: (n, elements, share) for what, n, elements, share in report.rows()}
    assert rows["loaded, renamed"][0] == len(report.renamed) > 0  # the 7x7 dwconvs of stages 1-2
    assert all(k.endswith("token_mixer.spatial.weight") for k in report.renamed)
    assert sum(rows[w][1] for w in ("loaded", "loaded, renamed", "left at init")) == sum(
        v.numel() for v in after.values())
    assert sum(rows[w][2] for w in ("loaded", "loaded, renamed", "left at init")) == pytest.approx(1.0)
    assert "mlp.dwconv.weight" in report.table() and "left at init" in report.table()
    # 1x1 convs became linears, the head and norms came across unchanged
    torch.testing.assert_close(after["stages.1.blocks.0.token_mixer.pwconv1.weight"],
                               source["stages.1.blocks.0.token_mixer.pwconv1.weight"].flatten(1))
    torch.testing.assert_close(after["stages.2.blocks.0.mlp.fc2.weight"],
                               source["stages.2.blocks.0.mlp.fc2.weight"][..., 0, 0])
    torch.testing.assert_close(after["stages.0.blocks.0.token_mixer.spatial.weight"],
                               source["stages.0.blocks.0.token_mixer.dwconv.weight"])
    torch.testing.assert_close(after["head.fc.fc2.weight"], source["head.fc.fc2.weight"])
    # DCConv kernels and ConvFFN depthwise convs stay at their init, and the report says so
    for key in ("stages.2.blocks.0.token_mixer.spatial.weight", "stages.3.blocks.0.mlp.dwconv.weight",
                "stages.0.blocks.0.mlp.dwconv.bias"):
        assert torch.equal(after[key], before[key]) and key in report.left_at_init
    assert "stages.2.blocks.0.token_mixer.dwconv.weight" in report.unused_source  # 7x7 replaced by DCConv
    assert "stages.0.blocks.0.mlp.act.scale" in report.unused_source  # ConvFFN uses GELU
    assert len(report.mapped) + len(report.left_at_init) == len(after)
    assert "mapped" in report.summary()


def test_warm_start_through_timm_pretrained_file(tmp_path):
    source = _random_convformer("convformer_s18")
    path = tmp_path / "convformer_s18.safetensors"
    save_file(source, str(path))
    model = timm.create_model("dccnext_b2", pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))
    torch.testing.assert_close(model.state_dict()["stem.conv.weight"], source["stem.conv.weight"])


def test_warm_start_rejects_a_non_convformer():
    with pytest.raises(CheckpointError, match="not a ConvFormer"):
        warm_start_from_convformer(create_dccnext("b0"), create_dccnext("b0").state_dict())

