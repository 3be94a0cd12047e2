"""DCConv, the dynamic clustering convolution of DCCNeXt (docs/model.md, section 2).

Every token picks its K nearest tokens (itself first) by the squared L2 distance of a channel
sub-sample, and a depthwise kernel of K slots mixes the gathered cluster:

    Y[b, n, e] = sum_k U[b, idx[b, n, k], e] * W[k, e] + bias[e]

The operator is a small table of backends, each a complete formulation (indices, convolution, backward) that
the tests hold to the reference, and one function (`select_backend`) that picks one by device and mode:

- `reference` (`dcconv_reference`): the oracle; any device without a faster backend, the meta device, and
  inside `torch.compile` (Inductor fuses it into the user's graph);
- `cpu` (`dcconv_cpu`): on the CPU, the default there: the indices and the convolution as small C++ loops compiled
  on first use (a few calls per layer whatever the batch), the convolution's gradients by Inductor;
- `inductor` (`dcconv_inductor`): the reference compiled by Inductor, one graph for every shape (any device);
- `triton`, `triton-deterministic` (`dcconv_triton`): on CUDA, the reference's indices and the convolution in
  Triton kernels;
- `export` (`dcconv_export`): exporting, tracing, scripting: plain ops for the `export_target` ("torch", "onnx").

Every backend sums in float32 and returns the input's dtype. In eager mode the layer runs as two custom ops
(`dccnext::cluster_indices`, `dccnext::cluster_conv`) that compute with the selected backend: one autograd rule
for every backend (each supplies its backward), and a FLOP counter (torch's `FlopCounterMode`) sees one op each
with the FLOP formulas registered below. Compilers and exporters trace the backends' own ops instead; after
`optimize_for_inference`, without autograd and autocast, the layer calls the backend directly (`cluster_layer`).
"""

from __future__ import annotations

import functools
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn as nn
from timm.layers import register_notrace_module, trunc_normal_
from torch.utils.flop_counter import register_flop_formula

from . import dcconv_cpu
from .dcconv_export import (
    cluster_conv_export,
    cluster_conv_plain,
    cluster_indices_export,
    cluster_indices_sorted,
    exporting,
)
from .dcconv_reference import (
    accumulation_dtype,
    autocast_disabled,
    bias_grad,
    cluster_conv_reference,
    cluster_conv_reference_backward,
    cluster_indices_reference,
    effective_cluster_size,
    grad_and_autocast_off,
    pairwise_sq_distances,
)
from .settings import operator_settings

__all__ = [
    "BACKENDS",
    "Backend",
    "DCConv",
    "accumulation_dtype",
    "cluster_conv",
    "cluster_conv_plain",
    "cluster_conv_reference",
    "cluster_indices",
    "cluster_indices_sorted",
    "cluster_layer",
    "effective_cluster_size",
    "exporting",
    "pairwise_sq_distances",
    "select_backend",
]

Indices = Callable[[torch.Tensor, int, int, int], torch.Tensor]  # (x, K, d, chunk elements) -> (B, N, K')
Conv = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, "torch.Tensor | None"], torch.Tensor]
# (grad, tokens, idx, weight) -> (grad_tokens, grad_weight[:K']): the convolution's gradients without autograd
ConvBackward = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


@dataclass(frozen=True)
class Backend:
    """One complete formulation: how it finds the clusters, how it convolves them, and that convolution's
    gradients (called by the custom op's autograd rule; no backend runs autograd itself)."""

    indices: Indices
    conv: Conv
    backward: ConvBackward


def _inductor_indices(x: torch.Tensor, k: int, d: int, chunk: int) -> torch.Tensor:
    from .dcconv_inductor import compiled_prepare, compiled_select, compiled_select_all

    return cluster_indices_reference(x, k, d, chunk, prepare=compiled_prepare, select=compiled_select,
                                     whole=compiled_select_all)


def _inductor_conv(tokens, idx, weight, bias):
    from .dcconv_inductor import cluster_conv_inductor

    return cluster_conv_inductor(tokens, idx, weight, bias)


def _inductor_backward(grad, tokens, idx, weight):
    from .dcconv_inductor import cluster_conv_inductor_backward

    return cluster_conv_inductor_backward(grad, tokens, idx, weight)


