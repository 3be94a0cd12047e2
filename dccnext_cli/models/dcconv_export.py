"""DCConv's export form: the reference's numbers in ops every exporter and runtime takes.

One target names the whole form (`operator_settings().export_target`):

- "torch" (torch.export, TorchScript tracing and scripting): distances in one block, a stable sort, and the
  cluster convolution one slot at a time (`cluster_conv_plain`: the memory of one activation, not K');
- "onnx" (what `export` writes for onnxruntime; ONNX has no Sort): a `topk`, whose ties go to the lower index
  (the stable sort's rule), a mask instead of an in-place diagonal fill, and the reference's one gather of all
  K' slots (onnxruntime ran it 1.2x (batch 32) to 3x (batch 1) faster than the loop's 3K' ops). The exact GELU
  of `optimize_for_inference` is written in the op order onnxruntime fuses into one Gelu node.

Centring here is float32 (ONNX Runtime refused the float32/float64 mix); the tests hold both targets to the
reference.
"""

from __future__ import annotations

import torch

from .dcconv_reference import (
    accumulation_dtype,
    as_dtype,
    as_tokens,
    autocast_disabled,
    centred,
    cluster_conv_reference,
    effective_cluster_size,
    flat_indices,
    nearest_sorted,
    pairwise_sq_distances,
)

__all__ = ["exporting", "cluster_indices_export", "cluster_conv_export", "cluster_conv_plain",
           "cluster_indices_sorted"]


def exporting() -> bool:
    """True while exporting, tracing (torch.jit) or scripting: then only plain aten ops are used. (FX symbolic
    tracing never runs DCConv: it is a leaf module and its two functions are wrapped, dcconv.py.)"""
    if torch.jit.is_scripting() or torch.jit.is_tracing():
        return True
    if torch.onnx.is_in_onnx_export():
        return True
    return bool(torch.compiler.is_exporting())


def cluster_indices_sorted(x: torch.Tensor, cluster_size: int, subvector_interval: int) -> torch.Tensor:
    """The cluster indices of a (B, H, W, E) map by the definition: one block of distances, a stable sort.
    What TorchScript runs (scripting compiles this and nothing of the eager backends)."""
    batch, height, width, channels = x.shape
    k = min(cluster_size, height * width)
    with torch.no_grad():
        sub = x.reshape(batch, height * width, channels)[:, :, ::subvector_interval].float()
        sub = centred(sub, sub)
        dist = pairwise_sq_distances(sub, sub)
        dist.diagonal(dim1=1, dim2=2).fill_(float("-inf"))
        return nearest_sorted(dist, k)


def cluster_indices_export(x: torch.Tensor, cluster_size: int, subvector_interval: int, target: str) -> torch.Tensor:
    """Indices (B, N, K') in one block of distances: a stable sort ("torch") or a topk over a mask ("onnx")."""
    tokens = as_tokens(x)
    num_tokens = tokens.shape[1]
    k = effective_cluster_size(cluster_size, num_tokens)
    with torch.no_grad(), autocast_disabled(tokens.device):
        sub = tokens[..., ::subvector_interval].float()
        sub = centred(sub, sub)
        dist = pairwise_sq_distances(sub, sub)
        if target == "torch":
            dist.diagonal(dim1=1, dim2=2).fill_(float("-inf"))
            return nearest_sorted(dist, k)
        eye = torch.eye(num_tokens, dtype=torch.bool, device=dist.device)
        dist = dist.masked_fill(eye, float("-inf"))
        return torch.topk(dist, k, dim=-1, largest=False, sorted=True).indices


def cluster_conv_plain(
        tokens: torch.Tensor,
        idx: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """One slot at a time in plain out-of-place aten ops (float32 sums): no (B, N, K, E) tensor."""
    batch, num_tokens, channels = tokens.shape
    acc = accumulation_dtype(tokens, weight)
    flat = as_dtype(tokens.reshape(batch * num_tokens, channels), acc)
    weight = as_dtype(weight, acc)
    slots = flat_indices(idx, num_tokens)
    out = flat.index_select(0, slots[:, 0]) * weight[0]
    for slot in range(1, idx.shape[-1]):
        out = torch.addcmul(out, flat.index_select(0, slots[:, slot]), weight[slot])
    out = out.view(batch, num_tokens, channels)
    out = out if bias is None else out + as_dtype(bias, acc)
    return as_dtype(out, tokens.dtype)


def cluster_conv_export(tokens: torch.Tensor, idx: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                        target: str) -> torch.Tensor:
    """The loop ("torch") or the reference's one gather ("onnx")."""
    if target == "onnx":
        return cluster_conv_reference(tokens, idx, weight, bias)
    return cluster_conv_plain(tokens, idx, weight, bias)
