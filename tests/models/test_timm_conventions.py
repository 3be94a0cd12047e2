"""timm's own model checks (its tests/test_models.py: default cfgs, forward, backward, features,
forward_intermediates, FX) for dccnext_b0 ... b4, at small inputs, plus global_pool and TorchScript."""

from __future__ import annotations

import copy
import functools
import math

import pytest
import timm
import torch
import torch.nn.functional as F
from timm.models import get_notrace_functions, get_notrace_modules
from torchvision.models.feature_extraction import NodePathTracer, create_feature_extractor, get_graph_node_names

import dccnext_cli  # noqa: F401  (registers the models)
from dccnext_cli import ConfigError

# b3 and b4 take minutes in these tests on 2 cores and add no code path of their own: `-m slow` runs them
VARIANTS = [pytest.param(f"dccnext_b{i}", marks=pytest.mark.slow) if i >= 3 else f"dccnext_b{i}" for i in range(5)]
SIZE = 64  # stage 3 has 4x4 = 16 tokens (> K = 12), stage 4 2x2
FEATURE_CLASSES = ("list", "dict", "hook", "fx", "getter")


@functools.cache
def _model(name: str, num_classes: int = 1000) -> torch.nn.Module:
    torch.manual_seed(0)
    return timm.create_model(name, pretrained=False, num_classes=num_classes)


def fresh(name: str, num_classes: int = 1000) -> torch.nn.Module:
    """A private copy of a cached model (building b3/b4 takes seconds)."""
    return copy.deepcopy(_model(name, num_classes))


def images(batch: int = 1, size: int = SIZE) -> torch.Tensor:
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(0))


def _fx_model(model: torch.nn.Module, train: bool = False) -> torch.nn.Module:
    """timm's tests/test_models.py `_create_fx_model`: torchvision's extractor with timm's leaves."""
    tracer_kwargs = dict(leaf_modules=get_notrace_modules(), autowrap_functions=get_notrace_functions(),
                         param_shapes_constant=True)
    train_nodes, eval_nodes = get_graph_node_names(model, tracer_kwargs=tracer_kwargs)
    eval_return_nodes, train_return_nodes = [eval_nodes[-1]], [train_nodes[-1]]
    if train:
        graph = NodePathTracer(**tracer_kwargs).trace(model)
        graph_nodes = list(reversed(graph.nodes))
        output_node_names = [n.name for n in graph_nodes[0]._input_nodes.keys()]
        graph_node_names = [n.name for n in graph_nodes]
        train_return_nodes = [train_nodes[-graph_node_names.index(n)] for n in output_node_names]
    return create_feature_extractor(model, train_return_nodes=train_return_nodes,
                                    eval_return_nodes=eval_return_nodes, tracer_kwargs=tracer_kwargs)


