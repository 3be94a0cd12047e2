"""Every setting, its models interleaved: the rows `dccnext benchmark` prints and writes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from .measure import Setting, interleaved, make_step, median, peak_mib_cuda
from .models import ModelSpec, count_params, gmacs

__all__ = ["Result", "run_suite", "steps_per_setting"]


@dataclass
class Result:
    """One model in one setting."""

    model: str
    setting: Setting
    device: str
    step_ms: float
    samples_per_sec: float
    param_count_m: float
    gmacs: float | None
    peak_mib: float | None
    ratio: float = 1.0  # img/s over the first model's in the same setting
    times_ms: list[float] = field(default_factory=list)


def steps_per_setting(models: int, warmup: int, rounds: int) -> int:
    return models * (warmup + rounds)


def _probe_cpu_memory(spec: ModelSpec, setting: Setting) -> float | None:
    """Peak RSS of the step in a fresh process (eager only: a compiled probe would compile again)."""
    if setting.mode != "eager":
        return None
    request = {"model": spec.source, "setting": setting.to_dict(), "threads": torch.get_num_threads()}
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (os.environ.get("PYTHONPATH"), *sys.path) if p)}
    done = subprocess.run([sys.executable, "-m", "dccnext_cli.benchmark.probe", json.dumps(request)],
                          capture_output=True, text=True, env=env)
    if done.returncode != 0:
        return None
    return json.loads(done.stdout.strip().splitlines()[-1])["peak_mib"]


def _measure_setting(specs: Sequence[ModelSpec], setting: Setting, device: torch.device, warmup: int,
                     rounds: int, memory: bool, tick: Callable[[], None], macs: dict) -> list[Result]:
    steps = {spec.name: make_step(spec.build(), setting, device) for spec in specs}
    times = interleaved(steps, device, warmup, rounds, tick)
    results = []
    for spec in specs:
        step_s = median(times[spec.name])
        peak = None
        if memory:
            peak = peak_mib_cuda(steps[spec.name], device) if device.type == "cuda" else \
                _probe_cpu_memory(spec, setting)
        key = (spec.name, setting.resolution)
        if key not in macs:
            macs[key] = gmacs(spec, setting.resolution)
        results.append(Result(spec.name, setting, str(device), 1000 * step_s, setting.batch_size / step_s,
                              count_params(steps[spec.name].model) / 1e6, macs[key], peak,
                              times_ms=[1000 * t for t in times[spec.name]]))
    del steps
    if device.type == "cuda":
        torch.cuda.empty_cache()
    first = results[0].samples_per_sec
    for result in results:
        result.ratio = result.samples_per_sec / first
    return results


def run_suite(specs: Sequence[ModelSpec], settings: Sequence[Setting], device: torch.device, *, warmup: int = 2,
              rounds: int = 5, memory: bool = True, tick: Callable[[], None] = lambda: None) -> list[Result]:
    """Each setting in turn; inside one, every model warmed up, then timed round by round in rotation."""
    results, macs = [], {}
    for setting in settings:
        results += _measure_setting(specs, setting, device, warmup, rounds, memory, tick, macs)
    return results
