"""DCConv, the dynamic clustering convolution of DCCNeXt (spec section 4).

Every token picks its K nearest tokens (itself first) by the squared L2 distance of a channel
sub-sample, and a depthwise kernel of K slots mixes the gathered cluster:

    Y[b, n, e] = sum_k U[b, idx[b, n, k], e] * W[k, e] + bias[e]

Two implementations of the cluster convolution live here: `cluster_conv_reference`, the plain
gather-multiply-sum of the paper that materialises (B, N, K, E), and `cluster_conv`, which loops over
the K slots and never builds that tensor. Tests hold the second to the first.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn as nn
from timm.layers import trunc_normal_

__all__ = [
    "DCConv",
    "cluster_indices",
    "cluster_conv",
    "cluster_conv_reference",
    "pairwise_sq_distances",
    "effective_cluster_size",
]


def effective_cluster_size(cluster_size: int, num_tokens: int) -> int:
    """K' = min(K, N): small maps (e.g. 3x3 tokens in stage 4 at 96 px) use the first N slots."""
    return min(cluster_size, num_tokens)


def _as_tokens(x: torch.Tensor) -> torch.Tensor:
    """(B, H, W, E) or (B, N, E) -> (B, N, E)."""
    if x.ndim == 4:
        return x.flatten(1, 2)
    if x.ndim == 3:
        return x
    raise ValueError(f"expected a (B, H, W, E) or (B, N, E) tensor, got shape {tuple(x.shape)}")


def pairwise_sq_distances(queries: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """Squared L2 distances (B, Nq, Nk) in one fused matmul: |q|^2 + |k|^2 - 2 q.k.

    Inputs are float32; the expansion cancels badly in half precision, which is why callers cast first.
    """
    q_sq = queries.pow(2).sum(-1, keepdim=True)  # (B, Nq, 1)
    k_sq = keys.pow(2).sum(-1).unsqueeze(1)  # (B, 1, Nk)
    return torch.baddbmm(q_sq + k_sq, queries, keys.transpose(1, 2), alpha=-2.0)


def _autocast_disabled(device: torch.device) -> contextlib.AbstractContextManager:
    """Distances stay float32 under mixed precision; the meta device (FLOP counting) has no autocast."""
    if device.type == "meta":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, enabled=False)


def cluster_indices(
        x: torch.Tensor,
        cluster_size: int,
        subvector_interval: int = 8,
) -> torch.Tensor:
    """Indices (B, N, K') of each token's cluster, int64: centre in slot 0, then ascending distance.

    Distances use the sub-vector of channels 0, d, 2d, ... (d = `subvector_interval`), are computed in
    float32 without gradient (also under autocast), and ties go to the lower token index, so that any
    correct implementation (chunked, exported) returns the same indices.
    """
    if cluster_size < 1:
        raise ValueError(f"cluster_size must be >= 1, got {cluster_size}")
    if subvector_interval < 1:
        raise ValueError(f"subvector_interval must be >= 1, got {subvector_interval}")
    tokens = _as_tokens(x)
    num_tokens = tokens.shape[1]
    k = effective_cluster_size(cluster_size, num_tokens)
    with torch.no_grad(), _autocast_disabled(tokens.device):
        sub = tokens[..., ::subvector_interval].float()
        dist = pairwise_sq_distances(sub, sub)
        # The centre is always a member and always first, whatever rounding does to its distance.
        dist.diagonal(dim1=1, dim2=2).fill_(float("-inf"))
        # A stable sort orders equal distances by token index; topk gives no such guarantee.
        return torch.sort(dist, dim=-1, stable=True).indices[..., :k]


def _flat_indices(idx: torch.Tensor, num_tokens: int) -> torch.Tensor:
    """Batch-local indices (B, N, K) -> indices into the flattened (B*N) token axis."""
    offsets = torch.arange(idx.shape[0], device=idx.device).view(-1, 1, 1) * num_tokens
    return (idx + offsets).flatten(0, 1)  # (B*N, K)


def cluster_conv_reference(
        tokens: torch.Tensor,
        idx: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """The paper's formulation (eq. 6): gather (B, N, K, E), multiply by W[:K], sum over K."""
    batch, num_tokens, channels = tokens.shape
    k = idx.shape[-1]
    gathered = tokens.reshape(batch * num_tokens, channels)[_flat_indices(idx, num_tokens)]  # (B*N, K, E)
    out = (gathered * weight[:k]).sum(1).view(batch, num_tokens, channels)
    return out if bias is None else out + bias


def cluster_conv(
        tokens: torch.Tensor,
        idx: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """Same result as `cluster_conv_reference`, one slot at a time: no (B, N, K, E) tensor in forward."""
    batch, num_tokens, channels = tokens.shape
    flat = tokens.reshape(batch * num_tokens, channels)
    flat_idx = _flat_indices(idx, num_tokens)
    out = flat.index_select(0, flat_idx[:, 0]) * weight[0]
    for slot in range(1, idx.shape[-1]):
        out = torch.addcmul(out, flat.index_select(0, flat_idx[:, slot]), weight[slot])
    out = out.view(batch, num_tokens, channels)
    return out if bias is None else out + bias


class DCConv(nn.Module):
    """Dynamic clustering convolution on channels-last (B, H, W, dim) tensors.

    Args:
        dim: channels E of the input (in DCCNeXt, twice the block width).
        cluster_size: K, the cluster size counting the centre.
        subvector_interval: d, distances use channels 0, d, 2d, ... (1 = all channels).
        bias: learnable per-channel bias (the paper's b).

    Set `keep_indices = True` to keep the cluster indices of the last forward in `last_indices`
    (for Figure 3); otherwise nothing is kept.
    """

    def __init__(
            self,
            dim: int,
            cluster_size: int = 12,
            subvector_interval: int = 8,
            bias: bool = True,
            device=None,
            dtype=None,
    ):
        super().__init__()
        if cluster_size < 1:
            raise ValueError(f"cluster_size must be >= 1, got {cluster_size}")
        if subvector_interval < 1:
            raise ValueError(f"subvector_interval must be >= 1, got {subvector_interval}")
        dd = {"device": device, "dtype": dtype}
        self.dim = dim
        self.cluster_size = cluster_size
        self.subvector_interval = subvector_interval
        self.weight = nn.Parameter(torch.empty(cluster_size, dim, **dd))
        self.bias = nn.Parameter(torch.zeros(dim, **dd)) if bias else None
        self.keep_indices = False
        self.last_indices: torch.Tensor | None = None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        trunc_normal_(self.weight, std=0.02)
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def extra_repr(self) -> str:
        return f"{self.dim}, cluster_size={self.cluster_size}, subvector_interval={self.subvector_interval}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, height, width, channels = x.shape
        idx = cluster_indices(x, self.cluster_size, self.subvector_interval)
        if self.keep_indices:
            self.last_indices = idx
        out = cluster_conv(x.reshape(batch, height * width, channels), idx, self.weight, self.bias)
        return out.view(batch, height, width, channels)

