"""Which DCConv backend runs where (`select_backend`), what compiled graphs and dispatch modes make of the layer,
and the op count of a whole B2 forward: fixed whatever the batch, near timm's convformer_s18."""

from __future__ import annotations

import collections
import contextlib
import dataclasses

import pytest
import timm
import torch
from dcconv_cases import assert_spike_sums_in_float32, assert_within_bf16_rounding, bf16_layer_case, integer_tokens
from torch.profiler import ProfilerActivity, profile
from torch.utils.flop_counter import FlopCounterMode

from dccnext_cli.models import dcconv_cpu, dcconv_inductor
from dccnext_cli.models.dccnext import create_dccnext
from dccnext_cli.models.dcconv import (
    BACKENDS,
    DCConv,
    cluster_conv,
    cluster_conv_reference,
    cluster_indices,
    select_backend,
)
from dccnext_cli.models.settings import OperatorSettings, use_operator_settings

CPU_DEFAULT = "cpu" if dcconv_cpu.available() and dcconv_inductor.available() else "reference"


def test_the_table_holds_each_formulation_once_and_at_most_six_settings():
    assert set(BACKENDS) == {"reference", "cpu", "inductor", "triton", "triton-deterministic", "export"}
    assert len(dataclasses.fields(OperatorSettings)) <= 6


def test_auto_picks_by_device_and_mode():
    cpu, meta = torch.empty(1), torch.empty(1, device="meta")
    assert select_backend(cpu) == CPU_DEFAULT
    assert select_backend(meta) == "reference", "shapes only: the FLOP counter's meta model"
    with use_operator_settings(backend="reference"):
        assert select_backend(cpu) == "reference"
    with use_operator_settings(backend="triton"):
        assert select_backend(cpu) == "triton" and select_backend(meta) == "reference"

    seen = []

    class Probe(torch.nn.Module):
        def forward(self, x):
            seen.append(select_backend(x))
            return x + 1

    torch.jit.trace(Probe(), (cpu,), check_trace=False)
    torch.export.export(Probe(), (cpu,))
    torch.compile(Probe(), backend="eager", fullgraph=True)(torch.randn(2))
    assert seen[0] == "export" and set(seen[1:-1]) == {"export"} and seen[-1] == "reference", seen


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_takes_triton_and_matches_the_cpu():
    g = torch.Generator().manual_seed(3)
    tokens = torch.randn(2, 300, 32, generator=g)
    assert select_backend(tokens.cuda()) == "triton"
    idx = cluster_indices(tokens, 9, 4)
    gpu_idx = cluster_indices(tokens.cuda(), 9, 4).cpu()  # near-ties may round the other way: compare distances
    assert torch.equal(gpu_idx[..., 0], torch.arange(300).expand(2, 300)), "the centre comes first"
    sub = tokens[..., ::4].double()
    dist = (sub[:, :, None] - sub[:, None]).pow(2).sum(-1)
    torch.testing.assert_close(dist.gather(2, gpu_idx), dist.gather(2, idx), rtol=1e-4, atol=1e-4)
    model = create_dccnext("b0", num_classes=10).eval()
    x = torch.randn(2, 3, 96, 96, generator=g)
    with torch.no_grad(), torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
        torch.testing.assert_close(model.cuda()(x.cuda()).cpu(), model.cpu()(x), rtol=1e-2, atol=1e-2)


def test_compiled_layer_has_no_graph_break_and_matches_eager():
    layer = DCConv(16, cluster_size=5, subvector_interval=2)
    x = torch.randn(1, 4, 4, 16)
    compiled = torch.compile(layer, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(x), layer(x))


def test_compiled_cluster_conv_sums_bf16_in_float32():
    def run(tokens, idx, weight, bias):
        return torch.compile(cluster_conv, backend="aot_eager", fullgraph=True)(tokens, idx, weight, bias)

    assert_spike_sums_in_float32(run)


@pytest.mark.parametrize("how", ["eager", "compiled-aot-eager"])
def test_the_layer_under_bf16_autocast_is_the_float32_result_rounded_once(how):
    layer, x, ref = bf16_layer_case()
    run = layer if how == "eager" else torch.compile(layer, backend="aot_eager", fullgraph=True)
    with torch.autocast("cpu", dtype=torch.bfloat16), torch.no_grad():
        out = run(x)
    assert_within_bf16_rounding(out, ref)


