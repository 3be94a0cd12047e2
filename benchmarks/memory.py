"""Peak memory of one case, measured as the RSS high-water mark of a fresh subprocess.

tracemalloc does not see torch's allocations, and the CPU allocator keeps no statistics, so each case
runs alone in `python -m benchmarks.memory '<json>'`: build the model and inputs, run the step once to
warm up (optimizer state, allocator), trim the heap, reset the kernel's high-water mark
(`/proc/self/clear_refs`), run the step again and report VmHWM minus the RSS just before it. Large
allocations are forced to mmap (`MALLOC_MMAP_THRESHOLD_`) so freed tensors leave the RSS at once.
"""

from __future__ import annotations

import ctypes
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _make_step(case: dict):
    from . import cases

    kind = case["kind"]
    if kind == "train":
        return cases.train_step(cases.build_model(case["model"]), case["batch"])
    if kind == "infer":
        return cases.inference_step(cases.build_model(case["model"]), case["batch"], tuple(case["size"]),
                                    features=case.get("features", False))
    if kind == "op":
        return cases.op_step(case["kernel"], backward=case["backward"])
    raise ValueError(f"unknown case kind {kind!r}")


def run_case(case: dict) -> dict:
    """In this process: the peak extra memory (MiB) of one step of `case`."""
    import torch

    if "threads" in case:
        torch.set_num_threads(case["threads"])
    step = _make_step(case)
    step()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    baseline = _status_kib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")
    step()
    peak = _status_kib("VmHWM")
    return {"peak_mib": round((peak - baseline) / 1024, 1), "rss_high_water_mib": round(peak / 1024, 1),
            "baseline_mib": round(baseline / 1024, 1)}


def measure_in_subprocess(case: dict, timeout_s: float = 1800) -> dict:
    """Run `case` in a fresh interpreter and return its result (or {'error': ...})."""
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "PYTHONPATH": str(ROOT)}
    try:
        proc = subprocess.run([sys.executable, "-m", "benchmarks.memory", json.dumps(case)], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout_s:.0f} s"}
    if proc.returncode != 0:
        return {"error": (proc.stderr.strip().splitlines() or ["failed"])[-1]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    print(json.dumps(run_case(json.loads(sys.argv[1]))))
