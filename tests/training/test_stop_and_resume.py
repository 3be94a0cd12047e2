"""Work is not lost: Ctrl-C saves the step it was in, a slow run saves by the clock, and both resume bitwise.

Real `python -m dccnext_cli train` processes on map-style data (an image folder, read by a DataLoader worker
process, which gets the SIGINT too): a SIGINT from outside in the middle of an epoch, or a SIGKILL at a named
moment (`DCCNEXT_CRASH_AT`, common/crash_points.py) between two step-based saves. The resumed run must end with
the very tensors of a run that was never stopped.
"""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from train_processes import dccnext, start

from dccnext_cli.training.run_state import list_train_states, read_train_state

STEPS_PER_EPOCH = 8  # 32 training images in batches of 4


def _args(images: Path, out: Path, *sets: str) -> list[str]:
    return ["train", "--data", f"imagefolder:{images}", "--res", "32", "--epochs", "2", "--batch-size", "4",
            "--workers", "1", "--set", "eval_samples=8", "--set", "log_every=1", *(f"--set={s}" for s in sets),
            "-o", out, "--json"]


def _same_weights(a: Path, b: Path) -> None:
    for name in ("model.safetensors", "best.safetensors"):
        x, y = load_file(a / name), load_file(b / name)
        assert x.keys() == y.keys()
        assert all(torch.equal(x[k], y[k]) for k in x), f"{name} differs from the uninterrupted run"


def _train_steps(out: Path) -> list[int]:
    try:
        lines = (out / "log.jsonl").read_text().splitlines()
    except FileNotFoundError:
        return []
    return [e["step"] for e in map(json.loads, lines) if e["event"] == "train"]


def _interrupt_after_first_step(args: list, err: Path, signals: int = 1) -> tuple[int, str]:
    proc = start(*args, stderr_to=err)
    out = Path(args[args.index("-o") + 1])
    deadline = time.time() + 240
    while not _train_steps(out) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    assert proc.poll() is None, err.read_text()[-3000:]
    for _ in range(signals):
        proc.send_signal(signal.SIGINT)
    proc.wait(timeout=240)
    return proc.returncode, " ".join(err.read_text().split())


@pytest.fixture(scope="module")
def uninterrupted(images, tmp_path_factory) -> Path:
    """The reference: the same run never stopped (step-based saves off, time-based saves off)."""
    out = tmp_path_factory.mktemp("reference") / "run"
    done = dccnext(*_args(images, out, "checkpoint_minutes=0"))
    assert done.returncode == 0, done.stderr[-3000:]
    return out


def test_ctrl_c_mid_epoch_saves_that_step_and_the_resume_is_bitwise(images, uninterrupted, tmp_path):
    out = tmp_path / "run"
    code, stderr = _interrupt_after_first_step(_args(images, out, "checkpoint_minutes=0"), tmp_path / "err")
    assert code == 130, stderr[-3000:]
    (kept,) = list_train_states(out)  # no save by steps or by time: this one is Ctrl-C's
    state = read_train_state(kept)
    assert (state.epoch, 0 < state.batch < STEPS_PER_EPOCH) == (0, True), state  # in the middle of epoch 0
    assert f"interrupted at step {state.step}: kept checkpoints/{kept.name}; continue with: dccnext train " \
           f"-o {out} --resume" in stderr
    assert "Traceback" not in stderr
    resumed = dccnext(*_args(images, out, "checkpoint_minutes=0"), "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    told = " ".join(resumed.stderr.split())
    assert f"run folder: {out}" in told and f"resuming from step {state.step}" in told
    _same_weights(uninterrupted, out)
    assert _train_steps(out) == [*range(1, state.step + 1), *range(state.step + 1, 2 * STEPS_PER_EPOCH + 1)]


def test_the_first_ctrl_c_asks_for_a_save_and_the_second_quits_at_once(capfd):
    """Real SIGINTs to this process inside the schedule: the first only marks the stop (the step goes on, and
    every process is told to save and stop); the second raises at once; outside it Ctrl-C is Python's again."""
    import os

    from dccnext_cli.training.accelerator import make_accelerator
    from dccnext_cli.training.saving import SaveSchedule

    before = signal.getsignal(signal.SIGINT)
    with SaveSchedule(make_accelerator("no", 1), every=4, minutes=0) as saving:
        assert saving.due(1) == (False, False) and saving.due(4) == (True, False)
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.1)  # the handler runs: no exception, the loop carries on
        assert saving.due(5) == (True, True)
        assert "Ctrl-C: finishing this step and saving the train state" in capfd.readouterr().err
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1)
    assert signal.getsignal(signal.SIGINT) is before


