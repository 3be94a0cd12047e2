"""Which layers of each dense model the FLOP count runs, as MMDetection's dummy forward does.

Detectors end in data-dependent steps (anchor decoding, NMS, proposal sampling) that cannot run on the meta
device and that MMDetection's `get_flops` does not count either, so the count runs every layer with weights on
fixed-size inputs:

- RetinaNet: backbone, FPN (with P6/P7) and the class/box head on all five levels.
- Mask R-CNN: backbone, FPN, the RPN head on all five levels, the box head on 1000 RoIs (7x7) and the mask
  head on 100 RoIs (14x14); RoIAlign, NMS and the anchor bookkeeping count 0.
- Semantic FPN: the whole model (no data-dependent step); the final upsampling counts 0.
"""

from __future__ import annotations

import torch
import torch.nn as nn

__all__ = ["BOX_ROIS", "MASK_ROIS", "RetinaNetLayers", "MaskRCNNLayers", "whole_model",
           "RETINANET_PARTS", "MASK_RCNN_PARTS", "SEMANTIC_FPN_PARTS"]

BOX_ROIS = 1000  # MMDetection's dummy forward: 1000 proposals through the box head ...
MASK_ROIS = 100  # ... and the first 100 through the mask head


class RetinaNetLayers(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.backbone = model.backbone.body
        self.fpn = model.backbone.fpn
        self.head = model.head

    def forward(self, x: torch.Tensor) -> None:
        self.head(list(self.fpn(self.backbone(x)).values()))


class MaskRCNNLayers(nn.Module):
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


def whole_model(model: nn.Module) -> nn.Module:
    return model


# Parts of the breakdown: label -> module path inside the view.
RETINANET_PARTS = {"backbone": "backbone", "fpn (+P6, P7)": "fpn", "head": "head"}
MASK_RCNN_PARTS = {
    "backbone": "backbone", "fpn": "fpn", "rpn head": "rpn_head",
    f"box head ({BOX_ROIS} RoIs)": "box_head", f"mask head ({MASK_ROIS} RoIs)": "mask_head",
}
SEMANTIC_FPN_PARTS = {"backbone": "backbone.body", "fpn": "backbone.fpn", "head": "decode_head"}
