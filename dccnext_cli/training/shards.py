"""Evaluation split over processes: each takes one contiguous block, the blocks' results come back in order.

Metrics are never averaged over processes (a mean of per-process mIoU or AP is not the data set's): each
process contributes what it accumulated, and the metric is computed once on the union, in the data set's
order, so a sharded evaluation equals a single-process one. The two collectives here (`all_gather_objects`,
`from_main`) are also how checkpoints gather random states and share what the main process read.
"""

from __future__ import annotations

from typing import Any

__all__ = ["shard_range", "all_gather_objects", "from_main"]


def shard_range(n: int, rank: int, world: int) -> range:
    """Process `rank`'s contiguous block of `n` items; blocks differ in size by at most one, none overlap."""
    base, extra = divmod(n, world)
    start = rank * base + min(rank, extra)
    return range(start, start + base + (rank < extra))


def all_gather_objects(accelerator, obj: Any) -> list[Any]:
    """`obj` of every process, in process order (a collective: every process calls it)."""
    if accelerator is None or accelerator.num_processes == 1:
        return [obj]
    from accelerate.utils import gather_object

    return gather_object([obj])


def from_main(accelerator, obj: Any) -> Any:
    """The main process's `obj` on every process (a collective)."""
    if accelerator is None or accelerator.num_processes == 1:
        return obj
    from accelerate.utils import broadcast_object_list

    return broadcast_object_list([obj])[0]
