"""DCConv, the dynamic clustering convolution of DCCNeXt (docs/model.md, section 2).

Every token picks its K nearest tokens (itself first) by the squared L2 distance of a channel
sub-sample, and a depthwise kernel of K slots mixes the gathered cluster:

    Y[b, n, e] = sum_k U[b, idx[b, n, k], e] * W[k, e] + bias[e]

The cluster convolution has three formulations that give the same numbers:

- `cluster_conv_reference`: the paper's gather-multiply-sum; it materialises (B, N, K, E). Tests hold
  the others to it. The ONNX export writes it too (`export_cluster_conv="gather"`): onnxruntime runs its
  three ops faster than the loop's 3K.
- the plain loop over K (`cluster_conv_plain`): aten ops only, what `torch.export`, ONNX export, tracing
  and scripting see (`exporting()` is the switch).
- the fast operator used in eager mode: an autograd function whose forward accumulates one slot at a time
  into the output and whose backward keeps only the input, the int indices and the weight. Under
  `torch.compile` the default is to hand Inductor the gather formulation, which it fuses into one loop
  (`operator_settings().compile_impl == "inductor"`); `"custom_op"` uses the same kernels as a
  `torch.library` op instead.

Cluster indices come from float32 distances of the centred sub-vectors (their per-image mean
subtracted: the same distances, without the cancellation a shared offset causes) in one matmul of
augmented rows per image, computed in chunks of `operator_settings().distance_chunk_elements // N` query
rows (memory O(chunk x N), not O(N^2); independent of the batch, so an image's indices never depend on
what else is in the batch), and selected with a `topk` of the bits read as int32 plus an exact fix-up that
reproduces a stable sort's tie rule (equal distances -> lower token index first). Exported graphs select with
a stable sort, or for ONNX (which has no Sort) with `cluster_indices_topk`; the switches live in
`models/settings.py`.

Eager mode has a CPU path (cache-sized blocks, and two shortcuts that read a flag back from the tensor) and a
device path (`on_device_path`: whole-tensor ops, exact keyed top-k for every row, nothing read back, a launch
count that does not grow with batch x tokens; the Triton kernels by default on CUDA). Every formulation sums
in float32 and returns the input's dtype (`accumulation_dtype`), gradients included.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util

import torch
import torch.nn as nn
from timm.layers import register_notrace_module, trunc_normal_
from torch.utils.flop_counter import register_flop_formula

from .settings import operator_settings

__all__ = [
    "DCConv",
    "cluster_indices",
    "cluster_indices_topk",
    "cluster_indices_sorted",
    "cluster_conv",
    "cluster_conv_plain",
    "cluster_conv_reference",
    "pairwise_sq_distances",
    "effective_cluster_size",
    "exporting",
    "watched_by_dispatch_mode",
]

def effective_cluster_size(cluster_size: int, num_tokens: int) -> int:
    """K' = min(K, N): small maps (e.g. 3x3 tokens in stage 4 at 96 px) use the first N slots."""
    return min(cluster_size, num_tokens)


def exporting() -> bool:
    """True while exporting, tracing (torch.jit or FX) or scripting: then only plain aten ops are used."""
    if torch.jit.is_scripting() or torch.jit.is_tracing() or torch.fx._symbolic_trace.is_fx_symbolic_tracing():
        return True
    if torch.onnx.is_in_onnx_export():
        return True
    return bool(torch.compiler.is_exporting())


def _as_tokens(x: torch.Tensor) -> torch.Tensor:
    """(B, H, W, E) or (B, N, E) -> (B, N, E)."""
    if x.ndim == 4:
        return x.flatten(1, 2)
    if x.ndim == 3:
        return x
    raise ValueError(f"expected a (B, H, W, E) or (B, N, E) tensor, got shape {tuple(x.shape)}")


