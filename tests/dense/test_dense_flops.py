"""FLOPs per dense task in the classifier's convention, for B2 beside the paper's figures (docs/model.md, section 5)."""

from __future__ import annotations

import json

import pytest
import torch

from dccnext_cli.dense import build_dense_model
from dccnext_cli.dense.flops import BOX_ROIS, MASK_ROIS, count_task
from dccnext_cli.dense.tasks import DENSE_TASKS
from dccnext_cli.errors import ConfigError
from dccnext_cli.models.flops import count_variant, dcconv_macs


@pytest.mark.parametrize("task", ["retinanet", "mask-rcnn", "semantic-fpn"])
def test_b2_params_match_the_paper(task):
    report = count_task(task, "b2")
    assert report.params / 1e6 == pytest.approx(DENSE_TASKS[task].paper_b2[0], abs=0.05)
    assert sum(p.params for p in report.parts) == report.params  # every parameter sits in one part
    assert sum(p.flops for p in report.parts) == report.flops_per_image


def test_b2_flops_beside_the_paper():
    retina = count_task("retinanet", "b2")
    retina_81 = count_task("retinanet", "b2", subvector_intervals=(8, 1))
    # d = (8, 1) reproduces the paper's RetinaNet figure; the text's d = 8 gives 1.1 % less
    assert retina_81.flops_per_image / 1e9 == pytest.approx(247.1, abs=0.05)
    assert retina.flops_per_image / 1e9 == pytest.approx(244.42, abs=0.01)
    seg = count_task("semantic-fpn", "b2")
    assert seg.resolution == (512, 512)
    assert seg.flops_per_image / 1e9 == pytest.approx(43.3, rel=0.015)
    mask = count_task("mask-rcnn", "b2")
    assert mask.flops_per_image / 1e9 == pytest.approx(262.55, abs=0.01)  # 6.6 % under the paper's 281.1


def test_backbone_part_equals_the_classifier_stages_at_the_same_size():
    seg = count_task("semantic-fpn", "b2")
    classifier = count_variant("b2", (512, 512))
    stages = sum(p.flops for p in classifier.parts if p.name.startswith(("stem", "stage")))
    assert seg.parts[0].flops == stages


def test_detector_heads_counted_by_hand():
    """The box and mask heads, counted as MMDetection's dummy forward: 1000 and 100 RoIs."""
    report = count_task("mask-rcnn", "b0", resolution=(320, 320))
    parts = {p.name: p for p in report.parts}
    c = 256
    box = BOX_ROIS * (c * 7 * 7 * 1024 + 1024 * 1024 + 1024 * 81 + 1024 * 81 * 4)
    assert parts[f"box head ({BOX_ROIS} RoIs)"].flops == box
    mask = MASK_ROIS * (4 * 14 * 14 * 9 * c * c + 14 * 14 * 4 * c * c + 28 * 28 * c * 81)
    assert parts[f"mask head ({MASK_ROIS} RoIs)"].flops == mask
    # the backbone's DCConvs by the rule: b0 stage 3 (5 blocks, 20x20 tokens, E 320), stage 4 (2, 10x10, E 512)
    retina = count_task("retinanet", "b0", resolution=(320, 320))
    backbone = retina.parts[0]
    s3, s4 = dcconv_macs(400, 320, 12, 8), dcconv_macs(100, 512, 18, 8)
    assert backbone.distance_flops == 5 * s3[0] + 2 * s4[0]
    assert backbone.cluster_flops == 5 * s3[1] + 2 * s4[1]
    assert backbone.grid == (10, 10)


def test_counted_model_is_the_real_model():
    with torch.device("meta"):
        model = build_dense_model("mask-rcnn", "b0")
    assert count_task("mask-rcnn", "b0").params == sum(p.numel() for p in model.parameters())
    with pytest.raises(ConfigError, match="unknown dense task"):
        count_task("detr")


def test_flops_command_per_task(run_cli):
    result = run_cli("flops", "--task", "retinanet", "--json")
    assert result.exit_code == 0
    data = json.loads(result.stdout)
    assert data["task"] == "retinanet" and data["resolution"] == "1280x800" and data["variant"] == "b2"
    assert [p["name"] for p in data["parts"]] == ["backbone", "fpn (+P6, P7)", "head"]
    assert data["paper"] == {"params_m": 33.8, "flops_g": 247.1}
    assert data["flops"] == count_task("retinanet", "b2").flops_per_image
    result = run_cli("flops", "--task", "semantic-fpn", "--variant", "b0", "--res", "256")
    assert result.exit_code == 0 and "dccnext_b0 semantic-fpn at 256x256" in result.stdout
    assert "decode" not in result.stdout and "head" in result.stdout
    text = run_cli("flops", "--task", "mask-rcnn").stdout
    assert "paper (b2 mask-rcnn): 43.7 M params, 281.1 GFLOPs" in text and "1000" in text
    bad = run_cli("flops", "--task", "yolo")
    assert bad.exit_code == 2 and "'yolo' is not one of" in bad.text and "Traceback" not in bad.output
