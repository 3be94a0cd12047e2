"""Whole model and optimiser states from any engine, and back: what makes a train state engine-independent.

Under FSDP no process holds the whole model (DTensor shards), under ZeRO-3 the parameters are empty partitions,
and under DDP each process holds a copy. Saving therefore gathers on every process (the calls are collectives:
a process that skipped them would hang the others) and only the main process gets the tensors to write.
Loading is the reverse: the main process reads the files and the tensors are broadcast from it, so the other
processes need no copy of the run folder (node-local disks) and the process count may differ from the run's.

The optimiser state uses torch's distributed state-dict API (`torch.distributed.checkpoint.state_dict`) with a
full state dict keyed by parameter names, the same for one process, DDP and FSDP, so a run saved under FSDP on 8
GPUs resumes under DDP on 2 CPUs. DeepSpeed keeps its optimiser inside its engine (ZeRO partitions and objects
that only pickle can store); its train states hold the weights and the loop's position, not the optimiser.
"""

from __future__ import annotations

import hashlib
from typing import Any

import torch

from .accelerator import engine_name

__all__ = ["is_sharded", "is_fsdp1", "gather_model_state", "gather_optimizer_state", "load_full_state",
           "every_rank_weights_digest"]

_COMPILED = "_orig_mod."


def _plain(state: dict[str, Any]) -> dict[str, torch.Tensor]:
    """Contiguous CPU tensors under the model's own names (no torch.compile prefix, no DTensor)."""
    out = {}
    for name, value in state.items():
        if hasattr(value, "full_tensor"):  # a DTensor left by an engine that did not gather it
            value = value.full_tensor()
        out[name.replace(_COMPILED, "")] = value.detach().cpu().contiguous()
    return out


def _options(**kwargs):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, **kwargs)


def is_sharded(model: torch.nn.Module) -> bool:
    """True when the model's parameters are FSDP shards (FSDP2 DTensors, or FSDP1 flat parameters), whoever
    sharded it: Accelerate on GPUs, or `fully_shard` in a test on CPUs."""
    return any(hasattr(p, "full_tensor") for p in model.parameters()) or is_fsdp1(model)


def is_fsdp1(model: torch.nn.Module) -> bool:
    """True for FSDP1's flat parameters, where even asking for the state dict is a collective."""
    from torch.distributed.fsdp import FullyShardedDataParallel

    return any(isinstance(m, FullyShardedDataParallel) for m in model.modules())


def gather_model_state(accelerator, model: torch.nn.Module) -> dict[str, torch.Tensor] | None:
    """Every process calls this; the main process gets the whole state dict, the others None.

    FSDP: torch's full state dict, gathered into the main process's memory (what `accelerator.get_state_dict`
    does for FSDP2). DeepSpeed: `accelerator.get_state_dict` (ZeRO-3 consolidates its partitions). DDP and one
    process: the main process's own copy."""
    if is_sharded(model):
        from torch.distributed.checkpoint.state_dict import get_model_state_dict

        state = get_model_state_dict(model, options=_options(cpu_offload=True))
    elif engine_name(accelerator) == "deepspeed":
        state = accelerator.get_state_dict(model)
    elif accelerator.is_main_process:
        state = accelerator.unwrap_model(model, keep_torch_compile=False).state_dict()
    else:
        state = None
    return _plain(state) if accelerator.is_main_process else None


def gather_optimizer_state(accelerator, model: torch.nn.Module, optimizer) -> dict[str, Any] | None:
    """Every process calls this; the main process gets the optimiser's full state keyed by parameter names
    (None elsewhere, and None under DeepSpeed, whose optimiser state cannot leave its engine without pickle)."""
    if engine_name(accelerator) == "deepspeed":
        return None
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    inner = getattr(optimizer, "optimizer", optimizer)  # Accelerate's AcceleratedOptimizer wraps the real one
    state = get_optimizer_state_dict(model, inner, options=_options(cpu_offload=is_sharded(model)))
    if not accelerator.is_main_process:
        return None
    # one spelling of the hyperparameters, whether the optimiser was built or loaded (loading reorders a group's
    # keys and turns its tuples into lists), so a resumed run writes the very bytes an uninterrupted one does
    groups = [{key: list(value) if isinstance(value, tuple) else value for key, value in sorted(group.items())}
              for group in state["param_groups"]]
    return {**state, "param_groups": groups}


def load_full_state(accelerator, model: torch.nn.Module, optimizer, model_state: dict[str, torch.Tensor] | None,
                    optimizer_state: dict[str, Any] | None, with_optimizer: bool = True) -> None:
    """Every process calls this; the states are read on the main process only (None elsewhere), broadcast, and
    used up (torch's loaders rename their keys in place). `with_optimizer=False` leaves the optimiser as it is
    (a train state that holds none)."""
    from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_optimizer_state_dict

    options = _options(broadcast_from_rank0=accelerator.num_processes > 1, strict=True)
    set_model_state_dict(model, model_state or {}, options=options)
    if with_optimizer:
        inner = getattr(optimizer, "optimizer", optimizer)
        set_optimizer_state_dict(model, inner, optimizer_state or {}, options=options)


def every_rank_weights_digest(accelerator, model: torch.nn.Module) -> str:
    """A short digest of the whole weights, computed by each process from what it holds (shards gathered), so
    that processes that disagree show different digests. Every process calls this."""
    if is_sharded(model):  # every process gathers the whole weights for itself
        from torch.distributed.checkpoint.state_dict import get_model_state_dict

        state = get_model_state_dict(model, options=_options(cpu_offload=False))
    else:
        state = accelerator.unwrap_model(model, keep_torch_compile=False).state_dict()
    h = hashlib.sha256()
    for name, tensor in sorted(_plain(state).items()):
        h.update(name.encode())
        h.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())  # any dtype, bf16 too
    return h.hexdigest()[:16]

