"""`optimize_for_inference`: the explicit inference step computes the plain model's numbers with the same state
dict, works in place only without autograd, slices the FFN's batch, and writes the ONNX GELU only for ONNX."""

from __future__ import annotations

import copy

import pytest
import torch
from timm.models.metaformer import StarReLU

from dccnext_cli import create_dccnext, optimize_for_inference
from dccnext_cli.models.dcconv import DCConv, exporting
from dccnext_cli.models.inference import InferenceGELU, InferenceStarReLU, PointwiseConv, SlicedConvFFN
from dccnext_cli.models.settings import use_operator_settings


def _pair(ffn_act: str = "gelu", **options):
    plain = create_dccnext("b0", num_classes=10, ffn_act=ffn_act).eval()
    return plain, optimize_for_inference(copy.deepcopy(plain), **options)


@pytest.mark.parametrize("ffn_act", ["gelu", "starrelu"])
def test_outputs_equal_the_plain_model_and_the_state_dict_is_the_same(ffn_act):
    plain, fast = _pair(ffn_act, ffn_slice_bytes=0, pointwise_conv=False)
    assert fast.state_dict().keys() == plain.state_dict().keys()
    assert all(torch.equal(a, b) for a, b in zip(fast.state_dict().values(), plain.state_dict().values(),
                                                  strict=True))
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = plain(x)
        assert torch.equal(fast(x), want), "in-place activations: bit for bit"
    with torch.inference_mode():
        assert torch.equal(fast(x), want)
    assert torch.equal(fast(x).detach(), want), "with autograd the plain forms run"
    assert not fast.training
    blocks = list(fast.modules())
    assert any(isinstance(m, InferenceStarReLU) for m in blocks) and any(isinstance(m, SlicedConvFFN) for m in blocks)


def test_gradients_with_autograd_equal_the_plain_model():
    plain, fast = _pair()
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    plain(x).square().sum().backward()
    fast(x).square().sum().backward()
    for (name, a), (_, b) in zip(plain.named_parameters(), fast.named_parameters(), strict=True):
        assert a is not b, "a deep copy"
        torch.testing.assert_close(b.grad, a.grad, msg=name)


@pytest.mark.parametrize("act", [StarReLU(scale_value=0.8, bias_value=-0.3), torch.nn.GELU(), torch.nn.GELU("tanh")])
def test_activations_work_in_place_only_without_autograd(act):
    faster = InferenceGELU(approximate=act.approximate) if isinstance(act, torch.nn.GELU) else InferenceStarReLU()
    if isinstance(act, StarReLU):
        faster.load_state_dict(act.state_dict())
    x = torch.randn(2, 3, 4, 8, generator=torch.Generator().manual_seed(0))
    want = act(x)
    with torch.no_grad():
        fresh = x.clone()
        out = faster(fresh)
    assert out.data_ptr() == fresh.data_ptr(), "no grad: computed in the input's memory"
    assert torch.equal(out, want), "bit for bit the module's own result"
    kept = x.clone()
    assert torch.equal(faster(kept), want) and torch.equal(kept, x), "grad mode: the input is left alone"


