"""One timed step of one model in one setting: inference or a training step, on the CPU or a GPU.

Inference casts the model to the precision (as `eval --precision` does); training runs in float32 under
autocast (mixed precision, as `train --amp` does) with AdamW, the paper's optimiser. Every step ends with a
device synchronisation, so a step's time is the work it queued, not the time to queue it.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["Setting", "Step", "make_step", "interleaved", "synchronize", "DTYPES", "peak_mib_cuda"]

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
KINDS = ("infer", "train")
MODES = ("eager", "compiled")


@dataclass(frozen=True)
class Setting:
    """What every model of one comparison is measured at."""

    kind: str  # infer | train
    batch_size: int
    resolution: tuple[int, int]  # (height, width)
    precision: str = "fp32"  # fp32 | bf16 | fp16
    mode: str = "eager"  # eager | compiled (torch.compile, default options)
    channels_last: bool = False

    def describe(self) -> str:
        height, width = self.resolution
        layout = ", channels-last" if self.channels_last else ""
        return f"{self.kind}, batch {self.batch_size}, {width}x{height}, {self.precision}, {self.mode}{layout}"

    def to_dict(self) -> dict:
        return {**asdict(self), "resolution": list(self.resolution)}


@dataclass
class Step:
    """A callable step and what it holds resident (weights, buffers, optimiser state) in bytes."""

    run: Callable[[], None]
    model: nn.Module
    optimizer: torch.optim.Optimizer | None = None

    def resident_bytes(self) -> int:
        tensors = list(self.model.parameters()) + list(self.model.buffers())
        if self.optimizer is not None:
            tensors += [t for state in self.optimizer.state.values() for t in state.values()
                        if isinstance(t, torch.Tensor)]
        return sum(t.numel() * t.element_size() for t in tensors)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _input(setting: Setting, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    x = torch.randn(setting.batch_size, 3, *setting.resolution, device=device, dtype=dtype)
    return x.contiguous(memory_format=torch.channels_last) if setting.channels_last else x


def _allow_recompiles(limit: int = 64) -> None:
    """Every variant at every batch size is one more graph of the same forward: past dynamo's limit (8 per
    function) the rest would run eagerly, uncompiled, and be reported as compiled."""
    import torch._dynamo.config as dynamo

    for name in ("recompile_limit", "cache_size_limit"):  # the name changed across torch versions
        if hasattr(dynamo, name):
            setattr(dynamo, name, max(getattr(dynamo, name), limit))


def make_step(model: nn.Module, setting: Setting, device: torch.device) -> Step:
    """`model` (freshly built) moved, cast and compiled as `setting` says, with its input ready on `device`."""
    model = model.to(device, memory_format=torch.channels_last if setting.channels_last else torch.preserve_format)
    if setting.mode == "compiled":
        _allow_recompiles()
    runnable = torch.compile(model) if setting.mode == "compiled" else model
    dtype = DTYPES[setting.precision]
    if setting.kind == "infer":
        model.eval().to(dtype)
        x = _input(setting, device, dtype)

        def infer() -> None:
            with torch.inference_mode():
                runnable(x)

        return Step(infer, model)
    model.train()
    x = _input(setting, device, torch.float32)
    num_classes = getattr(model, "num_classes", 1000) or 1000
    y = torch.randint(0, num_classes, (setting.batch_size,), device=device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    autocast = torch.autocast(device.type, dtype=dtype, enabled=setting.precision != "fp32")

    def train() -> None:
        optimizer.zero_grad(set_to_none=True)
        with autocast:
            loss = F.cross_entropy(runnable(x), y)
        loss.backward()
        optimizer.step()

    return Step(train, model, optimizer)


def interleaved(steps: dict[str, Step], device: torch.device, warmup: int, rounds: int,
                tick: Callable[[], None] = lambda: None) -> dict[str, list[float]]:
    """Seconds per step of each, warm-up first, then `rounds` rounds in a rotating order.

    A shared machine drifts over minutes; rotating the order exposes every model to the same drift, so the
    ratios hold where absolute times do not (docs/speed.md)."""
    names = list(steps)
    for name in names:
        for _ in range(warmup):
            steps[name].run()
            tick()
    synchronize(device)
    times: dict[str, list[float]] = {name: [] for name in names}
    for index in range(rounds):
        shift = index % len(names)
        for name in names[shift:] + names[:shift]:
            start = time.perf_counter()
            steps[name].run()
            synchronize(device)
            times[name].append(time.perf_counter() - start)
            tick()
    return times


def median(times: list[float]) -> float:
    return statistics.median(times)


def peak_mib_cuda(step: Step, device: torch.device) -> float:
    """Memory one step needs on the GPU: its allocator peak above what was there before, plus what the model
    holds resident (weights, buffers, optimiser state), so other models loaded beside it do not count."""
    synchronize(device)
    before = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    step.run()
    synchronize(device)
    return (torch.cuda.max_memory_allocated(device) - before + step.resident_bytes()) / 2**20
