"""The Triton backend against the reference: outputs and every gradient, ties and K' < K included, bfloat16 sums.

Without a GPU the kernels run under Triton's interpreter (TRITON_INTERPRET=1, exact but slow), so the shapes
here are small. The same tests run the compiled kernels where CUDA is present.
"""

from __future__ import annotations

import importlib
import os

import pytest
import torch
from dcconv_cases import assert_spike_sums_in_float32

from dccnext_cli.models import dcconv
from dccnext_cli.models.dcconv_reference import flat_indices
from dccnext_cli.models.settings import use_operator_settings

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.fixture(scope="module")
def kernels():
    """The kernel module: compiled on a GPU, interpreted on the CPU (tests/conftest.py sets TRITON_INTERPRET=1)."""
    if DEVICE == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("no GPU and TRITON_INTERPRET is not 1: the Triton kernels cannot run")
    return importlib.import_module("dccnext_cli.models.dcconv_triton")


def _case(batch: int, height: int, width: int, channels: int, cluster_size: int, ties: bool):
    """Tokens (B, N, E), their cluster indices and a kernel; `ties` repeats tokens so slots collide."""
    gen = torch.Generator().manual_seed(batch * 100 + height * width + channels)
    x = torch.randn(batch, height * width, channels, generator=gen)
    if ties:
        x[:, 1::3] = x[:, 0:1]  # a third of the tokens equal token 0: equal distances, repeated gathers
    idx = dcconv.cluster_indices(x, cluster_size, 2)
    weight = torch.randn(cluster_size, channels, generator=gen)
    bias = torch.randn(channels, generator=gen)
    return x.to(DEVICE), idx.to(DEVICE), weight.to(DEVICE), bias.to(DEVICE)


def _slots(idx: torch.Tensor) -> torch.Tensor:
    return flat_indices(idx, idx.shape[1]).t().contiguous()


CASES = [
    pytest.param(2, 5, 7, 70, 12, False, id="two-images"),
    pytest.param(1, 4, 6, 40, 12, True, id="ties"),
    pytest.param(2, 3, 3, 24, 12, False, id="K'<K"),  # 9 tokens: K' = 9 of 12 slots
]


@pytest.mark.parametrize("batch, height, width, channels, k, ties", CASES)
def test_forward_equals_the_reference(kernels, batch, height, width, channels, k, ties):
    x, idx, weight, bias = _case(batch, height, width, channels, k, ties)
    flat = x.reshape(-1, channels).contiguous()
    for b in (bias, None):
        out = kernels.cluster_conv_forward(flat, _slots(idx), weight, b).view_as(x)
        ref = dcconv.cluster_conv_reference(x.double(), idx, weight.double(), None if b is None else b.double())
        torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("deterministic", [False, True], ids=["atomic", "reverse-index"])
@pytest.mark.parametrize("batch, height, width, channels, k, ties", CASES)
def test_backward_equals_the_reference(kernels, deterministic, batch, height, width, channels, k, ties):
    x, idx, weight, bias = _case(batch, height, width, channels, k, ties)
    grad_out = torch.randn(x.shape, generator=torch.Generator().manual_seed(7)).to(DEVICE)
    ref = [t.double().requires_grad_() for t in (x, weight, bias)]
    dcconv.cluster_conv_reference(ref[0], idx, ref[1], ref[2]).backward(grad_out.double())
    got = [t.clone().requires_grad_() for t in (x, weight, bias)]
    with use_operator_settings(backend="triton-deterministic" if deterministic else "triton"):
        out = dcconv.cluster_conv(got[0], idx, got[1], got[2])
    out.backward(grad_out)  # outside the settings: the backward runs the backend of its forward
    for name, g, r in zip(("input", "weight", "bias"), got, ref, strict=True):
        torch.testing.assert_close(g.grad.double(), r.grad, rtol=1e-5, atol=1e-4, msg=f"grad of the {name}")
    if idx.shape[-1] < k:
        assert torch.count_nonzero(got[1].grad[idx.shape[-1]:]) == 0, "slots past K' get no gradient"


def test_the_deterministic_backward_is_bitwise_repeatable(kernels):
    x, idx, weight, _ = _case(1, 4, 6, 40, 12, True)
    flat, slots = x.reshape(-1, 40).contiguous(), _slots(idx)
    grad = torch.randn(flat.shape, generator=torch.Generator().manual_seed(3)).to(DEVICE)
    first = kernels.cluster_conv_backward(grad, flat, slots, weight, deterministic=True)
    second = kernels.cluster_conv_backward(grad, flat, slots, weight, deterministic=True)
    assert all(torch.equal(a, b) for a, b in zip(first, second, strict=True))


def test_bfloat16_accumulates_in_float32(kernels):
    """256 + ten 1s: summed in bfloat16 every 1 is lost (256 + 1 rounds back to 256), in float32 it is 266,
    which bfloat16 holds exactly."""
    tokens = 11
    x = torch.ones(tokens, 4)
    x[0] = 256.0
    # every row gathers all tokens, itself first (slot 0), then the others in index order
    idx = torch.stack([torch.tensor([r] + [t for t in range(tokens) if t != r]) for r in range(tokens)])[None]
    flat = x.to(DEVICE, torch.bfloat16)
    out = kernels.cluster_conv_forward(flat, _slots(idx.to(DEVICE)), torch.ones(tokens, 4, device=DEVICE))
    assert out.dtype == torch.bfloat16
    assert torch.all(out.float() == 266.0)
    naive = torch.tensor(0.0, dtype=torch.bfloat16)
    for value in (256.0,) + (1.0,) * (tokens - 1):
        naive = naive + torch.tensor(value, dtype=torch.bfloat16)
    assert float(naive) == 256.0, "the case is one that bfloat16 accumulation gets wrong"


@pytest.mark.parametrize("backend", ["triton", "triton-deterministic"])
def test_the_backend_sums_bf16_in_float32_and_rounds_once(kernels, backend):
    if DEVICE == "cuda":
        pytest.skip("the spike case runs under CPU autocast")
    # Triton's interpreter rounds a kernel's float32 -> bf16 store toward zero (compiled Triton: to nearest even)
    toward_zero = torch.tensor(266.0, dtype=torch.bfloat16)
    with use_operator_settings(backend=backend):
        assert_spike_sums_in_float32(dcconv.cluster_conv, rounded_out=toward_zero,
                                     rounded_grad=toward_zero if backend == "triton-deterministic" else None)


def test_dcconv_layer_with_triton_kernels_equals_the_reference(kernels):
    layer = dcconv.DCConv(24, cluster_size=6, subvector_interval=2).to(DEVICE)
    torch.nn.init.normal_(layer.bias)
    x = torch.randn(2, 4, 5, 24, generator=torch.Generator().manual_seed(5)).to(DEVICE)
    outputs, grads = {}, {}
    for kernels_name in ("reference", "triton", "triton-deterministic"):
        layer.zero_grad()
        xi = x.clone().requires_grad_()
        with use_operator_settings(backend=kernels_name):
            out = layer(xi)
        out.square().sum().backward()
        outputs[kernels_name] = out.detach()
        grads[kernels_name] = [xi.grad, layer.weight.grad.clone(), layer.bias.grad.clone()]
    for name in ("triton", "triton-deterministic"):
        torch.testing.assert_close(outputs[name], outputs["reference"], rtol=1e-5, atol=1e-5)
        for g, r in zip(grads[name], grads["reference"], strict=True):
            torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-4)