def test_a_time_based_save_is_due_once_the_minutes_have_passed():
    from dccnext_cli.training.accelerator import make_accelerator
    from dccnext_cli.training.saving import SaveSchedule

    saving = SaveSchedule(make_accelerator("no", 1), every=0, minutes=0.001)  # 60 ms
    assert saving.due(1) == (False, False)
    time.sleep(0.1)
    assert saving.due(2) == (True, False)
    saving.saved()
    assert saving.due(3) == (False, False)


def test_killed_between_step_saves_resumes_from_the_time_based_save_bitwise(images, uninterrupted, tmp_path):
    """checkpoint_every=4 and a clock of a few milliseconds: killed right after step 3, the newest train state
    is step 3's, which only the clock wrote, and the resume ends where the uninterrupted run ends."""
    out = tmp_path / "run"
    sets = ("checkpoint_every=4", "checkpoint_minutes=0.00001", "keep_last=2")
    killed = dccnext(*_args(images, out, *sets), extra_env={"DCCNEXT_CRASH_AT": "step-3"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert [p.name for p in list_train_states(out)] == ["step-00000002", "step-00000003"]
    resumed = dccnext(*_args(images, out, *sets), "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from step 3" in " ".join(resumed.stderr.split())
    _same_weights(uninterrupted, out)


def test_resume_of_a_folder_without_a_train_state_says_it_starts_at_step_0(images, tmp_path):
    out = tmp_path / "run"
    done = dccnext(*_args(images, out, "checkpoint_minutes=0"), "--resume", extra_env={"DCCNEXT_CRASH_AT": "step-1"})
    assert done.returncode == -signal.SIGKILL
    assert "no saved state: starting at step 0" in " ".join(done.stderr.split())


@pytest.mark.slow
def test_ctrl_c_of_a_dense_run_prints_its_whole_resume_command_and_resumes_bitwise(tmp_path):
    """The same engine under a dense task: Ctrl-C in the middle, the printed command (with --task and --data)
    continues the run, and the weights are an uninterrupted run's, bit for bit (map-style data)."""
    import sys

    from train_processes import ROOT

    sys.path.insert(0, str(ROOT / "tests" / "dense"))
    from dense_synthetic import make_ade20k

    make_ade20k(tmp_path / "ade", num_images=4, split="training")
    make_ade20k(tmp_path / "ade", num_images=1, split="validation")  # the final evaluation's
    options = ["--variant", "b0", "--batch-size", "2", "--workers", "0", "--set", "crop_size=[64,64]", "--set",
               "scale=[128,64]", "--set", "num_classes=5", "--set", "iterations=8", "--set", "log_every=1",
               "--set", "checkpoint_minutes=0", "--json"]
    data = f"ade20k:{tmp_path / 'ade'}"
    full = dccnext("train", "--task", "semantic-fpn", "--data", data, *options, "-o", tmp_path / "full")
    assert full.returncode == 0, full.stderr[-3000:]
    out = tmp_path / "run"
    code, stderr = _interrupt_after_first_step(["train", "--task", "semantic-fpn", "--data", data, *options, "-o",
                                                out], tmp_path / "err")
    assert code == 130, stderr[-3000:]
    (kept,) = list_train_states(out)
    step = read_train_state(kept).step
    command = f"dccnext train --task semantic-fpn --data {data} -o {out} --resume"
    assert f"interrupted at step {step}: kept checkpoints/{kept.name}; continue with: {command}" in stderr
    assert 0 < step < 8
    resumed = dccnext(*command.split()[1:], *options)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming from step {step}" in " ".join(resumed.stderr.split())
    x, y = load_file(tmp_path / "full" / "model.safetensors"), load_file(out / "model.safetensors")
    assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)
