"""CPU threads on a shared machine: as many as the cores other programs leave free, and no long spinning.

PyTorch runs each CPU op on a team of OpenMP threads that meet at a barrier when the op ends. On a machine whose
cores other programs also want, the OS deschedules one of the team now and then, and every op waits for it: two
quickstart-sized trainings started together on two cores took 4.4x the time of one alone, where a fair share is
2x, and beside a test suite one took 4.6x its quiet time (docs/speed.md, "Busy machines"). Two measures, both
idle where they are not needed:

- `fit_threads()`: called once per training step or inference batch, it looks every few seconds at how much CPU
  the other processes used (`/proc/stat` less this process and its data workers) and sets torch's thread count to
  the cores they left free: at least one, never more than the count the process started with. Alone on the
  machine that is every core, as before; beside another training each takes one core and no op waits for a
  descheduled thread. Linux only; elsewhere, or when the user set `OMP_NUM_THREADS`, it does nothing.
- `spin_briefly()`: before torch loads, the `dccnext` command caps libgomp's spin at a barrier so that a thread
  that waits longer sleeps and hands its core over (libgomp spins about 300,000 times by default). On a quiet
  machine the cap is `GOMP_SPINCOUNT=10000`, a few tens of microseconds: it cost nothing measurable there, and
  beside a test suite it halved a training's time. When other programs already keep cores busy as the command
  starts, the cap is 500: beside two busy processes on two cores B2's batch-8 inference with two threads took
  0.40-0.45 s against 0.58-0.61 s with 10,000 and kept 0.94 and 0.91 of its quiet speed ratio to
  convformer_s18 in two runs (2,000: 0.89-0.90 in three of four runs). The price is paid only if the machine
  turns quiet while the command runs: there 500 cost 23 % at batch 1 (55.9 against 45.3 ms; 1,000 cost 8 %,
  2,000 nothing measurable) and nothing at batch 8, where the gaps between ops are shorter than the spin.
  `OMP_WAIT_POLICY=PASSIVE` (no spin at all) cost 25-35 % at batch 1. The user's own `GOMP_SPINCOUNT` or
  `OMP_WAIT_POLICY` wins.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

__all__ = ["CoreShare", "fit_threads", "others_running", "spin_briefly", "spin_count", "start_measuring"]

SPIN_COUNT = "10000"  # a quiet machine
BUSY_SPIN_COUNT = "500"  # other programs already running on the cores
TICKS_PER_S = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def spin_briefly() -> bool:
    """Set `GOMP_SPINCOUNT` unless the user chose a wait policy or torch is already loaded; True if it was set."""
    if "torch" in sys.modules or "GOMP_SPINCOUNT" in os.environ or "OMP_WAIT_POLICY" in os.environ:
        return False
    os.environ["GOMP_SPINCOUNT"] = spin_count(others_running(), _usable_cores())
    return True


def spin_count(others: int, cores: int) -> str:
    """The spin cap for `others` threads of other programs running on `cores` cores: the short one from one
    other thread on two cores, or a quarter of the cores on larger machines."""
    return BUSY_SPIN_COUNT if others >= max(1, cores // 4) else SPIN_COUNT


def others_running(samples: int = 5, every_s: float = 0.002) -> int:
    """Threads of other programs that keep running: the fewest runnable threads of the machine (`/proc/loadavg`)
    over a few samples, less this one; a burst that comes and goes does not count. 0 where Linux's /proc is not.
    In a container /proc/loadavg may count the host's threads too: then the short cap is taken (at worst a few
    percent slower on a quiet machine)."""
    try:
        counts = []
        for i in range(samples):
            if i:
                time.sleep(every_s)
            counts.append(int(Path("/proc/loadavg").read_text().split()[3].split("/")[0]))
    except (OSError, ValueError, IndexError):
        return 0
    return max(0, min(counts) - 1)


def _usable_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _machine_busy_ticks() -> int:
    """Clock ticks every core spent on anything but idle and iowait since boot (the first line of /proc/stat)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return sum(fields) - fields[3] - fields[4]


def _process_ticks(pid: int | str) -> tuple[int, list[int]]:
    """(user + system ticks of process `pid`, all its threads included; its child processes)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2:].split()  # after "(comm)", which may hold spaces
    children = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        children += [int(c) for c in (task / "children").read_text().split()]
    return int(fields[11]) + int(fields[12]), children


def _own_ticks() -> int:
    """This process and its descendants (data-loading workers): their CPU is ours, not someone else's load."""
    total, pending = 0, [os.getpid()]
    while pending:
        try:
            ticks, children = _process_ticks(pending.pop())
        except (OSError, ValueError, IndexError):  # a worker that just exited
            continue
        total += ticks
        pending += children
    return total


class CoreShare:
    """Fits torch's thread count to the cores that other processes leave free, measured over `every_s`."""

    def __init__(self, every_s: float = 2.0):
        self.every_s = every_s
        self.cores = _usable_cores()
        self.ceiling: int | None = None  # the thread count the process started with
        self._last: tuple[float, int, int] | None = None
        # a thread count the user set (OMP_NUM_THREADS) is kept as it is
        self.working = ("OMP_NUM_THREADS" not in os.environ and Path("/proc/stat").exists()
                        and Path(f"/proc/{os.getpid()}/task").exists())

    def sample(self) -> None:
        """Start a measuring window now (the command does so before torch loads, so the first batch can adapt)."""
        if self.working:
            self._last = (time.monotonic(), _machine_busy_ticks(), _own_ticks())

    def others(self) -> float | None:
        """Cores the other processes kept busy since the last sample, or None before a full window."""
        if self._last is None:
            self.sample()
            return None
        start, busy, own = self._last
        elapsed = time.monotonic() - start
        if elapsed < self.every_s:
            return None
        self.sample()
        assert self._last is not None
        used = (self._last[1] - busy) - (self._last[2] - own)
        return max(0.0, used / TICKS_PER_S / elapsed)

    def threads_for(self, others: float) -> int:
        """The free cores, rounded: at least 1, at most the starting thread count."""
        assert self.ceiling is not None
        return max(1, min(self.ceiling, round(self.cores - others)))

    def __call__(self) -> None:
        if not self.working:
            return
        import torch

        if self.ceiling is None:
            self.ceiling = torch.get_num_threads()
        others = self.others()
        if others is None:
            return
        threads = self.threads_for(others)
        if threads != torch.get_num_threads():
            torch.set_num_threads(threads)


_share = CoreShare()


def fit_threads() -> None:
    """Once per step or batch: torch's threads fitted to the free cores (cheap; it measures every 2 s)."""
    _share()


def start_measuring() -> None:
    """Open the first window early (the command calls it before torch loads)."""
    _share.sample()