@pytest.mark.parametrize("name", VARIANTS)
def test_default_cfgs(name):
    model = fresh(name).eval()
    cfg = model.default_cfg
    assert model.num_classes == 1000 and model.num_features > 0 and model.head_hidden_size > 0
    assert tuple(cfg["pool_size"]) == tuple(s // 32 for s in cfg["input_size"][1:])
    state = model.state_dict()
    assert cfg["classifier"] + ".weight" in state and cfg["first_conv"] + ".weight" in state
    x = images()
    with torch.no_grad():
        feats = model.forward_features(x)
        pre = model.forward_head(feats, pre_logits=True)
        assert feats.shape == (1, model.num_features, SIZE // 32, SIZE // 32)
        assert pre.shape == (1, model.head_hidden_size)
        model.reset_classifier(0)
        pooled = model(x)
        assert model.num_classes == 0 and pooled.shape == pre.shape
        torch.testing.assert_close(pooled, pre, rtol=0, atol=0)
        model.reset_classifier(0, "")
        assert model(x).shape == feats.shape
        unpooled = timm.create_model(name, num_classes=0, global_pool="").eval()
        assert unpooled(x).shape == feats.shape and unpooled.head_hidden_size == unpooled.num_features


@pytest.mark.parametrize("name", VARIANTS)
def test_forward_and_grad_checkpointing(name):
    model = fresh(name).eval()
    x = images()
    with torch.no_grad():
        out = model(x)
        assert out.shape == (1, 1000) and not out.isnan().any()
        model.set_grad_checkpointing()
        torch.testing.assert_close(model(x), out, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", VARIANTS)
def test_backward_eager_and_through_fx_give_the_same_gradients(name):
    model = fresh(name, num_classes=42).train()
    x = images(batch=2)
    out = model(x)
    out.mean().backward()
    assert out.shape == (2, 42) and not out.isnan().any()
    eager = {n: p.grad.clone() for n, p in model.named_parameters()}
    assert all(g is not None for g in eager.values())
    model.zero_grad(set_to_none=True)
    fx = _fx_model(model, train=True)
    fx_out = torch.cat(tuple(fx(x).values()))
    fx_out.mean().backward()
    torch.testing.assert_close(fx_out, out, rtol=0, atol=0)
    num_params = sum(p.numel() for p in fx.parameters())
    assert sum(p.grad.numel() for p in fx.parameters() if p.grad is not None) == num_params
    for n, p in fx.named_parameters():
        torch.testing.assert_close(p.grad, eager[n], rtol=1e-5, atol=1e-7, msg=n)


@pytest.mark.parametrize("name", VARIANTS)
def test_forward_fx_three_routes_equal_eager(name):
    model = fresh(name).eval()
    x = images()
    with torch.inference_mode():
        want = model(x)
        timm_route = torch.cat(tuple(_fx_model(model)(x).values()))
    assert torch.all(timm_route == want)
    with torch.no_grad():
        traced = torch.fx.symbolic_trace(model)  # plain torch.fx: no leaf list given
        assert torch.equal(traced(x), want)
        extractor = create_feature_extractor(model, {"stages.2": "c4", "stages.3": "c5", "head.fc.fc2": "logits"})
        out = extractor(x)
        _, stages = model.forward_intermediates(x)
    assert torch.equal(out["logits"], want)
    assert torch.equal(out["c4"], stages[2]) and torch.equal(out["c5"], stages[3])


@pytest.mark.parametrize("name", VARIANTS)
def test_forward_features_only(name):
    torch.manual_seed(0)
    model = timm.create_model(name, features_only=True).eval()
    channels, reductions = model.feature_info.channels(), model.feature_info.reduction()
    assert reductions == [4, 8, 16, 32] and channels == [f["num_chs"] for f in _model(name).feature_info]
    with torch.no_grad():
        outs = model(images(size=96))
    assert len(outs) == len(channels)
    for c, r, o in zip(channels, reductions, outs, strict=True):
        assert o.shape == (1, c, math.ceil(96 / r), math.ceil(96 / r)) and not o.isnan().any()


@pytest.mark.parametrize("feature_cls", FEATURE_CLASSES)
def test_features_only_in_every_feature_cls_equals_forward_intermediates(feature_cls):
    x = images(size=96)
    torch.manual_seed(0)
    model = timm.create_model("dccnext_b0", features_only=True, feature_cls=feature_cls, out_indices=(1, 2, 3))
    with torch.no_grad():
        outs = model.eval()(x)
        outs = list(outs.values()) if isinstance(outs, dict) else outs
        want = _model("dccnext_b0").eval().forward_intermediates(x, indices=[1, 2, 3], intermediates_only=True)
    assert len(outs) == 3 and all(torch.equal(o, w) for o, w in zip(outs, want, strict=True))


@pytest.mark.parametrize("name", VARIANTS)
def test_forward_intermediates(name):
    model = fresh(name).eval()
    info = timm.models.FeatureInfo(model.feature_info, len(model.feature_info))
    x = images(size=96)
    with torch.no_grad():
        final, inter = model.forward_intermediates(x, output_fmt="NCHW")
        assert [o.shape[1] for o in inter] == info.channels()
        assert [o.shape[-1] for o in inter] == [math.ceil(96 / r) for r in info.reduction()]
        assert torch.allclose(final, model.forward_features(x))
        model.set_grad_checkpointing()
        torch.testing.assert_close(model.forward_intermediates(x)[0], final, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("pool", ["avg", "max", "avgmax", "catavgmax"])
def test_global_pool_in_the_constructor_and_reset_classifier(pool):
    model = fresh("dccnext_b0").eval()
    x = images(batch=2)
    with torch.no_grad():
        feats = model.forward_features(x)
        pooled = {"avg": feats.mean((2, 3)), "max": feats.amax((2, 3)),
                  "avgmax": 0.5 * (feats.mean((2, 3)) + feats.amax((2, 3)))}
        norm = model.head.norm
        ln = functools.partial(F.layer_norm, normalized_shape=(256,), weight=norm.weight, bias=norm.bias, eps=1e-6)
        want = (torch.cat([ln(feats.mean((2, 3))), ln(feats.amax((2, 3)))], 1) if pool == "catavgmax"
                else ln(pooled[pool]))
        model.reset_classifier(7, pool)
        width = 512 if pool == "catavgmax" else 256
        assert model.num_features == 256 and model.head_hidden_size == width
        torch.testing.assert_close(model.forward_head(feats, pre_logits=True), want)
        assert model(x).shape == (2, 7) and model.head.fc.fc1.in_features == width
        assert model.head.fc.fc1.out_features == 1024, "the MLP's hidden width stays 4C"
        built = timm.create_model("dccnext_b0", num_classes=3, global_pool=pool).eval()
        assert built.head_hidden_size == width and built(x).shape == (2, 3)


def test_unpooled_map_is_the_head_normed_feature_map():
    model = timm.create_model("dccnext_b0", num_classes=0, global_pool="").eval()
    x = images()
    with torch.no_grad():
        feats = model.forward_features(x)
        torch.testing.assert_close(model(x), model.head.norm(feats))


@pytest.mark.parametrize("kwargs,message", [
    (dict(global_pool="mean"), "unknown global_pool 'mean'; choose one of '', 'avg', 'max', 'avgmax', 'catavgmax'"),
    (dict(global_pool=""), "global_pool='' returns the unpooled NCHW map and needs num_classes=0"),
])
def test_bad_global_pool_is_one_clear_error(kwargs, message):
    with pytest.raises(ConfigError, match="^" + message.replace("(", r"\(")):
        timm.create_model("dccnext_b0", **kwargs)
    with pytest.raises(ConfigError, match="^" + message.replace("(", r"\(")):
        fresh("dccnext_b0").reset_classifier(10, kwargs["global_pool"])


def test_torchscript_runs_the_plain_formulation():
    model = fresh("dccnext_b0").eval()
    x = images(batch=2, size=96)
    with torch.no_grad():
        scripted = torch.jit.script(model)
        torch.testing.assert_close(scripted(x), model(x), rtol=1e-4, atol=1e-4)
        features = torch.jit.script(model.stages[2].blocks[0].token_mixer.spatial)
        tokens = torch.randn(2, 6, 6, 320)
        torch.testing.assert_close(features(tokens), model.stages[2].blocks[0].token_mixer.spatial(tokens))
