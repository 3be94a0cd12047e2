"""The Accelerate set-up every loop uses: one process or many, CPU or GPU, DDP, FSDP or DeepSpeed.

A recipe's batch size is the total per optimiser step, so it means the same on 1 process or 64: each process
takes `batch / (processes x accumulation steps)` images per micro-batch.

The engine comes from `accelerate launch --config_file` (configs/accelerate/). Accelerate 1.16 runs FSDP and
DeepSpeed on GPUs only: with `cpu=True` it drops an FSDP config and trains with plain DDP, and without it the
processes never form a group. So a sharding engine asked for on a machine without CUDA is refused here, with the
config that does run there, rather than run as something else.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import torch

from ..common.threads import fit_threads
from ..errors import ConfigError, DCCNeXtError
from .shards import from_main

__all__ = ["make_accelerator", "micro_batch", "engine_name", "shards_parameters", "fill_deepspeed_config",
           "configure_engine", "on_main_process", "micro_step"]

_ENGINE_ENV = {"fsdp": "ACCELERATE_USE_FSDP", "deepspeed": "ACCELERATE_USE_DEEPSPEED"}


def make_accelerator(amp: str, grad_accum: int):
    """An `Accelerator` for this launch; refuses a launch whose processes did not form one group, or a sharding
    engine on a machine where Accelerate cannot run it."""
    from accelerate import Accelerator

    cuda = torch.cuda.is_available()
    wanted = next((name for name, variable in _ENGINE_ENV.items()  # what `accelerate launch` was asked for
                   if os.environ.get(variable, "false").lower() == "true"), None)
    if wanted is not None and not cuda:
        raise ConfigError(f"this launch asks for {wanted.upper()}, which Accelerate runs on CUDA GPUs only (on CPUs "
                          "it would train with plain DDP instead); on CPUs launch with configs/accelerate/ddp.yaml")
    if amp == "auto":  # bf16 on a GPU that has it, else off
        amp = "bf16" if cuda and torch.cuda.is_bf16_supported() else "no"
    accelerator = Accelerator(cpu=not cuda, mixed_precision=amp, gradient_accumulation_steps=grad_accum)
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if accelerator.num_processes != launched:
        raise ConfigError(f"{launched} processes were launched but Accelerate formed a group of "
                          f"{accelerator.num_processes}; on CPUs launch with --multi_gpu (see README)")
    return accelerator


def engine_name(accelerator) -> str:
    """"deepspeed", "fsdp", "ddp" (several processes) or "single": what saving and evaluation must allow for."""
    kind = str(accelerator.distributed_type).rsplit(".", 1)[-1]
    if kind in ("DEEPSPEED", "FSDP"):
        return kind.lower()
    return "ddp" if accelerator.num_processes > 1 else "single"


def shards_parameters(accelerator) -> bool:
    """True when no process holds the whole model (FSDP, ZeRO-3): every forward pass is then a collective."""
    name = engine_name(accelerator)
    if name == "deepspeed":
        return accelerator.state.deepspeed_plugin.deepspeed_config.get("zero_optimization", {}).get("stage") == 3
    return name == "fsdp"


def fill_deepspeed_config(config: dict[str, Any], *, micro: int, grad_accum: int, world: int,
                          grad_clip: float | None) -> list[str]:
    """Put the loop's numbers into a DeepSpeed config where it says "auto" (in place; returns the keys filled).

    Accelerate fills the micro-batch from a prepared DataLoader, and this loop prepares none (its loaders shard
    themselves), so without this `prepare(model, optimizer)` fails. ZeRO-3 must also gather whole weights for the
    train states, or `get_state_dict` refuses.
    """
    values = {"train_micro_batch_size_per_gpu": micro, "gradient_accumulation_steps": grad_accum,
              "train_batch_size": micro * grad_accum * world, "gradient_clipping": float(grad_clip or 0.0)}
    filled = [key for key, value in values.items() if config.get(key, "auto") == "auto"]
    config.update({key: values[key] for key in filled})
    zero = config.get("zero_optimization")
    if isinstance(zero, dict) and zero.get("stage") == 3 and \
            zero.get("stage3_gather_16bit_weights_on_model_save", "auto") in ("auto", False):
        zero["stage3_gather_16bit_weights_on_model_save"] = True
        filled.append("zero_optimization.stage3_gather_16bit_weights_on_model_save")
    return filled


def configure_engine(accelerator, micro: int, grad_clip: float | None) -> list[str]:
    """Before `accelerator.prepare`: what the engine needs to know of the loop (DeepSpeed's "auto" values)."""
    if engine_name(accelerator) != "deepspeed":
        return []
    return fill_deepspeed_config(accelerator.state.deepspeed_plugin.deepspeed_config, micro=micro,
                                 grad_accum=accelerator.gradient_accumulation_steps,
                                 world=accelerator.num_processes, grad_clip=grad_clip)


def micro_batch(batch_size: int, world: int, grad_accum: int) -> int:
    """Images per process per micro-batch: the recipe's total batch split over processes and accumulation."""
    per_step = world * grad_accum
    if batch_size % per_step:
        raise ConfigError(f"batch_size {batch_size} (the total per optimiser step) is not divisible by "
                          f"{world} processes x {grad_accum} accumulation steps")
    return batch_size // per_step


def on_main_process(accelerator, decide: Callable[[], Any]) -> Any:
    """Run `decide` on the main process only and hand every process its result, or the error it raised (a
    process that raised alone would leave the others waiting at the next collective). For what only the main
    process can see: the run folder, which may be on its node-local disk."""
    result, error = None, None
    if accelerator.is_main_process:
        try:
            result = decide()
        except DCCNeXtError as e:
            error = e
    result, error = from_main(accelerator, (result, error))
    if error is not None:
        raise error
    return result


def micro_step(accelerator, model, optimizer, grad_clip: float | None, losses: Callable[..., dict[str, Any]],
               *inputs: Any) -> dict:
    """One micro-batch: `losses(model, *inputs)` (named parts, summed) under autocast, backward, and at the end of each
    accumulation window the clipped optimiser step. Returns the detached parts and their sum as "loss"."""
    fit_threads()  # a busy machine: as many threads as the cores others leave free (common/threads.py)
    with accelerator.accumulate(model):
        with accelerator.autocast():
            parts = losses(model, *inputs)
        loss = sum(parts.values())
        accelerator.backward(loss)
        if grad_clip and accelerator.sync_gradients:
            accelerator.clip_grad_norm_(model.parameters(), grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return {"loss": loss.detach(), **{name: part.detach() for name, part in parts.items()}}
