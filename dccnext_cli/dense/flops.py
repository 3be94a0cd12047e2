"""FLOPs of the dense models in the classifier's convention (1 MAC = 1 FLOP, DCConv by the counting rule).

Each task's `flop_view` (see `flop_views`) says which layers run: everything with weights, up to the
data-dependent post-processing, as MMDetection's FLOP counter does.
"""

from __future__ import annotations

from typing import Any

import torch

from ..models.flops import FlopReport, count_model
from .flop_views import BOX_ROIS, MASK_ROIS
from .tasks import DenseTask, get_dense_task

__all__ = ["count_task", "BOX_ROIS", "MASK_ROIS"]


def count_task(
        task: str | DenseTask,
        variant: str = "b2",
        resolution: tuple[int, int] | None = None,
        batch_size: int = 1,
        num_classes: int | None = None,
        **config_changes: Any,
) -> FlopReport:
    """Parameters and FLOPs of a dense model ('retinanet', 'mask-rcnn', 'semantic-fpn') with its parts split."""
    task = get_dense_task(task)
    resolution = resolution or task.default_resolution
    with torch.device("meta"):
        model = task.build(variant, **({"num_classes": num_classes} if num_classes else {}), **config_changes)
    layers = task.flop_view(model)
    counted = sum(p.numel() for p in layers.parameters())
    total = sum(p.numel() for p in model.parameters())
    assert counted == total, f"{task.name}: the counted layers miss {total - counted} parameters"
    body = model.backbone.body.body
    config = {
        "task": task.name,
        "num_classes": getattr(model, "num_classes", None) or num_classes or 80,
        "cluster_sizes": list(body.config.cluster_sizes),
        "subvector_intervals": list(body.config.subvector_intervals),
    }
    report = count_model(layers, resolution, task.flop_parts, batch_size, variant=variant.removeprefix("dccnext_"),
                         config=config)
    if task.detector:
        report.note += (
            f" Detector: layers with weights only, as MMDetection's dummy forward (box head on {BOX_ROIS} RoIs, "
            f"mask head on {MASK_ROIS}); anchors, NMS and RoIAlign count 0."
        )
    return report
