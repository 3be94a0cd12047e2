"""When a loop writes a train state: every `checkpoint_every` steps, every `checkpoint_minutes`, and on Ctrl-C.

Saving by steps alone loses hours on a slow or busy machine; the clock bounds the loss to `checkpoint_minutes`.
The first Ctrl-C (SIGINT) does not stop the step in progress: the loop finishes it, saves, and exits with the
resume command; a second Ctrl-C raises KeyboardInterrupt at once. DataLoader workers (forked while the schedule
holds SIGINT) ignore it, so the step in progress still gets its images. Every process must save at the same step (a
save is a collective), so the main process's clock and Ctrl-C decide for all of them.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time

from .shards import from_main

__all__ = ["SaveSchedule"]


class SaveSchedule:
    """Use as a context around the loop (it owns SIGINT meanwhile); ask `due(step)` after every optimiser step."""

    def __init__(self, accelerator, every: int, minutes: float):
        self.accelerator, self.every, self.seconds = accelerator, every, minutes * 60
        self.last, self.stop_requested, self._previous, self._pid = time.monotonic(), False, None, os.getpid()

    def __enter__(self) -> SaveSchedule:  # DataLoader workers forked meanwhile inherit the handler
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._on_sigint)
        return self

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None

    def _on_sigint(self, signum, frame) -> None:
        if os.getpid() != self._pid:  # a worker ignores it: the main process decides and ends the workers
            return
        if self.stop_requested:  # the second Ctrl-C: at once
            raise KeyboardInterrupt
        self.stop_requested = True
        if self.accelerator.is_main_process:
            print("\nCtrl-C: finishing this step and saving the train state (Ctrl-C again to quit at once)",
                  file=sys.stderr, flush=True)

    def due(self, step: int) -> tuple[bool, bool]:
        """(save now, then stop), the same on every process: the main process's clock and Ctrl-C decide."""
        by_time = self.seconds > 0 and time.monotonic() - self.last >= self.seconds
        by_time, stop = from_main(self.accelerator, (by_time, self.stop_requested))
        return bool(self.every and step % self.every == 0) or by_time or stop, stop

    def saved(self) -> None:
        """A train state was just written (by the schedule or at an epoch's end): the clock starts again."""
        self.last = time.monotonic()
