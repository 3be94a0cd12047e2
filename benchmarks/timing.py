"""Warm-up, then the median of several timed repeats."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass
class Timing:
    median_s: float
    times_s: list[float]


def measure(fn: Callable[[], None], warmup: int, repeats: int, min_time_s: float = 0.0) -> Timing:
    """Run `fn` `warmup` times untimed, then at least `repeats` times (and `min_time_s` total)."""
    for _ in range(warmup):
        fn()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < repeats or time.perf_counter() - start < min_time_s:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return Timing(statistics.median(times), times)
