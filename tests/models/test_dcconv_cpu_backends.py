"""The two compiled CPU backends against the reference: `cpu` (the native kernels, the default there) and `inductor`
(the reference compiled by Inductor): indices, outputs, gradients, ties, bfloat16 sums, and a fixed number of aten
ops per layer whatever the batch. What only the native kernels do is in test_dcconv_cpu.py.

The first run compiles (tens of seconds on 2 cores for Inductor); the on-disk caches serve later runs.
"""

from __future__ import annotations

import collections
import logging

import pytest
import torch
from dcconv_cases import assert_spike_sums_in_float32, grads_of, integer_tokens, naive_indices, offset_tokens
from torch.profiler import ProfilerActivity, profile

from dccnext_cli.models import dcconv_cpu, dcconv_inductor
from dccnext_cli.models.dcconv import DCConv, cluster_conv, cluster_indices, select_backend
from dccnext_cli.models.dcconv_reference import cluster_conv_reference, cluster_indices_reference
from dccnext_cli.models.settings import use_operator_settings

pytestmark = pytest.mark.skipif(not (dcconv_inductor.available() and dcconv_cpu.available()),
                                reason="no C++ compiler")


@pytest.fixture(autouse=True, params=["cpu", "inductor"])
def backend(request):
    with use_operator_settings(backend=request.param):
        yield request.param


def test_it_is_what_runs(backend):
    assert select_backend(torch.empty(1)) == backend
    with use_operator_settings(backend="auto"):
        assert select_backend(torch.empty(1)) == "cpu", "the CPU's default"


@pytest.mark.parametrize("shape, k, d", [((2, 5, 6, 24), 12, 8), ((1, 3, 3, 16), 18, 1), ((3, 7, 5, 32), 5, 4)])
def test_indices_equal_the_reference_with_ties(shape, k, d):
    x = integer_tokens(shape)
    got = cluster_indices(x, k, d)
    assert torch.equal(got, naive_indices(x, k, d))
    assert torch.equal(got, cluster_indices_reference(x, k, d, 1 << 21))


def test_chunked_indices_equal_the_reference():
    x = integer_tokens((2, 12, 10, 16), low=-2, high=3)
    whole = cluster_indices(x, 12, 2)
    assert torch.equal(cluster_indices(x, 12, 2, chunk_elements=2 * 120 * 7), whole)  # 7 rows per chunk
    assert torch.equal(whole, naive_indices(x, 12, 2))


def test_indices_survive_a_large_shared_offset():
    tokens = offset_tokens(100.0)
    with use_operator_settings(backend="reference"):
        want = cluster_indices(tokens, 12, 8)
    assert torch.equal(cluster_indices(tokens, 12, 8), want)


@pytest.mark.parametrize("ties", [False, True])
def test_forward_and_backward_equal_the_reference(ties):
    g = torch.Generator().manual_seed(4)
    tokens = integer_tokens((2, 90, 48), seed=4) if ties else torch.randn(2, 90, 48, generator=g)
    idx = cluster_indices(tokens, 9, 4)
    weight, bias, grad = torch.randn(12, 48, generator=g), torch.randn(48, generator=g), torch.randn(2, 90, 48)
    out, grads = grads_of(lambda t, w, b: cluster_conv(t, idx, w, b), tokens, weight, bias, grad)
    want, want_grads = grads_of(lambda t, w, b: cluster_conv_reference(t, idx, w, b), tokens, weight, bias, grad)
    torch.testing.assert_close(out, want, rtol=1e-6, atol=1e-5)
    for got, ref in zip(grads, want_grads, strict=True):
        torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-4)
    assert torch.count_nonzero(grads[1][9:]) == 0, "slots past K' get no gradient"


def test_bf16_sums_in_float32_and_rounds_once():
    assert_spike_sums_in_float32(cluster_conv)


def test_the_layer_equals_the_reference_layer():
    layer = DCConv(64, cluster_size=12, subvector_interval=8)
    torch.nn.init.normal_(layer.bias)
    x = torch.randn(3, 6, 7, 64)
    with torch.no_grad():
        out = layer(x)
        with use_operator_settings(backend="reference"):
            want = layer(x)
    torch.testing.assert_close(out, want, rtol=1e-6, atol=1e-5)


def aten_ops(layer: torch.nn.Module, x: torch.Tensor) -> collections.Counter:
    with torch.inference_mode():
        layer(x)  # compiles (or loads) for this shape first
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            layer(x)
    return collections.Counter(e.name for e in prof.events() if e.name.startswith("aten::"))


def test_a_layer_issues_the_same_few_ops_at_any_batch(fresh_compiles):
    layer = DCConv(320, cluster_size=12, subvector_interval=8).eval()
    small = aten_ops(layer, torch.randn(2, 14, 14, 320))
    large = aten_ops(layer, torch.randn(16, 14, 14, 320))
    assert large == small, f"op counts differ: {sorted((small - large) + (large - small))}"
    assert "aten::bmm" in small, "profiled the layer"
    assert small.total() <= 14, small  # mostly views and allocations; the reference issues about 40
    with use_operator_settings(backend="reference"):
        assert aten_ops(layer, torch.randn(2, 14, 14, 320)).total() > 3 * small.total()


def test_without_a_compiler_the_reference_runs_with_a_note(monkeypatch, caplog, backend):
    monkeypatch.setenv("CXX", "/nonexistent/c++")
    dcconv_inductor.available.cache_clear()
    dcconv_cpu._library.cache_clear()
    try:
        with caplog.at_level(logging.WARNING):
            assert select_backend(torch.empty(1)) == "reference"
        notes = [r.message for r in caplog.records if "no C++ compiler" in r.message]
        assert len(notes) == 1 and "/nonexistent/c++" in notes[0], notes
    finally:
        monkeypatch.undo()
        dcconv_inductor.available.cache_clear()
        dcconv_cpu._library.cache_clear()
    assert select_backend(torch.empty(1)) == backend


def test_backward_keeps_no_gathered_tensor():
    """What autograd keeps for the backward: the input rows, the int indices and the kernel, never (B*N, K', E)."""
    tokens = torch.randn(4, 196, 64, requires_grad=True)
    idx = cluster_indices(tokens, 12, 8)
    weight = torch.randn(12, 64, requires_grad=True)
    saved: list[torch.Tensor] = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        cluster_conv(tokens, idx, weight, torch.zeros(64, requires_grad=True))
    saved_bytes = sum(t.numel() * t.element_size() for t in saved)
    allowed = tokens.numel() * 4 + idx.numel() * 8 + weight.numel() * 4
    assert saved_bytes <= allowed, (saved_bytes, allowed)


def test_gradcheck_float64():
    tokens = torch.randn(1, 10, 5, dtype=torch.float64, requires_grad=True)
    idx = torch.stack([torch.randperm(10)[:4] for _ in range(10)]).unsqueeze(0)
    weight = torch.randn(4, 5, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t, w, b: cluster_conv(t, idx, w, b), (tokens, weight, bias))
