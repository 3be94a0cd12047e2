"""Warm-up, then the median of several timed repeats, interleaved across the things compared.

On a shared VM the speed of the machine drifts over minutes (neighbours, page-zeroing in the kernel):
timing model A for a minute and then model B for a minute measured ratios off by up to 1.6x here.
Interleaving the repeats (A, B, C, then B, C, A, ...) exposes every candidate to the same drift,
so the ratios hold even when the absolute times do not.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass


@dataclass
class Timing:
    median_s: float
    times_s: list[float]


def measure_interleaved(fns: dict[str, Callable[[], None]], warmup: int, repeats: int) -> dict[str, Timing]:
    """Warm each of `fns` up, then time `repeats` rounds, rotating the order every round (the rotation of
    `dccnext benchmark`, dccnext_cli.benchmark.measure.interleaved, on the CPU)."""
    import torch

    from dccnext_cli.benchmark.measure import Step, interleaved

    steps = {name: Step(fn, model=None) for name, fn in fns.items()}
    times = interleaved(steps, torch.device("cpu"), warmup, repeats)
    return {name: Timing(statistics.median(ts), ts) for name, ts in times.items()}
