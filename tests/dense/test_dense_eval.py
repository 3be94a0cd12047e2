"""Evaluation through torchmetrics on cases with a known answer (predictions equal to the ground truth)."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from dccnext_cli.dense import evaluate_dense, load_dense_recipe, train_dense
from dccnext_cli.dense.data import ADE20KSegmentation, CocoInstances


class DetectionOracle(nn.Module):
    """Answers each image, in data order, with the given per-image predictions (torchvision's output format)."""

    def __init__(self, answers: list[dict[str, torch.Tensor]]):
        super().__init__()
        self.answers = answers
        self.calls = 0
        self.anchor = nn.Parameter(torch.zeros(1))  # evaluate_dense moves the model to a device

    def forward(self, images: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        out = self.answers[self.calls:self.calls + len(images)]
        self.calls += len(images)
        for image, answer in zip(images, out, strict=True):
            if "masks" in answer:
                assert answer["masks"].shape[-2:] == image.shape[-2:]
        return out


def _ground_truth_answers(coco_json, masks: bool, shift: float = 0.0, swap: bool = False):
    data = CocoInstances(coco_json, with_masks=masks)
    answers = []
    for i in range(len(data)):
        t = data.target(i)
        labels = 3 - t["labels"] if swap else t["labels"]
        answer = {"boxes": t["boxes"] + shift, "labels": labels, "scores": torch.ones(len(labels))}
        if masks:
            answer["masks"] = t["masks"][:, None].float()
        answers.append(answer)
    return answers


def test_detection_ap_is_one_when_predictions_equal_ground_truth(coco_json):
    oracle = DetectionOracle(_ground_truth_answers(coco_json, masks=True))
    metrics = evaluate_dense(oracle, f"coco:{coco_json}", "mask-rcnn", batch_size=2, progress=False)
    assert metrics["bbox_AP"] == pytest.approx(1.0)
    assert metrics["segm_AP"] == pytest.approx(1.0)
    assert metrics["bbox_AP50"] == pytest.approx(1.0)


def test_detection_ap_drops_for_wrong_predictions(coco_json):
    wrong_class = DetectionOracle(_ground_truth_answers(coco_json, masks=False, swap=True))
    assert evaluate_dense(wrong_class, f"coco:{coco_json}", "retinanet", progress=False)["bbox_AP"] == 0.0
    # boxes moved by 3 px: IoU 0.627 for squares (counted at thresholds 0.50-0.60: AP 3/10) and 0.657 for
    # triangles (0.50-0.65: AP 4/10); COCO AP is the mean over the two classes
    shifted = DetectionOracle(_ground_truth_answers(coco_json, masks=False, shift=3.0))
    ap = evaluate_dense(shifted, f"coco:{coco_json}", "retinanet", progress=False)
    assert ap["bbox_AP"] == pytest.approx(0.35) and ap["bbox_AP50"] == 1.0 and ap["bbox_AP75"] == 0.0


class SegmentationOracle(nn.Module):
    def __init__(self, labels: list[torch.Tensor], num_classes: int, flip_class: int | None = None):
        super().__init__()
        self.labels, self.num_classes, self.flip_class, self.calls = labels, num_classes, flip_class, 0
        self.anchor = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        label = self.labels[self.calls].clone()
        self.calls += 1
        label[label == 255] = 0
        if self.flip_class is not None:
            label[label == self.flip_class] = 0
        return nn.functional.one_hot(label, self.num_classes).permute(2, 0, 1)[None].float()


def test_miou_is_one_when_predictions_equal_ground_truth(ade_root):
    data = ADE20KSegmentation(ade_root, "validation", num_classes=5)
    labels = [data[i][1] for i in range(len(data))]
    assert (labels[0] == 255).any() is not None and set(labels[0].unique().tolist()) <= {0, 1, 2, 3, 4, 255}
    oracle = SegmentationOracle(labels, 5)
    metrics = evaluate_dense(oracle, f"ade20k:{ade_root}", "semantic-fpn", num_classes=5, progress=False)
    assert metrics == {"mIoU": pytest.approx(1.0), "aAcc": pytest.approx(1.0)}
    # class 4 (label value 5: the small box) predicted as class 0: IoU of class 4 is 0, class 0's falls
    wrong = SegmentationOracle(labels, 5, flip_class=4)
    metrics = evaluate_dense(wrong, f"ade20k:{ade_root}", "semantic-fpn", num_classes=5, progress=False)
    assert metrics["mIoU"] < 0.85 and metrics["aAcc"] < 1.0


def test_eval_of_a_trained_checkpoint(ade_root, tmp_path):
    recipe = load_dense_recipe("semantic-fpn", ["iterations=1", "batch_size=2", "crop_size=[64,64]",
                                                "scale=[128,64]", "workers=0", "variant=b0", "num_classes=5"])
    result = train_dense(recipe, f"ade20k:{ade_root}", tmp_path / "run", eval_data=f"ade20k:{ade_root}",
                         progress=False)
    again = evaluate_dense(result.weights, f"ade20k:{ade_root}", scale=(128, 64), progress=False)
    assert again == pytest.approx(result.metrics)
    assert 0.0 <= again["mIoU"] <= 1.0

    from dccnext_cli.errors import CheckpointError
    from dccnext_cli.models.dccnext import DCCNeXt

    with pytest.raises(CheckpointError, match="semantic-fpn checkpoint, not a classifier"):
        DCCNeXt.from_checkpoint(result.weights)
