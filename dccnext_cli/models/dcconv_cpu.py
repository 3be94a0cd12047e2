"""DCConv's native CPU backend: the reference formulation as three small C++ loops (`dcconv_cpu.cpp`).

On a CPU a layer is mostly fixed costs: at batch 1 and 224 px each of the two compiled calls of Inductor's form of
the reference cost tens of microseconds before its loops ran (Dynamo's guards, the call wrapper), and at batch 32
ATen's `topk` over int64 selection keys was most of the layer. Here each step is one call of a plain OpenMP loop:

- `dcc_subvector_rows`: the centred sub-vectors as the augmented query and key rows (as `subvector_rows`);
- the distances stay one `torch.bmm` (the same matmul, so the same numbers, as every other backend);
- `dcc_nearest`: the K' nearest of each row read straight from the float32 distances (per row, keys that order
  like the floats with ties to the lower token, taken K' times by branch-free minima; no `topk`, no key matrix);
- `dcc_cluster_conv_*`: gather, product and sum over K' in float32, for float32 or bfloat16 tokens: per block of
  32 channels (in L1 while its gathers read it), four tokens at a time (their sums side by side in registers).

The convolution's gradients are Inductor's (`dcconv_inductor.cluster_conv_inductor_backward`). The file is compiled
on first use with the C++ compiler Inductor uses (`CXX`, else g++), for this CPU (`-march=native`), into the user's
cache (`$XDG_CACHE_HOME/dccnext/kernels`, named by a hash of the source, flags, compiler and CPU), so a later
process only loads it. Where it cannot be built the backend is not offered (`available`, with a one-line note).
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch

from .dcconv_reference import (
    as_dtype,
    as_tokens,
    cluster_indices_reference,
    effective_cluster_size,
    fits_one_chunk,
    grad_and_autocast_off,
)

__all__ = ["available", "cluster_conv_cpu", "cluster_indices_cpu", "nearest_cpu", "select_all_cpu",
           "select_chunk_cpu", "subvector_rows_cpu"]

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("dcconv_cpu.cpp")
# Tried in order: OpenMP for the parallel loops, then without (one thread), then without tuning for this CPU.
FLAG_SETS = (
    ("-O3", "-march=native", "-fopenmp"),
    ("-O3", "-march=native"),
    ("-O3",),
)
# -ffp-contract=off: no fused multiply-add, so products round as the reference's do
COMMON_FLAGS = ("-std=c++17", "-ffp-contract=off", "-shared", "-fPIC")

_P, _I, _T = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
_SIGNATURES = {  # name: (return type, argument types); the convolutions return their count of bad rows
    "dcc_subvector_rows": (None, [_P, _I, _I, _I, _I, _I, _P, _P, _T]),
    "dcc_nearest": (None, [_P, _I, _I, _I, _I, _I, _P, _T]),
    "dcc_cluster_conv_f32": (_I, [_P, _P, _P, _P, _I, _I, _I, _I, _P, _T]),
    "dcc_cluster_conv_bf16": (_I, [_P, _P, _P, _P, _I, _I, _I, _I, _P, _T]),
}


def _cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "dccnext" / "kernels"


def _cpu_description() -> str:
    """What `-march=native` depends on: the CPU's model and feature flags."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.machine() + platform.processor()
    wanted = ("model name", "flags", "Features", "CPU part")
    return "\n".join(sorted({line for line in lines if line.split(":")[0].strip() in wanted}))


def _build(compiler: str, flags: tuple[str, ...]) -> Path:
    """The compiled library for these flags: from the cache, or compiled now and moved in atomically."""
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True, check=True).stdout
    digest = hashlib.sha256("\0".join([SOURCE.read_text(), *flags, *COMMON_FLAGS, version,
                                       _cpu_description()]).encode()).hexdigest()[:20]
    try:
        folder = _cache_dir()
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError:  # a read-only home: build for this process only
        folder = Path(tempfile.mkdtemp(prefix="dccnext-kernels-"))
    target = folder / f"dcconv_cpu-{digest}.so"
    if target.exists():
        return target
    with tempfile.TemporaryDirectory(dir=folder) as scratch:
        built = Path(scratch) / target.name
        subprocess.run([compiler, *flags, *COMMON_FLAGS, str(SOURCE), "-o", str(built)], capture_output=True,
                       text=True, check=True)
        os.replace(built, target)
    return target


@functools.cache
def _library() -> ctypes.CDLL | None:
    compiler = os.environ.get("CXX") or "g++"
    if shutil.which(compiler) is None:
        log.warning("DCConv: no C++ compiler (%s) found, so the native CPU kernels are off; install g++ to turn "
                    "them on.", compiler)
        return None
    problem: list[str] = []
    for flags in FLAG_SETS:
        try:
            library = ctypes.CDLL(str(_build(compiler, flags)))
        except (OSError, subprocess.CalledProcessError) as error:
            problem = (getattr(error, "stderr", "") or str(error)).strip().splitlines()[-1:]
            continue
        for name, (restype, argtypes) in _SIGNATURES.items():
            getattr(library, name).restype, getattr(library, name).argtypes = restype, argtypes
        return library
    log.warning("DCConv: the native CPU kernels did not build with %s (%s); the reference runs instead (same "
                "numbers, slower).", compiler, " ".join(problem) or "no output")
    return None


