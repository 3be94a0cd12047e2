"""Deployment speed: DCCNeXt-B2, its control and convformer_s18 in every mode a user deploys, batch 1 and 32.

    python -m benchmarks.deploy [--quick] [--out benchmarks/results]

Modes: eager and `torch.compile` in float32 and in bfloat16 (weights and input cast, as `--precision bf16`
runs), and the exported ONNX file in onnxruntime (CPU provider, default graph optimisations, as many intra-op
threads as torch uses). Every model goes through the same ONNX export call as `dccnext export`
(`export.write_onnx_graph`: dynamo exporter, one opset, dynamic batch/H/W). For each batch size, all fifteen
(model, mode) cases are timed in one interleaved run (`timing.measure_interleaved`: warm-up, then rounds in a
rotating order, medians), DCCNeXt and its control after `optimize_for_inference` (as `eval`, `predict` and
`export` run them), so machine drift hits every case alike and the ratios to convformer_s18 hold when
absolute times do not. Writes `deploy.json` (every repeat) and `deploy.md` to `--out`.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn

from dccnext_cli import optimize_for_inference

from . import cases
from .compare import machine
from .timing import measure_interleaved

REF = "convformer_s18"
MODELS = ("dccnext_b2", "control_b2", REF)
MODES = ("eager", "compiled", "bf16 eager", "bf16 compiled", "onnxruntime")
SIZE = (224, 224)


@dataclass(frozen=True)
class Plan:
    """Repeats per batch size: (warm-up, timed rounds). Warm-up also pays for compilation and ORT's first run."""

    batches: tuple[int, ...] = (1, 32)
    rounds: tuple[tuple[int, int], ...] = ((3, 15), (2, 7))

    @classmethod
    def quick(cls) -> Plan:
        """Batch 32 gets five rounds: with three, B2's ratio to its control read 0.91-0.99 in identical runs."""
        return cls(rounds=((2, 7), (1, 5)))


def onnx_session(model: nn.Module, folder: Path, name: str, profile: bool = False):
    """Export `model` the way `dccnext export --format onnx` does and open it in onnxruntime (CPU).

    `profile`: onnxruntime's own profiler records every node (`end_profiling` names its file)."""
    import onnxruntime as ort

    from dccnext_cli.export import write_onnx_graph

    path = folder / f"{name}.onnx"
    write_onnx_graph(_NamedInput(model).eval(), torch.randn(2, 3, *SIZE), path)
    options = ort.SessionOptions()  # graph optimisations: the default, ORT_ENABLE_ALL
    options.intra_op_num_threads = torch.get_num_threads()
    # no spinning after a run: interleaved with torch's cases, onnxruntime's spinning threads took the cores from
    # the next case (eager B2 at batch 1: 77-83 ms in the table, 42 ms without it)
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if profile:
        options.enable_profiling = True
        options.profile_file_prefix = str(folder / f"{name}-profile")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


