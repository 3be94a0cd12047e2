"""The safetensors file and the timm folder reload through timm and through model_from_checkpoint, exactly."""

from __future__ import annotations

import json

import pytest
import timm
import torch

from dccnext_cli.errors import CheckpointError
from dccnext_cli.models.dccnext import DCCNeXt
from dccnext_cli.models.weights import read_meta


def _assert_identical(model, check_inputs, eager_outputs):
    model.eval()
    for x, ref in zip(check_inputs, eager_outputs, strict=True):
        with torch.no_grad():
            assert torch.equal(model(x), ref), tuple(x.shape)


def test_safetensors_keeps_metadata(source, exported):
    path, result = exported("safetensors")
    assert result.ok
    meta = read_meta(path)
    assert (meta.variant, meta.num_classes, meta.config.cluster_sizes) == ("b0", 10, (10, 16))
    assert meta.class_names == source[1].class_names and meta.epoch == 3
    assert meta.input_size == (224, 224)


def test_safetensors_reloads_through_model_from_checkpoint(exported, check_inputs, eager_outputs):
    model, _ = DCCNeXt.from_checkpoint(exported("safetensors")[0])
    _assert_identical(model, check_inputs, eager_outputs)


def test_safetensors_reloads_through_timm_by_name(exported, check_inputs, eager_outputs):
    path = exported("safetensors")[0]
    model = timm.create_model("dccnext_b0", pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))
    assert model.num_classes == 10 and model.config.cluster_sizes == (10, 16)
    _assert_identical(model, check_inputs, eager_outputs)


def test_timm_refuses_a_file_of_another_variant(exported):
    path = exported("safetensors")[0]
    with pytest.raises(CheckpointError, match="holds dccnext_b0 weights, not dccnext_b1"):
        timm.create_model("dccnext_b1", pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))


def test_timm_folder_reloads_through_local_dir(source, exported, check_inputs, eager_outputs):
    folder, result = exported("timm")
    assert result.ok
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]
    config = json.loads((folder / "config.json").read_text())
    assert config["architecture"] == "dccnext_b0" and config["num_classes"] == 10
    assert config["label_names"] == source[1].class_names
    model = timm.create_model(f"local-dir:{folder}", pretrained=True)
    assert model.num_classes == 10 and model.config.cluster_sizes == (10, 16)
    assert model.pretrained_cfg["input_size"] == (3, 224, 224)
    _assert_identical(model, check_inputs, eager_outputs)


def test_timm_folder_weights_reload_through_model_from_checkpoint(source, exported, check_inputs, eager_outputs):
    folder, _ = exported("timm")
    model, meta = DCCNeXt.from_checkpoint(folder / "model.safetensors")
    assert meta.class_names == source[1].class_names
    _assert_identical(model, check_inputs, eager_outputs)


def test_export_leaves_the_callers_model_as_it_was(source, exported):
    # export runs optimize_for_inference on a copy: a model still being trained keeps its plain modules
    exported("safetensors")
    model = source[0]
    assert {type(m).__name__ for m in model.modules()}.isdisjoint(
        {"SlicedConvFFN", "InferenceGELU", "InferenceStarReLU"})
