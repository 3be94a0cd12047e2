"""`dccnext flops --task`: dense models in the classifier's convention, beside the paper's B2 figures."""

from __future__ import annotations

import json

import pytest

from dccnext_cli.dense.flops import PAPER_DENSE_B2, count_task
from dccnext_cli.flops import count_variant


@pytest.mark.parametrize("task", ["retinanet", "mask-rcnn", "semantic-fpn"])
def test_b2_params_match_the_paper_and_flops_are_close(run_cli, task):
    result = run_cli("flops", "--task", task, "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    paper_params, paper_flops = PAPER_DENSE_B2[task]
    assert data["task"] == task and data["variant"] == "b2"
    assert round(data["params"] / 1e6, 1) == paper_params
    assert abs(data["flops"] / 1e9 - paper_flops) / paper_flops < 0.08
    assert data["parts"][0]["name"] == "backbone" and len(data["parts"]) >= 2


def test_backbone_part_equals_the_classifier_backbone():
    # The detector's backbone part is the classifier without its head: same MACs at the same size.
    report = count_task("retinanet", "b0", (256, 320))
    classifier = count_variant("b0", (256, 320))
    head = next(p for p in classifier.parts if p.name == "head")
    assert report.parts[0].flops == classifier.flops_per_image - head.flops
    assert sum(p.flops for p in report.parts) == report.flops_per_image


def test_unknown_task_is_a_usage_error(run_cli):
    result = run_cli("flops", "--task", "panoptic")
    assert result.exit_code == 2 and "'panoptic' is not one of" in result.text
