"""COCO AP and mIoU through torchmetrics (pycocotools backend), not hand-written metric code.

Sharded evaluation: each process updates its own evaluator on a contiguous block of the data set, then the
blocks' metric states are merged in process order (`merge`): per-image entries concatenated, so the images
reach COCO's evaluation in the data set's order, and count tensors (mIoU's confusion matrix) summed. The
metric is then computed once, on exactly what a single process would have accumulated. torchmetrics' own
synchronisation is switched off (`sync_on_compute=False`): it would interleave the processes' images and
expects every process to have seen as many.
"""

from __future__ import annotations

import torch

from ..errors import ConfigError
from .data import IGNORE_INDEX

__all__ = ["DetectionEvaluator", "SegmentationEvaluator", "metric_states", "merge_metric_states"]


def metric_states(metrics) -> list[dict]:
    """The accumulated state of each torchmetrics metric, on the CPU (for gathering)."""
    out = []
    for metric in metrics:
        state = {}
        for name, value in metric.metric_state.items():
            state[name] = [v.cpu() if isinstance(v, torch.Tensor) else v for v in value] if isinstance(value, list) \
                else value.cpu()
        out.append(state)
    return out


def merge_metric_states(metrics, per_process: list[list[dict]]) -> None:
    """Load `metrics` with the states of every process, which scored images rank, rank + world, ... (see
    training/shards.py): per-image lists interleaved back into the data set's order, counts summed."""
    for i, metric in enumerate(metrics):
        for name, first in per_process[0][i].items():
            values = [states[i][name] for states in per_process]
            merged = [v[k] for k in range(len(values[0])) for v in values if k < len(v)] \
                if isinstance(first, list) else sum(values)
            setattr(metric, name, merged)


class DetectionEvaluator:
    """COCO AP (bbox, and segm when `masks`) over torchvision detection outputs and COCO-style targets."""

    def __init__(self, masks: bool = False, backend: str = "pycocotools"):
        from torchmetrics.detection import MeanAveragePrecision

        self.masks = masks
        self.iou_types = ("bbox", "segm") if masks else ("bbox",)
        try:
            self.metric = MeanAveragePrecision(iou_type=self.iou_types, backend=backend, sync_on_compute=False)
        except ModuleNotFoundError as e:
            raise ConfigError(f"COCO AP needs {backend} ({e}); pip install 'dccnext-cli[dense]'") from None

    def update(self, outputs: list[dict[str, torch.Tensor]], targets: list[dict[str, torch.Tensor]]) -> None:
        preds, gts = [], []
        for out, tgt in zip(outputs, targets, strict=True):
            pred = {"boxes": out["boxes"].detach().float().cpu(), "scores": out["scores"].detach().float().cpu(),
                    "labels": out["labels"].detach().cpu()}
            gt = {"boxes": tgt["boxes"].float().cpu(), "labels": tgt["labels"].cpu(),
                  "iscrowd": tgt.get("iscrowd", torch.zeros_like(tgt["labels"])).cpu()}
            if self.masks:
                masks = out["masks"].detach().cpu()
                pred["masks"] = (masks[:, 0] if masks.ndim == 4 else masks) > 0.5  # torchvision: (N, 1, H, W) probs
                gt["masks"] = tgt["masks"].cpu().bool()
            preds.append(pred)
            gts.append(gt)
        self.metric.update(preds, gts)

    def states(self) -> list[dict]:
        return metric_states([self.metric])

    def merge(self, per_process: list[list[dict]]) -> None:
        merge_metric_states([self.metric], per_process)

    def compute(self) -> dict[str, float]:
        """{'bbox_AP', 'bbox_AP50', 'bbox_AP75', 'bbox_APs', 'bbox_APm', 'bbox_APl'} (and 'segm_*'), in [0, 1]."""
        result = self.metric.compute()
        out = {}
        for iou_type in self.iou_types:
            prefix = f"{iou_type}_" if len(self.iou_types) > 1 else ""
            for name, key in (("AP", "map"), ("AP50", "map_50"), ("AP75", "map_75"), ("APs", "map_small"),
                              ("APm", "map_medium"), ("APl", "map_large")):
                out[f"{iou_type}_{name}"] = float(result[f"{prefix}{key}"])
        return out


class SegmentationEvaluator:
    """mIoU (MMSegmentation's: per-class IoU over the whole set, averaged over the classes present) and aAcc."""

    def __init__(self, num_classes: int):
        from torchmetrics.classification import MulticlassAccuracy, MulticlassJaccardIndex

        self.iou = MulticlassJaccardIndex(num_classes, ignore_index=IGNORE_INDEX, average="macro",
                                          sync_on_compute=False)
        self.acc = MulticlassAccuracy(num_classes, ignore_index=IGNORE_INDEX, average="micro", sync_on_compute=False)

    def update(self, prediction: torch.Tensor, label: torch.Tensor) -> None:
        """`prediction`: class ids (..., H, W); `label`: class ids with 255 = ignore, same shape."""
        prediction, label = prediction.cpu(), label.cpu()
        self.iou.update(prediction, label)
        self.acc.update(prediction, label)

    def states(self) -> list[dict]:
        return metric_states([self.iou, self.acc])

    def merge(self, per_process: list[list[dict]]) -> None:
        merge_metric_states([self.iou, self.acc], per_process)

    def compute(self) -> dict[str, float]:
        return {"mIoU": float(self.iou.compute()), "aAcc": float(self.acc.compute())}
