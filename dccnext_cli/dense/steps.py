"""The per-batch steps of the two kinds of dense task: the training loss and the evaluation update.

They live apart from the task registry (`dense/tasks.py`) so that naming the tasks imports no torch.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .data import IGNORE_INDEX

__all__ = ["detection_loss", "segmentation_loss", "detection_eval", "segmentation_eval"]


def _to(targets: list[dict[str, torch.Tensor]], device: torch.device) -> list[dict[str, torch.Tensor]]:
    return [{k: v.to(device) for k, v in t.items()} for t in targets]


def detection_loss(model: nn.Module, images, targets, device: torch.device) -> dict[str, torch.Tensor]:
    """torchvision's detectors compute their own losses in train mode."""
    return model([i.to(device) for i in images], _to(targets, device))


def segmentation_loss(model: nn.Module, images, targets, device: torch.device) -> dict[str, torch.Tensor]:
    """Cross-entropy on logits upsampled to the label size, ignoring label 255, as MMSegmentation does."""
    images, targets = images.to(device), targets.to(device)
    logits = F.interpolate(model(images), size=targets.shape[-2:], mode="bilinear", align_corners=False)
    return {"loss_ce": F.cross_entropy(logits.float(), targets, ignore_index=IGNORE_INDEX)}


def detection_eval(model: nn.Module, images, targets, evaluator, device: torch.device) -> None:
    evaluator.update(model([i.to(device) for i in images]), targets)


def segmentation_eval(model: nn.Module, images, targets, evaluator, device: torch.device) -> None:
    """One image at a time: evaluation images keep their own sizes."""
    for image, label in zip(images, targets, strict=True):
        logits = model(image[None].to(device))
        logits = F.interpolate(logits.float(), size=label.shape[-2:], mode="bilinear", align_corners=False)
        evaluator.update(logits.argmax(1)[0], label)
