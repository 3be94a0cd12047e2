"""DCConv's Inductor backend: the reference formulation compiled by Inductor, on any device.

Eager PyTorch runs the reference as a few dozen small ops per layer (centring, the augmented rows, the
selection keys, the gather, the product, the sum), each one a parallel region that waits for every thread.
Inductor fuses each of the three steps below into one C++ loop nest, keeping only the matmul and the top-k
as library calls, so a layer issues a fixed handful of aten ops whatever the batch (`benchmarks/op_counts.py`):

- `subvector_rows`: sub-vectors, centring, augmented query and key rows (one fused kernel);
- `select_chunk`: distances (bmm), the centre forced first, unique keys, topk; `select_all`, both steps in one
  call when the whole batch fits one chunk (one call fewer per layer, what a batch-1 forward notices);
- `cluster_conv_reference`: gather, product and sum over K' in one loop;
- `cluster_conv_reference_backward`: its gradients (a scatter-add and a gathered product summed over rows), so
  that autograd keeps the input, the int indices and the kernel, never the (B*N, K', E) gather.

The functions are compiled on first use (one graph for every shape) and cached by Inductor on disk (for this torch
and thread count), so a later process loads them in about a second. The CPU's default backend (`dcconv_cpu`) runs
its own kernels forward and this backward. Where no C++ compiler is found the backend is not offered and the
reference runs instead (`available`, with a one-line note).
"""

from __future__ import annotations

import functools
import logging
import os
import shutil

import torch

from .dcconv_reference import (
    cluster_conv_reference,
    cluster_conv_reference_backward,
    select_all,
    select_chunk,
    subvector_rows,
)

__all__ = ["available", "cluster_conv_inductor", "cluster_conv_inductor_backward", "compiled_prepare",
           "compiled_select", "compiled_select_all", "compiled_conv"]

log = logging.getLogger(__name__)


class _NoCudaRuntimeNote(logging.Filter):
    """Inductor's CPU compile imports torch's C++ extension helper, which warns "No CUDA runtime is found" on
    a CPU-only machine that has a CUDA folder: noise on the user's terminal (and a second line under any
    one-line error) for a kernel that never uses CUDA."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "No CUDA runtime is found" not in record.getMessage()


logging.getLogger("torch.utils.cpp_extension").addFilter(_NoCudaRuntimeNote())


@functools.cache
def available() -> bool:
    """True when a C++ compiler is on PATH (Inductor's CPU code needs one); otherwise say so once."""
    compiler = os.environ.get("CXX") or "g++"  # what Inductor runs on Linux unless CXX names another
    found = shutil.which(compiler) is not None
    if not found:
        log.warning("DCConv: no C++ compiler (%s) found, so the fused CPU kernel is off; the reference runs "
                    "instead (same numbers, more ops per layer). Install g++ to turn it on.", compiler)
    return found


# One graph for every shape (dynamic in every size): the same kernels run whatever the process ran before, so a
# resumed training repeats the uninterrupted one bitwise. Past Dynamo's recompile limit a function runs eagerly.
compiled_prepare = torch.compile(subvector_rows, dynamic=True)
compiled_select = torch.compile(select_chunk, dynamic=True)
compiled_select_all = torch.compile(select_all, dynamic=True)
compiled_conv = torch.compile(cluster_conv_reference, dynamic=True)
compiled_backward = torch.compile(cluster_conv_reference_backward, dynamic=True)


def cluster_conv_inductor(tokens: torch.Tensor, idx: torch.Tensor, weight: torch.Tensor,
                          bias: torch.Tensor | None) -> torch.Tensor:
    """`cluster_conv_reference`'s result by the compiled kernel (no autograd: DCConv's custom op calls it, and
    `cluster_conv_inductor_backward` for its gradients)."""
    # views, not the Parameters themselves: Dynamo keeps a Parameter's shape static (one graph per layer width)
    return compiled_conv(tokens, idx, weight[:idx.shape[-1]], None if bias is None else bias.view(-1))


def cluster_conv_inductor_backward(grad: torch.Tensor, tokens: torch.Tensor, idx: torch.Tensor,
                                   weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`cluster_conv_reference_backward`'s (grad_tokens, grad_weight[:K']) by the compiled kernel."""
    return compiled_backward(grad.contiguous(), tokens, idx, weight[:idx.shape[-1]])
