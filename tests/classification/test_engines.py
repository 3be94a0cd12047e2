"""Beyond one process: the shipped Accelerate configs, FSDP-sharded state on CPUs, node-local run folders and
elastic resume, all with real processes (gloo on CPUs).

Accelerate 1.16 runs FSDP and DeepSpeed on CUDA GPUs only, so on this machine: the FSDP config is refused in one
line; the FSDP logic (gathering on every rank, the optimiser state by name, lockstep evaluation, save and load)
runs on a model sharded by torch's `fully_shard` in 2 processes (fsdp_worker.py); DeepSpeed's prepare arguments
are checked on the config Accelerate builds from the shipped files.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from engine_data import CLASSES, TRAIN_PER_CLASS

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "configs" / "accelerate"


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(**extra: str) -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), **extra}


def _launch(config: str, *args: str, procs: int, machines: int = 1, rank: int = 0, port: int = 0,
            cwd: Path = ROOT, env: dict[str, str] | None = None) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(CONFIGS / config),
           "--num_processes", str(procs), "--num_machines", str(machines), "--machine_rank", str(rank),
           "--main_process_ip", "127.0.0.1", "--main_process_port", str(port or _port()),
           "-m", "dccnext_cli", "train", *args]
    return subprocess.Popen(cmd, cwd=cwd, env=env or _env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


@pytest.mark.parametrize("name", ["ddp", "fsdp", "deepspeed-zero2", "deepspeed-zero3"])
def test_shipped_configs_are_what_accelerate_reads(name):
    from accelerate.commands.config.config_args import load_config_from_file

    config = load_config_from_file(str(CONFIGS / f"{name}.yaml"))
    kind = {"ddp": "MULTI_GPU", "fsdp": "FSDP"}.get(name, "DEEPSPEED")
    assert str(config.distributed_type).endswith(kind)
    if name == "fsdp":
        assert config.fsdp_config["fsdp_version"] == 2
        assert config.fsdp_config["fsdp_transformer_layer_cls_to_wrap"] == "DCCNeXtBlock"
        from dccnext_cli.models import dccnext

        assert hasattr(dccnext, "DCCNeXtBlock")  # the class FSDP wraps exists under that name
    if name.startswith("deepspeed"):
        assert config.deepspeed_config["zero_stage"] == int(name[-1])


@pytest.mark.parametrize("stage", [2, 3])
def test_deepspeed_auto_values_come_from_the_recipe(stage):
    """Accelerate fills DeepSpeed's "auto" micro-batch from a prepared DataLoader, and the loop prepares none:
    without these values `prepare(model, optimizer)` fails. The config is the one Accelerate builds from the
    shipped file (DeepSpeed itself is not installed here: it needs CUDA)."""
    from accelerate.utils import DeepSpeedPlugin

    from dccnext_cli.training.accelerator import fill_deepspeed_config

    shipped = yaml.safe_load((CONFIGS / f"deepspeed-zero{stage}.yaml").read_text())["deepspeed_config"]
    plugin = DeepSpeedPlugin(zero_stage=shipped["zero_stage"], zero3_save_16bit_model=shipped["zero3_save_16bit_model"])
    config = plugin.deepspeed_config
    assert config["train_micro_batch_size_per_gpu"] == "auto"  # what made prepare fail
    filled = fill_deepspeed_config(config, micro=32, grad_accum=2, world=8, grad_clip=5.0)
    assert config["train_micro_batch_size_per_gpu"] == 32 and config["gradient_accumulation_steps"] == 2
    assert config["train_batch_size"] == 512 and config["gradient_clipping"] == 5.0
    assert "auto" not in json.dumps(config)
    if stage == 3:  # whole weights for the checkpoints, or get_state_dict refuses
        assert config["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] is True
    assert "train_micro_batch_size_per_gpu" in filled
    # a value the user set is kept
    mine = {"train_micro_batch_size_per_gpu": 4, "gradient_clipping": "auto"}
    assert fill_deepspeed_config(mine, micro=32, grad_accum=1, world=1, grad_clip=None) == [
        "gradient_accumulation_steps", "train_batch_size", "gradient_clipping"]
    assert mine["train_micro_batch_size_per_gpu"] == 4 and mine["gradient_clipping"] == 0.0


@pytest.mark.parametrize("variable, name", [("ACCELERATE_USE_FSDP", "FSDP"), ("ACCELERATE_USE_DEEPSPEED", "DEEPSPEED")])
def test_sharding_engines_are_refused_without_cuda(monkeypatch, variable, name):
    """What `accelerate launch --config_file fsdp.yaml / deepspeed-*.yaml` sets; the launch itself is below."""
    import torch

    from dccnext_cli.errors import ConfigError
    from dccnext_cli.training.accelerator import make_accelerator

    if torch.cuda.is_available():
        pytest.skip("a GPU runs these engines")
    monkeypatch.setenv(variable, "true")
    with pytest.raises(ConfigError, match=f"asks for {name}, which Accelerate runs on CUDA GPUs only"):
        make_accelerator("no", 1)


@pytest.mark.slow
def test_fsdp_config_on_cpus_is_refused_in_one_line(imagefolder, tmp_path):
    """Accelerate 1.16 with `cpu=True` drops an FSDP config and trains with DDP; the loop refuses instead."""
    proc = _launch("fsdp.yaml", "--data", f"imagefolder:{imagefolder}", "--res", "32", "-o", str(tmp_path / "run"),
                   procs=1)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode != 0
    assert "error: this launch asks for fsdp, which accelerate runs on cuda gpus only" in stderr.lower()
    assert "configs/accelerate/ddp.yaml" in stderr and "[rank0]: Traceback" not in stderr
    assert not (tmp_path / "run").exists()


def test_fsdp_sharded_state_on_two_cpu_processes(tmp_path):
    """A model sharded by FSDP2 over 2 gloo processes: the gathered weights and optimiser moments equal an
    unsharded model trained on both processes' images; every rank's digest of the gathered weights agrees;
    evaluation with unequal batch counts runs in lockstep and equals the unsharded one; a checkpoint saved from
    the shards and loaded into a fresh sharded model continues bit for bit."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(_port()),
           str(Path(__file__).parent / "fsdp_worker.py"), str(tmp_path)]
    done = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = json.loads((tmp_path / "ranks.json").read_text())
    assert all(r["sharded"] for r in ranks)
    main, other = ranks
    assert main["gathered_on_this_rank"] and not other["gathered_on_this_rank"]  # gathered to the main process
    assert main["weights_keys_match"] and main["weights_max_diff"] < 1e-4
    assert main["optimizer_named"] and main["exp_avg_max_diff"] < 1e-5
    assert main["digest"] == other["digest"] == main["restored_digest"] == other["restored_digest"]
    for r in ranks:
        assert r["eval"]["samples"] == r["eval_reference"]["samples"] == 8
        assert r["eval"]["loss"] == pytest.approx(r["eval_reference"]["loss"], rel=1e-4)
        assert (r["loaded_step"], r["loaded_samples"]) == (2, 16) and r["after_step_equal"]
    checkpoint = tmp_path / "run" / "checkpoints" / "step-00000002"
    assert {"rng-0.json", "rng-1.json"} <= {p.name for p in checkpoint.iterdir()}