def test_the_layer_compiled_by_inductor_under_bf16_autocast():
    """One small Inductor compile: the forward is the float32 result rounded once, the gradients of W and the bias
    are float32 sums equal to the eager ones up to summation order."""
    layer, x, ref = bf16_layer_case()
    compiled = torch.compile(layer, backend="inductor")
    grads = []
    for run in (compiled, layer):
        layer.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = run(x.clone().requires_grad_())
        out.float().square().sum().backward()
        grads.append((layer.weight.grad.clone(), layer.bias.grad.clone()))
        if run is compiled:
            assert_within_bf16_rounding(out.detach(), ref)
    for got, want in zip(grads[0], grads[1], strict=True):
        assert got.dtype == torch.float32
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("watched", [False, True], ids=["eager", "dispatch-mode"])
def test_every_eager_backend_gives_the_references_numbers(watched):
    """Ties everywhere (integer tokens): indices and outputs identical, gradients equal up to summation order.
    Under a dispatch mode (a FLOP counter) the same custom ops run and the counter sees them."""
    g = torch.Generator().manual_seed(4)
    x = torch.randint(-2, 3, (3, 9, 11, 48), generator=g).float()
    layer = DCConv(48, cluster_size=12, subvector_interval=2)
    torch.nn.init.normal_(layer.bias, generator=g)
    results = {}
    for backend in ("reference", CPU_DEFAULT):
        layer.zero_grad(set_to_none=True)
        xi = x.clone().requires_grad_()
        with use_operator_settings(backend=backend):
            with FlopCounterMode(display=False) if watched else contextlib.nullcontext():
                idx = cluster_indices(xi, 12, 2)
                out = layer(xi)
                out.square().sum().backward()
        results[backend] = (idx, out.detach(), xi.grad, layer.weight.grad, layer.bias.grad)
    ref, got = results["reference"], results[CPU_DEFAULT]
    assert torch.equal(got[0], ref[0]), "the same cluster indices"
    torch.testing.assert_close(got[1], ref[1], rtol=1e-6, atol=1e-5)
    for a, b in zip(got[2:], ref[2:], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-4)
    want = cluster_conv_reference(x.flatten(1, 2), ref[0], layer.weight, layer.bias).view_as(x)
    torch.testing.assert_close(ref[1], want.detach())


def aten_ops_per_forward(model: torch.nn.Module, x: torch.Tensor) -> int:
    """aten ops (nested ones included) of one eager inference forward, after a warm-up forward."""
    with torch.inference_mode():
        model(x)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            model(x)
    return sum(1 for e in prof.events() if e.name.startswith("aten::"))


@pytest.fixture
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def test_b2_issues_the_same_ops_at_batch_1_and_8_within_1_5x_convformer_s18(two_threads, fresh_compiles):
    """The bar of docs/speed.md, at 224 px: the per-layer DCConv kernels do not loop over the batch or the slots."""
    if CPU_DEFAULT != "cpu":
        pytest.skip("no C++ compiler: the reference runs, with more ops per layer")
    b2 = create_dccnext("b2").eval()
    convformer = timm.create_model("convformer_s18").eval()
    ops = {batch: aten_ops_per_forward(b2, torch.randn(batch, 3, 224, 224)) for batch in (1, 8)}
    peer = aten_ops_per_forward(convformer, torch.randn(1, 3, 224, 224))
    assert ops[1] == ops[8], ops
    assert ops[1] <= 1.5 * peer, (ops, peer)


def test_the_reference_issues_no_host_reads_and_the_same_ops_at_any_batch():
    """What the reference runs (on any device without a faster backend): nothing read back to the host, no op
    count that grows with the batch, in a whole training step of the layer."""
    host_reads = {"aten::item", "aten::_local_scalar_dense", "aten::equal", "aten::is_nonzero", "aten::nonzero",
                  "aten::masked_select"}

    def ops(batch: int) -> collections.Counter:
        layer = DCConv(64, cluster_size=12, subvector_interval=8)
        x = integer_tokens((batch, 14, 14, 64)).requires_grad_()
        settings = {"backend": "reference", "distance_chunk_elements": 1 << 26}  # the device's chunk: one here
        with use_operator_settings(**settings), profile(activities=[ProfilerActivity.CPU]) as prof:
            layer(x).sum().backward()
        # views that aten's own kernels take (bmm narrows its operands at some sizes) are not launches
        views = {"aten::slice", "aten::narrow", "aten::as_strided", "aten::select", "aten::view"}
        return collections.Counter(e.name for e in prof.events() if e.name.startswith("aten::") and e.name not in views)

    small, large = ops(8), ops(64)
    assert large == small, f"op counts differ: {sorted((small - large) + (large - small))}"
    assert {"aten::bmm", "aten::topk", "aten::index_select"} <= set(small), "profiled the layer"
    assert not host_reads & set(large), sorted(host_reads & set(large))


def _private_torch_reads(source: str) -> list[str]:
    """Dotted names `torch.<...>` in `source` with a part that starts with "_" (a private module or attribute)."""
    import ast

    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Attribute):
            parts, inner = [node.attr], node.value
            while isinstance(inner, ast.Attribute):
                parts.append(inner.attr)
                inner = inner.value
            if isinstance(inner, ast.Name) and inner.id == "torch" and any(p.startswith("_") for p in parts):
                found.append(".".join(["torch", *reversed(parts)]))
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("torch") and (
                any(part.startswith("_") for part in node.module.split("."))
                or any(alias.name.startswith("_") for alias in node.names)):
            found.append(node.module)
    return found


def test_no_model_file_reads_private_torch_state():
    """The model is as plain as timm's: what torch keeps private can change in any release, unnoticed."""
    from pathlib import Path

    import dccnext_cli.models as models_package

    seen = _private_torch_reads("x = torch._C._len_torch_dispatch_stack()\nfrom torch._dynamo import reset")
    assert set(seen) == {"torch._C._len_torch_dispatch_stack", "torch._C", "torch._dynamo"}, seen
    offenders = {path.name: reads for path in sorted(Path(models_package.__file__).parent.glob("*.py"))
                 if (reads := _private_torch_reads(path.read_text()))}
    assert not offenders, offenders
