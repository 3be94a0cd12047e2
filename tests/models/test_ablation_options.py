"""The paper's ablation options as models, hooks that see true pre-activation values, the head's LayerNorm."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from dccnext_cli import ConfigError, DCCNeXt, create_dccnext, variant_config
from dccnext_cli.models.config import ARCHITECTURE_OPTIONS, VARIANTS, DCCNeXtConfig
from dccnext_cli.models.flops import count_variant


def test_none_mixes_channels_only_and_plain_ffn_has_no_conv():
    model = create_dccnext("b0", global_op="none", conv_ffn=False, num_classes=10).eval()
    assert not list(model.dcconv_layers())
    block3 = model.stages[2].blocks[0]
    assert isinstance(block3.token_mixer.spatial, torch.nn.Identity)
    assert isinstance(model.stages[0].blocks[0].token_mixer.spatial, torch.nn.Conv2d), "stages 1-2 keep the 7x7"
    assert not any("dwconv" in name for name, _ in model.named_parameters())
    # The plain FFN is Linear -> GELU -> Linear, by hand.
    ffn = block3.mlp
    x = torch.randn(2, 4, 4, 160, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = F.linear(F.gelu(F.linear(x, ffn.fc1.weight)), ffn.fc2.weight)
        torch.testing.assert_close(ffn(x), want, rtol=1e-5, atol=1e-5)
        # and the mixer without its spatial op is Linear -> StarReLU -> Linear
        mixer = block3.token_mixer
        want = F.linear(mixer.act1(F.linear(x, mixer.pwconv1.weight)), mixer.pwconv2.weight)
        torch.testing.assert_close(mixer(x), want, rtol=1e-5, atol=1e-5)
        assert model(torch.randn(2, 3, 64, 64)).shape == (2, 10)


def test_default_state_dict_names_do_not_change():
    names = set(DCCNeXt(variant_config("b0")).state_dict())
    assert "stages.2.blocks.0.token_mixer.spatial.weight" in names
    assert "stages.0.blocks.0.mlp.dwconv.weight" in names and "head.fc.norm.weight" in names
    plain = set(DCCNeXt(variant_config("b0", conv_ffn=False, global_op="none")).state_dict())
    assert plain < names and all("dwconv" in n or "spatial" in n for n in names - plain)


def test_issue_figures_for_table6_rows():
    none = count_variant("b1", global_op="none", conv_ffn=False)
    assert none.params == pytest.approx(11.22e6, rel=1e-3) and none.flops_per_image == pytest.approx(1.515e9, rel=1e-3)
    dcconv = count_variant("b1", conv_ffn=False, subvector_intervals=(1, 1))
    assert dcconv.params == pytest.approx(11.29e6, rel=1e-3)
    assert dcconv.flops_per_image == pytest.approx(1.638e9, rel=1e-3)


def test_conv_ffn_is_an_architecture_option():
    assert "conv_ffn" in ARCHITECTURE_OPTIONS and "global_op" in ARCHITECTURE_OPTIONS
    assert VARIANTS["b0"].architecture_options()["conv_ffn"] is True


def test_conv_ffn_follows_global_op_unless_set():
    """Table 6 builds up from a network with neither DCConv nor ConvFFN; `none` alone is that row."""
    assert variant_config("b1", global_op="none").conv_ffn is False
    assert variant_config("b1", global_op="conv").conv_ffn is True
    assert variant_config("b1", global_op="none", conv_ffn=True).conv_ffn is True
    assert variant_config("b1").override({"global_op": "none"}, "recipe").conv_ffn is False
    assert variant_config("b1").override({"global_op": "none", "conv_ffn": True}, "recipe").conv_ffn is True
    saved = variant_config("b1", global_op="none", conv_ffn=True)
    assert DCCNeXtConfig.from_json(saved.to_json()) == saved  # a checkpoint keeps the resolved value


@pytest.mark.parametrize("changes,message", [
    ({"nonsense": 1}, "--set model: unknown model option(s) nonsense; known: dims, depths,"),
    ({"global_op": "mlp"}, "--set model: global_op must be one of dcc, conv, none, got 'mlp'"),
    ({"conv_ffn": "no"}, "--set model: conv_ffn must be true/false or null, got 'no'"),
    ({"cluster_sizes": [4, 4, 4]}, "--set model: cluster_sizes needs one value per DCC stage"),
])
def test_overrides_are_checked_and_named(changes, message):
    with pytest.raises(ConfigError) as info:
        variant_config("b1").override(changes, "--set model")
    assert str(info.value).startswith(message)


def test_overrides_convert_yaml_values():
    config = variant_config("b1").override({"cluster_sizes": [8, 8], "conv_ffn": False}, "recipe")
    assert config.cluster_sizes == (8, 8) and config.conv_ffn is False and config.dims == VARIANTS["b1"].dims


@pytest.mark.parametrize("conv_ffn", [True, False])
def test_forward_hooks_see_pre_activation_values_in_inference(conv_ffn):
    # In no-grad inference the activations run in place; a hook's tensor must not change after the hook saw it.
    model = create_dccnext("b0", num_classes=10, conv_ffn=conv_ffn, ffn_act="starrelu").eval()
    block = model.stages[2].blocks[0]
    seen: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def keep(name):
        def hook(module, args, output):
            seen.setdefault(name, (output, output.clone()))  # returns None: the output stays the module's
        return hook

    block.token_mixer.pwconv1.register_forward_hook(keep("pwconv1"))
    block.mlp.dwconv.register_forward_hook(keep("dwconv"))
    block.mlp.fc1.register_forward_hook(keep("fc1"))
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        model(x)
    for name, (held, at_hook_time) in seen.items():
        assert torch.equal(held, at_hook_time), f"{name}'s output was overwritten after its hook ran"
        assert held.min() < 0, f"{name}: pre-activation values (StarReLU's output is >= its bias, 0 at init)"


def test_in_place_activations_stay_without_hooks():
    model = create_dccnext("b0", num_classes=10).eval()
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        fast = model(x)
        handle = model.stages[2].blocks[0].token_mixer.pwconv1.register_forward_hook(lambda *a: None)
        hooked = model(x)
        handle.remove()
    assert torch.equal(fast, hooked), "in place or not, the same numbers"
    assert torch.equal(fast, model(x).detach())


def test_head_mlp_layernorm_eps_is_1e5_and_the_others_1e6():
    model = create_dccnext("b0", num_classes=10)
    assert model.head.fc.norm.eps == 1e-5
    assert model.head.norm.eps == 1e-6 and model.stages[0].blocks[0].norm1.eps == 1e-6
    model.reset_classifier(5)
    assert model.head.fc.norm.eps == 1e-5
    # what the eps does: the head's LayerNorm on a nearly constant input
    x = torch.full((1, 1024), 0.5) + 1e-3 * torch.randn(1, 1024, generator=torch.Generator().manual_seed(6))
    norm = model.head.fc.norm
    want = (x - x.mean()) / torch.sqrt(x.var(unbiased=False) + 1e-5)
    torch.testing.assert_close(norm(x), want * norm.weight + norm.bias, rtol=1e-5, atol=1e-5)
