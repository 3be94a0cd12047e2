"""Where a forward's time goes, op by op, in ms per forward: the itemised profile behind `deploy`'s ratios.

    python -m benchmarks.profile_ops [--mode eager|compiled|bf16 eager|bf16 compiled|onnxruntime] [--batch 32]

Profiles DCCNeXt-B2, its control and convformer_s18 with torch.profiler (CPU self time per op, averaged over
`--repeats` forwards after a warm-up) and prints the top ops of each, so a gap in `deploy.md` can be read as
"these ops, these milliseconds". Under torch.compile the rows are Inductor's fused kernels (`cpp_fused_*`) and
the extern calls it keeps (convolutions, matmuls, DCConv's custom selection op). In `onnxruntime` mode each
model is exported as `deploy` exports it and timed by onnxruntime's own profiler: rows are ONNX op types (the
node names say which layer). Writes `profile_<mode>_b<batch>.md` to `--out`.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from collections import defaultdict
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from . import cases
from .deploy import MODELS, MODES, onnx_session


def profile_onnx(model: torch.nn.Module, x: torch.Tensor, repeats: int, warmup: int = 2) -> list[tuple[str, float]]:
    """(ONNX op type, ms per run), largest first, from onnxruntime's profiler (its "Node" events), warm-up
    runs left out."""
    with tempfile.TemporaryDirectory(prefix="dccnext-profile-") as folder:
        session = onnx_session(model, Path(folder), "model", profile=True)
        feed = {"images": x.numpy()}
        for _ in range(warmup + repeats):
            session.run(None, feed)
        events = json.loads(Path(session.end_profiling()).read_text())
    runs = sorted(e["ts"] for e in events if e.get("name") == "model_run")
    timed_from = runs[warmup]
    per_op: dict[str, float] = defaultdict(float)
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time") and event["ts"] >= timed_from:
            per_op[event["args"]["op_name"]] += event["dur"] / 1000 / repeats
    return sorted(per_op.items(), key=lambda r: -r[1])


def profile_model(name: str, mode: str, batch: int, repeats: int) -> list[tuple[str, float]]:
    """(op name, self CPU ms per forward), largest first."""
    torch.manual_seed(0)
    model = cases.build_model(name).eval()
    x = torch.randn(batch, 3, 224, 224)
    if mode == "onnxruntime":
        return profile_onnx(model, x, repeats)
    if mode.startswith("bf16"):
        model, x = model.to(torch.bfloat16), x.bfloat16()
    if mode.endswith("compiled"):
        model = torch.compile(model, dynamic=False)
    with torch.inference_mode():
        for _ in range(2):
            model(x)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(repeats):
                model(x)
    rows = [(e.key, e.self_cpu_time_total / 1000 / repeats) for e in prof.key_averages()]
    return sorted(rows, key=lambda r: -r[1])


def report(mode: str, batch: int, top: int, repeats: int) -> str:
    measure = "node ms per run, onnxruntime's profiler" if mode == "onnxruntime" else "self CPU ms per forward"
    lines = [f"## {mode}, batch {batch}: {measure} ({repeats} runs)", ""]
    for name in MODELS:
        rows = profile_model(name, mode, batch, repeats)
        total = sum(ms for _, ms in rows)
        lines += [f"### {name}: {total:.1f} ms in all", "", "| op | ms | share |", "|---|---:|---:|"]
        lines += [f"| `{op}` | {ms:.1f} | {100 * ms / total:.0f} % |" for op, ms in rows[:top]]
        lines.append("")
        print("\n".join(lines[-min(top, len(rows)) - 5:]), flush=True)
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=MODES, default="compiled")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--top", type=int, default=15)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: one per core)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    md = report(args.mode, args.batch, args.top, args.repeats)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"profile_{args.mode.replace(' ', '_')}_b{args.batch}.md"
    path.write_text(md + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
