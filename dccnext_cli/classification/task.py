"""Classification as a task of the registry (`dccnext_cli.tasks`): its name, help line and default size."""

from __future__ import annotations

from dataclasses import dataclass

from ..models.weights import CLASSIFICATION

__all__ = ["ClassificationTask", "CLASSIFICATION_TASK"]


@dataclass(frozen=True)
class ClassificationTask:
    """Image classification with the DCCNeXt classifier (ImageNet-style data, top-1/top-5)."""

    name: str = CLASSIFICATION  # the name every classifier's weights file records
    summary: str = "image classification (ImageNet-style)"
    default_resolution: tuple[int, int] = (224, 224)  # (height, width)


CLASSIFICATION_TASK = ClassificationTask()
