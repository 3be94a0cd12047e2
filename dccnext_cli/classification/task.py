"""Classification as a task of the registry (`dccnext_cli.tasks`): its name, help line, default size and the
command options it honours."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..common.command_options import EVAL_OPTIONS, TRAIN_OPTIONS
from ..models.weights import CLASSIFICATION

__all__ = ["ClassificationTask", "CLASSIFICATION_TASK"]


@dataclass(frozen=True)
class ClassificationTask:
    """Image classification with the DCCNeXt classifier (ImageNet-style data, top-1/top-5)."""

    name: str = CLASSIFICATION  # the name every classifier's weights file records
    summary: str = "image classification (ImageNet-style)"
    default_resolution: tuple[int, int] = (224, 224)  # (height, width)
    eval_batch_size: int = 256  # eval's default --batch-size
    honours: Mapping[str, frozenset[str]] = field(  # command -> the options it honours (all of them)
        default_factory=lambda: {"train": TRAIN_OPTIONS, "eval": EVAL_OPTIONS}, compare=False)

    def size_keys(self, size: tuple[int, int]) -> dict[str, Any]:
        """The recipe keys `--res` sets: the training resolution."""
        return {"input_size": size}


CLASSIFICATION_TASK = ClassificationTask()
