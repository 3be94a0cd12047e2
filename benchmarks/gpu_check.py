"""The GPU check: one prepared script that writes DCCNeXt's GPU table and checks every CUDA path.

    python benchmarks/gpu_check.py --out DIR          # on a GPU machine: about 6-8 minutes on one GPU
    python benchmarks/gpu_check.py --dry-run --out DIR  # every section at tiny shapes on the CPU (what CI runs)

Writes `gpu_check.json` and `gpu_check.md` to `--out` (default benchmarks/results). Sections, each timed and
each run even when an earlier one failed (its error is recorded):

1. parity: every DCConv backend (reference, Inductor, Triton, Triton deterministic) on the device against
   the float64 reference on the CPU, forward and backward, float32 and bfloat16; cluster indices exactly; b0
   logits on the device against the CPU model.
2. sync: DCConv forward + backward and a whole bf16 training step of b0 (AdamW) under CUDA's sync debug
   mode set to raise: no host synchronisation.
3. op: the cluster convolution's forward + backward at (64, 14, 14, 640), K = 12, per backend.
4. benchmark: `dccnext benchmark`'s own code for b0-b4, convformer_s18 and convnext_tiny: inference and a
   training step, bf16, batch 256 at 224, eager (all seven interleaved); compiled is the last section (as
   many models as its time budget allows, B2 and the two peers first).
5. pipeline: the input pipeline (ImageNet recipe at 224, device path) on a folder of ImageNet-sized JPEGs
   against B2's training step from section 4.
6. ablation: B0 with global_op dcc, conv and none on the embedded data at 112 px, two seeds, equal steps,
   trained by `dccnext train` (six processes at once); top-1 of each.
7. ddp: one `accelerate launch --multi_gpu` training run (one process per GPU; two CPU processes in the dry run).

The dry run shrinks every shape, compiles one model only and runs Triton under its interpreter.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path

if "--dry-run" in sys.argv and not os.path.exists("/dev/nvidia0"):
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before torch imports triton.language

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import dccnext_cli  # noqa: E402,F401  (registers the dccnext models with timm)
from benchmarks.jpeg_folder import make_jpeg_folder  # noqa: E402
from dccnext_cli.benchmark.measure import Setting, interleaved, median, synchronize  # noqa: E402
from dccnext_cli.benchmark.models import resolve_model  # noqa: E402
from dccnext_cli.benchmark.pipeline import time_pipeline  # noqa: E402
from dccnext_cli.benchmark.report import timm_rows  # noqa: E402
from dccnext_cli.benchmark.suite import run_suite  # noqa: E402
from dccnext_cli.models import dcconv  # noqa: E402
from dccnext_cli.models.dccnext import create_dccnext  # noqa: E402
from dccnext_cli.models.settings import use_operator_settings  # noqa: E402

KERNELS = ("reference", "inductor", "triton", "triton-deterministic")  # DCConv backends (models/dcconv.py)
MODELS = ("dccnext_b2", "convformer_s18", "convnext_tiny", "dccnext_b0", "dccnext_b1", "dccnext_b3", "dccnext_b4")
OPS = ("dcc", "conv", "none")
TOLERANCE = {"fp32": 1e-3, "bf16": 2e-2}  # max |error| / max |reference|: float32 sums; one bf16 rounding and more


def _shapes(dry: bool) -> dict:
    if dry:
        return {"op": (2, 4, 4, 64), "parity": (2, 4, 4, 64), "batch": 2, "size": 64, "repeats": 1, "warmup": 1,
                "models": MODELS[:2] + MODELS[3:4], "compiled": ("dccnext_b0",), "compiled_kinds": ("infer",),
                "seeds": (0,), "train_workers": 0, "jpegs": 8, "pipe_batch": 4, "workers": 0, "train_samples": 64,
                "eval_samples": 32,
                "ablation_res": 56, "ablation_batch": 16, "budget_compiled_s": 1e9}
    return {"op": (64, 14, 14, 640), "parity": (2, 14, 14, 640), "batch": 256, "size": 224, "repeats": 5,
            "warmup": 2, "models": MODELS, "compiled": MODELS, "compiled_kinds": ("infer", "train"),
            "seeds": (0, 1), "train_workers": 2, "jpegs": 1024, "pipe_batch": 256, "workers": 14,
            "train_samples": 12800, "eval_samples": 2000, "ablation_res": 112, "ablation_batch": 128,
            "budget_compiled_s": 150}


# --------------------------------------------------------------------- 1. parity
def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.detach().cpu().double() - b.detach().double()).abs().max() / b.detach().double().abs().max())


def parity(device: torch.device, shape: tuple[int, int, int, int]) -> list[dict]:
    """Relative max errors of each backend on the device against the CPU float64 reference; indices exact."""
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False  # float32 means float32 here
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(*shape, generator=gen)
    batch, height, width, channels = shape
    weight, bias = torch.randn(12, channels, generator=gen), torch.randn(channels, generator=gen)
    grad = torch.randn(batch, height * width, channels, generator=gen)
    idx = dcconv.cluster_indices(x, 12, 8)
    rows = [{"check": "cluster indices", "equal": bool(torch.equal(
        dcconv.cluster_indices(x.to(device), 12, 8).cpu(), idx))}]
    for precision, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        inputs = [t.to(dtype) for t in (x.flatten(1, 2), weight, bias)]  # the reference sees the same rounded values
        ref = [t.detach().double().requires_grad_() for t in inputs]
        expected = dcconv.cluster_conv_reference(ref[0], idx, ref[1], ref[2])
        expected.backward(grad.double())
        for kernels in KERNELS:
            got = [t.detach().clone().to(device).requires_grad_() for t in inputs]
            with use_operator_settings(backend=kernels):
                out = dcconv.cluster_conv(got[0], idx.to(device), got[1], got[2])
            out.backward(grad.to(device, dtype))
            errors = [_relative(a, b) for a, b in ((out, expected), (got[0].grad, ref[0].grad),
                                                    (got[1].grad, ref[1].grad), (got[2].grad, ref[2].grad))]
            rows.append({"check": f"cluster conv {precision} ({kernels})", "rel_out": errors[0],
                         "rel_grad_x": errors[1], "rel_grad_w": errors[2], "rel_grad_b": errors[3],
                         "tolerance": TOLERANCE[precision]})
    model = create_dccnext("b0", num_classes=10).eval()
    image = torch.randn(2, 3, 96, 96, generator=gen)
    with torch.no_grad():
        cpu_logits = model(image)
        dev_logits = model.to(device)(image.to(device)).cpu()
    rows.append({"check": "b0 logits", "max_abs_out": float((cpu_logits - dev_logits).abs().max())})
    return rows


def parity_failures(rows: list[dict]) -> list[str]:
    """The checks that fail: indices not equal, or a relative error above its tolerance."""
    failed = [row["check"] for row in rows if row.get("equal") is False]
    failed += [row["check"] for row in rows if "tolerance" in row
               and any(v > row["tolerance"] for k, v in row.items() if k.startswith("rel_"))]
    return failed


# --------------------------------------------------------------------- 2. no host syncs
def _no_sync(name: str, step: Callable[[], None], device: torch.device) -> dict:
    step()  # warm-up: Triton compiles its kernels, the optimiser makes its state
    synchronize(device)
    if device.type != "cuda":
        step()
        return {"check": name, "no_host_sync": None, "note": "CUDA only: ran without the sync check"}
    torch.cuda.set_sync_debug_mode("error")
    try:
        step()
        return {"check": name, "no_host_sync": True}
    except RuntimeError as error:
        return {"check": name, "no_host_sync": False, "error": str(error).splitlines()[0]}
    finally:
        torch.cuda.set_sync_debug_mode("default")


def sync_free(device: torch.device, shape: tuple[int, int, int, int], batch: int, size: int) -> list[dict]:
    layer = dcconv.DCConv(shape[-1], 12, 8).to(device)
    x = torch.randn(*shape, device=device, requires_grad=True)
    model = create_dccnext("b0").to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    images = torch.randn(batch, 3, size, size, device=device)
    labels = torch.randint(0, 1000, (batch,), device=device)

    def train_step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16):
            loss = F.cross_entropy(model(images), labels)
        loss.backward()
        optimizer.step()

    return [_no_sync("DCConv fwd+bwd", lambda: layer(x).sum().backward(), device),
            _no_sync(f"b0 bf16 training step, batch {batch}", train_step, device)]


# --------------------------------------------------------------------- 3. the op
def op_speed(device: torch.device, shape: tuple[int, int, int, int], repeats: int) -> list[dict]:
    batch, height, width, channels = shape
    x = torch.randn(batch, height * width, channels, device=device, requires_grad=True)
    idx = dcconv.cluster_indices(x.detach(), 12, 8)
    weight = torch.randn(12, channels, device=device, requires_grad=True)
    bias = torch.zeros(channels, device=device, requires_grad=True)
    grad = torch.randn_like(x)
    steps = {}
    for kernels in KERNELS:
        def step(kernels: str = kernels) -> None:
            with use_operator_settings(backend=kernels):
                dcconv.cluster_conv(x, idx, weight, bias).backward(grad)

        steps[kernels] = _Timed(step)
    times = interleaved(steps, device, warmup=1, rounds=repeats)
    return [{"kernels": name, "shape": list(shape), "fwd_bwd_ms": 1000 * median(t)} for name, t in times.items()]


class _Timed:
    """A bare step for `interleaved` (which calls `.run()`)."""

    def __init__(self, run: Callable[[], None]):
        self.run = run


# --------------------------------------------------------------------- 4. dccnext benchmark
def model_speed(device: torch.device, shapes: dict) -> dict:
    """Eager: the seven models interleaved per setting (inference, then a training step)."""
    specs = [resolve_model(name) for name in shapes["models"]]
    size, batch = (shapes["size"],) * 2, shapes["batch"]
    eager = [Setting(kind, batch, size, "bf16", "eager") for kind in ("infer", "train")]
    memory = device.type == "cuda"  # CPU memory probes are `dccnext benchmark`'s; not needed for a dry run
    return {"rows": timm_rows(run_suite(specs, eager, device, warmup=shapes["warmup"], rounds=shapes["repeats"],
                                        memory=memory))}


def compiled_speed(device: torch.device, shapes: dict) -> dict:
    """Compiled: one model at a time (its compilation in its warm-up) while the time budget lasts; ratios to B2."""
    size, batch, memory = (shapes["size"],) * 2, shapes["batch"], device.type == "cuda"
    results, skipped, start = [], [], time.perf_counter()
    for name in shapes["compiled"]:
        if time.perf_counter() - start > shapes["budget_compiled_s"]:
            skipped.append(name)
            continue
        settings = [Setting(kind, batch, size, "bf16", "compiled") for kind in shapes["compiled_kinds"]]
        results += run_suite([resolve_model(name)], settings, device, warmup=shapes["warmup"] + 1,
                             rounds=shapes["repeats"], memory=memory)
    for kind in ("infer", "train"):
        base = next((r.samples_per_sec for r in results if r.model == "dccnext_b2" and r.setting.kind == kind), None)
        for r in results:
            if r.setting.kind == kind and base:
                r.ratio = r.samples_per_sec / base
    return {"rows": timm_rows(results), "compiled_skipped": skipped}


# --------------------------------------------------------------------- 5. input pipeline
def pipeline(device: torch.device, shapes: dict, train_rows: list[dict]) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        make_jpeg_folder(Path(tmp), shapes["jpegs"])
        pipe = time_pipeline(f"imagefolder:{tmp}", shapes["pipe_batch"], shapes["workers"], device,
                             resolution=(shapes["size"],) * 2)
    b2 = next((r for r in train_rows if r["model"] == "dccnext_b2" and r["mode"] == "eager"), None)
    step = b2["train_samples_per_sec"] if b2 else None
    limit = None if step is None else "input pipeline" if pipe.samples_per_sec < step else "training step"
    return {**pipe.to_dict(), "cpu_cores": os.cpu_count(), "b2_train_samples_per_sec": step, "limited_by": limit}


# --------------------------------------------------------------------- 6. ablation, 7. ddp
def _train_command(out: Path, op: str, seed: int, shapes: dict, launcher: list[str] | None = None) -> list[str]:
    base = launcher or [sys.executable, "-m", "dccnext_cli"]
    return [*base, "train", "--variant", "b0", "--res", str(shapes["ablation_res"]), "--epochs", "1",
            "--batch-size", str(shapes["ablation_batch"]), "--seed", str(seed),
            "--workers", str(shapes["train_workers"]),
            "--set", f"model.global_op={op}", "--set", "model.conv_ffn=true",
            "--set", f"train_samples={shapes['train_samples']}", "--set", f"eval_samples={shapes['eval_samples']}",
            "-o", str(out), "--json"]


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}


def ablation(shapes: dict) -> list[dict]:
    """Six `dccnext train` processes at once (a GPU has room for six B0s; two workers each; one seed dry)."""
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        runs = {(op, seed): subprocess.Popen(_train_command(Path(tmp) / f"{op}-{seed}", op, seed, shapes),
                                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())
                for op in OPS for seed in shapes["seeds"]}
        for (op, seed), proc in runs.items():
            out, err = proc.communicate(timeout=900)
            if proc.returncode != 0:
                rows.append({"global_op": op, "seed": seed, "error": (err.strip().splitlines() or ["?"])[-1]})
                continue
            summary = json.loads(out)
            rows.append({"global_op": op, "seed": seed, "steps": summary["steps"],
                         "top1": summary["metrics"].get("top1"), "wall_s": summary["wall_s"]})
    return rows


def ddp(device: torch.device, shapes: dict) -> dict:
    processes = torch.cuda.device_count() if device.type == "cuda" else 2
    if processes < 2:  # accelerate refuses --multi_gpu with one process, and NCCL two processes on one GPU
        return {"processes": processes, "ok": None, "note": "DDP needs two GPUs; this machine has one"}
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes",
                str(processes), "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                "-m", "dccnext_cli"]
    with tempfile.TemporaryDirectory() as tmp:
        done = subprocess.run(_train_command(Path(tmp) / "ddp", "dcc", 0, {**shapes, "train_samples": 4 *
                                                                             shapes["ablation_batch"]}, launcher),
                              capture_output=True, text=True, env=_env(), timeout=600)
    if done.returncode != 0:
        return {"processes": processes, "ok": False, "error": (done.stderr.strip().splitlines() or ["?"])[-1]}
    summary, _ = json.JSONDecoder().raw_decode(done.stdout[done.stdout.index("{"):])  # each process prints one
    return {"processes": processes, "ok": True, "world_size": summary["world_size"], "steps": summary["steps"]}


# --------------------------------------------------------------------- report
def _section(result: dict, name: str, run: Callable[[], object]) -> None:
    start = time.perf_counter()
    try:
        result[name] = run()
    except Exception as error:  # one broken section must not cost the others their lease time
        result[name] = {"error": f"{type(error).__name__}: {error}".splitlines()[0],
                        "traceback": traceback.format_exc(limit=6)}
    result["seconds"][name] = round(time.perf_counter() - start, 1)
    print(f"[gpu_check] {name}: {result['seconds'][name]} s", file=sys.stderr, flush=True)


def _cells(row: dict, skip: tuple[str, ...] = ("check",)) -> str:
    return ", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items() if k not in skip)


def markdown(result: dict) -> str:
    lines = [f"# GPU check on {result['device']} ({result['date']}, torch {result['torch']}"
             f"{', dry run' if result['dry_run'] else ''})", "",
             f"Section times (s): {result['seconds']}", "", "| check | result |", "|---|---|"]
    for name in ("parity", "sync"):
        rows = result.get(name)
        if rows is None:
            continue
        rows = rows if isinstance(rows, list) else [{"check": name, **rows}]
        lines += [f"| {row.get('check', name)} | {_cells(row)} |" for row in rows if "traceback" not in row]
    op = result.get("op")
    if isinstance(op, list):
        lines += ["", "| cluster conv fwd+bwd | shape | ms |", "|---|---|---:|"]
        lines += [f"| {r['kernels']} | {r['shape']} | {r['fwd_bwd_ms']:.2f} |" for r in op]
    bench = {"rows": [r for name in ("benchmark", "compiled") for r in result.get(name, {}).get("rows", [])],
             "compiled_skipped": result.get("compiled", {}).get("compiled_skipped")}
    if bench["rows"]:
        lines += ["", "| model | mode | infer img/s | x B2 | train img/s | x B2 | train peak MiB | params M | GMACs |",
                  "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
        for r in bench["rows"]:
            lines.append(f"| {r['model']} | {r['mode']} | {r['infer_samples_per_sec']} | {r['infer_ratio']} | "
                         f"{r['train_samples_per_sec']} | {r['train_ratio']} | {r['train_peak_mib']} | "
                         f"{r['param_count']} | {r['infer_gmacs']} |")
        if bench.get("compiled_skipped"):
            lines.append(f"\ncompiled rows not run (time budget): {', '.join(bench['compiled_skipped'])}")
    for name in ("pipeline", "ddp"):
        if isinstance(result.get(name), dict):
            lines += ["", f"{name}: {_cells(result[name], ('traceback',))}"]
    if isinstance(result.get("ablation"), list):
        lines += ["", "| global_op | seed | steps | top-1 % |", "|---|---|---:|---:|"]
        lines += [f"| {r['global_op']} | {r['seed']} | {r.get('steps')} | {r.get('top1', r.get('error'))} |"
                  for r in result["ablation"]]
    errors = [f"- {name}: {value['error']}" for name, value in result.items()
              if isinstance(value, dict) and "traceback" in value]
    return "\n".join(lines + (["", "Errors:", *errors] if errors else [])) + "\n"


def _write(result: dict, out: Path) -> None:
    (out / "gpu_check.json").write_text(json.dumps(result, indent=1))
    (out / "gpu_check.md").write_text(markdown(result))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="tiny shapes on the CPU, one compiled model")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--sections", nargs="*", help="run only these sections (a rerun of what failed)")
    args = parser.parse_args()
    if not args.dry_run and not torch.cuda.is_available():
        parser.error("no CUDA device: run with --dry-run to check the script on the CPU")
    device = torch.device("cuda" if torch.cuda.is_available() and not args.dry_run else "cpu")
    shapes = _shapes(args.dry_run)
    torch.manual_seed(0)
    result = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
              "date": time.strftime("%Y-%m-%d"), "torch": torch.__version__, "dry_run": args.dry_run,
              "seconds": {}}
    sections = {
        "parity": lambda: parity(device, shapes["parity"]),
        "sync": lambda: sync_free(device, shapes["op"], shapes["batch"], shapes["size"]),
        "op": lambda: op_speed(device, shapes["op"], shapes["repeats"]),
        "benchmark": lambda: model_speed(device, shapes),
        "pipeline": lambda: pipeline(device, shapes, result.get("benchmark", {}).get("rows", [])),
        "ablation": lambda: ablation(shapes),
        "ddp": lambda: ddp(device, shapes),
        "compiled": lambda: compiled_speed(device, shapes),  # last: the longest, cut by its time budget
    }
    args.out.mkdir(parents=True, exist_ok=True)
    for name, run in sections.items():
        if not args.sections or name in args.sections:
            _section(result, name, run)
            _write(result, args.out)  # after every section: a lease cut short still leaves what ran
    print(markdown(result))
    failed = parity_failures(result["parity"]) if isinstance(result.get("parity"), list) else []
    failed += [name for name, value in result.items() if isinstance(value, dict) and "traceback" in value]
    if failed:
        sys.exit(f"failed: {', '.join(failed)}; see {args.out}")


if __name__ == "__main__":
    main()
