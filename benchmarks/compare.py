"""One-process comparison of DCCNeXt-B2 with its control, convformer_s18 and convnext_tiny.

    python -m benchmarks.compare [--quick] [--compile] [--out benchmarks/results]

Prints a table of medians and ratios (vs convformer_s18 and vs the control) and writes
`compare.json` and `compare.md` to `--out`. Peak memory comes from fresh subprocesses (`memory`).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path

import torch

from . import cases, memory
from .timing import measure_interleaved

REF, CONTROL = "convformer_s18", "control_b2"


def run(quick: bool, compile_models: bool) -> list[dict]:
    rows: list[dict] = []
    reps, warm = (3, 1) if quick else (7, 2)
    train_batch = 8 if quick else 32

    def timed(metric: str, steps: dict[str, Callable[[], None]], per: int = 0, warmup: int = warm,
              repeats: int = reps) -> None:
        """Time `steps` interleaved (see `timing`), one row per model."""
        for name, timing in measure_interleaved(steps, warmup, repeats).items():
            rows.append({"metric": metric, "model": name, "median_s": timing.median_s,
                         "img_per_s": per / timing.median_s if per else None,
                         "times_s": [round(t, 4) for t in timing.times_s]})
            print(f"{metric:32s} {name:16s} {timing.median_s * 1000:10.1f} ms", flush=True)

    # The op alone first, while the process is fresh: after GBs of model activations have come and gone,
    # op times moved by up to 3x here (the naive gather's 190 MiB temporaries got 3x cheaper, the fast op
    # 1.5x dearer), so a late measurement says more about the allocator's history than about the op.
    timed("op (32,14,14,640) fwd+bwd", {kernel: cases.op_step(kernel, backward=True)
                                        for kernel in ("dcconv", "cluster_conv", "naive_gather", "dwconv7x7")})
    models = {name: cases.build_model(name) for name in cases.MODELS}
    for batch in (1, 32):
        timed(f"infer 224 b{batch} eager",
              {name: cases.inference_step(model, batch, (224, 224)) for name, model in models.items()}, batch)
    if compile_models:
        timed("infer 224 b32 compiled", {name: cases.inference_step(torch.compile(model), 32, (224, 224))
                                         for name, model in models.items()}, 32, warmup=warm + 1)
    timed("backbone 1280x800 b1", {name: cases.inference_step(model, 1, (800, 1280), features=True)
                                   for name, model in models.items() if name != "convnext_tiny"},
          1, warmup=1, repeats=3 if quick else 7)
    timed(f"train b{train_batch} eager",
          {name: cases.train_step(model, train_batch) for name, model in models.items()}, train_batch)
    del models
    rows.extend(saved_for_backward())
    for name in (name for name in cases.MODELS if name != "convnext_tiny"):
        mem = memory.measure_in_subprocess({"kind": "train", "model": name, "batch": train_batch})
        rows.append({"metric": f"train b{train_batch} peak MiB", "model": name, **mem})
        print(f"train b{train_batch} peak MiB {name:16s} {mem}", flush=True)
    large = [("backbone 1280x800 b1 peak MiB", name, (800, 1280)) for name in (*cases.MODELS[:3],)]
    large.append(("backbone 2048x2048 b1 peak MiB", "dccnext_b0", (2048, 2048)))
    for metric, name, size in large:
        mem = memory.measure_in_subprocess({"kind": "infer", "model": name, "batch": 1, "size": list(size),
                                            "features": True})
        rows.append({"metric": metric, "model": name, **mem})
        print(f"{metric} {name:16s} {mem}", flush=True)
    return rows


def saved_for_backward() -> list[dict]:
    """What autograd keeps for the op's backward, against the floor the issue sets: the input plus the indices."""
    batch, height, width, channels = cases.OP_SHAPE
    floor = (batch * height * width * channels * 4 + batch * height * width * 12 * 8) / 2**20
    out = []
    for kernel in ("cluster_conv", "naive_gather", "dwconv7x7"):
        mib = cases.saved_bytes(cases.op_step(kernel, backward=True)) / 2**20
        out.append({"metric": "op (32,14,14,640) saved MiB", "model": kernel, "peak_mib": round(mib, 1),
                    "floor_mib": round(floor, 1)})
        print(f"op saved-for-backward {kernel:16s} {mib:.1f} MiB (input + int64 indices: {floor:.1f})", flush=True)
    return out


def table(rows: list[dict]) -> str:
    """Markdown: model rows compare speeds (other time / this time, > 1 is faster) and memory (this / other)
    against convformer_s18 and the control; op rows compare against the 7x7 depthwise conv (this / it)."""
    lines = ["| metric | model | median ms | img/s | peak MiB | vs convformer_s18 (op: vs dwconv7x7) | vs control |",
             "|---|---|---:|---:|---:|---:|---:|"]
    by = {(r["metric"], r["model"]): r for r in rows}

    def ratio(r: dict, other: str) -> str:
        o = by.get((r["metric"], other))
        if o is None:
            return ""
        if "peak_mib" in r and "peak_mib" in o:
            return f"{r['peak_mib'] / o['peak_mib']:.2f}x"
        if r.get("median_s") and o.get("median_s"):
            op = r["metric"].startswith("op")
            return f"{r['median_s'] / o['median_s']:.2f}x time" if op else f"{o['median_s'] / r['median_s']:.2f}x"
        return ""

    for r in rows:
        op = r["metric"].startswith("op")
        first, second = (ratio(r, "dwconv7x7"), "") if op else (ratio(r, REF), ratio(r, CONTROL))
        ms = f"{r['median_s'] * 1000:.1f}" if r.get("median_s") else ""
        ips = f"{r['img_per_s']:.1f}" if r.get("img_per_s") else ""
        peak = str(r.get("peak_mib", r.get("error", "")))
        lines.append(f"| {r['metric']} | {r['model']} | {ms} | {ips} | {peak} | {first} | {second} |")
    return "\n".join(lines)


def machine() -> str:
    """CPU model and core count: `platform.processor()` is empty on Linux."""
    try:
        names = [line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                 if line.startswith("model name")]
    except OSError:
        names = []
    cpu = names[0] if names else platform.processor() or platform.machine()
    return f"{cpu}, {os.cpu_count()} logical CPUs, {platform.system()}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats, train batch 8")
    parser.add_argument("--compile", action="store_true", help="also time every model under torch.compile")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args()
    torch.manual_seed(0)
    rows = run(args.quick, args.compile)
    md = table(rows)
    print(md)
    args.out.mkdir(parents=True, exist_ok=True)
    meta = {"date": time.strftime("%Y-%m-%d"), "torch": torch.__version__, "threads": torch.get_num_threads(),
            "machine": machine(), "dtype": "float32", "quick": args.quick}
    (args.out / "compare.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    (args.out / "compare.md").write_text(f"{meta}\n\n" + md + "\n")


if __name__ == "__main__":
    main()
