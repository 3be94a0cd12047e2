"""Dense training on Accelerate: real 2-process CPU launches, gradient accumulation, sharded evaluation equal to
a single-process one, and `--resume` after a SIGKILL.

The launches are real `accelerate launch --multi_gpu --num_processes 2` runs on CPUs (gloo); a kill is the
process SIGKILLing itself at a named moment (`DCCNEXT_CRASH_AT=step-N`, common/crash_points.py).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from safetensors.torch import load_file

from dccnext_cli.dense import evaluate_dense, load_dense_recipe, train_dense
from dccnext_cli.dense.batches import BatchPlan
from dccnext_cli.dense.data import ADE20KSegmentation, CocoInstances, SegAugment
from dccnext_cli.dense.models import sync_batchnorm
from dccnext_cli.dense.tasks import get_dense_task
from dccnext_cli.errors import ConfigError, DataError
from dccnext_cli.training.run_state import list_train_states
from dccnext_cli.training.shards import strided_share

ROOT = Path(__file__).resolve().parents[2]
SEG_ARGS = ["--task", "semantic-fpn", "--variant", "b0", "--batch-size", "2", "--workers", "0", "--set",
            "crop_size=[64,64]", "--set", "scale=[128,64]", "--set", "num_classes=5", "--json"]
SEG_SETS = ["batch_size=2", "crop_size=[64,64]", "scale=[128,64]", "workers=0", "variant=b0", "num_classes=5"]


def _env(**extra: str) -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), **extra}


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch_cmd(args: list[str], command: str = "train", machines: int = 1, rank: int = 0, port: int = 0) -> list:
    """`accelerate launch` of `dccnext COMMAND ARGS` on 2 CPU processes, on 1 "node" or 2 (one process each)."""
    return [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
            "--num_machines", str(machines), "--machine_rank", str(rank), "--main_process_ip", "127.0.0.1",
            "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(port or _port()),
            "-m", "dccnext_cli", command, *args]


def _launch_two(args: list[str], env: dict[str, str], command: str = "train") -> subprocess.CompletedProcess:
    """`dccnext COMMAND ARGS` as two CPU processes through `accelerate launch`."""
    return subprocess.run(_launch_cmd(args, command), env=env, capture_output=True, text=True, timeout=300, cwd=ROOT)


def _log(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]


def _same_weights(a: Path, b: Path) -> None:
    x, y = load_file(str(a)), load_file(str(b))
    assert x.keys() == y.keys()
    different = [k for k in x if not torch.equal(x[k], y[k])]
    assert not different, different[:5]


# --------------------------------------------------------------------- the batch a recipe means
def test_a_global_batch_is_the_same_images_on_any_launch():
    """batch 8 on 1 process x 4 accumulation steps, 2 x 2, 4 x 1: each optimiser step sees the same 8 images."""
    def step_images(world: int, accum: int, epoch: int) -> list[set]:
        plans = [BatchPlan(20, 8, world, rank, accum, seed=3) for rank in range(world)]
        micro = [plan.micro_batches(epoch) for plan in plans]
        assert all(len(m) == 2 * accum for m in micro)  # 20 images: 2 steps an epoch, the rest dropped
        return [{key for m in micro for batch in m[s * accum:(s + 1) * accum] for key in batch} for s in range(2)]

    one = step_images(1, 4, epoch=0)
    assert one == step_images(2, 2, epoch=0) == step_images(4, 1, epoch=0)
    assert all(len(images) == 8 for images in one)
    assert one != step_images(1, 4, epoch=1)  # a new order every epoch
    plan = BatchPlan(20, 8, 2, 1, 2, seed=3)
    assert plan.micro_batches(0, skip=3) == plan.micro_batches(0)[3:]  # a resumed epoch continues where it was
    with pytest.raises(DataError, match="fewer than one batch of 8"):
        BatchPlan(5, 8, 1, 0, 1, seed=0)
    with pytest.raises(ConfigError, match="batch_size must be a multiple of grad_accum 3"):
        load_dense_recipe("semantic-fpn", ["batch_size=8", "grad_accum=3"])


def test_shards_cover_the_first_n_images_once():
    """Image i goes to process i mod world; the shares of the first n add up to n."""
    assert [strided_share(7, rank, 3) for rank in range(3)] == [3, 2, 2]
    assert strided_share(1, 1, 2) == 0 and sum(strided_share(5, rank, 8) for rank in range(8)) == 5


def test_batchnorm_becomes_sync_batchnorm_on_gpus_only():
    def head() -> nn.Module:  # the Semantic FPN head's layer pattern
        return nn.Sequential(nn.Conv2d(3, 4, 3, bias=False), nn.BatchNorm2d(4), nn.ReLU())

    model = head()
    keys = set(model.state_dict())
    synced, note = sync_batchnorm(model, world=2, device_type="cuda")
    assert note is None and any(isinstance(m, nn.SyncBatchNorm) for m in synced.modules())
    assert not any(type(m) is nn.BatchNorm2d for m in synced.modules())
    assert set(synced.state_dict()) == keys  # weights files stay loadable by the plain model
    kept, note = sync_batchnorm(head(), world=2, device_type="cpu")
    assert "needs GPUs" in note and not any(isinstance(m, nn.SyncBatchNorm) for m in kept.modules())
    assert sync_batchnorm(kept, world=1, device_type="cuda") == (kept, None)


# --------------------------------------------------------------------- sharded evaluation
def _detections(coco_json) -> list[dict[str, torch.Tensor]]:
    """Ground truth moved and scored so that AP is neither 0 nor 1, with equal scores across images (the order
    in which COCO sees the images then matters)."""
    data, answers = CocoInstances(coco_json, with_masks=True), []
    for i in range(len(data)):
        t = data.target(i)
        n = len(t["labels"])
        answers.append({"boxes": t["boxes"] + 2.0 * (i % 3), "labels": t["labels"],
                        "scores": torch.tensor([0.9, 0.5][:n]) if i % 2 else torch.full((n,), 0.7),
                        "masks": t["masks"][:, None].float().roll(i, dims=-1)})
    return answers


@pytest.mark.parametrize("world", [2, 3])
def test_merged_shards_equal_one_evaluation_detection(coco_json, world):
    task, answers = get_dense_task("mask-rcnn"), _detections(coco_json)
    data = CocoInstances(coco_json, with_masks=True)
    targets = [data.target(i) for i in range(len(data))]
    whole = task.make_evaluator(None, data)
    whole.update(answers, targets)
    parts, states = [], []
    for rank in range(world):
        parts.append(task.make_evaluator(None, data))
        block = range(rank, len(data), world)
        parts[-1].update([answers[i] for i in block], [targets[i] for i in block])
        states.append(parts[-1].states())
    merged = parts[0]  # the main process merges into its own evaluator
    merged.merge(states)
    expected = whole.compute()
    assert 0 < expected["bbox_AP"] < 1 and 0 < expected["segm_AP"] < 1
    assert merged.compute() == expected


def test_merged_shards_equal_one_evaluation_segmentation(ade_root):
    task = get_dense_task("semantic-fpn")
    data = ADE20KSegmentation(ade_root, "validation", num_classes=5, augment=SegAugment(scale=(128, 64)))
    labels = [data[i][1] for i in range(len(data))]
    guesses = [torch.where(label == 255, 0, (label + i) % 5) for i, label in enumerate(labels)]
    whole, parts = task.make_evaluator(5, data), []
    for guess, label in zip(guesses, labels, strict=True):
        whole.update(guess, label)
    for rank in range(2):
        parts.append(task.make_evaluator(5, data))
        for i in range(rank, len(labels), 2):
            parts[-1].update(guesses[i], labels[i])
    merged = parts[0]
    merged.merge([part.states() for part in parts])
    expected = whole.compute()
    assert 0 < expected["mIoU"] < 1
    assert merged.compute() == expected


# --------------------------------------------------------------------- real launches
def test_two_processes_train_semantic_fpn_and_evaluate_as_one_process(ade_root, tmp_path):
    """2 CPU processes train (one image each per step), write one weights file and a checkpoint with both
    processes' random state, and their sharded evaluation gives exactly the metrics a single process computes
    from that file."""
    out = tmp_path / "seg2"
    done = _launch_two([*SEG_ARGS, "--data", f"ade20k:{ade_root}", "--set", "iterations=1", "-o", str(out)], _env())
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout)["world_size"] == 2  # one report, from the main process
    start = _log(out)[0]
    assert (start["world_size"], start["micro_batch"], start["iterations"]) == (2, 1, 1)
    assert [p.name for p in list_train_states(out)] == ["step-00000001"]
    assert sorted(p.name for p in list_train_states(out)[0].glob("rng-*.json")) == ["rng-0.json", "rng-1.json"]
    distributed = json.loads((out / "metrics.json").read_text())
    single = evaluate_dense(out / "model.safetensors", f"ade20k:{ade_root}", scale=(128, 64), progress=False)
    assert single == distributed


@pytest.fixture
def one_thread():
    """In-process runs with the intra-op threads of the `OMP_NUM_THREADS=1` subprocesses: the same sums."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_sigkill_then_resume_ends_with_the_uninterrupted_weights(ade_root, tmp_path, one_thread):
    """Killed after iteration 3 of 3, before its checkpoint (checkpoints every 2; 2 micro-batches of 1 image an
    iteration), resumed from step 2: the same losses and final weights, bit for bit, as a run never stopped
    (the data order, the accumulation counter and every random generator are restored)."""
    sets = [*SEG_SETS, "iterations=3", "checkpoint_every=2", "grad_accum=2"]
    full = train_dense(load_dense_recipe("semantic-fpn", sets), f"ade20k:{ade_root}", tmp_path / "full",
                       progress=False)
    start = _log(tmp_path / "full")[0]
    assert (start["micro_batch"], start["grad_accum"]) == (1, 2)
    killed = tmp_path / "killed"
    args = ["train", *SEG_ARGS, "--data", f"ade20k:{ade_root}", "--set", "iterations=3", "--set",
            "checkpoint_every=2", "--grad-accum", "2", "-o", str(killed)]
    proc = subprocess.run([sys.executable, "-m", "dccnext_cli", *args], env=_env(DCCNEXT_CRASH_AT="step-3"),
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == -9, proc.stderr[-2000:]
    assert [p.name for p in list_train_states(killed)] == ["step-00000002"] and not (killed / "summary.json").exists()
    with pytest.raises(ConfigError, match="was started with lr=0.0001, not 0.001"):
        train_dense(load_dense_recipe("semantic-fpn", [*sets, "lr=1e-3"]), f"ade20k:{ade_root}", killed,
                    progress=False, resume=True)
    resumed = train_dense(load_dense_recipe("semantic-fpn", sets), f"ade20k:{ade_root}", killed, progress=False,
                          resume=True)
    assert resumed.resumed_from.name == "step-00000002" and resumed.losses == full.losses[2:]
    _same_weights(full.weights, resumed.weights)
    assert [e["resumed_from"] is not None for e in _log(killed) if e["event"] == "start"] == [False, True]
    again = train_dense(load_dense_recipe("semantic-fpn", sets), f"ade20k:{ade_root}", killed, progress=False,
                        resume=True)
    assert again.losses == [] and again.steps == 3  # a finished run resumed again does nothing


@pytest.mark.slow
@pytest.mark.parametrize("task", ["retinanet", "mask-rcnn"])
def test_two_processes_train_a_detector_and_evaluate_as_one_process(coco_json, tmp_path, task):
    """(Mask R-CNN's AP after 2 iterations is not 0 here: 0.25 box, 0.26 mask, and equal all the same.)"""
    out = tmp_path / task
    done = _launch_two(["--task", task, "--variant", "b0", "--data", f"coco:{coco_json}", "--batch-size",
                        "2", "--workers", "0", "--set", "iterations=2", "--set", "min_size=64", "--set",
                        "max_size=96", "--set", "warmup_iters=0", "-o", str(out), "--json"], _env())
    assert done.returncode == 0, done.stderr[-3000:]
    assert _log(out)[0]["world_size"] == 2
    distributed = json.loads((out / "metrics.json").read_text())
    assert distributed == evaluate_dense(out / "model.safetensors", f"coco:{coco_json}", progress=False)


@pytest.mark.slow
def test_two_processes_sigkill_then_resume_ends_with_the_uninterrupted_weights(ade_root, tmp_path):
    """The same on 2 processes: both SIGKILL themselves after iteration 3; the relaunch with --resume ends
    with the weights of an uninterrupted 2-process run."""
    common = [*SEG_ARGS, "--data", f"ade20k:{ade_root}", "--set", "iterations=4", "--set", "checkpoint_every=2"]
    full, killed = tmp_path / "full", tmp_path / "killed"
    assert _launch_two([*common, "-o", str(full)], _env()).returncode == 0
    crashed = _launch_two([*common, "-o", str(killed)], _env(DCCNEXT_CRASH_AT="step-3"))
    assert crashed.returncode != 0 and not (killed / "summary.json").exists()
    assert [p.name for p in list_train_states(killed)] == ["step-00000002"]
    assert sorted(p.name for p in list_train_states(killed)[0].glob("rng-*.json")) == ["rng-0.json", "rng-1.json"]
    resumed = _launch_two([*common, "-o", str(killed), "--resume"], _env())
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    _same_weights(full / "model.safetensors", killed / "model.safetensors")
    assert json.loads((full / "metrics.json").read_text()) == json.loads((killed / "metrics.json").read_text())


@pytest.mark.slow
def test_eval_command_on_two_processes_equals_one(ade_root, tmp_path):
    recipe = load_dense_recipe("semantic-fpn", [*SEG_SETS, "iterations=1"])
    weights = train_dense(recipe, f"ade20k:{ade_root}", tmp_path / "run", progress=False).weights
    done = _launch_two(["--checkpoint", str(weights), "--data", f"ade20k:{ade_root}", "--json"], _env(),
                       command="eval")
    assert done.returncode == 0, done.stderr[-3000:]
    distributed = json.loads(done.stdout)  # one report, from the main process
    single = evaluate_dense(weights, f"ade20k:{ade_root}", progress=False)
    assert {k: distributed[k] for k in single} == single


@pytest.mark.slow
def test_two_nodes_without_a_shared_disk_then_resume_on_one_process(ade_root, tmp_path):
    """2 "nodes" of 1 process, each in its own folder with a relative -o (node-local disks): node 1 never
    touches a disk. Killed after iteration 3 (the newest train state is iteration 2's, with both processes'
    random states), the run resumes on 1 process at iteration 2, says it is no longer bitwise, and completes."""
    nodes = [tmp_path / "node0", tmp_path / "node1"]
    for node in nodes:
        node.mkdir()
    args = [*SEG_ARGS, "--data", f"ade20k:{ade_root}", "--set", "iterations=4", "--set", "checkpoint_every=2",
            "--set", "log_every=1", "-o", "run"]
    port, env = _port(), _env(DCCNEXT_CRASH_AT="step-3")
    procs = [subprocess.Popen(_launch_cmd(args, machines=2, rank=rank, port=port), cwd=node, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for rank, node in enumerate(nodes)]
    outputs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode != 0 for p in procs), outputs[0][1][-3000:]
    assert list(nodes[1].iterdir()) == []  # the other node never touched a disk
    run = nodes[0] / "run"
    assert [p.name for p in list_train_states(run)] == ["step-00000002"], outputs[0][1][-3000:]
    assert sorted(p.name for p in list_train_states(run)[0].glob("rng-*.json")) == ["rng-0.json", "rng-1.json"]
    resumed = subprocess.run([sys.executable, "-m", "dccnext_cli", "train", *args, "--resume"], cwd=nodes[0],
                             env=_env(), capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from step 2" in " ".join(resumed.stderr.split())
    log = _log(run)
    start = [e for e in log if e["event"] == "start"][-1]
    assert (start["world_size"], start["micro_batch"], start["step"]) == (1, 2, 2)
    warning = [e["message"] for e in log if e["event"] == "warning" and "no longer bitwise" in e["message"]]
    assert len(warning) == 1 and "2 processes x 1 images" in warning[0] and "1 x 2" in warning[0]
    assert [e["step"] for e in log[log.index(start):] if e["event"] == "train"] == [3, 4]
    summary = json.loads((run / "summary.json").read_text())
    assert (summary["world_size"], summary["steps"]) == (1, 4) and json.loads(resumed.stdout)["iterations"] == 4
