"""DCCNeXt as a backbone for detection and segmentation, and the three dense models built on it.

The backbone is the classifier without its final norm and head, returning the four stage outputs
(strides 4-32, NCHW) from `DCCNeXt.forward_intermediates`. Necks and detectors come from torchvision
(`FeaturePyramidNetwork`, `RetinaNet`, `MaskRCNN`), configured as the paper's MMDetection/PVT configs:

- `retinanet`: FPN on stages 2-4, 256 channels, P6/P7 from the last stage's input (`add_extra_convs='on_input'`).
- `mask-rcnn`: FPN on all four stages, 256 channels, a fifth level by max-pooling P5.
- `semantic-fpn`: FPN on all four stages, 256 channels, and Kirillov et al.'s head (128 channels, one
  conv-upsample branch per level, summed at 1/4 resolution). segmentation_models_pytorch's `FPN` was checked
  and not used: its decoder drops the FPN's 3x3 output convs (2.4 M parameters of the paper's 27.8 M) and
  upsamples by a fixed factor of 2, which breaks on sizes that are not multiples of 32.

Class labels of both detectors are 1..C with 0 as background (`num_classes` is C, the object categories).
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import LayerNorm2d
from torchvision.ops import FeaturePyramidNetwork
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool, LastLevelP6P7

from ..errors import CheckpointError
from ..models.config import variant_config
from ..models.dccnext import DCCNeXt
from ..models.pretrained import load_backbone_weights
from ..models.weights import read_meta

__all__ = [
    "DCCNeXtBackbone",
    "BackboneWithFPN",
    "SemanticFPNHead",
    "SemanticFPN",
    "build_backbone",
    "build_retinanet",
    "build_mask_rcnn",
    "build_semantic_fpn",
    "sync_batchnorm",
]

FPN_CHANNELS = 256


class DCCNeXtBackbone(nn.Module):
    """The four stage outputs of a DCCNeXt, each optionally LayerNorm-ed, as an ordered dict '0'..'3'.

    `frozen_stages`: -1 trains everything; 0 freezes the stem; i >= 1 the stem and stages 1..i (MMDetection's
    convention). `freeze_norms`: the backbone's LayerNorms keep their (ImageNet) affine parameters.
    LayerNorms hold no running statistics, so freezing their parameters is all "norm_eval" means here.
    """

    def __init__(
            self,
            model: DCCNeXt,
            out_indices: tuple[int, ...] = (0, 1, 2, 3),
            out_norm: bool = True,
            frozen_stages: int = -1,
            freeze_norms: bool = False,
    ):
        super().__init__()
        model.prune_intermediate_layers(len(model.stages), prune_head=True)
        self.body = model
        self.out_indices = tuple(out_indices)
        dims = model.config.dims
        self.channels = [dims[i] for i in self.out_indices]
        self.norms = nn.ModuleList(
            [LayerNorm2d(c, eps=1e-6) if out_norm else nn.Identity() for c in self.channels]
        )
        self.frozen_stages = frozen_stages
        self.freeze_norms = freeze_norms
        self._freeze()

    def _frozen_modules(self) -> list[nn.Module]:
        if self.frozen_stages < 0:
            return []
        return [self.body.stem, *list(self.body.stages)[: self.frozen_stages]]

    def _freeze(self) -> None:
        for module in self._frozen_modules():
            module.eval()
            for p in module.parameters():
                p.requires_grad_(False)
        if self.freeze_norms:
            for module in self.body.modules():
                if isinstance(module, nn.LayerNorm):  # timm's LayerNorm2d / NoBias variants subclass it
                    for p in module.parameters(recurse=False):
                        p.requires_grad_(False)

    def train(self, mode: bool = True) -> DCCNeXtBackbone:
        super().train(mode)
        for module in self._frozen_modules():
            module.eval()  # frozen stages keep drop path off
        return self

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        feats = self.body.forward_intermediates(x, indices=list(self.out_indices), intermediates_only=True)
        return OrderedDict((str(i), norm(f)) for i, (f, norm) in enumerate(zip(feats, self.norms, strict=True)))


class BackboneWithFPN(nn.Module):
    """Backbone + torchvision FPN; `out_channels` is what torchvision's detectors read."""

    def __init__(self, backbone: DCCNeXtBackbone, extra: Literal["p6p7", "maxpool", "none"] = "maxpool"):
        super().__init__()
        self.body = backbone
        extra_block = {
            "p6p7": lambda: LastLevelP6P7(backbone.channels[-1], FPN_CHANNELS),  # from the stage output (on_input)
            "maxpool": LastLevelMaxPool,
            "none": lambda: None,
        }[extra]()
        self.fpn = FeaturePyramidNetwork(backbone.channels, FPN_CHANNELS, extra_blocks=extra_block)
        self.out_channels = FPN_CHANNELS

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        return self.fpn(self.body(x))


