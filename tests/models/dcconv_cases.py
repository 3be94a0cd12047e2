"""What the DCConv backend tests share: naive definitions written straight from the paper, and hard inputs."""

from __future__ import annotations

import torch


def naive_indices(x: torch.Tensor, k: int, d: int) -> torch.Tensor:
    """Explicit pairwise distances in float64, then a Python sort by (not centre, distance, index)."""
    tokens = x.flatten(1, 2).double() if x.ndim == 4 else x.double()
    sub = tokens[..., ::d]
    batch, n, _ = sub.shape
    k = min(k, n)
    out = torch.empty(batch, n, k, dtype=torch.int64)
    for b in range(batch):
        dist = ((sub[b, :, None, :] - sub[b, None, :, :]) ** 2).sum(-1)
        for i in range(n):
            order = sorted(range(n), key=lambda j, i=i: (j != i, dist[i, j].item(), j))
            out[b, i] = torch.tensor(order[:k])
    return out


def naive_dcconv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, d: int) -> torch.Tensor:
    """Distances, sort, gather, weighted sum: one token at a time."""
    batch, height, width, channels = x.shape
    tokens = x.reshape(batch, height * width, channels)
    idx = naive_indices(x, weight.shape[0], d)
    out = torch.empty_like(tokens)
    for b in range(batch):
        for n in range(height * width):
            members = tokens[b, idx[b, n]]  # (K', E)
            out[b, n] = (members * weight[: idx.shape[-1]]).sum(0) + bias
    return out.view(batch, height, width, channels)


def direct_float64_indices(tokens: torch.Tensor, k: int, d: int) -> torch.Tensor:
    """The definition in float64: direct differences (no expansion), centre first, then (distance, index)."""
    sub = tokens[..., ::d].double()
    dist = ((sub[:, :, None, :] - sub[:, None, :, :]) ** 2).sum(-1)
    dist.diagonal(dim1=1, dim2=2).fill_(float("-inf"))
    return torch.sort(dist, dim=-1, stable=True).indices[..., :k]


def integer_tokens(shape: tuple[int, ...], low: int = -3, high: int = 4, seed: int = 0) -> torch.Tensor:
    """Small integers: the distance expansion is exact in float32, so ties are real ties."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(low, high, shape, generator=g).float()


def offset_tokens(offset: float, seed: int = 0) -> torch.Tensor:
    """relu(x)^2 + c (4, 196, 480): StarReLU-like activations sharing the offset c. Uncentred, the float32
    expansion reordered 2.3 % of the rows at c = 20 and 34 % at c = 100."""
    g = torch.Generator().manual_seed(seed)
    return torch.relu(torch.randn(4, 196, 480, generator=g)) ** 2 + offset


def near_tie_tokens(batch: int, num_tokens: int = 1000, seed: int = 0) -> torch.Tensor:
    """Tokens on an integer grid plus tiny noise: many distances within float32 rounding of each other."""
    g = torch.Generator().manual_seed(seed)
    grid = torch.randint(0, 3, (batch, num_tokens, 16), generator=g).float()
    return grid + 1e-4 * torch.randn(batch, num_tokens, 16, generator=g) + 7.0


TOKENS = 12  # the spike case: token 0 is 256, the others 1; every row gathers all 12 tokens (K = 12)


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


def assert_spike_sums_in_float32(run, rounded_out=None, rounded_grad=None) -> None:
    """`run(tokens, idx, weight, bias)` under CPU bf16 autocast sums the K products, and the rows of grad_W and
    grad_bias, in float32 and rounds once: 267 exactly, 268 in bfloat16 (the given roundings where a kernel
    stores its own)."""
    tokens, idx, weight, bias, grad = spike_case()
    exact = 256.0 + (TOKENS - 1)
    assert bf16_sum([256.0] + [1.0] * (TOKENS - 1)) == 256.0, "summed in bfloat16, the ones are lost"
    tokens = tokens.requires_grad_()
    weight, bias = weight.requires_grad_(), bias.requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = run(tokens, idx, weight, bias)
    out.backward(grad)
    rounded = torch.tensor(exact).to(torch.bfloat16)  # 268: one rounding, at the end
    assert out.dtype == torch.bfloat16 and torch.all(out == (rounded_out or rounded)), out[0, :, 0]
    assert tokens.grad.dtype == torch.bfloat16 and torch.all(tokens.grad == (rounded_grad or rounded))
    assert bias.grad.dtype == torch.float32 and torch.all(bias.grad == exact)
    # grad_W[k] = sum_r x[(r + k) mod 12] * g[r]: integers below 2^24, exact in float32
    x64, g64 = tokens.detach().double()[0, :, 0], grad.double()[0, :, 0]
    want = torch.stack([(x64[(torch.arange(TOKENS) + k) % TOKENS] * g64).sum() for k in range(TOKENS)])
    assert weight.grad.dtype == torch.float32
    assert torch.equal(weight.grad[:, 0].double(), want), (weight.grad[:, 0], want)


def grads_of(fn, tokens: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, grad: torch.Tensor):
    """fn's output and the gradients of tokens, weight and bias for the output gradient `grad`."""
    leaves = [t.detach().clone().requires_grad_() for t in (tokens, weight, bias)]
    out = fn(*leaves)
    return out.detach(), torch.autograd.grad(out, leaves, grad)


