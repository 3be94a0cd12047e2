"""The shared loop's pieces that need no training run: the train state's task entries, the evaluation shares."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

import pytest
import torch

from dccnext_cli.errors import CheckpointError
from dccnext_cli.training.loop import train
from dccnext_cli.training.run_state import TrainState, list_train_states, read_train_state
from dccnext_cli.training.shards import strided_share

OLD_STATE = {"epoch": 2, "batch": 0, "step": 8, "world_size": 1, "micro_batch": 4, "best_top1": 61.5,
             "best_epoch": 2, "skipped_images": 0, "micro_steps": 8, "metrics": {"top1": 61.5}, "samples": 32}


def test_a_train_state_written_before_the_task_owned_its_entries_still_loads(tmp_path):
    """best_top1 and best_epoch once stood at the top of train_state.json; they are read into the task's own."""
    (tmp_path / "train_state.json").write_text(json.dumps(OLD_STATE))
    state = read_train_state(tmp_path)
    assert state.task == {"best_top1": 61.5, "best_epoch": 2} and (state.step, state.epoch) == (8, 2)
    (tmp_path / "train_state.json").write_text(json.dumps({**OLD_STATE, "best_top1": None, "best_epoch": None}))
    assert read_train_state(tmp_path).task == {}  # no evaluation yet
    (tmp_path / "train_state.json").write_text(TrainState(step=3, task={"best_top1": 1.0}).to_json())
    assert read_train_state(tmp_path) == TrainState(step=3, task={"best_top1": 1.0})  # the format written now


def test_a_train_state_whose_task_entries_are_not_a_mapping_is_refused(tmp_path):
    (tmp_path / "train_state.json").write_text(json.dumps({"step": 1, "task": [1, 2]}))
    with pytest.raises(CheckpointError, match=r"task=\[1, 2\] is out of range; the train state is damaged"):
        read_train_state(tmp_path)


def test_every_process_scores_every_world_th_image_of_the_first_n():
    assert [strided_share(10, rank, 4) for rank in range(4)] == [3, 3, 2, 2]
    assert sum(strided_share(3, rank, 8) for rank in range(8)) == 3


# --------------------------------------------------------------------- the loop with a task engine of its own
@dataclass(frozen=True)
class _Recipe:
    """The recipe keys the loop and the run folder read, nothing of any task."""

    epochs: int = 2
    batch_size: int = 2
    grad_accum: int = 1
    amp: str = "no"
    grad_clip: float | None = None
    log_every: int = 1
    checkpoint_every: int = 0
    checkpoint_minutes: float = 0.0
    keep_last: int = 1
    workers: int = 0
    variant: str = "tiny"

    def to_dict(self) -> dict:
        return asdict(self)


class _Engine:
    """A linear model on a list of micro-batches; `short` gives fewer batches an epoch than it says."""

    resume_args, title, generator = "", "training tiny", None

    def __init__(self, run, epochs: int | None, total: int, short: bool = False):
        self.run, self.epochs, self.total_steps, self.short = run, epochs, total, short
        self.steps_per_epoch = self.micro_per_epoch = 3
        self.ended: list[int] = []

    def prepare(self, run) -> dict:
        torch.manual_seed(0)
        model = torch.nn.Linear(2, 1)
        self.model, self.optimizer = run.accelerator.prepare(model, torch.optim.SGD(model.parameters(), lr=0.1))
        return run.recipe.to_dict()

    def started(self, state) -> dict:
        return {}

    def micro_batches(self, state):
        count = 2 if self.short else self.micro_per_epoch
        return [torch.full((2, 2), float(i)) for i in range(state.batch, count)]

    def inputs(self, batch, state) -> tuple:
        return (batch,)

    def loss(self, model, x) -> dict:
        return {"loss": model(x).pow(2).mean()}

    def schedule(self, step: int) -> None:
        pass

    def end_epoch(self, state) -> None:
        self.ended.append(state.epoch)

    def finish(self, state) -> dict:
        return {"epochs": state.epoch}


@pytest.mark.parametrize("epochs, total, short, steps, ended", [
    (2, 6, False, 6, [1, 2]),  # two whole epochs
    (None, 4, False, 4, [1]),  # iterations: the schedule ends in the middle of the second epoch
    (2, 6, True, 4, [1, 2]),  # a stream shorter than it said: the recipe's epochs still bound the run
])
def test_the_loop_runs_a_task_engine_to_the_end_of_its_schedule(tmp_path, epochs, total, short, steps, ended):
    engines = []

    def engine(run):
        engines.append(_Engine(run, epochs, total, short))
        return engines[0]

    result = train(_Recipe(), tmp_path / "run", engine, None, resume=False, overwrite=False, explicit=None)
    assert (result.steps, engines[0].ended, len(result.losses)) == (steps, ended, steps)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["steps"] == steps and summary["epochs"] == len(ended)
    events = [json.loads(line)["event"] for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert events.count("train") == steps and events[-1] == "end"
    (last,) = list_train_states(tmp_path / "run")
    assert read_train_state(last).step == steps  # the last train state, written once at the end
