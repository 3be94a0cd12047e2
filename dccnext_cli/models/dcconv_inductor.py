"""DCConv's fused CPU backend: the reference formulation compiled by Inductor, once per channel width.

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

The functions are compiled on first use (`_compile`: one graph for every shape, and under inference mode one
per channel width) and cached by Inductor on disk (for this torch and thread count), so a later process loads
them in about a second. Where no C++ compiler is found the backend is not offered and the reference runs instead
(`available`, with a one-line note).
"""

from __future__ import annotations

import functools
import logging
import os
import shutil
import types

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


PER_WIDTH_ELEMENTS = 1_000_000  # from B2's stage-3 tokens at batch 8 and 224 px (8 x 196 x 640 = 1,003,520)


def _compile(fn):
    """Two compiled forms of `fn`, by mode:

    - autograd and `no_grad` (training, its backward, evaluation during training): one graph dynamic in every size,
      so the same kernels run whatever the process ran before, and a resumed run repeats the uninterrupted one
      bitwise;
    - `torch.inference_mode()` on inputs of at least `PER_WIDTH_ELEMENTS`: one copy per channel width (the last
      size of the first argument) with torch.compile's default shapes, specialised at first use, then dynamic in
      just the sizes that change (batch, tokens, K'). Dynamic in the rows and the width together, Inductor's loops
      ran 2-3x slower (B2's stage-3 layer at batch 32: the convolution 8.3 against 2.8 ms); which kernel runs then
      depends on the shapes met before, which can move the last bits of a result. Dynamo keeps its graphs per code
      object, hence a copy of the code per width. Smaller inputs (B2 at batch 1: a layer 0.30 against 0.41 ms
      in a loop, less in the model) do not pay for the extra compiles (the test suite compiled about 100 s more
      with an empty cache).

    Past Dynamo's recompile limit a form runs its function eagerly."""
    anywhere = torch.compile(fn, dynamic=True)

    @functools.cache
    def for_width(width: int):
        code = fn.__code__.replace(co_name=f"{fn.__name__}_{width}")
        copy = types.FunctionType(code, fn.__globals__, code.co_name, fn.__defaults__, fn.__closure__)
        copy.__kwdefaults__ = fn.__kwdefaults__
        return torch.compile(copy)

    @functools.wraps(fn)
    def compiled(first: torch.Tensor, *args):
        if torch.is_inference_mode_enabled() and first.numel() >= PER_WIDTH_ELEMENTS:
            return for_width(first.shape[-1])(first, *args)
        return anywhere(first, *args)

    return compiled


compiled_prepare = _compile(subvector_rows)
compiled_select = _compile(select_chunk)
compiled_select_all = _compile(select_all)
compiled_conv = _compile(cluster_conv_reference)
compiled_backward = _compile(cluster_conv_reference_backward)


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
