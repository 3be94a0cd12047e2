"""DCConv's reference formulation: the oracle every other backend is held to (docs/model.md, section 2).

    idx[b, n]  = the K' = min(K, N) nearest tokens of token n (itself first) by the squared L2 distance of the
                 sub-vector of channels 0, d, 2d, ..., ties to the lower token index
    Y[b, n, e] = sum_k U[b, idx[b, n, k], e] * W[k, e] + bias[e]

Distances are float32 (whatever the input's dtype, also under autocast) of sub-vectors centred per image, one
matmul of augmented rows per image, in chunks of `chunk_elements // N` query rows: memory O(chunk x N), and a
count of rows that depends on N alone, so an image gets the same indices alone and inside any batch. Selection
is one `topk` of unique int64 keys (the distance's bits, then the token index): exact, the stable sort's tie rule,
nothing read back to the host. The convolution gathers (B*N, K', E) in one `index_select`, multiplies by W and
sums over K' in float32 (`accumulation_dtype`), returning the input's dtype; its backward is autograd's.
Every function here is plain aten ops, so the Inductor backend compiles these same functions.
"""

from __future__ import annotations

import contextlib

import torch

__all__ = [
    "accumulation_dtype",
    "as_tokens",
    "bias_grad",
    "autocast_disabled",
    "centred",
    "cluster_conv_reference",
    "cluster_conv_reference_backward",
    "cluster_indices_reference",
    "effective_cluster_size",
    "fits_one_chunk",
    "grad_and_autocast_off",
    "nearest_keyed",
    "nearest_sorted",
    "pairwise_sq_distances",
    "select_all",
    "select_chunk",
    "subvector_rows",
]


def effective_cluster_size(cluster_size: int, num_tokens: int) -> int:
    """K' = min(K, N): small maps (e.g. 3x3 tokens in stage 4 at 96 px) use the first N slots."""
    return min(cluster_size, num_tokens)


def accumulation_dtype(tokens: torch.Tensor, weight: torch.Tensor) -> torch.dtype:
    """The precision rule of every cluster convolution: sums in float32 (float64 when an operand is float64),
    whatever the input's dtype; the result comes back in the input's dtype."""
    return torch.promote_types(torch.promote_types(tokens.dtype, weight.dtype), torch.float32)