def available() -> bool:
    """True when the kernels are built (or were already in the cache) and loaded; otherwise say why, once."""
    return _library() is not None


def _threads() -> int:
    return torch.get_num_threads()


def subvector_rows_cpu(tokens: torch.Tensor, subvector_interval: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`subvector_rows`' (queries, keys^T): the augmented float32 rows of the centred sub-vectors."""
    if tokens.dtype == torch.float32:
        source, step = tokens.contiguous(), subvector_interval
    else:  # the kernel reads float32: take the sub-vectors first (what the reference casts anyway)
        source, step = tokens[..., ::subvector_interval].float().contiguous(), 1
    batch, num_tokens, channels = source.shape
    width = -(-channels // step)
    queries = torch.empty((batch, num_tokens, width + 2), dtype=torch.float32)
    keys = torch.empty((batch, num_tokens, width + 2), dtype=torch.float32)
    _library().dcc_subvector_rows(source.data_ptr(), batch, num_tokens, channels, step, width,
                                  queries.data_ptr(), keys.data_ptr(), _threads())
    return queries, keys.transpose(1, 2)


def nearest_cpu(dist: torch.Tensor, start: int, k: int) -> torch.Tensor:
    """The k nearest (batch, rows, k) of float32 distances (batch, rows, tokens) of query rows `start`..: each row's
    own token first, then ascending distance, ties to the lower token (`nearest_keyed`'s order)."""
    dist = dist.contiguous()
    batch, rows, num_tokens = dist.shape
    if not 0 <= start <= num_tokens - rows or not 1 <= k <= num_tokens:
        raise ValueError(f"rows {start}..{start + rows} and k = {k} do not fit {num_tokens} tokens")
    out = torch.empty((batch, rows, k), dtype=torch.int64)
    _library().dcc_nearest(dist.data_ptr(), batch * rows, rows, num_tokens, start, k, out.data_ptr(), _threads())
    return out


def select_chunk_cpu(queries: torch.Tensor, keys_t: torch.Tensor, start: int, k: int) -> torch.Tensor:
    """`select_chunk`'s indices: the distances by the same `bmm`, the nearest K' by the kernel."""
    return nearest_cpu(torch.bmm(queries, keys_t), start, k)


def select_all_cpu(tokens: torch.Tensor, subvector_interval: int, k: int) -> torch.Tensor:
    queries, keys_t = subvector_rows_cpu(tokens, subvector_interval)
    return select_chunk_cpu(queries, keys_t, 0, k)


def cluster_indices_cpu(x: torch.Tensor, cluster_size: int, subvector_interval: int,
                        chunk_elements: int) -> torch.Tensor:
    """`cluster_indices_reference` with the kernels' steps (the same chunks of query rows). With autograd and
    autocast off (DCConv's custom op turns them off) and every distance in one chunk (B2 at 224 px up to batch 54)
    it goes straight to the kernels: at batch 1 the reference's two contexts and chunk arithmetic cost about a
    tenth of a layer's time."""
    tokens = as_tokens(x)
    batch, num_tokens, _ = tokens.shape
    if grad_and_autocast_off(tokens.device) and fits_one_chunk(batch, num_tokens, chunk_elements):
        return select_all_cpu(tokens, subvector_interval, effective_cluster_size(cluster_size, num_tokens))
    return cluster_indices_reference(x, cluster_size, subvector_interval, chunk_elements, prepare=subvector_rows_cpu,
                                     select=select_chunk_cpu, whole=select_all_cpu)


_CONV_KERNELS = {torch.float32: "dcc_cluster_conv_f32", torch.bfloat16: "dcc_cluster_conv_bf16"}


def cluster_conv_cpu(tokens: torch.Tensor, idx: torch.Tensor, weight: torch.Tensor,
                     bias: torch.Tensor | None) -> torch.Tensor:
    """`cluster_conv_reference`'s result (float32 sums, the input's dtype) for float32 and bfloat16 tokens with a
    float32 or bfloat16 kernel; other dtypes (float16, float64) go to the Inductor backend."""
    kernel = _CONV_KERNELS.get(tokens.dtype)
    if kernel is None or weight.dtype not in _CONV_KERNELS:
        from .dcconv_inductor import cluster_conv_inductor

        return cluster_conv_inductor(tokens, idx, weight, bias)
    tokens, idx = as_tokens(tokens).contiguous(), as_dtype(idx, torch.int64).contiguous()
    batch, num_tokens, channels = tokens.shape
    k = idx.shape[-1]
    kernel_weight = as_dtype(weight, torch.float32).contiguous()  # the kernel reads its first k rows
    kernel_bias = None if bias is None else as_dtype(bias, torch.float32).contiguous()
    out = torch.empty(tokens.shape, dtype=tokens.dtype)
    bad_rows = getattr(_library(), kernel)(tokens.data_ptr(), idx.data_ptr(), kernel_weight.data_ptr(),
                                           None if kernel_bias is None else kernel_bias.data_ptr(), batch, num_tokens,
                                           channels, k, out.data_ptr(), _threads())
    if bad_rows:
        raise IndexError(f"cluster indices must lie in [0, {num_tokens}): {bad_rows} of {batch * num_tokens} rows "
                         "hold one outside")
    return out
