"""One-process comparison of DCCNeXt-B2 with its control, convformer_s18 and convnext_tiny.

    python -m benchmarks.compare [--quick] [--compile] [--out benchmarks/results]

Prints a table of medians and ratios (vs convformer_s18 and vs the control) and writes
`compare.json` and `compare.md` to `--out`. Peak memory comes from fresh subprocesses (`memory`).
"""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

import torch

from . import cases, memory
from .timing import measure

REF, CONTROL = "convformer_s18", "control_b2"


def run(quick: bool, compile_models: bool) -> list[dict]:
    rows: list[dict] = []
    reps, warm = (3, 1) if quick else (7, 2)
    train_batch = 8 if quick else 32

    def add(metric: str, model: str, seconds: float, per: int = 0) -> None:
        rows.append({"metric": metric, "model": model, "median_s": seconds,
                     "img_per_s": per / seconds if per else None})
        print(f"{metric:32s} {model:16s} {seconds * 1000:10.1f} ms", flush=True)

    for name in cases.MODELS:
        model = cases.build_model(name)
        for batch in (1, 32):
            add(f"infer 224 b{batch} eager", name, measure(cases.inference_step(model, batch, (224, 224)),
                                                          warm, reps).median_s, batch)
        if compile_models:
            compiled = torch.compile(model)
            add("infer 224 b32 compiled", name, measure(cases.inference_step(compiled, 32, (224, 224)),
                                                        warm + 1, reps).median_s, 32)
        add(f"train b{train_batch} eager", name, measure(cases.train_step(model, train_batch), warm, reps).median_s,
            train_batch)
        if name != "convnext_tiny":
            add("backbone 1280x800 b1", name, measure(cases.inference_step(model, 1, (800, 1280), features=True),
                                                      1, 2 if quick else 5).median_s, 1)
        del model
    for kernel in ("dcconv", "cluster_conv", "naive_gather", "dwconv7x7"):
        add("op (32,14,14,640) fwd+bwd", kernel, measure(cases.op_step(kernel, backward=True), warm, reps).median_s)
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
    lines = ["| metric | model | median ms | img/s | peak MiB | vs convformer_s18 | vs control |",
             "|---|---|---:|---:|---:|---:|---:|"]
    by = {(r["metric"], r["model"]): r for r in rows}

    def value(r: dict) -> float | None:
        if "peak_mib" in r:
            return r["peak_mib"]
        return r.get("median_s")

    for r in rows:
        v = value(r)
        ratios = []
        for other in ((REF, "dwconv7x7") if r["metric"].startswith("op") else (REF,)) + (CONTROL,):
            o = by.get((r["metric"], other))
            ov = value(o) if o else None
            # times: ratio of speeds (other time / this time, >1 is faster); memory: this / other
            if v and ov and not r["metric"].startswith("op"):
                ratios.append(f"{(v / ov if 'peak_mib' in r else ov / v):.2f}x")
            elif v and ov:
                ratios.append(f"{v / ov:.2f}x time")
            else:
                ratios.append("")
        if r["metric"].startswith("op"):
            ratios = [ratios[1], ratios[2] if len(ratios) > 2 else ""]
        ms = f"{r['median_s'] * 1000:.1f}" if r.get("median_s") else ""
        ips = f"{r['img_per_s']:.1f}" if r.get("img_per_s") else ""
        peak = str(r.get("peak_mib", r.get("error", "")))
        lines.append(f"| {r['metric']} | {r['model']} | {ms} | {ips} | {peak} | {ratios[0]} | {ratios[-1]} |")
    return "\n".join(lines)


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
    meta = {"torch": torch.__version__, "threads": torch.get_num_threads(), "machine": platform.processor(),
            "quick": args.quick}
    (args.out / "compare.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    (args.out / "compare.md").write_text(f"{meta}\n\n" + md + "\n")


if __name__ == "__main__":
    main()
