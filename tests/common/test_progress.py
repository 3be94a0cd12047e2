"""The training bar's ETA: a moving average of the rate that leaves out the start-up step."""

from __future__ import annotations

from rich.progress import Progress

from dccnext_cli.common.progress import SmoothedETA, StepProgress


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _eta_after(steps: list[float], total: int = 100) -> str:
    """Render the ETA column after steps that took these many seconds each."""
    clock, column = Clock(), SmoothedETA(half_life=30)
    progress = Progress(column, get_time=clock, disable=True)
    task_id = progress.add_task("steps", total=total)
    task = progress.tasks[0]
    text = column.render(task).plain
    for seconds in steps:
        clock.now += seconds
        progress.advance(task_id, 1)
        text = column.render(task).plain
    return text


def test_the_start_up_step_does_not_count():
    # a 120 s first step (loaders, compilation), then 1 s steps: 100 - 11 steps left at 1 s each
    assert _eta_after([120.0] + [1.0] * 10) == "eta 0:01:29"


def test_one_slow_stretch_moves_the_estimate_a_little():
    steady = [1.0] * 20
    eta = _eta_after(steady + [3.0], total=1000)  # one step three times slower
    seconds = sum(int(p) * m for p, m in zip(eta.removeprefix("eta ").split(":"), (3600, 60, 1), strict=True))
    assert 979 < seconds < 979 * 1.2  # 979 steps left at ~1 s: it moved, but not threefold


def test_no_estimate_before_two_steps_are_timed():
    assert _eta_after([]) == "eta -:--:--"
    assert _eta_after([5.0]) == "eta -:--:--"


def test_an_evaluation_phase_has_its_own_bar():
    bar = StepProgress("step", enabled=False)
    bar.start(10)
    advance, done = bar.phase("evaluating", 40)
    advance(16)
    tasks = {t.description: t for t in bar.progress.tasks}
    assert tasks["evaluating"].completed == 16 and tasks["evaluating"].total == 40
    done()
    assert [t.description for t in bar.progress.tasks] == ["steps"]
    bar.stop()


def test_the_bars_fit_80_columns():
    """At 80 columns every bar is one line with its counts, statistics and ETA whole (the bar narrows)."""
    import io

    from rich.console import Console

    training = StepProgress("step", enabled=False)
    training.start(28200)
    training.update(12000, loss=12.30101, lr=1.0e-3, img_s=1900.4)
    advance, _ = training.phase("evaluating", 10000)
    advance(2560)
    evaluation = StepProgress("image", enabled=False)
    evaluation.start(10000)
    evaluation.advance(2560)
    for progress, rows in ((training.progress, 2), (evaluation.progress, 1)):
        console = Console(file=io.StringIO(), width=80)
        console.print(progress.make_tasks_table(progress.tasks))
        lines = console.file.getvalue().splitlines()
        assert len(lines) == rows and all(len(line) <= 80 for line in lines), lines
        assert all(line.rstrip().endswith("eta -:--:--") for line in lines), lines
    console = Console(file=io.StringIO(), width=80)
    console.print(training.progress.make_tasks_table(training.progress.tasks))
    first, second = console.file.getvalue().splitlines()
    assert "12000/28200 loss 12.3010 lr 1.00e-03 1900 img/s" in first and "2560/10000" in second
