"""Backbone wrapper and the three builders: shapes, freezing, weight loading, one training step each."""

from __future__ import annotations

import json

import pytest
import torch

from dccnext_cli.dense import build_backbone, build_dense_model, load_dense_recipe, train_dense
from dccnext_cli.dense.checkpoint import DenseMeta
from dccnext_cli.dense.data import CocoInstances, detection_collate
from dccnext_cli.errors import CheckpointError, ConfigError
from dccnext_cli.models.config import variant_config
from dccnext_cli.models.dccnext import DCCNeXt
from dccnext_cli.models.weights import CheckpointMeta, read_meta, save_weights


def test_backbone_returns_four_normalised_stages_at_strides_4_to_32():
    backbone = build_backbone("b0", drop_path_rate=0.0).eval()
    x = torch.randn(2, 3, 96, 130)
    feats = list(backbone(x).values())
    assert [f.shape[1] for f in feats] == [32, 64, 160, 256]
    assert [tuple(f.shape[-2:]) for f in feats] == [(24, 32), (12, 16), (6, 8), (3, 4)]
    # each output is LayerNorm-ed over channels (weight 1, bias 0 at init): zero mean, unit variance per pixel
    for f in feats:
        assert torch.allclose(f.mean(1), torch.zeros(()), atol=1e-4)
        assert torch.allclose(f.var(1, unbiased=False), torch.ones(()), atol=1e-2)
    # without the norms, the raw stage outputs of forward_intermediates
    raw = build_backbone("b0", out_norm=False, drop_path_rate=0.0).eval()
    raw.body.load_state_dict(backbone.body.state_dict())
    expected = backbone.body.forward_intermediates(x, intermediates_only=True)
    for got, want in zip(raw(x).values(), expected, strict=True):
        torch.testing.assert_close(got, want)


def test_frozen_stages_and_frozen_norms():
    backbone = build_backbone("b0", frozen_stages=2, freeze_norms=True)
    trainable = {n for n, p in backbone.named_parameters() if p.requires_grad}
    assert not any(n.startswith(("body.stem.", "body.stages.0.", "body.stages.1.")) for n in trainable)
    assert any(n.startswith("body.stages.2.") for n in trainable)
    assert "body.stages.2.blocks.0.norm1.weight" not in trainable  # frozen norms
    assert "body.stages.2.blocks.0.mlp.fc1.weight" in trainable
    assert "norms.0.weight" in trainable  # the new output norms train
    backbone.train()
    assert not backbone.body.stages[0].training and backbone.body.stages[2].training


def test_imagenet_weights_from_a_dccnext_checkpoint(tmp_path):
    classifier = DCCNeXt(variant_config("b0", num_classes=10))
    path = save_weights(tmp_path / "b0.safetensors", classifier, CheckpointMeta("b0", classifier.config))
    backbone = build_backbone("b0", weights=path)
    for name, tensor in classifier.state_dict().items():
        if not name.startswith("head."):
            torch.testing.assert_close(backbone.body.state_dict()[name], tensor)
    with pytest.raises(CheckpointError, match="dccnext_b0 weights, not dccnext_b1"):
        build_backbone("b1", weights=path)
    with pytest.raises(CheckpointError, match="do not exist"):
        build_backbone("b0", weights=tmp_path / "missing.safetensors")


def test_convformer_warm_start(tmp_path):
    import timm

    convformer = timm.create_model("convformer_s18", pretrained=False)
    torch.save(convformer.state_dict(), tmp_path / "convformer_s18.pth")
    backbone = build_backbone("b2", weights=tmp_path / "convformer_s18.pth")
    torch.testing.assert_close(backbone.body.stem.conv.weight, convformer.stem.conv.weight)
    pw = convformer.stages[0].blocks[0].token_mixer.pwconv1.weight
    torch.testing.assert_close(backbone.body.stages[0].blocks[0].token_mixer.pwconv1.weight, pw.reshape(pw.shape[:2]))


def test_unknown_task():
    with pytest.raises(ConfigError, match="unknown dense task"):
        build_dense_model("yolo", "b0")


@pytest.mark.parametrize("task", ["retinanet", "mask-rcnn"])
def test_detector_forward_and_one_training_step(task, coco_json, tmp_path):
    torch.manual_seed(0)
    model = build_dense_model(task, "b0", num_classes=2, min_size=64, max_size=96, drop_path_rate=0.0)
    images, targets = detection_collate([CocoInstances(coco_json, with_masks=task == "mask-rcnn")[i]
                                         for i in range(2)])
    model.eval()
    with torch.no_grad():
        out = model(images)
    assert len(out) == 2 and out[0]["boxes"].shape[1] == 4
    if task == "mask-rcnn":
        assert out[0]["masks"].shape[1:] == (1, 64, 80)  # pasted back at the original image size
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    recipe = load_dense_recipe(task, ["iterations=1", "batch_size=2", "min_size=64", "max_size=96", "workers=0",
                                      "variant=b0", "warmup_iters=0"])
    result = train_dense(recipe, f"coco:{coco_json}", tmp_path / "run", progress=False)
    assert result.steps == 1 and torch.isfinite(torch.tensor(result.losses)).all()
    meta = read_meta(result.weights)  # COCO names its classes: they are in the file, and it reads back
    dense = DenseMeta.of(meta, result.weights)
    assert (meta.class_names, dense.num_classes, dense.iteration, meta.task) == (["square", "triangle"], 2, 1, task)
    # that run's model is a fresh one; here take a step on ours to check gradients reach the backbone
    model.train()
    losses = model(images, targets)
    expected = {"classification", "bbox_regression"} if task == "retinanet" else {
        "loss_classifier", "loss_box_reg", "loss_mask", "loss_objectness", "loss_rpn_box_reg"}
    assert set(losses) == expected
    sum(losses.values()).backward()
    torch.optim.AdamW(model.parameters(), lr=1e-3).step()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert "backbone.body.body.stem.conv.weight" in changed
    assert any(".token_mixer.spatial.weight" in n for n in changed)  # a DCConv kernel learned


def test_semantic_fpn_forward_and_one_training_step(ade_root, tmp_path):
    model = build_dense_model("semantic-fpn", "b0", num_classes=5).eval()
    with torch.no_grad():
        logits = model(torch.randn(1, 3, 100, 132))
    assert logits.shape == (1, 5, 25, 33)  # 1/4 resolution, any input size
    recipe = load_dense_recipe("semantic-fpn", ["iterations=2", "batch_size=2", "crop_size=[64,64]",
                                                "scale=[128,64]", "workers=0", "variant=b0", "num_classes=5"])
    result = train_dense(recipe, f"ade20k:{ade_root}", tmp_path / "run", progress=False)
    assert len(result.losses) == 2 and all(0 < loss < 10 for loss in result.losses)
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    events = [e["event"] for e in log if e["event"] != "note"]  # a note: TensorBoard is not installed
    assert events == ["start", "train", "train", "end"] and log[0]["world_size"] == 1
