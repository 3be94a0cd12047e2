"""The GPU check: parity of the CUDA paths with the CPU reference, then speed and memory against the peers.

    python benchmarks/gpu_check.py                  # on a GPU machine: about 8 minutes on one GPU
    python benchmarks/gpu_check.py --dry-run        # the same code at tiny shapes on the CPU (what CI runs)

Writes `gpu_check.json` and `gpu_check.md` to `--out` (default benchmarks/results). Sections:

1. parity: cluster indices and the cluster convolution (each DCConv backend: reference, Inductor, Triton, Triton
   deterministic) on the device against the float64 reference on the CPU, outputs and gradients; b0 logits on
   the device against the CPU model; on CUDA, DCConv's forward + backward under CUDA's sync debug mode (no host
   synchronisation).
2. the cluster convolution's forward + backward at (B, 14, 14, 640), K = 12: each backend.
3. B2, its control and timm's convformer_s18: training step (bf16 autocast, eager and compiled) img/s and peak
   memory, inference img/s, the 1280x800 backbone forward, and the 2048x2048 forward of b0.

The dry run shrinks every shape, skips torch.compile (minutes on a CPU) and runs Triton under its interpreter.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

if "--dry-run" in sys.argv and not os.path.exists("/dev/nvidia0"):
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before torch imports triton.language

import timm  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import dccnext_cli  # noqa: E402,F401  (registers the dccnext models with timm)
from dccnext_cli.models import dcconv  # noqa: E402
from dccnext_cli.models.dccnext import create_dccnext  # noqa: E402
from dccnext_cli.models.settings import use_operator_settings  # noqa: E402

KERNELS = ("reference", "inductor", "triton", "triton-deterministic")  # DCConv backends (models/dcconv.py)
MODELS = ("dccnext_b2", "control_b2", "convformer_s18")


def _shapes(dry: bool) -> dict:
    if dry:
        return {"op": (2, 4, 4, 64), "batch": 2, "size": 64, "backbone": (96, 128), "large": (96, 96),
                "repeats": 1, "compile": False}
    return {"op": (64, 14, 14, 640), "batch": 128, "size": 224, "backbone": (800, 1280), "large": (2048, 2048),
            "repeats": 5, "compile": True}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time(step: Callable[[], None], device: torch.device, repeats: int, warmup: int = 1) -> float:
    """Median seconds of `step` after a warm-up, the device synchronised around each repeat."""
    for _ in range(warmup):
        step()
    times = []
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        step()
        _sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _peak_mib(step: Callable[[], None], device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    torch.cuda.reset_peak_memory_stats(device)
    step()
    _sync(device)
    return torch.cuda.max_memory_allocated(device) / 2**20


def _model(name: str) -> torch.nn.Module:
    if name == "dccnext_b2":
        return create_dccnext("b2")
    if name == "control_b2":
        return create_dccnext("b2", global_op="conv")
    return timm.create_model(name, pretrained=False, num_classes=1000)


# --------------------------------------------------------------------- 1. parity
def parity(device: torch.device, shape: tuple[int, int, int, int]) -> list[dict]:
    """Max abs differences of the device paths to the CPU float64 reference (indices must match exactly)."""
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False  # float32 means float32 here
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(*shape, generator=gen)
    batch, height, width, channels = shape
    weight, bias = torch.randn(12, channels, generator=gen), torch.randn(channels, generator=gen)
    grad = torch.randn(batch, height * width, channels, generator=gen)
    idx = dcconv.cluster_indices(x, 12, 8)
    rows = [{"check": "cluster indices", "equal": bool(torch.equal(dcconv.cluster_indices(x.to(device), 12, 8).cpu(),
                                                                   idx))}]
    ref = [t.detach().double().requires_grad_() for t in (x.flatten(1, 2), weight, bias)]
    expected = dcconv.cluster_conv_reference(ref[0], idx, ref[1], ref[2])
    expected.backward(grad.double())
    for kernels in KERNELS:
        got = [t.detach().clone().to(device).requires_grad_() for t in (x.flatten(1, 2), weight, bias)]
        with use_operator_settings(backend=kernels):
            out = dcconv.cluster_conv(got[0], idx.to(device), got[1], got[2])
        out.backward(grad.to(device))
        diffs = [float((a.detach().cpu().double() - b.detach()).abs().max())
                 for a, b in ((out, expected), (got[0].grad, ref[0].grad), (got[1].grad, ref[1].grad),
                              (got[2].grad, ref[2].grad))]
        rows.append({"check": f"cluster conv ({kernels})", "max_abs_out": diffs[0], "max_abs_grad_x": diffs[1],
                     "max_abs_grad_w": diffs[2], "max_abs_grad_b": diffs[3]})
    model = create_dccnext("b0", num_classes=10).eval()
    image = torch.randn(2, 3, 96, 96, generator=gen)
    with torch.no_grad():
        cpu_logits = model(image)
        dev_logits = model.to(device)(image.to(device)).cpu()
    rows.append({"check": "b0 logits", "max_abs_out": float((cpu_logits - dev_logits).abs().max())})
    if device.type == "cuda":
        rows.append(_sync_free(device, shape))
    return rows


def _sync_free(device: torch.device, shape: tuple[int, int, int, int]) -> dict:
    """DCConv forward + backward (default settings: Triton on CUDA) with CUDA's sync debug mode set to raise."""
    layer = dcconv.DCConv(shape[-1], 12, 8).to(device)
    x = torch.randn(*shape, device=device, requires_grad=True)
    layer(x).sum().backward()  # warm-up: Triton compiles its kernels
    torch.cuda.synchronize(device)
    torch.cuda.set_sync_debug_mode("error")
    try:
        layer(x).sum().backward()
        return {"check": "DCConv fwd+bwd, no host sync", "equal": True}
    except RuntimeError as error:
        return {"check": "DCConv fwd+bwd, no host sync", "equal": False, "error": str(error).splitlines()[0]}
    finally:
        torch.cuda.set_sync_debug_mode("default")


