"""The cluster convolution as Triton kernels: a fixed number of launches per call, whatever the batch.

    out[r, e] = bias[e] + sum_k W[k, e] * x[slots[k, r], e]          (float32 accumulation, stored in x's dtype)

Backward:
- grad_x by scatter-add (float32 atomic adds: fast, summation order not fixed), or deterministically through the
  reverse index: for each source row, the (slot, row) pairs that gather it, summed in a fixed order;
- grad_W[k, e] = sum_r x[slots[k, r], e] * grad[r, e] and grad_bias[e] = sum_r grad[r, e], float32 sums.

The kernels are for CUDA. On the CPU they run under Triton's interpreter (`TRITON_INTERPRET=1` set before this
module is imported): slow but exact, which is how the tests hold them to `cluster_conv_reference`.
Nothing here synchronises with the host: the reverse index is built with sort and searchsorted on the device.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .dcconv_reference import flat_indices

__all__ = ["cluster_conv_triton", "cluster_conv_triton_backward", "cluster_conv_forward", "cluster_conv_backward",
           "BLOCK_ROWS", "BLOCK_CHANNELS"]

BLOCK_ROWS = 32
BLOCK_CHANNELS = 64


@triton.jit
def _forward_kernel(x_ptr, slots_ptr, w_ptr, b_ptr, out_ptr, rows_total, channels, slots_total,
                    HAS_BIAS: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_E: tl.constexpr):
    rows = (tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)).to(tl.int64)
    cols = tl.program_id(1) * BLOCK_E + tl.arange(0, BLOCK_E)
    row_ok = rows < rows_total
    col_ok = cols < channels
    mask = row_ok[:, None] & col_ok[None, :]
    acc = tl.zeros((BLOCK_R, BLOCK_E), dtype=tl.float32)
    for k in range(slots_total):
        src = tl.load(slots_ptr + k * rows_total + rows, mask=row_ok, other=0)
        vals = tl.load(x_ptr + src[:, None] * channels + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        w = tl.load(w_ptr + k * channels + cols, mask=col_ok, other=0.0).to(tl.float32)
        acc += vals * w[None, :]
    if HAS_BIAS:
        acc += tl.load(b_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)[None, :]
    tl.store(out_ptr + rows[:, None] * channels + cols[None, :], acc.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _grad_input_atomic_kernel(grad_ptr, slots_ptr, w_ptr, gx_ptr, rows_total, channels, slots_total,
                              BLOCK_R: tl.constexpr, BLOCK_E: tl.constexpr):
    rows = (tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)).to(tl.int64)
    cols = tl.program_id(1) * BLOCK_E + tl.arange(0, BLOCK_E)
    row_ok = rows < rows_total
    col_ok = cols < channels
    mask = row_ok[:, None] & col_ok[None, :]
    g = tl.load(grad_ptr + rows[:, None] * channels + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    for k in range(slots_total):
        src = tl.load(slots_ptr + k * rows_total + rows, mask=row_ok, other=0)
        w = tl.load(w_ptr + k * channels + cols, mask=col_ok, other=0.0).to(tl.float32)
        tl.atomic_add(gx_ptr + src[:, None] * channels + cols[None, :], g * w[None, :], mask=mask)


@triton.jit
def _grad_input_reverse_kernel(grad_ptr, entries_ptr, offsets_ptr, w_ptr, gx_ptr, rows_total, channels,
                               BLOCK_E: tl.constexpr):
    source = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK_E + tl.arange(0, BLOCK_E)
    col_ok = cols < channels
    start = tl.load(offsets_ptr + source)
    end = tl.load(offsets_ptr + source + 1)
    acc = tl.zeros((BLOCK_E,), dtype=tl.float32)
    for i in range(start, end):
        entry = tl.load(entries_ptr + i)  # k * rows_total + r
        k = entry // rows_total
        row = entry - k * rows_total
        g = tl.load(grad_ptr + row * channels + cols, mask=col_ok, other=0.0).to(tl.float32)
        w = tl.load(w_ptr + k * channels + cols, mask=col_ok, other=0.0).to(tl.float32)
        acc += g * w
    tl.store(gx_ptr + source * channels + cols, acc.to(gx_ptr.dtype.element_ty), mask=col_ok)


@triton.jit
def _grad_weight_kernel(x_ptr, slots_ptr, grad_ptr, gw_ptr, rows_total, channels,
                        BLOCK_R: tl.constexpr, BLOCK_E: tl.constexpr):
    k = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK_E + tl.arange(0, BLOCK_E)
    col_ok = cols < channels
    acc = tl.zeros((BLOCK_E,), dtype=tl.float32)
    for start in range(0, rows_total, BLOCK_R):
        rows = (start + tl.arange(0, BLOCK_R)).to(tl.int64)
        row_ok = rows < rows_total
        mask = row_ok[:, None] & col_ok[None, :]
        src = tl.load(slots_ptr + k * rows_total + rows, mask=row_ok, other=0)
        x = tl.load(x_ptr + src[:, None] * channels + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        g = tl.load(grad_ptr + rows[:, None] * channels + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        acc += tl.sum(x * g, axis=0)
    tl.store(gw_ptr + k * channels + cols, acc, mask=col_ok)


def _grid(rows: int, channels: int) -> tuple[int, int]:
    return triton.cdiv(rows, BLOCK_ROWS), triton.cdiv(channels, BLOCK_CHANNELS)


def cluster_conv_forward(flat: torch.Tensor, slots: torch.Tensor, weight: torch.Tensor,
                         bias: torch.Tensor | None = None) -> torch.Tensor:
    """`flat` (R, E) contiguous, `slots` (K, R) int64 row indices, `weight` (>= K, E): out (R, E) in flat's dtype."""
    rows, channels = flat.shape
    out = torch.empty_like(flat)
    if rows == 0:
        return out
    weight = weight[:slots.shape[0]].contiguous()
    _forward_kernel[_grid(rows, channels)](
        flat, slots, weight, bias if bias is not None else weight, out, rows, channels, slots.shape[0],
        HAS_BIAS=bias is not None, BLOCK_R=BLOCK_ROWS, BLOCK_E=BLOCK_CHANNELS)
    return out


