"""The reference backend (the oracle) against naive definitions written straight from the paper.

Every test here runs DCConv with `backend="reference"`; the other backends' tests hold them to this one.
"""

from __future__ import annotations

import pytest
import torch
from dcconv_cases import (
    assert_spike_sums_in_float32,
    direct_float64_indices,
    hostile_distances,
    integer_tokens,
    naive_dcconv,
    naive_indices,
    near_tie_tokens,
    offset_tokens,
)

from dccnext_cli.models.dcconv import DCConv, cluster_conv, cluster_conv_reference, cluster_indices
from dccnext_cli.models.dcconv_reference import nearest_keyed, nearest_sorted, pairwise_sq_distances
from dccnext_cli.models.settings import use_operator_settings


@pytest.fixture(autouse=True)
def _reference():
    with use_operator_settings(backend="reference"):
        yield


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


def test_distances_equal_the_definition():
    g = torch.Generator().manual_seed(0)
    queries, keys = torch.randn(2, 7, 10, generator=g), torch.randn(2, 9, 10, generator=g)
    want = (queries.double()[:, :, None] - keys.double()[:, None]).pow(2).sum(-1)
    got = pairwise_sq_distances(queries, keys)
    assert got.dtype == torch.float32 and got.shape == (2, 7, 9)
    torch.testing.assert_close(got.double(), want, rtol=0, atol=1e-4)


@pytest.mark.parametrize("offset", [0.0, 20.0, 100.0])
def test_indices_survive_a_large_shared_offset(offset):
    tokens = offset_tokens(offset)
    assert torch.equal(cluster_indices(tokens, 12, 8), direct_float64_indices(tokens, 12, 8))


@pytest.mark.parametrize("chunk_elements", [4000, None])
def test_an_image_gets_the_same_indices_alone_and_in_a_batch(chunk_elements):
    # Chunks were batch x rows x tokens: alone, 4 query rows per matmul; among 8 images, 1. The matmul's rounding
    # depends on its shape, and 640 of 1000 rows of this image changed their indices.
    tokens = near_tie_tokens(8)
    alone = cluster_indices(tokens[:1], 12, 1, chunk_elements=chunk_elements)
    in_batch = cluster_indices(tokens, 12, 1, chunk_elements=chunk_elements)
    assert torch.equal(alone, in_batch[:1])
    last = cluster_indices(tokens[-1:], 12, 1, chunk_elements=chunk_elements)
    assert torch.equal(last, in_batch[-1:])


def test_chunked_indices_equal_one_block():
    # Chunking changes the matmul shapes; on well-separated data the indices must not move.
    g = torch.Generator().manual_seed(3)
    tokens = torch.randn(3, 300, 64, generator=g)
    one_block = cluster_indices(tokens, 12, 8, chunk_elements=1 << 30)
    assert torch.equal(cluster_indices(tokens, 12, 8, chunk_elements=900), one_block)
    assert torch.equal(one_block, direct_float64_indices(tokens, 12, 8))


def test_chunks_of_a_few_rows_keep_exact_ties():
    x = torch.randint(-2, 3, (2, 12, 10, 16), generator=torch.Generator().manual_seed(0)).float()  # many ties
    whole = cluster_indices(x, 12, 2)
    assert torch.equal(cluster_indices(x, 12, 2, chunk_elements=2 * 120 * 7), whole)  # 7 query rows per chunk
    assert torch.equal(whole, naive_indices(x, 12, 2))


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("k", [1, 5, 23, 24])
def test_keyed_selection_equals_the_stable_sort_on_hostile_distances(seed, k):
    dist = hostile_distances(seed)
    assert torch.equal(nearest_keyed(dist, k), nearest_sorted(dist, k))


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


def test_bf16_sums_in_float32_and_rounds_once():
    assert_spike_sums_in_float32(cluster_conv_reference)
    assert_spike_sums_in_float32(cluster_conv)


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
