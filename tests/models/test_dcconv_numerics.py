"""DCConv's indices where float32 is hard: shared offsets (cancellation) and batch composition (chunking)."""

from __future__ import annotations

import pytest
import torch

from dccnext_cli import cluster_indices
from dccnext_cli.models.dcconv import cluster_indices_sorted


def direct_float64_indices(tokens: torch.Tensor, k: int, d: int) -> torch.Tensor:
    """The definition in float64: direct differences (no expansion), centre first, then (distance, index)."""
    sub = tokens[..., ::d].double()
    dist = ((sub[:, :, None, :] - sub[:, None, :, :]) ** 2).sum(-1)
    dist.diagonal(dim1=1, dim2=2).fill_(float("-inf"))
    return torch.sort(dist, dim=-1, stable=True).indices[..., :k]


@pytest.mark.parametrize("offset", [0.0, 20.0, 100.0])
def test_indices_survive_a_large_shared_offset(offset):
    # relu(x)^2 + c: StarReLU-like activations, all sharing the offset c. Uncentred, the float32 expansion
    # reordered 2.3 % of the rows at c = 20 and 34 % at c = 100.
    g = torch.Generator().manual_seed(0)
    tokens = torch.relu(torch.randn(4, 196, 480, generator=g)) ** 2 + offset
    expected = direct_float64_indices(tokens, 12, 8)
    assert torch.equal(cluster_indices(tokens, 12, 8), expected)


@pytest.mark.parametrize("offset", [0.0, 100.0])
def test_torchscript_indices_survive_a_large_shared_offset(offset):
    # TorchScript runs `cluster_indices_sorted`: one block, a stable sort, float32 centring (scriptable). Uncentred,
    # 34 % of the rows were reordered at c = 100.
    g = torch.Generator().manual_seed(0)
    tokens = torch.relu(torch.randn(4, 196, 480, generator=g)) ** 2 + offset
    scripted = torch.jit.script(cluster_indices_sorted)
    got = scripted(tokens.view(4, 14, 14, 480), 12, 8)
    assert torch.equal(got, direct_float64_indices(tokens, 12, 8))


def near_tie_tokens(batch: int, num_tokens: int = 1000, seed: int = 0) -> torch.Tensor:
    """Tokens on an integer grid plus tiny noise: many distances within float32 rounding of each other."""
    g = torch.Generator().manual_seed(seed)
    grid = torch.randint(0, 3, (batch, num_tokens, 16), generator=g).float()
    return grid + 1e-4 * torch.randn(batch, num_tokens, 16, generator=g) + 7.0


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


def _hostile_distances(seed: int) -> torch.Tensor:
    """(2, 24, 24) float32 distances with every case where int32 bit order and float order part or ties
    hide: small integers (many exact ties) in image 0, distinct values in image 1, then -0.0 beside +0.0,
    small negatives (expansion round-off), +-inf, NaNs with both signs and another payload; the diagonal
    -inf as `_indices_chunked` sets it."""
    g = torch.Generator().manual_seed(seed)
    dist = torch.randint(0, 6, (2, 24, 24), generator=g).float()
    dist[1] = torch.rand(24, 24, generator=g) + 1.0  # distinct values: a special value is the row's only trap
    specials = torch.tensor([-0.0, 0.0, -1e-7, -3.0, float("inf"), float("-inf"), float("nan"), -float("nan")])
    odd_nan = torch.tensor([0x7FC00001], dtype=torch.int32).view(torch.float32)
    pool = torch.cat([specials, odd_nan])
    where = torch.rand(dist.shape, generator=g) < 0.04
    where[1, :6] = False  # rows with no special value and no tie: the fast path's rows
    dist[where] = pool[torch.randint(0, len(pool), (int(where.sum()),), generator=g)]
    dist.diagonal(dim1=1, dim2=2).fill_(float("-inf"))
    return dist


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("k", [1, 5, 23, 24])
def test_fast_selection_equals_the_stable_sort_on_hostile_distances(seed, k):
    from dccnext_cli.models.dcconv import _nearest_keyed, _nearest_sorted, _nearest_topk

    dist = _hostile_distances(seed)
    expected = _nearest_sorted(dist, k)
    assert torch.equal(_nearest_topk(dist, k), expected)
    assert torch.equal(_nearest_keyed(dist, k), expected)
