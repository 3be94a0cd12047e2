"""DCConv's device path, forced on the CPU: a launch count independent of the batch, nothing read back to the host.

The profiler records every aten op the layer runs, nested ones and the backward's included; a host read shows up
as one of `HOST_READS` (`.item()`, a tensor used as a Python bool, `torch.equal`, an output sized by the data).
"""

from __future__ import annotations

import collections
import contextlib

import pytest
import torch
from torch.profiler import ProfilerActivity, profile

from dccnext_cli.models.dcconv import DCConv, cluster_indices, on_device_path
from dccnext_cli.models.settings import use_operator_settings

HOST_READS = {"aten::item", "aten::_local_scalar_dense", "aten::equal", "aten::is_nonzero", "aten::nonzero",
              "aten::masked_select"}


def ops_of_a_training_step(batch: int, height: int, width: int, channels: int, path: str) -> collections.Counter:
    """The aten ops (name -> calls) of one forward + backward of a fresh DCConv(K = 12, d = 8) layer."""
    layer = DCConv(channels, cluster_size=12, subvector_interval=8)
    x = torch.randn(batch, height, width, channels, requires_grad=True)
    with use_operator_settings(eager_path=path), profile(activities=[ProfilerActivity.CPU]) as prof:
        layer(x).sum().backward()
    return collections.Counter(event.name for event in prof.events() if event.name.startswith("aten::"))


def test_the_device_path_runs_the_same_ops_at_batch_8_and_64_and_reads_nothing_back():
    small = ops_of_a_training_step(8, 14, 14, 640, "device")
    large = ops_of_a_training_step(64, 14, 14, 640, "device")
    assert large == small, f"op counts differ: {sorted((small - large) + (large - small))}"
    assert {"aten::bmm", "aten::topk", "aten::index_select", "aten::index_add_"} <= set(small), "profiled the layer"
    assert not HOST_READS & set(large), f"host reads: {sorted(HOST_READS & set(large))}"


def test_the_counts_see_what_the_cpu_path_does():
    """The same counting on the CPU path: its blocks grow with the batch and its two shortcuts read the host."""
    small = ops_of_a_training_step(2, 14, 14, 64, "cpu")  # 392 rows: one block of 512
    large = ops_of_a_training_step(8, 14, 14, 64, "cpu")  # 1568 rows: four blocks
    assert large.total() > small.total()
    assert {"aten::equal", "aten::is_nonzero", "aten::item"} <= set(small)  # centre check, tie-repair branch


def test_auto_takes_the_device_path_off_the_cpu():
    cpu, meta = torch.empty(1), torch.empty(1, device="meta")
    assert not on_device_path(cpu) and on_device_path(meta)
    with use_operator_settings(eager_path="device"):
        assert on_device_path(cpu)
    with use_operator_settings(eager_path="cpu"):
        assert not on_device_path(meta)


@pytest.mark.parametrize("watched", [False, True], ids=["eager", "dispatch-mode"])
def test_the_device_path_gives_the_cpu_paths_numbers(watched):
    """Ties everywhere (integer tokens): indices and outputs identical, gradients equal up to summation order.
    Under a dispatch mode (a FLOP counter) the custom ops run, and they take the device path too."""
    from torch.utils.flop_counter import FlopCounterMode

    g = torch.Generator().manual_seed(4)
    x = torch.randint(-2, 3, (3, 9, 11, 48), generator=g).float()  # 297 rows: blocks of 128 on the CPU path
    layer = DCConv(48, cluster_size=12, subvector_interval=2)
    torch.nn.init.normal_(layer.bias, generator=g)
    results = {}
    for path in ("cpu", "device"):
        layer.zero_grad(set_to_none=True)
        xi = x.clone().requires_grad_()
        with use_operator_settings(eager_path=path, block_rows=128, backward_block_rows=128):
            with FlopCounterMode(display=False) if watched else contextlib.nullcontext():
                idx = cluster_indices(xi, 12, 2)
                out = layer(xi)
                out.square().sum().backward()
        results[path] = (idx, out.detach(), xi.grad, layer.weight.grad, layer.bias.grad)
    cpu, device = results["cpu"], results["device"]
    assert torch.equal(device[0], cpu[0]), "the same cluster indices"
    assert torch.equal(device[1], cpu[1]), "each output row sums its slots in the same order"
    for got, want in zip(device[2:], cpu[2:], strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-4)