def test_two_nodes_with_local_disks_then_elastic_resume_on_one_process(imagefolder, tmp_path):
    """The shipped DDP config as 2 "nodes" of 1 process, each in its own folder with a relative -o (node-local
    disks): the ranks read different data and end with the same weights, the non-main node writes nothing, and
    the main node's checkpoints hold both ranks' random states. A mid-epoch checkpoint then resumes on 1 process:
    a warning, the same step and image count, and the run completes."""
    nodes = [tmp_path / "node0", tmp_path / "node1"]
    for node in nodes:
        node.mkdir()
    args = ["--data", f"imagefolder:{imagefolder}", "--res", "32", "--epochs", "1", "--batch-size", "16",
            "--workers", "0", "--set", "log_every=1", "--set", "eval_samples=7", "--set", "checkpoint_every=1",
            "--set", "keep_last=3", "-o", "run", "--json"]
    port, env = _port(), _env(DCCNEXT_RANK_PROBE="1")
    procs = [_launch("ddp.yaml", *args, procs=2, machines=2, rank=rank, port=port, cwd=node, env=env)
             for rank, node in enumerate(nodes)]
    outputs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs[0][1][-3000:] + outputs[1][1][-3000:]
    run = nodes[0] / "run"
    assert list(nodes[1].iterdir()) == []  # the other node never touched a disk
    summary = json.loads((run / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["steps"] == 3 and summary["samples"] == 48
    ranks = summary["ranks"]
    assert [r["rank"] for r in ranks] == [0, 1]
    assert ranks[0]["samples"] == ranks[1]["samples"] == CLASSES * TRAIN_PER_CLASS // 2
    assert ranks[0]["data_fingerprint"] != ranks[1]["data_fingerprint"]
    assert ranks[0]["weights_digest"] == ranks[1]["weights_digest"]
    assert summary["metrics"]["samples"] == 7  # eval_samples is a total over processes (4 + 3)
    assert "Grad strides do not match" not in outputs[0][1]
    start = json.loads((run / "log.jsonl").read_text().splitlines()[0])
    assert start["world_size"] == 2 and start["micro_batch"] == 8
    first = run / "checkpoints" / "step-00000001"
    assert {"rng-0.json", "rng-1.json"} <= {p.name for p in first.iterdir()}
    assert json.loads((first / "manifest.json").read_text())["world_size"] == 2

    resumed = subprocess.run([sys.executable, "-m", "dccnext_cli", "train", "-o", str(run), "--resume", str(first),
                              "--json"], cwd=nodes[0], env=_env(), capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    starts = [e for e in log if e["event"] == "start"]
    assert starts[-1]["world_size"] == 1 and starts[-1]["micro_batch"] == 16
    assert (starts[-1]["step"], starts[-1]["samples"]) == (1, 16)  # the position the checkpoint recorded
    warning = [e["message"] for e in log if e["event"] == "warning" and "no longer bitwise" in e["message"]]
    assert len(warning) == 1 and "2 processes x 8 images" in warning[0] and "1 x 16" in warning[0]
    assert "no longer bitwise" in " ".join(resumed.stderr.split())
    trained = [e["step"] for e in log[log.index(starts[-1]):] if e["event"] == "train"]
    assert trained == [2, 3]  # continued at the next step, to the end of the schedule
    final = json.loads(resumed.stdout)
    assert final["world_size"] == 1 and final["steps"] == 3
    assert json.loads((run / "summary.json").read_text())["samples"] == 48


def test_a_process_without_a_saved_random_state_is_seeded_by_its_rank():
    """Resuming on more processes than saved: the new ones draw repeatable numbers, different per rank."""
    import torch

    from dccnext_cli.training.rng_state import reseed_rng

    draws = {}
    for rank in (1, 2, 1):
        generator = torch.Generator()
        reseed_rng(step=5, rank=rank, generator=generator)
        draws.setdefault(rank, []).append((torch.rand(3).tolist(), torch.rand(3, generator=generator).tolist()))
    assert draws[1][0] == draws[1][1] and draws[1][0] != draws[2][0]


@pytest.mark.slow
def test_one_process_run_resumes_on_two_nodes_whose_second_has_no_copy(imagefolder, tmp_path):
    """The other direction: a checkpoint of 1 process continues on 2 "nodes"; node 1's folder stays empty (the
    checkpoint reaches it by broadcast) and its process starts from a fresh random state, as the warning says."""
    nodes = [tmp_path / "node0", tmp_path / "node1"]
    for node in nodes:
        node.mkdir()
    args = ["--data", f"imagefolder:{imagefolder}", "--res", "32", "--epochs", "1", "--batch-size", "16",
            "--workers", "0", "--set", "eval_split=null", "--set", "checkpoint_every=1", "--set", "keep_last=3",
            "-o", "run", "--json"]
    first = subprocess.run([sys.executable, "-m", "dccnext_cli", "train", *args], cwd=nodes[0], env=_env(),
                           capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr[-3000:]
    port = _port()
    procs = [_launch("ddp.yaml", *args, "--resume", "run/checkpoints/step-00000002", procs=2, machines=2, rank=rank,
                     port=port, cwd=node) for rank, node in enumerate(nodes)]
    outputs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs[0][1][-3000:] + outputs[1][1][-3000:]
    assert list(nodes[1].iterdir()) == []
    run = nodes[0] / "run"
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    start = [e for e in log if e["event"] == "start"][-1]
    assert (start["world_size"], start["micro_batch"], start["step"], start["samples"]) == (2, 8, 2, 32)
    warning = [e["message"] for e in log if e["event"] == "warning" and "no longer bitwise" in e["message"]]
    assert len(warning) == 1 and "processes 1..1 start from fresh random states" in warning[0]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["steps"] == 3 and summary["samples"] == 48
    assert {"rng-0.json", "rng-1.json"} <= {p.name for p in (run / "checkpoints" / "step-00000003").iterdir()}
