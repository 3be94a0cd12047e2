"""aten ops per eager CPU forward: how many small parallel regions a forward issues, a number that does not
depend on how busy the machine is (unlike its time).

    python -m benchmarks.op_counts [--batches 1 8 32] [--threads 2]

Counts every `aten::` event of torch.profiler (nested ones included) in one `torch.inference_mode()` forward
at 224 px after a warm-up forward, for DCCNeXt-B2 (plain, and after `optimize_for_inference`), its control
and timm's convformer_s18; and, per DCConv layer of B2's stage 3, for each CPU backend. On a busy machine each
op is a point where a parallel region waits for a descheduled thread, so fewer, larger ops hold up better.
Writes `op_counts.md` to `--out`.
"""

from __future__ import annotations

import argparse
import copy
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from dccnext_cli import optimize_for_inference
from dccnext_cli.models.dcconv import DCConv
from dccnext_cli.models.settings import use_operator_settings

from . import cases


def aten_ops(fn, x: torch.Tensor) -> int:
    """aten ops of one `fn(x)` under inference mode, after one warm-up call (which compiles what compiles)."""
    with torch.inference_mode():
        fn(x)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            fn(x)
    return sum(1 for e in prof.events() if e.name.startswith("aten::"))


def model_rows(batches: list[int]) -> list[str]:
    torch.manual_seed(0)
    models = {name: cases.build_model(name).eval() for name in ("dccnext_b2", "control_b2", "convformer_s18")}
    models["dccnext_b2 + optimize_for_inference"] = optimize_for_inference(copy.deepcopy(models["dccnext_b2"]))
    peer = None
    lines = ["| model | " + " | ".join(f"batch {b}" for b in batches) + " | x convformer_s18 (batch 1) |",
             "|---|" + "---:|" * (len(batches) + 1)]
    counts = {name: [aten_ops(model, torch.randn(b, 3, 224, 224)) for b in batches] for name, model in models.items()}
    peer = counts["convformer_s18"][0]
    for name, row in counts.items():
        lines.append(f"| {name} | " + " | ".join(f"{n:,}" for n in row) + f" | {row[0] / peer:.2f} |")
    return lines


def layer_rows(batches: list[int]) -> list[str]:
    layer = DCConv(640, cluster_size=12, subvector_interval=8).eval()  # B2's stage 3: E = 2C = 640, 14x14 at 224
    lines = ["| DCConv backend (stage 3 layer) | " + " | ".join(f"batch {b}" for b in batches) + " |",
             "|---|" + "---:|" * len(batches)]
    for backend in ("reference", "cpu", "inductor"):
        with use_operator_settings(backend=backend):
            row = [aten_ops(layer, torch.randn(b, 14, 14, 640)) for b in batches]
        lines.append(f"| {backend} | " + " | ".join(f"{n:,}" for n in row) + " |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    lines = [f"## aten ops per eager CPU forward at 224 px (inference mode, {args.threads} threads)", ""]
    lines += model_rows(args.batches) + [""] + layer_rows(args.batches)
    text = "\n".join(lines) + "\n"
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "op_counts.md").write_text(text)
    print(f"wrote {args.out / 'op_counts.md'}")


if __name__ == "__main__":
    main()