def as_dtype(tensor: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """`tensor` in `dtype`, with no op at all when it already is (exported float32 graphs stay as they were)."""
    return tensor if tensor.dtype == dtype else tensor.to(dtype)


def as_tokens(x: torch.Tensor) -> torch.Tensor:
    """(B, H, W, E) or (B, N, E) -> (B, N, E)."""
    if x.ndim == 4:
        return x.flatten(1, 2)
    if x.ndim == 3:
        return x
    raise ValueError(f"expected a (B, H, W, E) or (B, N, E) tensor, got shape {tuple(x.shape)}")


def _augmented_queries(queries: torch.Tensor) -> torch.Tensor:
    """Rows [q, |q|^2, 1] (B, N, S+2): their dot products with `_augmented_keys` rows are squared distances.

    [q, |q|^2, 1] . [-2k, 1, |k|^2] = |q|^2 + |k|^2 - 2 q.k, so the distances are one plain matmul (about 1.5x
    faster than `baddbmm` at N = 4000 tokens), with the same cancellation as any expansion.
    """
    sq = queries.pow(2).sum(-1, keepdim=True)
    return torch.cat([queries, sq, torch.ones_like(sq)], dim=-1)


def _augmented_keys(keys: torch.Tensor) -> torch.Tensor:
    """Rows [-2k, 1, |k|^2] (B, N, S+2), the other side of `_augmented_queries`."""
    sq = keys.pow(2).sum(-1, keepdim=True)
    return torch.cat([keys * -2.0, torch.ones_like(sq), sq], dim=-1)


def pairwise_sq_distances(queries: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """Squared L2 distances (B, Nq, Nk) in one matmul of augmented rows: |q|^2 + |k|^2 - 2 q.k (float32 inputs)."""
    return torch.bmm(_augmented_queries(queries), _augmented_keys(keys).transpose(1, 2))


def centred(sub: torch.Tensor, wide: torch.Tensor) -> torch.Tensor:
    """`sub` (B, N, S) less its per-image channel means rounded to a power-of-two grid at or below the spread.

    Distances do not change under a common shift, but the expansion loses them to cancellation when the
    sub-vectors share a large offset (StarReLU outputs, all >= its bias: with relu(x)^2 + 100 float32 reordered a
    third of the clusters). Rounding the shift to the grid keeps coarse data (integers) exact, so exact ties stay
    ties. Mean and spread are taken over `wide` (the same values in float64, or float32 in exported graphs), so the
    shift is the same whatever else is in the batch. Plain ops only: TorchScript compiles it.
    """
    mean = wide.mean(dim=1, keepdim=True)  # two passes, not std_mean: its Welford loop over dim 1 ran 3-30x slower
    std = (wide - mean).square().mean(dim=1, keepdim=True).sqrt()
    step = torch.exp2(torch.floor(torch.log2(std.clamp_min(2.0 ** -100))))
    shift = torch.nan_to_num(torch.round(mean / step) * step, nan=0.0, posinf=0.0, neginf=0.0)  # NaN/inf tokens
    return sub - shift.to(sub.dtype)


def subvector_rows(tokens: torch.Tensor, subvector_interval: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(queries, keys^T) of the centred float32 sub-vectors: the two operands of every chunk's distance matmul."""
    sub = tokens[..., ::subvector_interval].float()
    sub = centred(sub, sub.double())
    return _augmented_queries(sub), _augmented_keys(sub).transpose(1, 2)


def nearest_sorted(dist: torch.Tensor, k: int) -> torch.Tensor:
    """The definition: a stable sort orders equal distances by token index."""
    return torch.sort(dist, dim=-1, stable=True).indices[..., :k]


def _order_keys(values: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Unique int64 keys that sort like (value, id) under a stable sort of the values.

    The high 32 bits are the float32 bits mapped to a signed int that orders like the float (-0.0 made
    +0.0, every NaN above +inf, as `sort` places it); the low 32 bits are the token index.
    """
    bits = (values + 0.0).view(torch.int32)  # + 0.0: -0.0 -> +0.0, they compare equal
    bits = torch.where(bits < 0, bits ^ 0x7FFFFFFF, bits)  # negative floats: larger magnitude, smaller key
    bits = torch.where(values.isnan(), 0x7FFFFFFF, bits)
    return bits.to(torch.int64) * (1 << 32) + ids


def nearest_keyed(dist: torch.Tensor, k: int) -> torch.Tensor:
    """Same indices as `nearest_sorted` from one topk of unique (value, index) keys: exact, no ties."""
    ids = torch.arange(dist.shape[-1], device=dist.device)
    keys = _order_keys(dist, ids).topk(k, dim=-1, largest=False, sorted=True).values
    return keys & 0xFFFFFFFF


def select_chunk(queries: torch.Tensor, keys_t: torch.Tensor, start: int, k: int) -> torch.Tensor:
    """Indices (b, rows, k) of the query rows `start`.. of a chunk: distances, the centre forced first, top-k.

    The centre is always a member and always first, whatever rounding does to its own distance.
    """
    dist = torch.bmm(queries, keys_t)
    rows = torch.arange(dist.shape[1], device=dist.device)[:, None] + start
    cols = torch.arange(dist.shape[2], device=dist.device)[None, :]
    dist = torch.where(rows == cols, float("-inf"), dist)
    return nearest_keyed(dist, k)


def select_all(tokens: torch.Tensor, subvector_interval: int, k: int) -> torch.Tensor:
    """Indices of every query row in one step (`subvector_rows`, then `select_chunk` from row 0): what a batch whose
    distances fit one chunk runs, in one compiled call on the Inductor backend instead of two."""
    queries, keys_t = subvector_rows(tokens, subvector_interval)
    return select_chunk(queries, keys_t, 0, k)


def fits_one_chunk(batch: int, num_tokens: int, chunk_elements: int) -> bool:
    """Every distance of the batch in one chunk: the case `select_all` computes in one step."""
    return batch * num_tokens * num_tokens <= chunk_elements


def grad_and_autocast_off(device: torch.device) -> bool:
    """Neither autograd nor autocast is on: there is nothing for `no_grad` and `autocast_disabled` to switch off
    (entering the two contexts costs ~10 us a call, a noticeable part of a layer at batch 1)."""
    return not (torch.is_grad_enabled() or torch.is_autocast_enabled(device.type))


def autocast_disabled(device: torch.device) -> contextlib.AbstractContextManager:
    """Distances stay float32 under mixed precision; the meta device (FLOP counting) has no autocast."""
    if device.type == "meta":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, enabled=False)


def cluster_indices_reference(
        x: torch.Tensor, cluster_size: int, subvector_interval: int, chunk_elements: int,
        prepare=subvector_rows, select=select_chunk, whole=select_all,
) -> torch.Tensor:
    """Indices (B, N, K') int64 of each token's cluster: centre in slot 0, then ascending distance.

    Query rows in chunks of `chunk_elements // N`, as many images at once as fit `chunk_elements`; the number of
    chunks depends on N (and on the batch only beyond that many images). `prepare` and `select` are this module's
    `subvector_rows` and `select_chunk` (`whole`: `select_all`, when one chunk holds everything), or the same
    functions compiled (the Inductor backend).
    """
    tokens = as_tokens(x)
    batch, num_tokens, _ = tokens.shape
    k = effective_cluster_size(cluster_size, num_tokens)
    with torch.no_grad(), autocast_disabled(tokens.device):
        if tokens.device.type == "meta":  # shapes only (the FLOP count)
            return tokens.new_empty((batch, num_tokens, k), dtype=torch.int64)
        if fits_one_chunk(batch, num_tokens, chunk_elements):
            return whole(tokens, subvector_interval, k)
        rows = min(num_tokens, max(1, chunk_elements // max(1, num_tokens)))
        group = max(1, chunk_elements // (rows * num_tokens))  # images per chunk
        queries, keys_t = prepare(tokens, subvector_interval)
        out = torch.empty((batch, num_tokens, k), dtype=torch.int64, device=tokens.device)
        for first in range(0, batch, group):
            images = slice(first, min(batch, first + group))
            for start in range(0, num_tokens, rows):
                stop = min(num_tokens, start + rows)
                out[images, start:stop] = select(queries[images, start:stop], keys_t[images], start, k)
        return out


def cluster_conv_reference(
        tokens: torch.Tensor,
        idx: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """The paper's formulation (eq. 6): gather (B, N, K, E), multiply by W[:K], sum over K (in float32)."""
    batch, num_tokens, channels = tokens.shape
    k = idx.shape[-1]
    acc = accumulation_dtype(tokens, weight)  # cast before the gather: its backward sums in acc too
    flat = as_dtype(tokens.reshape(batch * num_tokens, channels), acc)
    # index_select of the flattened indices: an ONNX Gather (indexing by the 2-D indices exports as GatherND,
    # which onnxruntime ran 1.2-2x slower); Inductor makes one fused loop of it
    gathered = flat.index_select(0, flat_indices(idx, num_tokens).reshape(-1)).view(batch * num_tokens, k, channels)
    out = (gathered * as_dtype(weight[:k], acc)).sum(1).view(batch, num_tokens, channels)
    out = out if bias is None else out + as_dtype(bias, acc)
    return as_dtype(out, tokens.dtype)


def cluster_conv_reference_backward(grad: torch.Tensor, tokens: torch.Tensor, idx: torch.Tensor,
                                    weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The reference's gradients written out, (grad_tokens, grad_weight[:K']): grad_x by index_add of grad * W[k],
    grad_W[k] by the sum of the gathered rows times grad, both in float32 (`accumulation_dtype`)."""
    channels = tokens.shape[-1]
    k = idx.shape[-1]
    acc = accumulation_dtype(tokens, weight)
    flat = as_dtype(tokens.reshape(-1, channels), acc)
    rows = flat_indices(idx, tokens.shape[1]).reshape(-1)
    g = as_dtype(grad.reshape(-1, 1, channels), acc)
    products = (g * as_dtype(weight[:k], acc)).reshape(-1, channels)
    grad_flat = torch.zeros_like(flat).index_add_(0, rows, products)
    grad_weight = (flat.index_select(0, rows).view(-1, k, channels) * g).sum(0)
    return as_dtype(grad_flat.view(tokens.shape), tokens.dtype), as_dtype(grad_weight, weight.dtype)


def bias_grad(grad: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The bias's gradient: the output gradient summed over every token in float32, in the bias's dtype."""
    total = grad.reshape(-1, grad.shape[-1]).sum(0, dtype=torch.promote_types(grad.dtype, torch.float32))
    return as_dtype(total, dtype)


def flat_indices(idx: torch.Tensor, num_tokens: int) -> torch.Tensor:
    """Batch-local indices (B, N, K) -> indices into the flattened (B*N) token axis, (B*N, K)."""
    offsets = torch.arange(idx.shape[0], device=idx.device).view(-1, 1, 1) * num_tokens
    return (idx + offsets).flatten(0, 1)
