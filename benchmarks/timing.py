"""Warm-up, then the median of several timed repeats, interleaved across the things compared.

On a shared VM the speed of the machine drifts over minutes (neighbours, page-zeroing in the kernel):
timing model A for a minute and then model B for a minute measured ratios off by up to 1.6x here.
Interleaving the repeats (A, B, C, then B, C, A, ...) exposes every candidate to the same drift,
so the ratios hold even when the absolute times do not.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass
class Timing:
    median_s: float
    times_s: list[float]


def measure_interleaved(fns: dict[str, Callable[[], None]], warmup: int, repeats: int) -> dict[str, Timing]:
    """Warm each of `fns` up, then time `repeats` rounds, rotating the order every round."""
    names = list(fns)
    for name in names:
        for _ in range(warmup):
            fns[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for round_index in range(repeats):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            t0 = time.perf_counter()
            fns[name]()
            times[name].append(time.perf_counter() - t0)
    return {name: Timing(statistics.median(ts), ts) for name, ts in times.items()}