def _augmented_queries(queries: torch.Tensor) -> torch.Tensor:
    """Rows [q, |q|^2, 1] (B, N, S+2): their dot products with `_augmented_keys` rows are squared distances.

    [q, |q|^2, 1] . [-2k, 1, |k|^2] = |q|^2 + |k|^2 - 2 q.k, so the distances are one plain matmul: no
    (Nq, Nk) broadcast sum to build first and add into (what `baddbmm` does), about 1.5x faster at
    N = 4000 tokens (a 1280x800 image in stage 3), and the same cancellation as any expansion.
    """
    sq = queries.pow(2).sum(-1, keepdim=True)
    return torch.cat([queries, sq, torch.ones_like(sq)], dim=-1)


def _augmented_keys(keys: torch.Tensor) -> torch.Tensor:
    """Rows [-2k, 1, |k|^2] (B, N, S+2), the other side of `_augmented_queries`."""
    sq = keys.pow(2).sum(-1, keepdim=True)
    return torch.cat([keys * -2.0, torch.ones_like(sq), sq], dim=-1)


def pairwise_sq_distances(queries: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """Squared L2 distances (B, Nq, Nk) in one matmul of augmented rows: |q|^2 + |k|^2 - 2 q.k.

    Inputs are float32; the expansion cancels badly in half precision, which is why callers cast first.
    """
    return torch.bmm(_augmented_queries(queries), _augmented_keys(keys).transpose(1, 2))


def _autocast_disabled(device: torch.device) -> contextlib.AbstractContextManager:
    """Distances stay float32 under mixed precision; the meta device (FLOP counting) has no autocast."""
    if device.type == "meta":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, enabled=False)


def _nearest_sorted(dist: torch.Tensor, k: int) -> torch.Tensor:
    """The definition: a stable sort orders equal distances by token index."""
    return torch.sort(dist, dim=-1, stable=True).indices[..., :k]


