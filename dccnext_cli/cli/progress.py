"""Rich progress for long work (training steps, evaluation images), shown on stderr so --json stays clean."""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

__all__ = ["StepProgress"]


class StepProgress:
    """The reporter `train` and `evaluate_checkpoint` call: start, update/advance, message, stop."""

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
        fields = {}
        if loss is not None:
            fields["stats"] = f"loss {loss:.4f}  lr {lr:.2e}  {img_s:.0f} img/s"
        self.progress.update(self.task, completed=step, **fields)

    def advance(self, n: int = 1) -> None:
        self.progress.advance(self.task, n)

    def message(self, text: str) -> None:
        self.progress.console.print(text, highlight=False)

    def stop(self) -> None:
        self.progress.stop()