class SemanticFPNHead(nn.Module):
    """Kirillov et al.'s (and MMSegmentation's `FPNHead`) head: level i gets max(1, i) conv-BN-ReLU-upsample
    steps down to stride 4; the branches are summed and classified at 1/4 resolution."""

    def __init__(self, num_levels: int, num_classes: int, in_channels: int = FPN_CHANNELS, channels: int = 128,
                 dropout: float = 0.1):
        super().__init__()
        self.branches = nn.ModuleList()
        for level in range(num_levels):
            steps = []
            for step in range(max(1, level)):
                steps += [
                    nn.Conv2d(in_channels if step == 0 else channels, channels, 3, padding=1, bias=False),
                    nn.BatchNorm2d(channels),
                    nn.ReLU(inplace=True),
                ]
                if level > 0:
                    steps.append(nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False))
            self.branches.append(nn.Sequential(*steps))
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        out = self.branches[0](feats[0])
        for branch, feat in zip(self.branches[1:], feats[1:], strict=True):
            # exact size of level 0 (odd sizes floor in the backbone; 2x upsampling may be one pixel off)
            out = out + F.interpolate(branch(feat), size=out.shape[-2:], mode="bilinear", align_corners=False)
        return self.classifier(self.dropout(out))


class SemanticFPN(nn.Module):
    """Backbone + FPN + Semantic FPN head; returns logits at 1/4 of the input resolution."""

    def __init__(self, backbone: DCCNeXtBackbone, num_classes: int = 150, head_channels: int = 128):
        super().__init__()
        self.backbone = BackboneWithFPN(backbone, extra="none")
        self.decode_head = SemanticFPNHead(len(backbone.channels), num_classes, FPN_CHANNELS, head_channels)
        self.num_classes = num_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode_head(list(self.backbone(x).values()))


# --------------------------------------------------------------------- builders
def build_backbone(
        variant: str = "b2",
        weights: str | Path | None = None,
        out_indices: tuple[int, ...] = (0, 1, 2, 3),
        out_norm: bool = True,
        frozen_stages: int = -1,
        freeze_norms: bool = False,
        drop_path_rate: float = 0.1,
        **config_changes: Any,
) -> DCCNeXtBackbone:
    """A DCCNeXt backbone; with `weights`, loads a dccnext checkpoint (its config wins) or ConvFormer weights."""
    config = variant_config(variant, num_classes=0, drop_path_rate=drop_path_rate, **config_changes)
    if weights is not None and Path(weights).suffix == ".safetensors":
        try:
            recorded = read_meta(weights).config.architecture_options()
            config = config.replace(**{k: v for k, v in recorded.items() if k not in config_changes})
        except CheckpointError:
            pass  # not a dccnext file: a ConvFormer one, handled below
    model = DCCNeXt(config)
    if weights is not None:
        load_backbone_weights(model, weights, variant)
    return DCCNeXtBackbone(model, out_indices, out_norm, frozen_stages, freeze_norms)


def build_retinanet(variant: str = "b2", num_classes: int = 80, min_size: int = 800, max_size: int = 1333,
                    **backbone_kwargs: Any) -> nn.Module:
    """RetinaNet 1x as the paper's config: FPN on stages 2-4, P3-P7 (P6/P7 from stage 4's output), 256 ch."""
    from torchvision.models.detection import RetinaNet
    from torchvision.models.detection.anchor_utils import AnchorGenerator

    backbone = build_backbone(variant, out_indices=(1, 2, 3), **backbone_kwargs)
    # torchvision's RetinaNet default anchors: 3 scales x 3 ratios per level, base sizes 32..512
    anchor_sizes = tuple((x, int(x * 2 ** (1 / 3)), int(x * 2 ** (2 / 3))) for x in (32, 64, 128, 256, 512))
    anchors = AnchorGenerator(anchor_sizes, ((0.5, 1.0, 2.0),) * len(anchor_sizes))
    return RetinaNet(BackboneWithFPN(backbone, extra="p6p7"), num_classes + 1, min_size=min_size,
                     max_size=max_size, anchor_generator=anchors)


def build_mask_rcnn(variant: str = "b2", num_classes: int = 80, min_size: int = 800, max_size: int = 1333,
                    **backbone_kwargs: Any) -> nn.Module:
    """Mask R-CNN 1x as the paper's config: FPN on all four stages, 256 ch, 5 levels (P6 by max-pool)."""
    from torchvision.models.detection import MaskRCNN

    backbone = build_backbone(variant, out_indices=(0, 1, 2, 3), **backbone_kwargs)
    return MaskRCNN(BackboneWithFPN(backbone, extra="maxpool"), num_classes + 1, min_size=min_size,
                    max_size=max_size)


def build_semantic_fpn(variant: str = "b2", num_classes: int = 150, **backbone_kwargs: Any) -> SemanticFPN:
    """Semantic FPN (ADE20K: 150 classes): FPN on all four stages, 256 ch, 128-ch head, 1/4-res logits."""
    return SemanticFPN(build_backbone(variant, out_indices=(0, 1, 2, 3), **backbone_kwargs), num_classes)


def sync_batchnorm(model: nn.Module, world: int, device_type: str) -> tuple[nn.Module, str | None]:
    """BatchNorm layers (the Semantic FPN head's) as SyncBatchNorm when several processes train on GPUs: the
    statistics of the whole batch, not of each process's few images. Returns the model and, when it could
    not convert, why (PyTorch's SyncBatchNorm runs on GPUs only; on CPUs each process keeps its own)."""
    if world == 1 or not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        return model, None
    if device_type == "cpu":
        return model, "BatchNorm is not synchronised over CPU processes (PyTorch's SyncBatchNorm needs GPUs)"
    return nn.SyncBatchNorm.convert_sync_batchnorm(model), None