def _triton_conv(tokens, idx, weight, bias):
    from .dcconv_triton import cluster_conv_triton  # on first use: Triton fixes its interpret mode at import

    return cluster_conv_triton(tokens, idx, weight, bias)


def _triton_backward(deterministic: bool) -> ConvBackward:
    def backward(grad, tokens, idx, weight):
        from .dcconv_triton import cluster_conv_triton_backward

        return cluster_conv_triton_backward(grad, tokens, idx, weight, deterministic)
    return backward


def _export_indices(x: torch.Tensor, k: int, d: int, chunk: int) -> torch.Tensor:
    return cluster_indices_export(x, k, d, operator_settings().export_target)


def _export_conv(tokens, idx, weight, bias):
    return cluster_conv_export(tokens, idx, weight, bias, operator_settings().export_target)


BACKENDS: dict[str, Backend] = {
    "reference": Backend(cluster_indices_reference, cluster_conv_reference, cluster_conv_reference_backward),
    "cpu": Backend(dcconv_cpu.cluster_indices_cpu, dcconv_cpu.cluster_conv_cpu, _inductor_backward),
    "inductor": Backend(_inductor_indices, _inductor_conv, _inductor_backward),
    "triton": Backend(cluster_indices_reference, _triton_conv, _triton_backward(deterministic=False)),
    "triton-deterministic": Backend(cluster_indices_reference, _triton_conv, _triton_backward(deterministic=True)),
    # exporters trace the export form's own ops, autograd included; the custom ops never run it
    "export": Backend(_export_indices, _export_conv, cluster_conv_reference_backward),
}


def select_backend(tensor: torch.Tensor) -> str:
    """The backend for `tensor` now: the export form while exporting; the reference on the meta device and inside
    torch.compile (Inductor fuses it into the user's graph); else `operator_settings().backend`, whose "auto" is the
    native kernels on the CPU, Triton on CUDA (where it is installed), else the reference. The two compiled
    backends need a C++ compiler: without one (said once) the reference runs.
    """
    if exporting():
        return "export"
    if tensor.device.type == "meta" or torch.compiler.is_compiling():
        return "reference"
    choice = operator_settings().backend
    if choice == "cpu" or (choice == "auto" and tensor.device.type == "cpu"):
        # built means a C++ compiler was found, the one Inductor's backward (this backend's) needs too
        return "cpu" if tensor.device.type == "cpu" and dcconv_cpu.available() else "reference"
    if choice == "inductor":
        return "inductor" if _inductor_available() else "reference"
    if choice != "auto":
        return choice
    return "triton" if tensor.is_cuda and _triton_installed() else "reference"


def _inductor_available() -> bool:
    from .dcconv_inductor import available

    return available()


@functools.cache
def _triton_installed() -> bool:
    return importlib.util.find_spec("triton") is not None


def _as_custom_ops(backend: str) -> bool:
    """Eager mode (given the backend `select_backend` picked): compilers and exporters trace the backends' own ops
    instead."""
    return backend != "export" and not torch.compiler.is_compiling()


def _chunk_elements(tensor: torch.Tensor) -> int:
    settings = operator_settings()
    return settings.distance_chunk_elements if tensor.device.type == "cpu" else settings.device_distance_elements


def cluster_indices(
        x: torch.Tensor,
        cluster_size: int,
        subvector_interval: int = 8,
        *,
        chunk_elements: int | None = None,
) -> torch.Tensor:
    """Indices (B, N, K') of each token's cluster, int64: centre in slot 0, then ascending distance.

    Distances use the sub-vector of channels 0, d, 2d, ... (d = `subvector_interval`), centred per image, in
    float32 without gradient (also under autocast); ties go to the lower token index, so every backend returns
    the same indices. Query rows are processed in chunks of at most `chunk_elements` distances (default: the
    operator setting `distance_chunk_elements` on the CPU, `device_distance_elements` elsewhere).
    """
    if cluster_size < 1:
        raise ValueError(f"cluster_size must be >= 1, got {cluster_size}")
    if subvector_interval < 1:
        raise ValueError(f"subvector_interval must be >= 1, got {subvector_interval}")
    chunk = chunk_elements or _chunk_elements(x)
    backend = select_backend(x)
    if _as_custom_ops(backend):
        return _cluster_indices_op(x, cluster_size, subvector_interval, chunk, backend)
    return BACKENDS[backend].indices(x, cluster_size, subvector_interval, chunk)


