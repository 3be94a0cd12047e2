"""Rich progress for long work (training steps, evaluation images), shown on stderr so --json stays clean."""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

__all__ = ["StepProgress"]


class StepProgress:
    """The reporter the training loops and evaluations call: start, update/advance, message, stop."""

    def __init__(self, unit: str = "step", enabled: bool = True):
        self.console = Console(stderr=True)
        self.unit, self.enabled, self.task = unit, enabled, None
        self.progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("{task.fields[stats]}"), TimeElapsedColumn(), TextColumn("eta"),
                                 TimeRemainingColumn(), console=self.console, disable=not enabled)

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
        fields = {"stats": "  ".join(stats)} if stats else {}
        self.progress.update(self.task, completed=step, **fields)

    def advance(self, n: int = 1) -> None:
        self.progress.advance(self.task, n)

    def message(self, text: str) -> None:
        self.progress.console.print(text, highlight=False)

    def stop(self) -> None:
        self.progress.stop()
