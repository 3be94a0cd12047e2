"""The blocks' linears run as 1x1 oneDNN convolutions on CPU only where PyTorch hands those to oneDNN: with one
thread and a batch under 16, or for one small image, it would use its slow im2col fallback instead (60 % of B2's
batch-1 forward with one thread)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

from dccnext_cli.models.dccnext import PointwiseLinear


@pytest.fixture
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _ops(layer: torch.nn.Module, x: torch.Tensor) -> tuple[set[str], torch.Tensor]:
    with torch.no_grad(), profile(activities=[ProfilerActivity.CPU]) as prof:
        out = layer(x)
    return {e.key for e in prof.key_averages()}, out


@pytest.mark.parametrize("batch, conv", [(1, False), (15, False), (16, True)])
def test_one_thread_small_batches_take_the_linear(one_thread, batch, conv):
    layer = PointwiseLinear(32, 64, bias=False)
    x = torch.randn(batch, 5, 5, 32)
    ops, out = _ops(layer, x)
    assert "aten::_slow_conv2d_forward" not in ops
    assert ("aten::mkldnn_convolution" in ops) is conv
    torch.testing.assert_close(out, F.linear(x, layer.weight), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shape, conv", [((2, 5, 5, 32), True), ((1, 5, 5, 32), False), ((1, 26, 26, 32), True)])
def test_several_threads_keep_the_onednn_convolution(shape, conv):
    """oneDNN's rule with several threads: batches above 1, or a single image above 20480 elements."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        layer = PointwiseLinear(32, 64, bias=False)
        ops, out = _ops(layer, torch.randn(*shape))
    finally:
        torch.set_num_threads(before)
    assert "aten::_slow_conv2d_forward" not in ops
    assert ("aten::mkldnn_convolution" in ops) is conv


def test_compiled_graphs_choose_for_their_thread_count(one_thread):
    layer = PointwiseLinear(32, 64, bias=False)
    x = torch.randn(1, 5, 5, 32)
    compiled = torch.compile(layer, dynamic=False)
    with torch.no_grad():
        compiled(x)
    ops, out = _ops(compiled, x)
    assert "aten::_slow_conv2d_forward" not in ops and "aten::mkldnn_convolution" not in ops
    torch.testing.assert_close(out, F.linear(x, layer.weight), rtol=1e-5, atol=1e-5)