class _NamedInput(nn.Module):
    """`forward(x)`: the exporter's dynamic shapes name the input `x`, whatever the wrapped model calls it."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


def _torch_step(model: nn.Module, x: torch.Tensor) -> Callable[[], None]:
    def step() -> None:
        with torch.inference_mode():
            model(x)

    return step


def _ort_step(session, x: torch.Tensor) -> Callable[[], None]:
    feed = {"images": x.numpy()}
    return lambda: session.run(None, feed)


def build_runners(folder: Path) -> dict[str, dict[str, Callable[[torch.Tensor], Callable[[], None]]]]:
    """Per model and mode, a function from an input batch to its timed step (models built and exported once)."""
    runners: dict[str, dict[str, Callable[[torch.Tensor], Callable[[], None]]]] = {}
    for name in MODELS:
        torch.manual_seed(0)
        fp32 = cases.build_model(name).eval()
        bf16 = cases.build_model(name).eval()
        bf16.load_state_dict(fp32.state_dict())
        bf16.to(torch.bfloat16)
        if name != REF:  # as `eval`, `predict` and `export` run DCCNeXt (the control is the same network)
            optimize_for_inference(fp32)
            optimize_for_inference(bf16)
        compiled, compiled_bf16 = torch.compile(fp32, dynamic=False), torch.compile(bf16, dynamic=False)
        t0 = time.perf_counter()
        session = onnx_session(fp32, folder, name)
        print(f"exported {name} to ONNX in {time.perf_counter() - t0:.0f} s", flush=True)
        runners[name] = {
            "eager": lambda x, m=fp32: _torch_step(m, x),
            "compiled": lambda x, m=compiled: _torch_step(m, x),
            "bf16 eager": lambda x, m=bf16: _torch_step(m, x.bfloat16()),
            "bf16 compiled": lambda x, m=compiled_bf16: _torch_step(m, x.bfloat16()),
            "onnxruntime": lambda x, s=session: _ort_step(s, x),
        }
    return runners


def run(plan: Plan, folder: Path) -> list[dict]:
    runners = build_runners(folder)
    rows = []
    for batch, (warmup, repeats) in zip(plan.batches, plan.rounds, strict=True):
        x = torch.randn(batch, 3, *SIZE, generator=torch.Generator().manual_seed(batch))
        steps = {f"{name}|{mode}": runners[name][mode](x) for name in MODELS for mode in MODES}
        t0 = time.perf_counter()
        timings = measure_interleaved(steps, warmup, repeats)
        print(f"batch {batch}: {time.perf_counter() - t0:.0f} s (warm-up, compilation included)", flush=True)
        for key, timing in timings.items():
            name, mode = key.split("|")
            rows.append({"batch": batch, "model": name, "mode": mode, "median_s": timing.median_s,
                         "img_per_s": batch / timing.median_s, "times_s": [round(t, 5) for t in timing.times_s]})
    return rows


def with_ratios(rows: list[dict]) -> list[dict]:
    """Each row's speed relative to convformer_s18 in the same mode and batch (> 1: faster than it)."""
    ref = {(r["batch"], r["mode"]): r["median_s"] for r in rows if r["model"] == REF}
    return [{**r, "vs_convformer_s18": ref[(r["batch"], r["mode"])] / r["median_s"]} for r in rows]


def table(rows: list[dict]) -> str:
    """One markdown table: a row per (batch, mode), per model its median ms and its speed vs convformer_s18."""
    by = {(r["batch"], r["mode"], r["model"]): r for r in rows}
    head = " | ".join(f"{m} ms | {m} vs {REF}" for m in MODELS)
    lines = [f"| batch | mode | {head} |", "|---|---|" + "---:|" * (2 * len(MODELS))]
    for batch in sorted({r["batch"] for r in rows}):
        for mode in MODES:
            cells = []
            for name in MODELS:
                r = by[(batch, mode, name)]
                cells += [f"{r['median_s'] * 1000:.1f}", f"{r['vs_convformer_s18']:.2f}x"]
            lines.append(f"| {batch} | {mode} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds (about half the time)")
    parser.add_argument("--threads", type=int, default=None,
                        help="threads for torch and onnxruntime (default: torch's, one per core); 1 keeps the "
                             "ratios readable on a machine that others load")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    started = time.perf_counter()
    import onnxruntime

    with tempfile.TemporaryDirectory(prefix="dccnext-deploy-") as folder:
        rows = with_ratios(run(Plan.quick() if args.quick else Plan(), Path(folder)))
    md = table(rows)
    print(md)
    meta = {"date": time.strftime("%Y-%m-%d %H:%M"), "torch": torch.__version__, "onnxruntime": onnxruntime.__version__,
            "threads": torch.get_num_threads(), "machine": machine(), "quick": args.quick, "size": list(SIZE),
            "wall_s": round(time.perf_counter() - started)}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "deploy.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    (args.out / "deploy.md").write_text(f"{meta}\n\n{md}\n")
    print(f"wrote {args.out / 'deploy.md'} and deploy.json in {meta['wall_s']} s")


if __name__ == "__main__":
    main()