# --------------------------------------------------------------------- 2. the op
def op_speed(device: torch.device, shape: tuple[int, int, int, int], repeats: int) -> list[dict]:
    batch, height, width, channels = shape
    x = torch.randn(batch, height * width, channels, device=device, requires_grad=True)
    idx = dcconv.cluster_indices(x.detach(), 12, 8)
    weight = torch.randn(12, channels, device=device, requires_grad=True)
    bias = torch.zeros(channels, device=device, requires_grad=True)
    grad = torch.randn_like(x)
    rows = []
    for kernels in KERNELS:
        def step(kernels: str = kernels) -> None:
            with use_operator_settings(backend=kernels):
                dcconv.cluster_conv(x, idx, weight, bias).backward(grad)

        rows.append({"kernels": kernels, "shape": list(shape), "fwd_bwd_ms": 1000 * _time(step, device, repeats)})
    return rows


# --------------------------------------------------------------------- 3. the models
def _train_step(model: torch.nn.Module, device: torch.device, batch: int, size: int) -> Callable[[], None]:
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randn(batch, 3, size, size, device=device)
    y = torch.randint(0, 1000, (batch,), device=device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        with autocast:
            loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()

    return step


def _infer_step(model: torch.nn.Module, device: torch.device, batch: int, size: tuple[int, int],
                features: bool = False) -> Callable[[], None]:
    model.eval()
    x = torch.randn(batch, 3, *size, device=device)
    forward = model.forward_features if features else model

    def step() -> None:
        with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16):
            forward(x)

    return step