def test_the_ffn_runs_over_slices_of_the_batch_without_autograd():
    plain, fast = _pair(ffn_slice_bytes=16 << 20)
    ffn = fast.stages[0].blocks[0].mlp
    x = torch.randn(5, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    calls = []
    ffn.fc1.register_forward_hook(lambda module, args, output: calls.append(args[0].shape[0]))
    with torch.no_grad():
        whole = plain(x)
        fast(x)
    assert calls == [5], "the default slice holds this small batch whole"
    image_bytes = 16 * 16 * ffn.fc1.out_features * 4  # stage 1 of a 64 px image, float32
    optimize_for_inference(fast, ffn_slice_bytes=2 * image_bytes)
    calls.clear()
    with torch.no_grad():
        sliced = fast(x)
    assert calls == [2, 2, 1]
    torch.testing.assert_close(sliced, whole, rtol=1e-5, atol=1e-5)
    calls.clear()
    torch.testing.assert_close(fast(x), whole, rtol=1e-5, atol=1e-5)
    assert calls == [5], "with autograd the batch stays whole"


@pytest.mark.parametrize("shape", [(2, 5, 7, 24), (3, 1, 1, 24)])
def test_pointwise_convolution_equals_nn_linear(shape):
    g = torch.Generator().manual_seed(0)
    plain = torch.nn.Linear(24, 40, bias=True)
    layer = PointwiseConv(24, 40, bias=True)
    layer.load_state_dict(plain.state_dict())
    x = torch.randn(*shape, generator=g)
    for inputs in (x, x.transpose(1, 2)):  # also a non-contiguous map
        a, b = inputs.clone().requires_grad_(), inputs.clone().requires_grad_()
        out, want = layer(a), plain(b)
        torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-5)
        grad = torch.randn(want.shape, generator=g)
        out.backward(grad)
        want.backward(grad)
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(layer.weight.grad, plain.weight.grad, rtol=1e-4, atol=1e-4)
    threads = torch.get_num_threads()
    try:
        for count in (1, threads):  # oneDNN by name: one thread and a small batch too
            torch.set_num_threads(count)
            with torch.inference_mode():
                torch.testing.assert_close(layer(x), plain(x), rtol=1e-5, atol=1e-5)
                torch.testing.assert_close(layer(x.transpose(1, 2)), plain(x.transpose(1, 2)), rtol=1e-5, atol=1e-5)
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("dtype, op", [(torch.float32, "conv2d"), (torch.bfloat16, "linear")])
def test_under_torch_compile_a_float32_pointwise_layer_is_a_convolution(dtype, op):
    """What Inductor is handed on the CPU: a 1x1 convolution in float32 (oneDNN), the linear in bfloat16."""
    layer = PointwiseConv(24, 40, bias=True).to(dtype)
    graphs = []

    def capture(gm, example_inputs):
        graphs.append({str(node.target) for node in gm.graph.nodes if node.op == "call_function"})
        return gm.forward

    with torch.inference_mode():
        out = torch.compile(layer, backend=capture, fullgraph=True)(torch.randn(2, 5, 7, 24, dtype=dtype))
    assert out.shape == (2, 5, 7, 40) and len(graphs) == 1
    assert any(op in target for target in graphs[0]), graphs[0]


def test_pointwise_convolutions_keep_the_models_numbers():
    plain, fast = _pair()  # on by default
    assert sum(isinstance(m, PointwiseConv) for m in fast.modules()) == 4 * sum(plain.config.depths)
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        torch.testing.assert_close(fast(x), plain(x), rtol=1e-4, atol=1e-4)
    with torch.inference_mode():
        torch.testing.assert_close(fast(x), plain(x), rtol=1e-4, atol=1e-4)


def test_the_onnx_gelu_is_written_only_when_exporting_for_onnx():
    gelu = InferenceGELU()

    class Traced(torch.nn.Module):
        def forward(self, x):
            assert exporting()
            return gelu(x)

    x = torch.randn(4, 8, generator=torch.Generator().manual_seed(4))
    ops = {}
    for target in ("torch", "onnx"):
        with use_operator_settings(export_target=target):
            program = torch.export.export(Traced(), (x,))
        ops[target] = {str(n.target) for n in program.graph.nodes if n.op == "call_function"}
        torch.testing.assert_close(program.module()(x), torch.nn.functional.gelu(x), rtol=1e-6, atol=1e-6)
    assert "aten.gelu.default" in ops["torch"] and "aten.erf.default" not in ops["torch"]
    assert "aten.erf.default" in ops["onnx"] and "aten.gelu.default" not in ops["onnx"]


def _dccnext_ops_seen(layer: torch.nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, set[str]]:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        out = layer(x)
    return out, {str(op) for counts in counter.get_flop_counts().values() for op in counts if "dccnext" in str(op)}


def test_dcconv_skips_its_custom_ops_only_where_nothing_needs_them():
    """optimize_for_inference's DCConv calls the backend directly without autograd and autocast (same numbers);
    with autograd (the autograd rule) or autocast (float32 distances) the custom ops still run."""
    plain = create_dccnext("b0", num_classes=10).eval()
    fast = optimize_for_inference(copy.deepcopy(plain))
    layers = [m for m in fast.modules() if isinstance(m, DCConv)]
    assert layers and all(not m.custom_ops for m in layers) and "custom_ops=False" in repr(layers[0])
    layer, reference = layers[0], next(m for m in plain.modules() if isinstance(m, DCConv))
    x = torch.randn(2, 8, 8, layer.dim, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        want, seen = _dccnext_ops_seen(reference, x)
        assert seen == {"dccnext.cluster_indices", "dccnext.cluster_conv"}
        got, seen = _dccnext_ops_seen(layer, x)
        assert seen == set() and torch.equal(got, want)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert _dccnext_ops_seen(layer, x)[1] == {"dccnext.cluster_indices", "dccnext.cluster_conv"}
    xg = x.clone().requires_grad_()
    got, seen = _dccnext_ops_seen(layer, xg)
    assert "dccnext.cluster_conv" in seen and torch.equal(got.detach(), want)
    got.sum().backward()
    assert xg.grad is not None and layer.weight.grad is not None
