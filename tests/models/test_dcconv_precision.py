"""One precision rule for every cluster convolution: float32 sums, the input's dtype out (docs/model.md, section 2).

Under CPU bfloat16 autocast the tokens arrive in bfloat16 and the kernel W and bias stay float32. Every path (eager
on the CPU and device paths, Triton, compiled, exported, the plain ops) must sum the K products, and the rows of
grad_W and grad_bias, in float32, and round once at the end.
"""

from __future__ import annotations

import os

import pytest
import torch

from dccnext_cli.models import dcconv
from dccnext_cli.models.dcconv import DCConv, cluster_conv, cluster_conv_reference, cluster_indices
from dccnext_cli.models.settings import use_operator_settings

TOKENS = 12  # token 0 is 256, the others 1; every row gathers all 12 tokens (K = 12)


def bf16_sum(values) -> float:
    """What summing in bfloat16 gives, one term at a time."""
    total = torch.tensor(0.0, dtype=torch.bfloat16)
    for value in values:
        total = total + torch.tensor(float(value), dtype=torch.bfloat16)
    return float(total)


def spike_case():
    """Tokens (1, 12, 4) bfloat16 with a spike, cyclic clusters (every slot a permutation, the centre first),
    W = 1 and bias = 0 in float32, and an output gradient with the same spike."""
    values = torch.ones(TOKENS)
    values[0] = 256.0
    tokens = values[None, :, None].repeat(1, 1, 4).to(torch.bfloat16)
    rows = torch.arange(TOKENS)
    idx = ((rows[:, None] + rows[None, :]) % TOKENS)[None]  # idx[r, k] = (r + k) mod 12: slot 0 is r itself
    return tokens, idx, torch.ones(TOKENS, 4), torch.zeros(4), tokens.clone()


