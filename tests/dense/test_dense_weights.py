"""Dense weights files: the dense task writes and checks its own metadata entries, under the keys files always had."""

from __future__ import annotations

import json

import pytest
from safetensors import safe_open
from safetensors.torch import save_file

from dccnext_cli.dense import build_dense_model, load_dense_model, load_dense_recipe, save_dense_checkpoint
from dccnext_cli.dense.checkpoint import DenseMeta
from dccnext_cli.errors import CheckpointError
from dccnext_cli.models.weights import read_meta

BUILD = {"min_size": 800, "max_size": 1333, "out_norm": True}


@pytest.fixture(scope="module")
def dense_file(tmp_path_factory):
    """An untrained semantic-fpn B0 of 3 classes after 7 steps: its path, tensors, metadata and recipe."""
    recipe = load_dense_recipe("semantic-fpn", ["variant=b0", "num_classes=3"])
    model = build_dense_model("semantic-fpn", "b0", 3, drop_path_rate=0.0)
    path = save_dense_checkpoint(tmp_path_factory.mktemp("dense_weights") / "seg.safetensors", model, recipe,
                                 None, 3, 7)
    with safe_open(str(path), "pt") as f:
        return path, {k: f.get_tensor(k) for k in f.keys()}, f.metadata(), recipe


def test_the_keys_on_disk_are_those_files_always_had(dense_file):
    path, _, meta, recipe = dense_file
    assert (meta["task"], meta["dense_num_classes"], meta["iteration"]) == ("semantic-fpn", "3", "7")
    assert json.loads(meta["dense_build"]) == {"min_size": recipe.min_size, "max_size": recipe.max_size,
                                               "out_norm": recipe.out_norm}
    header = read_meta(path)  # the weights format keeps the task's entries as written
    assert {k: header.extra[k] for k in ("dense_num_classes", "iteration", "dense_build")} == {
        k: meta[k] for k in ("dense_num_classes", "iteration", "dense_build")}
    dense = DenseMeta.of(header, path)
    assert (dense.num_classes, dense.iteration, dense.build) == (3, 7, json.loads(meta["dense_build"]))


def test_a_file_written_before_the_entries_moved_loads(dense_file, tmp_path):
    """The metadata an earlier version wrote, key for key (CheckpointMeta's typed dense fields), loads unchanged."""
    _, tensors, meta, _ = dense_file
    old = {k: meta[k] for k in ("format", "variant", "num_classes", "model_config", "dccnext_version", "task",
                                "input_size")}
    old.update(dense_build=json.dumps(BUILD), dense_num_classes="3", iteration="7")
    path = tmp_path / "old.safetensors"
    save_file(tensors, str(path), metadata=old)
    model, header = load_dense_model(path)
    assert header.task == "semantic-fpn" and DenseMeta.of(header, path) == DenseMeta(3, 7, BUILD)
    assert model.backbone.body.norms[0].weight.shape[0] == 32  # out_norm=true: the norms were built and loaded


@pytest.mark.parametrize(("change", "expected"), [
    ({"dense_build": json.dumps({"out_norm": "yes"})},
     "broken dense_build metadata entry (out_norm is not a number or true/false)"),
    ({"dense_build": "[1, 2]"}, "broken dense_build metadata entry (expected a JSON object)"),
    ({"dense_build": "{not json"}, "broken dense_build metadata entry ("),
    ({"iteration": "-1"}, "broken iteration metadata entry (-1 is out of range)"),
    ({"dense_num_classes": "three"}, "broken dense_num_classes metadata entry (invalid literal"),
    ({"dense_num_classes": str(10**10)}, "broken dense_num_classes metadata entry (10000000000 is out of range)"),
    ({"dense_num_classes": None}, "is not a dense-task checkpoint"),
    ({"task": None}, "is not a dense-task checkpoint"),
])
def test_a_broken_dense_entry_is_refused_in_one_line_naming_it(dense_file, tmp_path, change, expected):
    _, tensors, meta, _ = dense_file
    path = tmp_path / "broken.safetensors"
    written = {k: v for k, v in {**meta, **change}.items() if v is not None}
    save_file(tensors, str(path), metadata=written)
    with pytest.raises(CheckpointError) as caught:
        load_dense_model(path)
    message = str(caught.value)
    assert expected in message and str(path) in message and "\n" not in message, message