def cluster_conv(
        tokens: torch.Tensor,
        idx: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """`cluster_conv_reference`'s result by the backend `select_backend` picks, forward and backward."""
    backend = select_backend(tokens)
    if _as_custom_ops(backend):
        return _cluster_conv_op(tokens, idx, weight, bias, backend)
    return BACKENDS[backend].conv(tokens, idx, weight, bias)


def cluster_layer(
        x: torch.Tensor,
        cluster_size: int,
        subvector_interval: int,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        *,
        custom_ops: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """DCConv on a (B, H, W, E) map: (output (B, H, W, E), indices (B, N, K')), both steps by one backend.

    `custom_ops=False` (what `optimize_for_inference` sets on every DCConv): where the custom ops add nothing, with
    autograd and autocast off, the backend's two functions are called directly: inside B2 at batch 1 the two custom
    op calls cost ~40 us a layer (181 against 219 us, 1.3 % of the forward). A FLOP counter (`FlopCounterMode`)
    then sees the backend's aten ops only, so count FLOPs on a plain model (as `dccnext flops` does).
    """
    batch, height, width, channels = x.shape
    backend = select_backend(x)
    tokens = x.reshape(batch, height * width, channels)
    chunk = _chunk_elements(x)
    if _as_custom_ops(backend) and (custom_ops or not grad_and_autocast_off(x.device)):
        idx = _cluster_indices_op(x, cluster_size, subvector_interval, chunk, backend)
        out = _cluster_conv_op(tokens, idx, weight, bias, backend)
    else:
        idx = BACKENDS[backend].indices(x, cluster_size, subvector_interval, chunk)
        out = BACKENDS[backend].conv(tokens, idx, weight, bias)
    return out.view(batch, height, width, channels), idx


# --- the layer as custom ops in eager mode, each given the backend `select_backend` picked for it ---

def _plain_call(fn: Callable, *args):
    """A backend called on plain tensors: no autograd, no autocast and no grad flags (a compiled backend guards on
    each, so one graph then serves training, inference and mixed precision; the backends cast for themselves)."""
    device = args[0].device
    if grad_and_autocast_off(device):
        return fn(*args)  # inference: nothing to switch off
    plain = [a.detach() if isinstance(a, torch.Tensor) and a.requires_grad else a for a in args]
    with torch.no_grad(), autocast_disabled(device):
        return fn(*plain)


@torch.library.custom_op("dccnext::cluster_indices", mutates_args=())
def _cluster_indices_op(x: torch.Tensor, cluster_size: int, subvector_interval: int, chunk: int,
                        backend: str) -> torch.Tensor:
    return _plain_call(BACKENDS[backend].indices, x, cluster_size, subvector_interval, chunk)


@_cluster_indices_op.register_fake
def _(x: torch.Tensor, cluster_size: int, subvector_interval: int, chunk: int, backend: str) -> torch.Tensor:
    num_tokens = x.shape[1] * x.shape[2] if x.ndim == 4 else x.shape[1]
    k = effective_cluster_size(cluster_size, num_tokens)
    return x.new_empty((x.shape[0], num_tokens, k), dtype=torch.int64)


@torch.library.custom_op("dccnext::cluster_conv", mutates_args=())
def _cluster_conv_op(tokens: torch.Tensor, idx: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                     backend: str) -> torch.Tensor:
    return _plain_call(BACKENDS[backend].conv, tokens, idx, weight, bias)


@_cluster_conv_op.register_fake
def _(tokens, idx, weight, bias, backend):
    return torch.empty_like(tokens)


@torch.library.custom_op("dccnext::cluster_conv_backward", mutates_args=())
def _cluster_conv_backward_op(grad: torch.Tensor, tokens: torch.Tensor, idx: torch.Tensor,
                              weight: torch.Tensor, backend: str) -> tuple[torch.Tensor, torch.Tensor]:
    grad_tokens, grad_weight = _plain_call(BACKENDS[backend].backward, grad, tokens, idx, weight)
    full = torch.zeros_like(weight)
    full[:idx.shape[-1]] = grad_weight  # slots past K' (small maps) get no gradient
    return grad_tokens, full


@_cluster_conv_backward_op.register_fake
def _(grad, tokens, idx, weight, backend):
    return torch.empty_like(tokens), torch.empty_like(weight)


def _op_setup_context(ctx, inputs, output):
    """Saves the input, the int indices and the kernel (never the (B*N, K', E) gather), and the backend the
    forward ran with, so that the backward matches it whatever settings are active when it runs."""
    tokens, idx, weight, bias, backend = inputs
    ctx.save_for_backward(tokens, idx, weight)
    ctx.bias_dtype = None if bias is None else bias.dtype
    ctx.backend = backend


def _op_backward(ctx, grad):
    tokens, idx, weight = ctx.saved_tensors
    grad_tokens, grad_weight = _cluster_conv_backward_op(grad.contiguous(), tokens, idx, weight, ctx.backend)
    grad_bias = None if ctx.bias_dtype is None else bias_grad(grad, ctx.bias_dtype)
    return grad_tokens, None, grad_weight, grad_bias, None


_cluster_conv_op.register_autograd(_op_backward, setup_context=_op_setup_context)


# torch's FlopCounterMode (2 FLOPs per MAC) sees DCConv as its custom ops; these formulas make it count them by the
# paper's rule, so that a user's own counter reports twice `dccnext flops`' figure.
@register_flop_formula(torch.ops.dccnext.cluster_indices)
def _cluster_indices_flops(x_shape, cluster_size, subvector_interval, *args, out_shape=None, **kwargs) -> int:
    """Distances: (B, N, ceil(E/d)) sub-vectors -> B * N^2 * ceil(E/d) MACs."""
    batch, tokens, channels = x_shape[0], out_shape[1], x_shape[-1]
    return 2 * batch * tokens * tokens * -(-channels // subvector_interval)


@register_flop_formula(torch.ops.dccnext.cluster_conv)
def _cluster_conv_flops(tokens_shape, idx_shape, weight_shape, *args, out_shape=None, **kwargs) -> int:
    """Cluster convolution: B * N tokens, K' slots, E channels -> B * N * K' * E MACs."""
    return 2 * tokens_shape[0] * tokens_shape[1] * idx_shape[-1] * tokens_shape[2]


@register_flop_formula(torch.ops.dccnext.cluster_conv_backward)
def _cluster_conv_backward_flops(grad_shape, tokens_shape, idx_shape, weight_shape, *args, out_shape=None,
                                 **kwargs) -> int:
    """Its backward: the input gradient and the kernel gradient, one forward's MACs each."""
    return 2 * _cluster_conv_flops(tokens_shape, idx_shape, weight_shape)


# FX: the clustering depends on the values, so symbolic tracing (torch.fx, torchvision's feature extraction,
# timm's feature_cls="fx") keeps these two as leaf calls and DCConv as a leaf module, run eagerly in the graph.
torch.fx.wrap("cluster_indices")
torch.fx.wrap("cluster_conv")
torch.fx.wrap("cluster_layer")


@register_notrace_module
class DCConv(nn.Module):
    """Dynamic clustering convolution on channels-last (B, H, W, dim) tensors.

    Args:
        dim: channels E of the input (in DCCNeXt, twice the block width).
        cluster_size: K, the cluster size counting the centre.
        subvector_interval: d, distances use channels 0, d, 2d, ... (1 = all channels).
        bias: learnable per-channel bias (the paper's b).

    Set `keep_indices = True` to keep the cluster indices of the last forward in `last_indices`
    (for Figure 3); otherwise nothing is kept. `custom_ops` is `cluster_layer`'s: `optimize_for_inference` turns
    it off.
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
        self.custom_ops = True
        self.reset_parameters()

    def reset_parameters(self) -> None:
        trunc_normal_(self.weight, std=0.02)
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def extra_repr(self) -> str:
        text = f"{self.dim}, cluster_size={self.cluster_size}, subvector_interval={self.subvector_interval}"
        return text if self.custom_ops else text + ", custom_ops=False"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, height, width, channels = x.shape
        if torch.jit.is_scripting():  # TorchScript compiles only this branch: the export form
            idx = cluster_indices_sorted(x, self.cluster_size, self.subvector_interval)
            out = cluster_conv_plain(x.reshape(batch, height * width, channels), idx, self.weight, self.bias)
            return out.view(batch, height, width, channels)
        out, idx = cluster_layer(x, self.cluster_size, self.subvector_interval, self.weight, self.bias,
                                 custom_ops=self.custom_ops)
        if self.keep_indices:
            self.last_indices = idx
        return out