def model_speed(device: torch.device, shapes: dict) -> list[dict]:
    rows, batch, size, repeats = [], shapes["batch"], shapes["size"], shapes["repeats"]
    for name in MODELS:
        model = _model(name).to(device)
        modes = [("eager", model)] + ([("compiled", torch.compile(model))] if shapes["compile"] else [])
        for mode, runnable in modes:
            train = _train_step(runnable, device, batch, size)
            rows.append({"metric": f"train b{batch} bf16 {mode}", "model": name,
                         "img_s": batch / _time(train, device, repeats, warmup=2),
                         "peak_mib": _peak_mib(train, device)})
            infer = _infer_step(runnable, device, batch, (size, size))
            rows.append({"metric": f"infer b{batch} bf16 {mode}", "model": name,
                         "img_s": batch / _time(infer, device, repeats, warmup=2)})
        backbone = _infer_step(model, device, 1, shapes["backbone"], features=True)
        rows.append({"metric": f"backbone {shapes['backbone'][1]}x{shapes['backbone'][0]} b1", "model": name,
                     "ms": 1000 * _time(backbone, device, repeats), "peak_mib": _peak_mib(backbone, device)})
        del model, modes
    large = _infer_step(create_dccnext("b0").to(device), device, 1, shapes["large"], features=True)
    rows.append({"metric": f"backbone {shapes['large'][1]}x{shapes['large'][0]} b1", "model": "dccnext_b0",
                 "ms": 1000 * _time(large, device, 1), "peak_mib": _peak_mib(large, device)})
    return rows


PARITY_TOLERANCE = 1e-3  # float32 accumulation against float64, values of order 1-10


def parity_failures(rows: list[dict]) -> list[str]:
    """The op checks that fail: indices not equal, or a cluster-conv difference above the tolerance."""
    failed = [row["check"] for row in rows if row.get("equal") is False]
    failed += [row["check"] for row in rows if row["check"].startswith("cluster conv")
               and any(v > PARITY_TOLERANCE for k, v in row.items() if k.startswith("max_abs"))]
    return failed


def markdown(result: dict) -> str:
    lines = [f"GPU check on {result['device']} ({result['date']}, torch {result['torch']}"
             f"{', dry run' if result['dry_run'] else ''})", "", "| parity check | result |", "|---|---|"]
    for row in result["parity"]:
        cells = [f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items() if k != "check"]
        lines.append(f"| {row['check']} | {', '.join(cells)} |")
    lines += ["", "| cluster conv fwd+bwd | shape | ms |", "|---|---|---:|"]
    lines += [f"| {r['kernels']} | {r['shape']} | {r['fwd_bwd_ms']:.2f} |" for r in result["op"]]
    lines += ["", "| metric | model | img/s | ms | peak MiB |", "|---|---|---:|---:|---:|"]
    for r in result["models"]:
        img = f"{r['img_s']:.1f}" if r.get("img_s") else ""
        ms = f"{r['ms']:.1f}" if r.get("ms") else ""
        peak = f"{r['peak_mib']:.0f}" if r.get("peak_mib") else ""
        lines.append(f"| {r['metric']} | {r['model']} | {img} | {ms} | {peak} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="tiny shapes on the CPU, no torch.compile")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args()
    if not args.dry_run and not torch.cuda.is_available():
        parser.error("no CUDA device: run with --dry-run to check the script on the CPU")
    device = torch.device("cuda" if torch.cuda.is_available() and not args.dry_run else "cpu")
    shapes = _shapes(args.dry_run)
    torch.manual_seed(0)
    result = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
              "date": time.strftime("%Y-%m-%d"), "torch": torch.__version__, "dry_run": args.dry_run,
              "parity": parity(device, shapes["op"] if args.dry_run else (2, 14, 14, 640)),
              "op": op_speed(device, shapes["op"], shapes["repeats"]),
              "models": model_speed(device, shapes)}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu_check.json").write_text(json.dumps(result, indent=1))
    text = markdown(result)
    (args.out / "gpu_check.md").write_text(text)
    print(text)
    if failed := parity_failures(result["parity"]):
        sys.exit(f"parity failed: {', '.join(failed)} (tolerance {PARITY_TOLERANCE:g}); see {args.out}")


if __name__ == "__main__":
    main()
