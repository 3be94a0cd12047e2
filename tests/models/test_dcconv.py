"""DCConv against a naive reference written straight from the paper (docs/model.md, section 2)."""

from __future__ import annotations

import pytest
import torch

from dccnext_cli import DCConv, cluster_conv, cluster_conv_reference, cluster_indices


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


def integer_tokens(shape: tuple[int, ...], low: int = -3, high: int = 4, seed: int = 0) -> torch.Tensor:
    """Small integers: the distance expansion is exact in float32, so ties are real ties."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(low, high, shape, generator=g).float()


@pytest.mark.parametrize("k,d", [(12, 8), (5, 1), (18, 3)])
def test_indices_match_naive_reference_with_ties(k, d):
    x = integer_tokens((2, 5, 6, 24))
    got = cluster_indices(x, k, d)
    assert got.dtype == torch.int64
    assert got.shape == (2, 30, min(k, 30))
    torch.testing.assert_close(got, naive_indices(x, k, d), rtol=0, atol=0)


def test_duplicated_tokens_keep_centre_first_and_order_by_index():
    x = torch.zeros(1, 3, 3, 8)
    x[0, 0, 0] = 5.0  # one outlier; the other 8 tokens are identical duplicates
    idx = cluster_indices(x, 4, 1)[0]
    assert idx[:, 0].tolist() == list(range(9)), "the centre is always slot 0"
    # Token 4 sees 8 duplicates at distance 0: the lowest indices other than itself come next.
    assert idx[4].tolist() == [4, 1, 2, 3]
    # The outlier is farthest from everyone, so it never enters a duplicate's cluster of 4.
    assert all(0 not in row[1:].tolist() for row in idx[1:])
    torch.testing.assert_close(idx, naive_indices(x, 4, 1)[0], rtol=0, atol=0)


def test_centre_is_slot_zero_even_when_rounding_would_move_it():
    g = torch.Generator().manual_seed(1)
    x = (torch.randn(2, 7, 7, 64, generator=g) * 1e3) + 1e4  # large offsets: the expansion cancels badly
    idx = cluster_indices(x, 12, 8)
    assert torch.equal(idx[..., 0], torch.arange(49).expand(2, 49))


def test_subvector_interval_uses_channels_0_d_2d():
    d = 4
    x = integer_tokens((1, 4, 4, 16), seed=3)
    base = cluster_indices(x, 6, d)
    other = x.clone()
    other[..., [c for c in range(16) if c % d]] = torch.randn(1, 4, 4, 12) * 100  # channels never sampled
    assert torch.equal(cluster_indices(other, 6, d), base)
    moved = x.clone()
    moved[0, 0, 0, d] += 50.0  # channel d is sampled: token 0 must leave everyone's cluster
    changed = cluster_indices(moved, 6, d)
    assert not torch.equal(changed, base)
    assert all(0 not in row[1:].tolist() for row in changed[0, 1:])


def test_cluster_size_is_clamped_on_small_maps():
    x = torch.randn(2, 3, 3, 16)
    assert cluster_indices(x, 18, 8).shape == (2, 9, 9)
    layer = DCConv(16, cluster_size=18, subvector_interval=8)
    assert layer(x).shape == x.shape


def test_dcconv_matches_naive_reference():
    layer = DCConv(24, cluster_size=7, subvector_interval=2)
    with torch.no_grad():
        layer.weight.normal_()
        layer.bias.normal_()
    x = integer_tokens((2, 4, 5, 24), seed=5) + 0.25 * torch.randn(2, 4, 5, 24)
    expected = naive_dcconv(x.double(), layer.weight.double(), layer.bias.double(), 2).float()
    torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-5)


def test_loop_and_gather_formulations_agree():
    tokens = torch.randn(3, 20, 32)
    idx = cluster_indices(tokens, 6, 4)
    weight, bias = torch.randn(6, 32), torch.randn(32)
    torch.testing.assert_close(
        cluster_conv(tokens, idx, weight, bias), cluster_conv_reference(tokens, idx, weight, bias)
    )


def well_separated_tokens(batch: int, height: int, width: int, channels: int) -> torch.Tensor:
    """Sub-vector distances far apart (distinct integers x10), so a 1e-6 nudge never reorders clusters."""
    n = height * width
    perm = torch.randperm(n * batch).view(batch, n, 1).double()
    x = torch.randn(batch, n, channels, dtype=torch.float64)
    x[..., 0:1] = perm * 10.0
    return x.view(batch, height, width, channels)


def test_gradcheck_input_weight_bias_float64():
    x = well_separated_tokens(1, 3, 3, 6).requires_grad_()
    weight = torch.randn(4, 6, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(6, dtype=torch.float64, requires_grad=True)

    def fn(inp, w, b):
        idx = cluster_indices(inp, w.shape[0], 3)
        return cluster_conv(inp.reshape(1, 9, 6), idx, w, b)

    assert torch.autograd.gradcheck(fn, (x, weight, bias), eps=1e-6, atol=1e-6)


def test_no_gradient_flows_through_indices():
    x = torch.randn(1, 4, 4, 8, requires_grad=True)
    layer = DCConv(8, 5, 2)
    layer(x).sum().backward()
    # d out / d x[token] = sum of W[k] over the (token, k) slots where the token was gathered: nothing else.
    idx = cluster_indices(x, 5, 2)[0]
    expected = torch.zeros(16, 8)
    for n in range(16):
        for k in range(5):
            expected[idx[n, k]] += layer.weight[k].detach()
    torch.testing.assert_close(x.grad.view(16, 8), expected)
    assert layer.bias.grad is not None and torch.allclose(layer.bias.grad, torch.full((8,), 16.0))


def test_distances_stay_float32_under_autocast():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, 6, 6, 32, generator=g) + 30  # bfloat16 would scramble these distances
    ref = cluster_indices(x, 12, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = cluster_indices(x, 12, 8)
        # what an unprotected bf16 expansion would give: the test can tell the two apart
        sub = x.flatten(1, 2)[..., ::8]
        sq = sub.pow(2).sum(-1)
        bf16 = torch.baddbmm(sq[:, :, None] + sq[:, None, :], sub, sub.transpose(1, 2), alpha=-2)
    assert bf16.dtype == torch.bfloat16
    bf16.diagonal(dim1=1, dim2=2).fill_(float("-inf"))
    assert not torch.equal(bf16.float().sort(dim=-1, stable=True).indices[..., :12], ref)
    torch.testing.assert_close(got, ref, rtol=0, atol=0)


def test_indices_are_kept_only_when_asked():
    layer = DCConv(16, 4, 8)
    x = torch.randn(1, 4, 4, 16)
    out = layer(x)
    assert layer.last_indices is None
    layer.keep_indices = True
    out_kept = layer(x)
    torch.testing.assert_close(out, out_kept, rtol=0, atol=0)
    assert torch.equal(layer.last_indices, cluster_indices(x, 4, 8))


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="cluster_size"):
        DCConv(8, 0, 1)
    with pytest.raises(ValueError, match="subvector_interval"):
        cluster_indices(torch.randn(1, 2, 2, 8), 3, 0)
