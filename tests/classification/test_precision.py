"""`--precision bf16` for `eval`, `predict` and their Python functions: the model really runs in bfloat16, its
answers agree with float32, DCConv's distances stay float32, and a wrong name is one clear line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from dccnext_cli.classification.predict import predict
from dccnext_cli.errors import ConfigError
from dccnext_cli.models.config import variant_config
from dccnext_cli.models.dccnext import DCCNeXt
from dccnext_cli.models.dcconv import cluster_indices
from dccnext_cli.models.precision import to_precision
from dccnext_cli.models.weights import CheckpointMeta, save_weights

NAMES = ["Dress", "Pullover", "T-shirt-top", "Trouser"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """B0 at 64 px (stage 3 holds 4x4 tokens, so DCConv clusters), with logits spread wider than at init."""
    torch.manual_seed(3)
    model = DCCNeXt(variant_config("b0").replace(num_classes=4))
    with torch.no_grad():
        model.head.fc.fc2.weight.mul_(10.0)
    recipe = {"input_size": [64, 64], "crop_pct": 1.0, "interpolation": "bicubic"}
    meta = CheckpointMeta("b0", model.config, NAMES, 1, input_size=(64, 64), recipe=recipe)
    return save_weights(tmp_path_factory.mktemp("ckpt") / "model.safetensors", model, meta)


def _images(folder: Path) -> list[Path]:
    return sorted((folder / "validation").rglob("*.png"))


def test_bf16_predictions_agree_with_fp32(checkpoint, imagefolder):
    images = _images(imagefolder)
    fp32 = predict(checkpoint, images, top_k=4)
    bf16 = predict(checkpoint, images, top_k=4, precision="bf16")
    worst = 0.0
    for a, b in zip(fp32, bf16, strict=True):
        pa, pb = dict(a.top), dict(b.top)
        worst = max(worst, max(abs(pa[name] - pb[name]) for name in NAMES))
        (first, p1), (_, p2) = a.top[:2]
        if p1 - p2 > 0.05:  # a clear winner in float32 stays the winner in bfloat16
            assert b.top[0][0] == first
    assert 0.0 < worst < 0.06  # logits within ~1.5 %; not bit-identical: it did run in bfloat16


def test_bf16_eval_agrees_with_fp32(run_cli, checkpoint, imagefolder):
    got = {}
    for precision in ("fp32", "bf16"):
        r = run_cli("eval", "--checkpoint", checkpoint, "--data", f"imagefolder:{imagefolder}", "--split",
                    "validation", "--precision", precision, "--json")
        assert r.exit_code == 0, r.output
        got[precision] = json.loads(r.stdout)
    assert got["bf16"]["precision"] == "bf16" and got["fp32"]["precision"] == "fp32"
    assert got["bf16"]["samples"] == got["fp32"]["samples"] == 16
    assert got["bf16"]["loss"] == pytest.approx(got["fp32"]["loss"], rel=0.02)
    assert got["bf16"]["loss"] != got["fp32"]["loss"]
    assert abs(got["bf16"]["top1"] - got["fp32"]["top1"]) <= 100 / 16  # one image at most, on near ties


def test_to_precision_casts_every_floating_tensor():
    model = DCCNeXt(variant_config("b0").replace(num_classes=4))
    assert to_precision(model, "bf16") is torch.bfloat16
    assert {t.dtype for t in (*model.parameters(), *model.buffers()) if t.is_floating_point()} == {torch.bfloat16}


def test_cluster_distances_stay_float32_in_bf16():
    """The indices of a bfloat16 map are those of the same values in float32: the distances are not bf16 ones."""
    torch.manual_seed(0)
    x = (torch.randn(2, 14, 14, 80) * 3 + 5).bfloat16()
    ref = cluster_indices(x.float(), 12, 8)
    assert torch.equal(cluster_indices(x, 12, 8), ref)
    # bfloat16 distances would order them otherwise: check that this input can tell
    sub = x.flatten(1, 2)[..., ::8]
    naive = ((sub[:, :, None] - sub[:, None]) ** 2).sum(-1)  # bfloat16 arithmetic
    naive.diagonal(dim1=1, dim2=2).fill_(float("-inf"))
    assert not torch.equal(naive.float().sort(dim=-1, stable=True).indices[..., :12], ref)


def test_unknown_precision_is_one_clear_line(run_cli, checkpoint, imagefolder):
    with pytest.raises(ConfigError, match="unknown precision 'fp8'; choose one of fp32, bf16"):
        predict(checkpoint, _images(imagefolder)[:1], precision="fp8")
    r = run_cli("predict", _images(imagefolder)[0], "--checkpoint", checkpoint, "--precision", "fp8")
    assert r.exit_code == 2 and "fp8" in r.text and "bf16" in r.text
