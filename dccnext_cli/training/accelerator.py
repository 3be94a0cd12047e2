"""The Accelerate set-up every loop uses: one process or many, CPU or GPU, and the batch each process sees.

A recipe's batch size is the total per optimiser step, so it means the same on 1 process or 64: each process
takes `batch / (processes x accumulation steps)` images per micro-batch.
"""

from __future__ import annotations

import os

import torch

from ..errors import ConfigError

__all__ = ["mixed_precision", "make_accelerator", "micro_batch"]


def mixed_precision(amp: str) -> str:
    """Accelerate's mixed-precision name for a recipe's `amp`: `auto` is bf16 on a GPU that has it, else off."""
    if amp != "auto":
        return amp
    return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"


def make_accelerator(amp: str, grad_accum: int):
    """An `Accelerator` for this launch; refuses a launch whose processes did not form one group."""
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=not torch.cuda.is_available(), mixed_precision=mixed_precision(amp),
                              gradient_accumulation_steps=grad_accum)
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if accelerator.num_processes != launched:
        raise ConfigError(f"{launched} processes were launched but Accelerate formed a group of "
                          f"{accelerator.num_processes}; on CPUs launch with --multi_gpu (see README)")
    return accelerator


def micro_batch(batch_size: int, world: int, grad_accum: int) -> int:
    """Images per process per micro-batch: the recipe's total batch split over processes and accumulation."""
    per_step = world * grad_accum
    if batch_size % per_step:
        raise ConfigError(f"batch_size {batch_size} (the total per optimiser step) is not divisible by "
                          f"{world} processes x {grad_accum} accumulation steps")
    return batch_size // per_step
