"""Rich progress for long work (training steps, evaluation images), shown on stderr so --json stays clean."""

from __future__ import annotations

from collections.abc import Callable

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, Task, TextColumn
from rich.table import Column
from rich.text import Text

from .text import printable

__all__ = ["StepProgress", "SmoothedETA"]

MIN_BAR = 8  # characters: the bar narrows first when the terminal is narrow


class SmoothedETA(ProgressColumn):
    """Time left from an exponential moving average of the rate, the first step left out.

    Rich's own estimate averages the last 30 s, so a slow first step (data loaders starting, compilation)
    or one slow stretch swings it by a factor of two or more; this one moves by a `half_life` in seconds.
    """

    def __init__(self, half_life: float = 60.0, table_column: Column | None = None):
        super().__init__(table_column=table_column)
        self.half_life = half_life
        self.seen: dict[int, tuple[float, float, float | None]] = {}  # task -> (time, completed, rate)
        self.warm: set[int] = set()  # tasks past their first step

    def rate(self, task: Task) -> float | None:
        """Steps per second, or None until two steps have been timed."""
        now, done = task.get_time(), task.completed
        last = self.seen.get(task.id)
        if last is None or done < last[1]:
            self.seen[task.id] = (now, done, None)
            self.warm.discard(task.id)
            return None
        then, before, rate = last
        if done == before or now <= then:
            return rate
        if task.id not in self.warm:  # the first step after the start: start-up cost, not the rate
            self.warm.add(task.id)
            self.seen[task.id] = (now, done, None)
            return None
        current = (done - before) / (now - then)
        weight = 1 - 0.5 ** ((now - then) / self.half_life)
        rate = current if rate is None else rate + weight * (current - rate)
        self.seen[task.id] = (now, done, rate)
        return rate

    def render(self, task: Task) -> Text:
        rate = self.rate(task)
        if task.finished or task.total is None or not rate:
            return Text("eta -:--:--" if not task.finished else "", style="progress.remaining")
        seconds = int((task.total - task.completed) / rate)
        hours, rest = divmod(seconds, 3600)
        return Text(f"eta {hours}:{rest // 60:02d}:{rest % 60:02d}", style="progress.remaining")


class StepProgress:
    """The reporter the training loops and evaluations call: start, update/advance, phase, message, stop."""

    def __init__(self, unit: str = "step", enabled: bool = True):
        self.console = Console(stderr=True)
        self.unit, self.enabled, self.task = unit, enabled, None
        # Fits 80 columns: the text columns never wrap, the bar takes what is left (at least MIN_BAR).
        fixed = Column(no_wrap=True)
        self.progress = Progress(TextColumn("[bold]{task.description}", table_column=fixed),
                                 BarColumn(bar_width=None, table_column=Column(min_width=MIN_BAR, ratio=1)),
                                 MofNCompleteColumn(table_column=Column(no_wrap=True)),
                                 TextColumn("{task.fields[stats]}", table_column=Column(no_wrap=True)),
                                 SmoothedETA(table_column=Column(no_wrap=True)),
                                 console=self.console, disable=not enabled, expand=True)

    def start(self, total: int | None, done: int = 0, title: str = "") -> None:
        if title:
            self.console.print(title, highlight=False)
        self.progress.start()
        self.task = self.progress.add_task(self.unit + "s", total=total, completed=done, stats="")

    def update(self, step: int, loss: float | None = None, lr: float | None = None, img_s: float | None = None):
        stats = [text for value, text in ((loss, f"loss {loss:.4f}" if loss is not None else ""),
                                          (lr, f"lr {lr:.2e}" if lr is not None else ""),
                                          (img_s, f"{img_s:.0f} img/s" if img_s is not None else ""))
                 if value is not None]
        fields = {"stats": " ".join(stats)} if stats else {}
        self.progress.update(self.task, completed=step, **fields)

    def advance(self, n: int = 1) -> None:
        self.progress.advance(self.task, n)

    def phase(self, description: str, total: int | None) -> tuple[Callable[[int], None], Callable[[], None]]:
        """A second bar under the main one (the end-of-epoch evaluation): returns (advance(n), done())."""
        task = self.progress.add_task(description, total=total, stats="")
        return (lambda n=1: self.progress.advance(task, n)), (lambda: self.progress.remove_task(task))

    def message(self, text: str) -> None:
        self.progress.console.print(text, highlight=False, markup=False)

    def warning(self, text: str) -> None:
        """`warning:` in yellow before `text`, which is printed as it is (a path or a name is never markup)."""
        self.progress.console.print(Text.assemble(("warning:", "yellow"), " ", printable(text)), highlight=False)

    def stop(self) -> None:
        self.progress.stop()
