"""The shared loop's pieces that need no training run: the train state's task entries, the evaluation shares."""

from __future__ import annotations

import json

import pytest

from dccnext_cli.errors import CheckpointError
from dccnext_cli.training.run_state import TrainState, read_train_state
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
    with pytest.raises(CheckpointError, match=r"task=\[1, 2\] is out of range; the checkpoint is damaged"):
        read_train_state(tmp_path)


def test_every_process_scores_every_world_th_image_of_the_first_n():
    assert [strided_share(10, rank, 4) for rank in range(4)] == [3, 3, 2, 2]
    assert sum(strided_share(3, rank, 8) for rank in range(8)) == 3