def _order_keys(values: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Unique int64 keys that sort like (value, id) under a stable sort of the values.

    The high 32 bits are the float32 bits mapped to a signed int that orders like the float (-0.0 made
    +0.0, every NaN above +inf, as `sort` places it); the low 32 bits are the token index.
    """
    bits = (values + 0.0).view(torch.int32)  # + 0.0: -0.0 -> +0.0, they compare equal
    bits = torch.where(bits < 0, bits ^ 0x7FFFFFFF, bits)  # negative floats: larger magnitude, smaller key
    bits = bits.masked_fill_(values.isnan(), 0x7FFFFFFF)
    return bits.to(torch.int64).mul_(1 << 32).add_(ids)


def _nearest_keyed(dist: torch.Tensor, k: int) -> torch.Tensor:
    """Same indices as `_nearest_sorted` from one topk of unique (value, index) keys: exact, no ties."""
    ids = torch.arange(dist.shape[-1], device=dist.device)
    keys = _order_keys(dist, ids).topk(k, dim=-1, largest=False, sorted=True).values
    return keys.bitwise_and_(0xFFFFFFFF)


_NEG_INF_BITS = -8388608  # float32 -inf (the centre's distance) viewed as int32
_POS_INF_BITS = 0x7F800000  # float32 +inf viewed as int32: every NaN's bits are above it


def _nearest_topk(dist: torch.Tensor, k: int) -> torch.Tensor:
    """Same indices as `_nearest_sorted`, several times faster: one int32 topk of k+1, then a check.

    Non-negative float32 values order like their bits read as int32, and int32 topk runs about 1.5x faster
    than float32's (no NaN-aware comparisons). Every row whose k+1 kept values are the centre's -inf, then
    non-negative, non-NaN and strictly increasing needs nothing else: its k smallest values are unique
    and in order, so any correct sort agrees with them. The rest (a tie, a NaN or a negative distance among
    them, where bit order and float order part or topk orders ties arbitrarily; rare on real activations)
    are redone exactly (`_nearest_keyed`).
    """
    num = dist.shape[-1]
    keep = min(k + 1, num)
    bits, ids = dist.view(torch.int32).topk(keep, dim=-1, largest=False, sorted=True)
    out = ids[..., :k]
    exact = bits[..., 0] == _NEG_INF_BITS
    if keep > 1:
        exact &= (bits[..., 1:] > bits[..., :-1]).all(-1) & (bits[..., 1] >= 0)
    exact &= bits[..., k - 1] <= _POS_INF_BITS
    if not exact.all():
        rows = exact.logical_not_().nonzero(as_tuple=True)
        out[rows] = _nearest_keyed(dist[rows], k)
    return out


def watched_by_dispatch_mode() -> bool:
    """True while a TorchDispatchMode (a user's `FlopCounterMode`, a profiler's) sees every op.

    DCConv then runs its two custom ops (`dccnext::cluster_indices`, `dccnext::cluster_conv`; the same
    kernels), which such a mode sees as one op each, with the FLOP formulas `models/flops.py` registers,
    instead of the fast path's many small aten ops.
    """
    return torch._C._len_torch_dispatch_stack() > 0


def on_device_path(tensor: torch.Tensor) -> bool:
    """True when the eager operator takes its device path for `tensor` (`operator_settings().eager_path`).

    The device path never reads a value back to the host (no `.item()`, no tensor used as a Python bool, no
    `torch.equal`) and launches a number of kernels that does not grow with batch x tokens: whole-tensor ops,
    the exact top-k selection for every row instead of a repair of the rows that need it, every slot gathered.
    The CPU path keeps its cache-sized blocks and those two shortcuts. "auto" takes the device path for any
    tensor not on the CPU; tests force it on the CPU.
    """
    path = operator_settings().eager_path
    return path == "device" or (path == "auto" and tensor.device.type != "cpu")


def _centred_subvectors(tokens: torch.Tensor, subvector_interval: int) -> torch.Tensor:
    """float32 sub-vectors (B, N, S), each channel shifted by its per-image mean over the tokens.

    Distances do not change under a common shift, but the expansion |q|^2 + |k|^2 - 2 q.k loses them to
    cancellation when the sub-vectors share a large offset (e.g. StarReLU outputs, all >= its bias): with
    tokens relu(x)^2 + 100, float32 reordered a third of the clusters. The shift is the mean rounded to a
    power of two at or below the channel's spread: it removes the offset as well, and it keeps data on a
    coarse grid (integers) exactly representable, so exact ties stay ties. Mean and spread are accumulated
    in float64 (float32 in exported graphs), so the shift is the same whatever else is in the batch.
    """
    sub = tokens[..., ::subvector_interval].float()
    return _centred(sub, sub if exporting() else sub.double())  # exported: float32 (ONNX Runtime refused the mix)


def _centred(sub: torch.Tensor, wide: torch.Tensor) -> torch.Tensor:
    """`sub` (B, N, S) less its per-image channel means rounded to the grid, mean and spread taken over `wide`
    (the same values, float32 or float64). Plain ops only: TorchScript compiles it (`cluster_indices_sorted`)."""
    mean = wide.mean(dim=1, keepdim=True)  # two passes, not std_mean: its Welford loop over dim 1 ran 3-30x slower
    std = (wide - mean).square().mean(dim=1, keepdim=True).sqrt()
    step = torch.exp2(torch.floor(torch.log2(std.clamp_min(2.0 ** -100))))
    shift = torch.nan_to_num(torch.round(mean / step) * step, nan=0.0, posinf=0.0, neginf=0.0)  # NaN/inf tokens
    return sub - shift.to(sub.dtype)


def _indices_chunked(
        sub: torch.Tensor, k: int, exact_sort: bool, chunk_elements: int, on_device: bool = False
) -> torch.Tensor:
    """(B, N, k) nearest-token indices of float32 sub-vectors (B, N, S), query rows in chunks.

    Chunks hold `chunk_elements // N` query rows, a count that depends on N alone, for as many images as fit:
    a matmul's rounding can depend on its shape (one row takes a matrix-vector path), so every image's
    product keeps one shape and an image gets the same indices alone and inside any batch (tested on near
    ties). The selection is exact, whatever the grouping. `on_device`: select every row by its unique keys
    (`_nearest_keyed`), which needs no host-side choice of rows to repair.
    """
    batch, num_tokens, _ = sub.shape
    select = _nearest_sorted if exact_sort else _nearest_topk
    if on_device and not exact_sort:
        select = _nearest_keyed
    if exporting():  # one block: a chunk count that depends on H and W would pin exported graphs to one size
        dist = pairwise_sq_distances(sub, sub)
        dist.diagonal(dim1=1, dim2=2).fill_(float("-inf"))
        return select(dist, k)
    rows = min(num_tokens, max(1, chunk_elements // max(1, num_tokens)))
    group = max(1, chunk_elements // (rows * num_tokens))  # images per chunk
    queries, keys = _augmented_queries(sub), _augmented_keys(sub).transpose(1, 2)  # once, for every chunk
    out = torch.empty((batch, num_tokens, k), dtype=torch.int64, device=sub.device)
    for first in range(0, batch, group):
        images = range(first, min(batch, first + group))
        for start in range(0, num_tokens, rows):
            stop = min(num_tokens, start + rows)
            dist = torch.bmm(queries[images.start:images.stop, start:stop], keys[images.start:images.stop])
            # The centre is always a member and always first, whatever rounding does to its distance.
            dist.diagonal(offset=start, dim1=1, dim2=2).fill_(float("-inf"))
            out[images.start:images.stop, start:stop] = select(dist, k)
    return out


@torch.library.custom_op("dccnext::cluster_indices", mutates_args=())
def _cluster_indices_op(sub: torch.Tensor, k: int, chunk_elements: int, on_device: bool = False) -> torch.Tensor:
    """Opaque to torch.compile, so the data-dependent tie repair runs eagerly inside a compiled graph."""
    return _indices_chunked(sub, k, exact_sort=False, chunk_elements=chunk_elements, on_device=on_device)


@_cluster_indices_op.register_fake
def _(sub: torch.Tensor, k: int, chunk_elements: int, on_device: bool = False) -> torch.Tensor:
    return sub.new_empty((sub.shape[0], sub.shape[1], k), dtype=torch.int64)


def cluster_indices(
        x: torch.Tensor,
        cluster_size: int,
        subvector_interval: int = 8,
        *,
        chunk_elements: int | None = None,
) -> torch.Tensor:
    """Indices (B, N, K') of each token's cluster, int64: centre in slot 0, then ascending distance.

    Distances use the sub-vector of channels 0, d, 2d, ... (d = `subvector_interval`), centred per image,
    are computed in float32 without gradient (also under autocast), and ties of the computed float32
    distances go to the lower token index, so that any correct implementation (chunked, exported) returns the
    same indices. Query rows are processed per image in chunks of at most `chunk_elements` distances
    (default: `operator_settings().distance_chunk_elements`, or `device_distance_elements` on the device path).
    """
    if cluster_size < 1:
        raise ValueError(f"cluster_size must be >= 1, got {cluster_size}")
    if subvector_interval < 1:
        raise ValueError(f"subvector_interval must be >= 1, got {subvector_interval}")
    if exporting() and operator_settings().export_indices == "topk":
        return cluster_indices_topk(x, cluster_size, subvector_interval)
    tokens = _as_tokens(x)
    k = effective_cluster_size(cluster_size, tokens.shape[1])
    on_device = on_device_path(tokens)
    settings = operator_settings()
    chunk = chunk_elements or (settings.device_distance_elements if on_device else settings.distance_chunk_elements)
    with torch.no_grad(), _autocast_disabled(tokens.device):
        sub = _centred_subvectors(tokens, subvector_interval)  # contiguous: matmuls on a strided view are slower
        if sub.device.type == "meta":  # shapes only (the FLOP count): no chunk loop, any resolution at once
            return sub.new_empty((sub.shape[0], sub.shape[1], k), dtype=torch.int64)
        if exporting():
            return _indices_chunked(sub, k, exact_sort=True, chunk_elements=chunk)
        if torch.compiler.is_compiling() or watched_by_dispatch_mode():
            return _cluster_indices_op(sub, k, chunk, on_device)
        return _indices_chunked(sub, k, exact_sort=False, chunk_elements=chunk, on_device=on_device)


def cluster_indices_topk(x: torch.Tensor, cluster_size: int, subvector_interval: int = 8) -> torch.Tensor:
    """`cluster_indices` in ops every exporter translates: a mask instead of an in-place diagonal fill, and
    `topk` instead of a stable sort (ONNX has no Sort; its TopK puts equal values in index order, which is
    the stable sort's tie rule). Same distances, same result; used when exporting with
    `export_indices="topk"`."""
    tokens = _as_tokens(x)
    num_tokens = tokens.shape[1]
    k = effective_cluster_size(cluster_size, num_tokens)
    with torch.no_grad():
        sub = _centred_subvectors(tokens, subvector_interval)
        dist = pairwise_sq_distances(sub, sub)
        eye = torch.eye(num_tokens, dtype=torch.bool, device=dist.device)
        dist = dist.masked_fill(eye, float("-inf"))
        return torch.topk(dist, k, dim=-1, largest=False, sorted=True).indices


def accumulation_dtype(tokens: torch.Tensor, weight: torch.Tensor) -> torch.dtype:
    """The precision rule of every cluster convolution: sums in float32 (float64 when an operand is float64),
    whatever the input's dtype; the result comes back in the input's dtype."""
    return torch.promote_types(torch.promote_types(tokens.dtype, weight.dtype), torch.float32)


def _as_dtype(tensor: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """`tensor` in `dtype`, with no op at all when it already is (exported float32 graphs stay as they were)."""
    return tensor if tensor.dtype == dtype else tensor.to(dtype)


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
    """The paper's formulation (eq. 6): gather (B, N, K, E), multiply by W[:K], sum over K (in float32)."""
    batch, num_tokens, channels = tokens.shape
    k = idx.shape[-1]
    acc = accumulation_dtype(tokens, weight)  # cast before the gather: its backward sums in acc too
    flat = _as_dtype(tokens.reshape(batch * num_tokens, channels), acc)
    # index_select of the flattened indices: an ONNX Gather (indexing by the 2-D indices exports as GatherND,
    # which onnxruntime ran 1.2-2x slower); Inductor makes the same fused loop of either
    gathered = flat.index_select(0, _flat_indices(idx, num_tokens).reshape(-1)).view(batch * num_tokens, k, channels)
    out = (gathered * _as_dtype(weight[:k], acc)).sum(1).view(batch, num_tokens, channels)
    out = out if bias is None else out + _as_dtype(bias, acc)
    return _as_dtype(out, tokens.dtype)


def cluster_conv_plain(
        tokens: torch.Tensor,
        idx: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """One slot at a time in plain out-of-place aten ops (float32 sums): no (B, N, K, E) tensor, exportable."""
    batch, num_tokens, channels = tokens.shape
    acc = accumulation_dtype(tokens, weight)
    flat = _as_dtype(tokens.reshape(batch * num_tokens, channels), acc)
    weight = _as_dtype(weight, acc)
    flat_idx = _flat_indices(idx, num_tokens)
    out = flat.index_select(0, flat_idx[:, 0]) * weight[0]
    for slot in range(1, idx.shape[-1]):
        out = torch.addcmul(out, flat.index_select(0, flat_idx[:, slot]), weight[slot])
    out = out.view(batch, num_tokens, channels)
    out = out if bias is None else out + _as_dtype(bias, acc)
    return _as_dtype(out, tokens.dtype)


# --- the fast operator: kernels shared by the eager autograd function and the torch.library op ---

def _is_centre(index: torch.Tensor) -> bool:
    """True when slot `index` is each row itself (slot 0 of `cluster_indices`): no gather needed.

    Reads a flag back to the host (`torch.equal`): the CPU path only."""
    return torch.equal(index, torch.arange(index.shape[0], device=index.device, dtype=index.dtype))


def _blocking(flat: torch.Tensor, slots: torch.Tensor, block_rows: int) -> tuple[int, bool]:
    """(rows per block, centre slot read in place): cache-sized blocks and the centre check on the CPU path;
    on the device path one block (a launch count independent of batch x tokens) and every slot gathered."""
    if on_device_path(flat):
        return max(1, flat.shape[0]), False
    return block_rows, _is_centre(slots[0])


def _forward_kernel(
        flat: torch.Tensor, slots: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """out = bias + sum_k W[k] * flat[slots[k]], accumulated in place in float32, `block_rows` rows at a time.

    Blocking keeps the output block and the gather buffer in cache while the K slots stream through it
    (about 2x faster than whole-tensor passes on CPU); buffers are reused, never re-allocated per slot.
    A slot that is the row itself (the centre) is read in place instead of gathered. The sums are float32
    whatever flat's dtype (W stays float32 under autocast); the result is cast back to flat's dtype.
    """
    rows = flat.shape[0]
    step, centre = _blocking(flat, slots, operator_settings().block_rows)
    acc = accumulation_dtype(flat, weight)
    out = torch.empty(flat.shape, dtype=acc, device=flat.device)
    buf = flat.new_empty((min(step, rows), flat.shape[1]))
    weights = _as_dtype(weight, acc).unbind(0)
    bias = None if bias is None else _as_dtype(bias, acc)
    for start, index in zip(range(0, rows, step), slots.split(step, dim=1), strict=False):
        block = out[start:start + step]
        tmp = buf[:block.shape[0]]
        ids = index.unbind(0)
        first = flat[start:start + step] if centre else torch.index_select(flat, 0, ids[0], out=tmp)
        if bias is None:
            torch.mul(first, weights[0], out=block)
        else:
            torch.addcmul(bias, first, weights[0], out=block)
        for slot in range(1, len(ids)):
            block.addcmul_(torch.index_select(flat, 0, ids[slot], out=tmp), weights[slot])
    return _as_dtype(out, flat.dtype)


def _backward_kernel(
        grad: torch.Tensor, flat: torch.Tensor, slots: torch.Tensor, weight: torch.Tensor,
        need_input: bool = True, need_weight: bool = True,
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """grad_input = sum_k scatter_add(slots[k], grad * W[k]); grad_W[k] = sum_rows flat[slots[k]] * grad.

    Blocked over output rows (`backward_block_rows`) like the forward. Both sums are float32 whatever the
    dtypes (products of bfloat16 values are exact in float32); grad_input comes back in flat's dtype, grad_W
    in W's. The centre slot (if any) is added in place instead of scattered.
    """
    rows, channels = flat.shape
    step, centre = _blocking(flat, slots, operator_settings().backward_block_rows)
    acc = accumulation_dtype(flat, weight)
    grad_input = torch.zeros((rows, channels), dtype=acc, device=flat.device) if need_input else None
    grad_weight = torch.zeros(weight.shape, dtype=acc, device=weight.device) if need_weight else None
    products = torch.empty((min(step, rows), channels), dtype=acc, device=flat.device)
    gathered = products if flat.dtype == acc else flat.new_empty(products.shape)
    weights = _as_dtype(weight, acc).unbind(0)
    for start, index in zip(range(0, rows, step), slots.split(step, dim=1), strict=False):  # 0 rows: 1 split
        g = _as_dtype(grad[start:start + step], acc)
        tmp, rows_buf = products[:g.shape[0]], gathered[:g.shape[0]]
        for slot, ids in enumerate(index.unbind(0)):
            in_place = centre and slot == 0
            if need_weight:
                rows_in = flat[start:start + step] if in_place else torch.index_select(flat, 0, ids, out=rows_buf)
                grad_weight[slot] += torch.mul(rows_in, g, out=tmp).sum(0)
            if need_input:
                if in_place:
                    grad_input[start:start + step].addcmul_(g, weights[slot])
                else:
                    grad_input.index_add_(0, ids, torch.mul(g, weights[slot], out=tmp))
    grad_input = None if grad_input is None else _as_dtype(grad_input, flat.dtype)
    return grad_input, None if grad_weight is None else _as_dtype(grad_weight, weight.dtype)


def _bias_grad(grad: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The sum over rows of the output gradient, accumulated in float32, returned in the bias's dtype."""
    return _as_dtype(grad.sum(0, dtype=torch.promote_types(grad.dtype, torch.float32)), dtype)


def _remember_bias(ctx, bias: torch.Tensor | None) -> None:
    """The backward needs the bias's dtype, not its values: nothing more is saved."""
    ctx.bias_dtype = None if bias is None else bias.dtype


class _ClusterConv(torch.autograd.Function):
    """Eager fast path; saves only the input rows, the int slot indices and the weight."""

    @staticmethod
    def forward(ctx, flat, slots, weight, bias):
        ctx.save_for_backward(flat, slots, weight)
        _remember_bias(ctx, bias)
        return _forward_kernel(flat, slots, weight, bias)

    @staticmethod
    def backward(ctx, grad):
        flat, slots, weight = ctx.saved_tensors
        grad = grad.contiguous()
        grad_input, grad_weight = _backward_kernel(
            grad, flat, slots, weight, ctx.needs_input_grad[0], ctx.needs_input_grad[2]
        )
        grad_bias = _bias_grad(grad, ctx.bias_dtype) if ctx.bias_dtype is not None and ctx.needs_input_grad[3] else None
        return grad_input, None, grad_weight, grad_bias


@torch.library.custom_op("dccnext::cluster_conv", mutates_args=())
def _cluster_conv_op(
        flat: torch.Tensor, slots: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    return _forward_kernel(flat, slots, weight, bias)


@_cluster_conv_op.register_fake
def _(flat: torch.Tensor, slots: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    return torch.empty_like(flat)


@torch.library.custom_op("dccnext::cluster_conv_backward", mutates_args=())
def _cluster_conv_backward_op(
        grad: torch.Tensor, flat: torch.Tensor, slots: torch.Tensor, weight: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    grad_input, grad_weight = _backward_kernel(grad.contiguous(), flat, slots, weight)
    return grad_input, grad_weight


@_cluster_conv_backward_op.register_fake
def _(grad, flat, slots, weight):
    return torch.empty_like(flat), torch.empty_like(weight)


def _op_setup_context(ctx, inputs, output):
    flat, slots, weight, bias = inputs
    ctx.save_for_backward(flat, slots, weight)
    _remember_bias(ctx, bias)


def _op_backward(ctx, grad):
    flat, slots, weight = ctx.saved_tensors
    grad_input, grad_weight = _cluster_conv_backward_op(grad, flat, slots, weight)
    return grad_input, None, grad_weight, None if ctx.bias_dtype is None else _bias_grad(grad, ctx.bias_dtype)


_cluster_conv_op.register_autograd(_op_backward, setup_context=_op_setup_context)


# torch's FlopCounterMode (2 FLOPs per MAC) sees DCConv as its two custom ops (see
# `watched_by_dispatch_mode`); these formulas make it count them by the paper's rule, so that a user's own
# counter reports twice `dccnext flops`' figure.
@register_flop_formula(torch.ops.dccnext.cluster_indices)
def _cluster_indices_flops(sub_shape, k, chunk_elements, *args, out_shape=None, **kwargs) -> int:
    """Distances: (B, N, ceil(E/d)) sub-vectors -> B * N^2 * ceil(E/d) MACs."""
    batch, tokens, sub_channels = sub_shape
    return 2 * batch * tokens * tokens * sub_channels


@register_flop_formula(torch.ops.dccnext.cluster_conv)
def _cluster_conv_flops(flat_shape, slots_shape, weight_shape, *args, out_shape=None, **kwargs) -> int:
    """Cluster convolution: (B*N, E) rows, K' slots -> B * N * K' * E MACs."""
    return 2 * flat_shape[0] * slots_shape[0] * flat_shape[1]


@register_flop_formula(torch.ops.dccnext.cluster_conv_backward)
def _cluster_conv_backward_flops(grad_shape, flat_shape, slots_shape, weight_shape, *args, out_shape=None,
                                 **kwargs) -> int:
    """Its backward: the input gradient and the kernel gradient, one forward's MACs each."""
    return 2 * _cluster_conv_flops(flat_shape, slots_shape, weight_shape)


def cluster_conv(
        tokens: torch.Tensor,
        idx: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """Same result as `cluster_conv_reference` without the (B, N, K, E) tensor, forward or backward.

    Picks the formulation for the context: plain aten ops when exporting (the loop, or the reference's one
    gather with `export_cluster_conv="gather"`, what the ONNX export writes) or on the meta device, the
    Inductor-fused gather (or the custom op, see `compile_impl`) under torch.compile, else the fast
    autograd function: the PyTorch kernels (CPU or device path, `on_device_path`) or the Triton ones
    (`eager_kernels`). Every one sums in float32 and returns the tokens' dtype (`accumulation_dtype`).
    """
    if exporting() and operator_settings().export_cluster_conv == "gather":
        return cluster_conv_reference(tokens, idx, weight, bias)
    if exporting() or tokens.device.type == "meta":
        return cluster_conv_plain(tokens, idx, weight, bias)
    if torch.compiler.is_compiling() and operator_settings().compile_impl == "inductor":
        return cluster_conv_reference(tokens, idx, weight, bias)
    batch, num_tokens, channels = tokens.shape
    k = idx.shape[-1]
    flat = tokens.reshape(batch * num_tokens, channels).contiguous()
    slots = _flat_indices(idx, num_tokens).t().contiguous()  # (K, B*N): one contiguous row per slot
    kernels = _eager_kernels(flat)
    watched = torch.compiler.is_compiling() or watched_by_dispatch_mode()  # then the custom op, seen as one op
    if kernels != "pytorch" and not watched:
        from .dcconv_triton import TritonClusterConv  # on first use: Triton fixes its interpret mode at import

        out = TritonClusterConv.apply(flat, slots, weight, bias, kernels == "triton-deterministic")
        return out.view(batch, num_tokens, channels)
    weight = weight[:k]
    if watched:
        out = _cluster_conv_op(flat, slots, weight, bias)
    else:
        if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (flat, weight, bias)):
            out = _ClusterConv.apply(flat, slots, weight, bias)
        else:  # inference: the kernel alone, without the autograd function around it
            out = _forward_kernel(flat, slots, weight, bias)
    return out.view(batch, num_tokens, channels)


def _eager_kernels(flat: torch.Tensor) -> str:
    """`operator_settings().eager_kernels` with "auto" resolved: Triton for CUDA tensors where it is installed."""
    kernels = operator_settings().eager_kernels
    if kernels != "auto":
        return kernels
    return "triton" if flat.is_cuda and _triton_installed() else "pytorch"


@functools.cache
def _triton_installed() -> bool:
    return importlib.util.find_spec("triton") is not None


# FX: the clustering depends on the values, so symbolic tracing (torch.fx, torchvision's feature extraction,
# timm's feature_cls="fx") keeps these two as leaf calls and DCConv as a leaf module, run eagerly in the graph.
torch.fx.wrap("cluster_indices")
torch.fx.wrap("cluster_conv")


def cluster_indices_sorted(x: torch.Tensor, cluster_size: int, subvector_interval: int) -> torch.Tensor:
    """`cluster_indices` of a (B, H, W, E) map by the definition, in plain ops: one block of distances and a
    stable sort. What TorchScript runs (it cannot script the chunked fast path); centred in float32."""
    batch, height, width, channels = x.shape
    k = min(cluster_size, height * width)
    with torch.no_grad():
        sub = x.reshape(batch, height * width, channels)[:, :, ::subvector_interval].float()
        sub = _centred(sub, sub)
        dist = pairwise_sq_distances(sub, sub)
        dist.diagonal(dim1=1, dim2=2).fill_(float("-inf"))
        return _nearest_sorted(dist, k)


@register_notrace_module
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
        if torch.jit.is_scripting():  # the plain formulation, as exported graphs run it
            idx = cluster_indices_sorted(x, self.cluster_size, self.subvector_interval)
            out = cluster_conv_plain(x.reshape(batch, height * width, channels), idx, self.weight, self.bias)
            return out.view(batch, height, width, channels)
        idx = cluster_indices(x, self.cluster_size, self.subvector_interval)
        if self.keep_indices:
            self.last_indices = idx
        out = cluster_conv(x.reshape(batch, height * width, channels), idx, self.weight, self.bias)
        return out.view(batch, height, width, channels)

