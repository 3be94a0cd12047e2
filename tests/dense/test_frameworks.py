"""docs/dense.md's "DCCNeXt in detection frameworks": the torchvision route runs as written."""

from __future__ import annotations

import re
from pathlib import Path

import torch

README = Path(__file__).resolve().parents[2] / "docs" / "dense.md"


def _torchvision_block() -> str:
    section = README.read_text().split("## DCCNeXt in detection frameworks", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_readme_torchvision_retinanet_on_a_timm_backbone_runs(capsys):
    code = _torchvision_block()
    assert 'timm.create_model(name, features_only=True, out_indices=out_indices)' in code
    namespace: dict = {"__name__": "readme_example"}
    exec(compile(code, str(README), "exec"), namespace)  # noqa: S102 - the README's own example
    detections = namespace["detections"]
    assert detections[0]["boxes"].ndim == 2 and detections[0]["boxes"].shape[1] == 4
    assert capsys.readouterr().out.strip().startswith("torch.Size([")
    backbone = namespace["detector"].backbone
    assert backbone.body.feature_info.channels() == [64, 160, 256]
    with torch.no_grad():
        maps = backbone(torch.rand(1, 3, 256, 320))
    assert [tuple(m.shape[-2:]) for m in maps.values()] == [(32, 40), (16, 20), (8, 10), (4, 5), (2, 3)]
