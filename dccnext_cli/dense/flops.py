"""FLOPs of the dense models in the classifier's convention (1 MAC = 1 FLOP, DCConv by the spec's rule).

Detectors end in data-dependent steps (anchor decoding, NMS, proposal sampling) that cannot run on the
meta device and that MMDetection's `get_flops` does not count either. So the count runs every layer with
weights on fixed-size inputs, as MMDetection's dummy forward does:

- RetinaNet: backbone, FPN (with P6/P7) and the class/box head on all five levels.
- Mask R-CNN: backbone, FPN, the RPN head on all five levels, the box head on 1000 RoIs (7x7) and the mask
  head on 100 RoIs (14x14); RoIAlign, NMS and the anchor bookkeeping count 0.
- Semantic FPN: the whole model (no data-dependent step); the final upsampling counts 0.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from ..errors import ConfigError
from ..flops import FlopReport, count_model
from ..models.dense import TASKS, build_dense_model

__all__ = ["DEFAULT_RESOLUTION", "PAPER_DENSE_B2", "count_task", "BOX_ROIS", "MASK_ROIS"]

# (height, width). The paper's "1280x800" is a COCO image resized to 800 on the short side; the count is the
# same either way round (every stride divides both sides).
DEFAULT_RESOLUTION: dict[str, tuple[int, int]] = {
    "classification": (224, 224),
    "retinanet": (800, 1280),
    "mask-rcnn": (800, 1280),
    "semantic-fpn": (512, 512),
}
# The paper's B2 figures (spec section 6): params (M), FLOPs (G).
PAPER_DENSE_B2: dict[str, tuple[float, float]] = {
    "retinanet": (33.8, 247.1),
    "mask-rcnn": (43.7, 281.1),
    "semantic-fpn": (27.8, 43.3),
}
BOX_ROIS = 1000  # MMDetection's dummy forward: 1000 proposals through the box head ...
MASK_ROIS = 100  # ... and the first 100 through the mask head


class _RetinaNetLayers(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.backbone = model.backbone.body
        self.fpn = model.backbone.fpn
        self.head = model.head

    def forward(self, x: torch.Tensor) -> None:
        self.head(list(self.fpn(self.backbone(x)).values()))


class _MaskRCNNLayers(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.backbone = model.backbone.body
        self.fpn = model.backbone.fpn
        self.rpn_head = model.rpn.head
        self.box_head = nn.Sequential(model.roi_heads.box_head, model.roi_heads.box_predictor)
        self.mask_head = nn.Sequential(model.roi_heads.mask_head, model.roi_heads.mask_predictor)

    def forward(self, x: torch.Tensor) -> None:
        self.rpn_head(list(self.fpn(self.backbone(x)).values()))
        channels = self.fpn.layer_blocks[0][0].out_channels
        self.box_head(x.new_zeros(BOX_ROIS, channels, 7, 7))
        self.mask_head(x.new_zeros(MASK_ROIS, channels, 14, 14))


def _parts(task: str) -> dict[str, str]:
    if task == "semantic-fpn":
        return {"backbone": "backbone.body", "fpn": "backbone.fpn", "head": "decode_head"}
    if task == "retinanet":
        return {"backbone": "backbone", "fpn (+P6, P7)": "fpn", "head": "head"}
    return {
        "backbone": "backbone", "fpn": "fpn", "rpn head": "rpn_head",
        f"box head ({BOX_ROIS} RoIs)": "box_head", f"mask head ({MASK_ROIS} RoIs)": "mask_head",
    }


def count_task(
        task: str,
        variant: str = "b2",
        resolution: tuple[int, int] | None = None,
        batch_size: int = 1,
        num_classes: int | None = None,
        **config_changes,
) -> FlopReport:
    """Parameters and FLOPs of a dense model ('retinanet', 'mask-rcnn', 'semantic-fpn') with its parts split."""
    if task not in TASKS:
        raise ConfigError(f"unknown dense task {task!r}; choose one of {', '.join(TASKS)}")
    resolution = resolution or DEFAULT_RESOLUTION[task]
    with torch.device("meta"):
        model = build_dense_model(task, variant, num_classes, **config_changes)
    layers = {"retinanet": _RetinaNetLayers, "mask-rcnn": _MaskRCNNLayers}.get(task, lambda m: m)(model)
    counted = sum(p.numel() for p in layers.parameters())
    total = sum(p.numel() for p in model.parameters())
    assert counted == total, f"{task}: the counted layers miss {total - counted} parameters"
    body = model.backbone.body.body
    config = {
        "task": task,
        "num_classes": getattr(model, "num_classes", None) or num_classes or 80,
        "cluster_sizes": list(body.config.cluster_sizes),
        "subvector_intervals": list(body.config.subvector_intervals),
    }
    report = count_model(layers, resolution, _parts(task), batch_size, variant=variant.removeprefix("dccnext_"),
                         config=config)
    if task != "semantic-fpn":
        report.note += (
            f" Detector: layers with weights only, as MMDetection's dummy forward (box head on {BOX_ROIS} RoIs, "
            f"mask head on {MASK_ROIS}); anchors, NMS and RoIAlign count 0."
        )
    return report