class _Conv(torch.nn.Module):
    """cluster_conv with its kernel as parameters: what torch.export and torch.compile take."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor):
        super().__init__()
        self.weight, self.bias = torch.nn.Parameter(weight), torch.nn.Parameter(bias)

    def forward(self, tokens: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        return cluster_conv(tokens, idx, self.weight, self.bias)


def _run_path(path: str, module: _Conv, tokens: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    if path == "exported":
        return torch.export.export(module, (tokens, idx)).module()(tokens, idx)
    if path == "plain":
        return dcconv.cluster_conv_plain(tokens, idx, module.weight, module.bias)
    if path == "reference":
        return cluster_conv_reference(tokens, idx, module.weight, module.bias)
    if path == "compiled":
        return torch.compile(module, backend="aot_eager", fullgraph=True)(tokens, idx)
    settings = {"eager-cpu": {"eager_path": "cpu"}, "eager-device": {"eager_path": "device"},
                "triton": {"eager_kernels": "triton"},
                "triton-deterministic": {"eager_kernels": "triton-deterministic"}}[path]
    with use_operator_settings(**settings):
        return module(tokens, idx)


PATHS = ["eager-cpu", "eager-device", "triton", "triton-deterministic", "plain", "reference", "exported", "compiled"]


@pytest.mark.parametrize("path", PATHS)
def test_every_path_sums_in_float32_under_bf16_autocast(path):
    interpreted = path.startswith("triton") and not torch.cuda.is_available()
    if interpreted and os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("no GPU and TRITON_INTERPRET is not 1: the Triton kernels cannot run")
    tokens, idx, weight, bias, grad = spike_case()
    exact = 256.0 + (TOKENS - 1)  # 267: every output, every grad_x row and grad_bias, summed exactly
    assert bf16_sum([256.0] + [1.0] * (TOKENS - 1)) == 256.0, "summed in bfloat16, the ones are lost"
    tokens = tokens.requires_grad_()
    module = _Conv(weight, bias)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = _run_path(path, module, tokens, idx)
    out.backward(grad)
    rounded = torch.tensor(exact).to(torch.bfloat16)  # 268: one rounding, at the end
    # Triton's interpreter rounds a kernel's float32 -> bf16 store toward zero (compiled Triton: to nearest even)
    toward_zero = torch.tensor(266.0, dtype=torch.bfloat16)
    out_rounded = toward_zero if interpreted else rounded
    grad_rounded = toward_zero if interpreted and path == "triton-deterministic" else rounded  # stored by a kernel
    assert out.dtype == torch.bfloat16 and torch.all(out == out_rounded), out[0, :, 0]
    assert tokens.grad.dtype == torch.bfloat16 and torch.all(tokens.grad == grad_rounded)
    assert module.bias.grad.dtype == torch.float32 and torch.all(module.bias.grad == exact)
    # grad_W[k] = sum_r x[(r + k) mod 12] * g[r]: integers below 2^24, exact in float32
    x64, g64 = tokens.detach().double()[0, :, 0], grad.double()[0, :, 0]
    want = torch.stack([(x64[(torch.arange(TOKENS) + k) % TOKENS] * g64).sum() for k in range(TOKENS)])
    assert module.weight.grad.dtype == torch.float32
    assert torch.equal(module.weight.grad[:, 0].double(), want), (module.weight.grad[:, 0], want)


def _layer_case():
    gen = torch.Generator().manual_seed(11)
    layer = DCConv(64, cluster_size=12, subvector_interval=8)
    torch.nn.init.normal_(layer.weight, generator=gen)
    torch.nn.init.normal_(layer.bias, generator=gen)
    x = (torch.relu(torch.randn(2, 6, 7, 64, generator=gen)) ** 2 + 3.0).to(torch.bfloat16)
    idx = cluster_indices(x.float(), 12, 8)
    ref = cluster_conv_reference(x.double().flatten(1, 2), idx, layer.weight.double(), layer.bias.double())
    return layer, x, ref.view(x.shape)


def _assert_within_bf16_rounding(out: torch.Tensor, ref: torch.Tensor) -> None:
    """One rounding of the float64 result to bfloat16: at most half a unit in its last place (bfloat16 keeps 8
    significant bits), with a little room for float32's own error where the result lies on a rounding boundary."""
    assert out.dtype == torch.bfloat16
    err = (out.detach().double() - ref).abs()
    half_ulp = torch.exp2(torch.floor(torch.log2(ref.abs())) - 8)
    assert torch.all(err <= half_ulp * 1.01 + 1e-6), f"max error {float((err / half_ulp).max()):.2f} half-ulps"


@pytest.mark.parametrize("path", ["eager-cpu", "eager-device", "exported", "compiled-aot-eager"])
def test_the_layer_under_bf16_autocast_is_the_float32_result_rounded_once(path):
    layer, x, ref = _layer_case()
    with torch.autocast("cpu", dtype=torch.bfloat16), torch.no_grad():
        if path == "exported":
            out = torch.export.export(layer, (x,)).module()(x)
        elif path == "compiled-aot-eager":
            out = torch.compile(layer, backend="aot_eager", fullgraph=True)(x)
        else:
            with use_operator_settings(eager_path=path.removeprefix("eager-")):
                out = layer(x)
    _assert_within_bf16_rounding(out, ref)


def test_the_layer_compiled_by_inductor_under_bf16_autocast():
    """One small Inductor compile (7-13 s on 2 cores): the forward is the float32 result rounded once, the
    gradients of W and the bias are float32 sums equal to the eager ones up to summation order."""
    layer, x, ref = _layer_case()
    compiled = torch.compile(layer, backend="inductor")
    xs = [x.clone().requires_grad_() for _ in range(2)]
    grads = []
    for run, xi in zip((compiled, layer), xs, strict=True):
        layer.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = run(xi)
        out.float().square().sum().backward()
        grads.append((layer.weight.grad.clone(), layer.bias.grad.clone()))
        if run is compiled:
            _assert_within_bf16_rounding(out.detach(), ref)
    for got, want in zip(grads[0], grads[1], strict=True):
        assert got.dtype == torch.float32
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
