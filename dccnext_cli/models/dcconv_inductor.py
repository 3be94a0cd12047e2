"""DCConv's fused CPU backend: the reference formulation compiled by Inductor once, for dynamic shapes.

Eager PyTorch runs the reference as a few dozen small ops per layer (centring, the augmented rows, the
selection keys, the gather, the product, the sum), each one a parallel region that waits for every thread.
Inductor fuses each of the three steps below into one C++ loop nest, keeping only the matmul and the top-k
as library calls, so a layer issues a fixed handful of aten ops whatever the batch (`benchmarks/op_counts.py`):

- `subvector_rows`: sub-vectors, centring, augmented query and key rows (one fused kernel);
- `select_chunk`: distances (bmm), the centre forced first, unique keys, topk;
- `cluster_conv_reference`: gather, product and sum over K' in one loop; its backward (autograd of the same
  formulation) compiled with it when gradients are needed.

The functions are compiled with `dynamic=True` on first use and cached by Inductor on disk (for this torch and
thread count), so a later process loads them in about a second. Where no C++ compiler is found the backend is
not offered and the reference runs instead (`available`, with a one-line note).
"""

from __future__ import annotations

import functools
import logging
import os
import shutil

import torch

from .dcconv_reference import cluster_conv_reference, select_chunk, subvector_rows

__all__ = ["available", "compiled_prepare", "compiled_select", "compiled_conv"]

log = logging.getLogger(__name__)


@functools.cache
def available() -> bool:
    """True when a C++ compiler is on PATH (Inductor's CPU code needs one); otherwise say so once."""
    compiler = os.environ.get("CXX") or "g++"  # what Inductor runs on Linux unless CXX names another
    found = shutil.which(compiler) is not None
    if not found:
        log.warning("DCConv: no C++ compiler (%s) found, so the fused CPU kernel is off; the reference runs "
                    "instead (same numbers, more ops per layer). Install g++ to turn it on.", compiler)
    return found


def _compile(fn):
    return torch.compile(fn, dynamic=True, fullgraph=True)


compiled_prepare = _compile(subvector_rows)
compiled_select = _compile(select_chunk)
compiled_conv = _compile(cluster_conv_reference)
