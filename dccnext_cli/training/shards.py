"""Evaluation split over processes, one rule for every task: image i of the first N goes to process i mod W.

Metrics are never averaged over processes (a mean of per-process mIoU or AP is not the data set's): each
process contributes what it accumulated (counts, or a metric's states), and the metric is computed once on the
union, in the data set's order, so a sharded evaluation equals a single-process one. The two collectives here
(`all_gather_objects`, `from_main`) are also how train states gather random states and share what the main
process read.
"""

from __future__ import annotations

from typing import Any

__all__ = ["strided_share", "all_gather_objects", "from_main"]


def strided_share(n: int, rank: int, world: int) -> int:
    """How many of the first `n` items process `rank` scores: items rank, rank + world, rank + 2 world, ..."""
    return len(range(rank, n, world))


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