def bf16_layer_case():
    """A DCConv(64, K = 12, d = 8) with random kernel and bias, bfloat16 StarReLU-like input, and the float64 result
    of the reference on the same indices."""
    from dccnext_cli.models.dcconv import DCConv, cluster_indices
    from dccnext_cli.models.dcconv_reference import cluster_conv_reference

    gen = torch.Generator().manual_seed(11)
    layer = DCConv(64, cluster_size=12, subvector_interval=8)
    torch.nn.init.normal_(layer.weight, generator=gen)
    torch.nn.init.normal_(layer.bias, generator=gen)
    x = (torch.relu(torch.randn(2, 6, 7, 64, generator=gen)) ** 2 + 3.0).to(torch.bfloat16)
    idx = cluster_indices(x.float(), 12, 8)
    ref = cluster_conv_reference(x.double().flatten(1, 2), idx, layer.weight.double(), layer.bias.double())
    return layer, x, ref.view(x.shape)


def assert_within_bf16_rounding(out: torch.Tensor, ref: torch.Tensor) -> None:
    """One rounding of the float64 result to bfloat16: at most half a unit in its last place (bfloat16 keeps 8
    significant bits), with a little room for float32's own error where the result lies on a rounding boundary."""
    assert out.dtype == torch.bfloat16
    err = (out.detach().double() - ref).abs()
    half_ulp = torch.exp2(torch.floor(torch.log2(ref.abs())) - 8)
    assert torch.all(err <= half_ulp * 1.01 + 1e-6), f"max error {float((err / half_ulp).max()):.2f} half-ulps"


def hostile_distances(seed: int) -> torch.Tensor:
    """(2, 24, 24) float32 distances with every case where int32 bit order and float order part or ties hide:
    small integers (many exact ties) in image 0, distinct values in image 1, then -0.0 beside +0.0, small
    negatives (expansion round-off), +-inf, NaNs with both signs and another payload; the diagonal -inf."""
    g = torch.Generator().manual_seed(seed)
    dist = torch.randint(0, 6, (2, 24, 24), generator=g).float()
    dist[1] = torch.rand(24, 24, generator=g) + 1.0  # distinct values: a special value is the row's only trap
    specials = torch.tensor([-0.0, 0.0, -1e-7, -3.0, float("inf"), float("-inf"), float("nan"), -float("nan")])
    odd_nan = torch.tensor([0x7FC00001], dtype=torch.int32).view(torch.float32)
    pool = torch.cat([specials, odd_nan])
    where = torch.rand(dist.shape, generator=g) < 0.04
    where[1, :6] = False  # rows with no special value and no tie
    dist[where] = pool[torch.randint(0, len(pool), (int(where.sum()),), generator=g)]
    dist.diagonal(dim1=1, dim2=2).fill_(float("-inf"))
    return dist
