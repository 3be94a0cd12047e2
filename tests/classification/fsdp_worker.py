"""One process of a 2-process FSDP2 check on CPUs (gloo), started by test_engines.py with torchrun (helper).

Accelerate 1.16 runs FSDP on GPUs only, so here the model is sharded with torch's `fully_shard` directly, and
the loop's own functions (training/full_state.py, run_state.py, evaluate.py) run on it as the training loop runs
them under `accelerate launch --config_file configs/accelerate/fsdp.yaml`. Each process writes what it saw to
OUT/rank-R.json; the test compares it with an unsharded model trained on the same images.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from accelerate import Accelerator
from accelerate.utils import gather_object
from torch.distributed.fsdp import fully_shard

from dccnext_cli.classification.evaluate import Lockstep, evaluate_batches
from dccnext_cli.models.config import variant_config
from dccnext_cli.models.dccnext import DCCNeXt
from dccnext_cli.training.full_state import (
    every_rank_weights_digest,
    gather_model_state,
    gather_optimizer_state,
    is_sharded,
)
from dccnext_cli.training.run_state import Trainables, TrainState, load_run_state, save_run_state

RES, PER_RANK, STEPS = 32, 4, 2


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return DCCNeXt(variant_config("b0", num_classes=4))


def _shard(model: torch.nn.Module) -> torch.nn.Module:
    for stage in model.stages:
        fully_shard(stage)
    fully_shard(model)
    return model


def _data(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The images of one step, all ranks together (each rank takes its own PER_RANK)."""
    g = torch.Generator().manual_seed(100 + step)
    return torch.randn(2 * PER_RANK, 3, RES, RES, generator=g), torch.randint(0, 4, (2 * PER_RANK,), generator=g)


def _train(model, optimizer, rank: int | None) -> None:
    """STEPS AdamW steps; rank None is the unsharded reference on both ranks' images at once."""
    for step in range(STEPS):
        images, labels = _data(step)
        if rank is not None:
            mine = slice(rank * PER_RANK, (rank + 1) * PER_RANK)
            images, labels = images[mine], labels[mine]
        torch.nn.functional.cross_entropy(model(images), labels).backward()
        optimizer.step()
        optimizer.zero_grad()


def _any_left(mine: bool) -> bool:
    flag = torch.tensor([float(mine)])
    dist.all_reduce(flag)
    return bool(flag.item())


def _sum(t: torch.Tensor) -> torch.Tensor:
    dist.all_reduce(t)
    return t


def _evaluate(model, rank: int | None) -> dict:
    """Rank 0 scores two batches and rank 1 one (the reference: all three): without the lockstep, rank 1 would
    leave rank 0 waiting in its second forward pass."""
    images, labels = _data(7)
    batches = [(images[i:i + 3], labels[i:i + 3], 0) for i in range(0, 9, 3)]
    lockstep, reduce = None, None
    if rank is not None:
        batches = batches[:2] if rank == 0 else batches[2:]
        lockstep, reduce = Lockstep(_any_left, torch.zeros(1, 3, RES, RES)), _sum
    result = evaluate_batches(model, batches, 4, device=torch.device("cpu"), reduce=reduce, lockstep=lockstep)
    return {"samples": result.samples, "loss": result.loss, "top1": result.top1}


def main(out: Path) -> None:
    accelerator = Accelerator(cpu=True)
    rank = accelerator.process_index
    reference = _model()
    reference_opt = torch.optim.AdamW(reference.parameters(), lr=1e-3)
    _train(reference, reference_opt, None)
    model = _shard(_model())
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    _train(model, optimizer, rank)
    full = gather_model_state(accelerator, model)
    optimizer_state = gather_optimizer_state(accelerator, model, optimizer)
    record = {"rank": rank, "sharded": is_sharded(model), "digest": every_rank_weights_digest(accelerator, model),
              "gathered_on_this_rank": full is not None}
    if full is not None:
        ref = reference.state_dict()
        record["weights_max_diff"] = max(float((full[k] - ref[k]).abs().max()) for k in ref)
        record["weights_keys_match"] = sorted(full) == sorted(ref)
        ref_opt = reference_opt.state_dict()["state"]
        names = [n for n, _ in reference.named_parameters()]
        record["optimizer_named"] = sorted(optimizer_state["state"]) == sorted(names)
        record["exp_avg_max_diff"] = max(float((optimizer_state["state"][n]["exp_avg"] - ref_opt[i]["exp_avg"])
                                               .abs().max()) for i, n in enumerate(names))
    record["eval"], record["eval_reference"] = _evaluate(model, rank), _evaluate(reference, None)
    run = out / "run"
    state = TrainState(epoch=0, batch=STEPS, step=STEPS, world_size=2, micro_batch=PER_RANK, samples=STEPS * 8)
    save_run_state(accelerator, run, state, Trainables(model, optimizer), keep_last=1)
    restored = _shard(DCCNeXt(variant_config("b0", num_classes=4)))
    restored_opt = torch.optim.AdamW(restored.parameters(), lr=1e-3)
    loaded = load_run_state(accelerator, run / "checkpoints" / "step-00000002", Trainables(restored, restored_opt))
    record["loaded_step"], record["loaded_samples"] = loaded.step, loaded.samples
    record["restored_digest"] = every_rank_weights_digest(accelerator, restored)
    for m, opt in ((model, optimizer), (restored, restored_opt)):  # one more step from the saved and loaded state
        images, labels = _data(5)
        torch.nn.functional.cross_entropy(m(images[rank * PER_RANK:(rank + 1) * PER_RANK]),
                                          labels[rank * PER_RANK:(rank + 1) * PER_RANK]).backward()
        opt.step()
        opt.zero_grad()
    record["after_step_equal"] = every_rank_weights_digest(accelerator, model) == every_rank_weights_digest(
        accelerator, restored)
    everyone = gather_object([record])
    if accelerator.is_main_process:
        (out / "ranks.json").write_text(json.dumps(everyone, indent=1))
    accelerator.end_training()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
