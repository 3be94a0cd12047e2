"""Speed on a busy machine: DCCNeXt beside other work, the way users run it on shared machines.

    python -m benchmarks.busy [--part inference|training|both] [--quick] [--cycles N] [--out benchmarks/results]

- **inference**: DCCNeXt-B2 (after `optimize_for_inference`, as `eval` and `predict` run it), its control and
  timm's convformer_s18, batch 8, 224 px, float32: interleaved rounds at 2 threads on the quiet machine, then
  beside two busy processes (`python -c "while True: pass"`) at 2 threads, then at the thread count
  `common.threads.CoreShare` picks there (what `eval` and `predict` switch to). The quiet and busy phases alternate
  over `--cycles` cycles (fresh busy processes each time), so that drift of a shared machine hits both phases alike;
  one cycle swung B2's kept ratio by 0.2-0.3 between runs. Reported per model: the slow-down (busy over quiet), and
  B2's speed ratio to each peer busy over quiet (1.0: the load hurts B2 no more than the peer), the median over the
  cycles and each cycle's. Each spin policy runs in a fresh process, since libgomp reads it when torch loads:
  libgomp's default (spin about 300,000 times, then sleep), the two caps the `dccnext` command sets
  (`SPIN_COUNT` when it starts on a quiet machine, `BUSY_SPIN_COUNT` when other programs already run) and
  `OMP_WAIT_POLICY=PASSIVE` (no spin).
- **training**: the quickstart-sized run `dccnext train --variant b0 --epochs 1 --set train_samples=3200
  --set eval_samples=32 --workers 0` alone, then twice at once; the pair's wall time over one alone (a fair
  share of two cores is 2x). As the command runs by default (threads fitted to the free cores, short spin),
  with the short spin alone (`OMP_NUM_THREADS` = the cores keeps the count fixed) and as it ran before (fixed
  count, libgomp's spin). The busy processes are started as strangers (not this process's children), since
  `fit_threads` counts a process's own children as its own work.

Writes `busy.json` and `busy.md` to `--out`. Needs an otherwise quiet machine: it makes the load itself.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from dccnext_cli.common.threads import BUSY_SPIN_COUNT, SPIN_COUNT

REF = "convformer_s18"
MODELS = ("dccnext_b2", "control_b2", REF)
POLICIES = {"libgomp default": {},
            f"dccnext started quiet (GOMP_SPINCOUNT={SPIN_COUNT})": {"GOMP_SPINCOUNT": SPIN_COUNT},
            f"dccnext started busy (GOMP_SPINCOUNT={BUSY_SPIN_COUNT})": {"GOMP_SPINCOUNT": BUSY_SPIN_COUNT},
            "passive": {"OMP_WAIT_POLICY": "PASSIVE"}}
SPIN = [sys.executable, "-c", "while True: pass"]
TRAIN = ["-m", "dccnext_cli", "train", "--variant", "b0", "--epochs", "1", "--set", "train_samples=3200",
         "--set", "eval_samples=32", "--workers", "0"]


def _env(changes: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "OMP_NUM_THREADS")}
    return {**env, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", **changes}


def _stranger(command: list[str]) -> int:
    """Start `command` as someone else's process (not our descendant: its shell exits at once), return its pid:
    `fit_threads` counts a process's own children as its own work (data workers), not as the machine's load."""
    line = " ".join(shlex.quote(part) for part in command) + " >/dev/null 2>&1 & echo $!"
    return int(subprocess.run(["sh", "-c", line], capture_output=True, text=True, check=True).stdout)


def inference_child(warmup: int, rounds: int, cycles: int) -> dict:
    """In this process (its spin policy fixed by its environment), `cycles` times: rounds on the quiet machine at 2
    threads, then rounds beside two spinners at 2 threads; last, beside spinners, at the thread count `fit_threads`
    picks there (what `eval` and `predict` do)."""
    import torch

    from dccnext_cli import optimize_for_inference
    from dccnext_cli.common.threads import CoreShare

    from . import cases
    from .timing import measure_interleaved

    torch.set_num_threads(2)
    steps = {}
    for name in MODELS:
        torch.manual_seed(0)
        model = cases.build_model(name).eval()
        if name != REF:
            optimize_for_inference(model)
        steps[name] = cases.inference_step(model, 8, (224, 224))
    phases: dict[str, dict[str, list]] = {name: {"quiet_s": [], "busy_s": [], "quiet_times_s": [],
                                                 "busy_times_s": []} for name in MODELS}
    for cycle in range(cycles):
        quiet = measure_interleaved(steps, warmup if cycle == 0 else 1, rounds)
        with _spinners():
            busy = measure_interleaved(steps, 1, rounds)
        for name in MODELS:
            phases[name]["quiet_s"].append(quiet[name].median_s)
            phases[name]["busy_s"].append(busy[name].median_s)
            phases[name]["quiet_times_s"].append(quiet[name].times_s)
            phases[name]["busy_times_s"].append(busy[name].times_s)
    with _spinners():
        share = CoreShare(every_s=1.0)
        share.ceiling = 2
        share.sample()
        time.sleep(1.2)
        fitted_threads = share.threads_for(share.others() or 0.0)
        torch.set_num_threads(fitted_threads)
        fitted = measure_interleaved(steps, 1, rounds)
    return {name: {**phases[name], "fitted_s": fitted[name].median_s, "fitted_threads": fitted_threads}
            for name in MODELS}


@contextlib.contextmanager
def _spinners(count: int = 2):
    """`count` busy strangers for the length of the block (given a second to start spinning)."""
    pids = [_stranger(SPIN) for _ in range(count)]
    try:
        time.sleep(1.0)
        yield
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
        time.sleep(0.5)


def inference(quick: bool, cycles: int) -> list[dict]:
    rows = []
    for label, policy in POLICIES.items():
        command = [sys.executable, "-m", "benchmarks.busy", "--child", "--quick" if quick else "--full",
                   "--cycles", str(cycles)]
        out = subprocess.run(command, env=_env(policy), capture_output=True, text=True, check=True)
        result = json.loads(out.stdout.strip().splitlines()[-1])
        for name, r in result.items():
            slowdowns = [b / q for q, b in zip(r["quiet_s"], r["busy_s"], strict=True)]
            rows.append({"policy": label, "model": name, **r, "slowdown": statistics.median(slowdowns),
                         "cycle_slowdowns": slowdowns})
        print(f"inference, {label}: done", flush=True)
    add_ratios_kept(rows)
    return rows


def add_ratios_kept(rows: list[dict]) -> None:
    """B2's speed ratio to each row's model, busy over quiet, per cycle and their median (< 1: the load slows B2
    more than that model)."""
    for row in rows:
        b2 = next(r for r in rows if r["policy"] == row["policy"] and r["model"] == "dccnext_b2")
        kept = [(b / b2b) / (q / b2q) for q, b, b2q, b2b in zip(row["quiet_s"], row["busy_s"], b2["quiet_s"],
                                                                b2["busy_s"], strict=True)]
        row["cycle_ratios_kept"] = kept
        row["b2_ratio_kept"] = statistics.median(kept)


def _wall(command: list[str], env: dict[str, str], copies: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        procs = [subprocess.Popen([sys.executable, *command, "-o", f"{tmp}/run{i}"], env=env,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for i in range(copies)]
        codes = [p.wait() for p in procs]
        elapsed = time.perf_counter() - start
    if any(codes):
        raise SystemExit(f"dccnext train exited with {codes}")
    return elapsed


def training(repeats: int) -> list[dict]:
    rows = []
    cores = str(len(os.sched_getaffinity(0)))
    before = {"OMP_NUM_THREADS": cores, "GOMP_SPINCOUNT": "300000"}  # libgomp's spin, threads never refitted
    fixed = {"OMP_NUM_THREADS": cores, "GOMP_SPINCOUNT": SPIN_COUNT}  # the short spin alone, threads never refitted
    configs = {"dccnext default": {}, "fixed threads, short spin": fixed,
               "as before (fixed threads, libgomp's spin)": before}
    for label, policy in configs.items():
        env = _env(policy)
        alone, pair = [], []
        for _ in range(repeats):  # alternate, so drift hits both alike
            alone.append(_wall(TRAIN, env, 1))
            pair.append(_wall(TRAIN, env, 2))
        rows.append({"policy": label, "alone_s": statistics.median(alone), "pair_s": statistics.median(pair),
                     "alone_all_s": alone, "pair_all_s": pair,
                     "pair_over_alone": statistics.median(pair) / statistics.median(alone)})
        print(f"training, {label}: alone {alone} pair {pair}", flush=True)
    return rows


def markdown(result: dict) -> str:
    lines = []
    if "inference" in result:
        lines += ["| spin policy | model | quiet ms | busy ms | busy / quiet | B2's ratio to it kept "
                  "(each cycle) | busy, fitted threads ms |", "|---|---|---:|---:|---:|---:|---:|"]
        for r in result["inference"]:
            each = ", ".join(f"{k:.2f}" for k in r["cycle_ratios_kept"])
            kept = "" if r["model"] == "dccnext_b2" else f"{r['b2_ratio_kept']:.2f} ({each})"
            quiet, busy = statistics.median(r["quiet_s"]) * 1000, statistics.median(r["busy_s"]) * 1000
            lines.append(f"| {r['policy']} | {r['model']} | {quiet:.1f} | {busy:.1f} | {r['slowdown']:.2f}x "
                         f"| {kept} | {r['fitted_s'] * 1000:.1f} ({r['fitted_threads']}) |")
        lines.append("")
    if "training" in result:
        lines += ["| threads | one alone s | two at once s | pair / alone |", "|---|---:|---:|---:|"]
        for r in result["training"]:
            lines.append(f"| {r['policy']} | {r['alone_s']:.1f} | {r['pair_s']:.1f} | {r['pair_over_alone']:.2f}x |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=("inference", "training", "both"), default="both")
    parser.add_argument("--quick", action="store_true", help="fewer rounds and one training repeat")
    parser.add_argument("--full", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--cycles", type=int, default=None,
                        help="quiet and busy phases alternated this many times (default 3, with --quick 1)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args()
    cycles = args.cycles or (1 if args.quick else 3)
    if args.child:
        print(json.dumps(inference_child(*((2, 5) if args.quick else (3, 9)), cycles)))
        return
    from .compare import machine

    result: dict = {"machine": machine(), "date": time.strftime("%Y-%m-%d %H:%M"), "quick": args.quick,
                    "cycles": cycles}
    if args.part in ("inference", "both"):
        result["inference"] = inference(args.quick, cycles)
    if args.part in ("training", "both"):
        result["training"] = training(1 if args.quick else 2)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "busy.json").write_text(json.dumps(result, indent=1))
    (args.out / "busy.md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