def _reverse_index(slots: torch.Tensor, rows: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(entries, offsets): entries[offsets[s]:offsets[s+1]] are the k * R + r that gather source row s, ascending."""
    flat_slots = slots.reshape(-1)
    sources, entries = torch.sort(flat_slots, stable=True)
    offsets = torch.searchsorted(sources, torch.arange(rows + 1, device=slots.device, dtype=sources.dtype))
    return entries, offsets


def cluster_conv_backward(grad: torch.Tensor, flat: torch.Tensor, slots: torch.Tensor, weight: torch.Tensor,
                          deterministic: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(grad_x in flat's dtype, grad_W float32 (K, E), grad_bias float32 (E,))."""
    rows, channels = flat.shape
    k = slots.shape[0]
    grad = grad.contiguous()
    weight = weight[:k].contiguous()
    grad_weight = torch.zeros((k, channels), dtype=torch.float32, device=flat.device)
    grad_bias = grad.float().sum(0)
    if rows == 0:
        return torch.zeros_like(flat), grad_weight, grad_bias
    if deterministic:
        grad_input = torch.empty_like(flat)
        entries, offsets = _reverse_index(slots, rows)
        _grad_input_reverse_kernel[(rows, triton.cdiv(channels, BLOCK_CHANNELS))](
            grad, entries, offsets, weight, grad_input, rows, channels, BLOCK_E=BLOCK_CHANNELS)
    else:
        accumulated = torch.zeros((rows, channels), dtype=torch.float32, device=flat.device)
        _grad_input_atomic_kernel[_grid(rows, channels)](
            grad, slots, weight, accumulated, rows, channels, k, BLOCK_R=BLOCK_ROWS, BLOCK_E=BLOCK_CHANNELS)
        grad_input = accumulated.to(flat.dtype)
    _grad_weight_kernel[(k, triton.cdiv(channels, BLOCK_CHANNELS))](
        flat, slots, grad, grad_weight, rows, channels, BLOCK_R=BLOCK_ROWS, BLOCK_E=BLOCK_CHANNELS)
    return grad_input, grad_weight, grad_bias


def _rows_and_slots(tokens: torch.Tensor, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, N, E) tokens as contiguous rows (B*N, E); (B, N, K') indices as slots (K', B*N), one row per slot."""
    flat = tokens.reshape(-1, tokens.shape[-1]).contiguous()
    return flat, flat_indices(idx, tokens.shape[1]).t().contiguous()


def cluster_conv_triton(tokens: torch.Tensor, idx: torch.Tensor, weight: torch.Tensor,
                        bias: torch.Tensor | None) -> torch.Tensor:
    """The cluster convolution of (B, N, E) tokens and (B, N, K') indices by these kernels (no autograd: DCConv's
    custom op calls it, and `cluster_conv_triton_backward` for its gradients)."""
    flat, slots = _rows_and_slots(tokens, idx)
    return cluster_conv_forward(flat, slots, weight, bias).view(tokens.shape)


def cluster_conv_triton_backward(grad: torch.Tensor, tokens: torch.Tensor, idx: torch.Tensor, weight: torch.Tensor,
                                 deterministic: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(grad_tokens, grad_weight[:K']) in the inputs' dtypes, as `cluster_conv_reference_backward` returns them."""
    flat, slots = _rows_and_slots(tokens, idx)
    grad_input, grad_weight, _ = cluster_conv_backward(grad.reshape(flat.shape), flat, slots, weight, deterministic)
    return grad_input.view(tokens.shape), grad_weight.to(weight.dtype)
